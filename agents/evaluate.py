"""Score policies on the same seeded episodes and tabulate their KPIs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs.core import reset, step
from envs.episode import Episode
from envs.observation import observe
from envs.parametric import generator_for
from envs.plugging import DEPARTED
from envs.reward import TERM_INDEX
from envs.site import SiteParams, load_site

KPI_COLUMNS = (
    "reward_eur",
    "profit_eur",
    "energy_cost_eur",
    "charging_revenue_eur",
    "export_revenue_eur",
    "energy_delivered_kwh",
    "unmet_kwh",
    "unmet_pct",
    "overload_requested_kwh",
    "grid_violation_kwh",
    "peak_import_kw",
    "v2g_discharged_kwh",
    "degradation_kwh",
    "turned_away",
    "abandoned",
    "mean_wait_hours",
    "wall_s",
)


def evaluate(policies: Mapping[str, Any], params: SiteParams, num_episodes: int, seed: int,
             num_envs: int | None = None) -> pd.DataFrame:
    """KPIs of each policy (one row each, indexed by name) on the same ``num_episodes`` episodes.

    The episodes are sampled once from the site's scenario with ``seed`` and every policy is
    reset from them, so the rows differ only by the policy. They run as one batch, or in
    batches of ``num_envs``. Policies follow SB3's predictor protocol. Sums are averaged per
    episode: EUR, kWh and counts per episode; ``unmet_pct`` is unmet energy over the energy
    requested by the EVs that departed within the episodes; ``peak_import_kw`` is the highest
    site import of any episode; ``mean_wait_hours`` is queue time per arriving EV;
    ``wall_s`` is the time per episode of the policy and the env, reset included.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    episode = generator_for(params).sample(params, np.random.default_rng(seed), num_episodes)
    batch = num_episodes if num_envs is None else max(1, int(num_envs))
    rows = {}
    for name, policy in policies.items():
        start = time.perf_counter()
        parts = [_rollout(policy, params, episode.take(slice(lo, lo + batch)))
                 for lo in range(0, num_episodes, batch)]
        wall_s = (time.perf_counter() - start) / num_episodes
        rows[name] = _kpis(params, {key: np.concatenate([part[key] for part in parts]) for key in parts[0]},
                           wall_s)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(KPI_COLUMNS))
    table.index.name = "policy"
    return table


def _rollout(policy, params: SiteParams, episode: Episode) -> dict[str, np.ndarray]:
    state = reset(params, episode)
    charged = np.zeros(episode.num_envs)
    discharged = np.zeros(episode.num_envs)
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state), deterministic=True)
        state, _, info = step(params, state, action)
        charged += info["charged_kwh"]
        discharged += info["discharged_kwh"]
    schedule = state.schedule
    departed = schedule.ev_status == DEPARTED
    return {
        "totals": state.totals,
        "charged_kwh": charged,
        "discharged_kwh": discharged,
        "peak_import_kw": state.peak_import_kw,
        "requested_kwh": np.where(departed, episode.ev_requested_kwh, 0.0).sum(axis=1),
        "turned_away": schedule.turned_away.sum(axis=1),
        "abandoned": schedule.abandoned.sum(axis=1),
        "arrived": schedule.arrived.sum(axis=1),
        "wait_hours": schedule.wait_steps.sum(axis=1) * params.dt_hours,
    }


def _kpis(params: SiteParams, run: dict[str, np.ndarray], wall_s: float) -> dict[str, float]:
    totals = run["totals"].mean(axis=0)
    reward = run["totals"] @ params.reward.coefficients()

    def term(name):
        return float(totals[TERM_INDEX[name]])

    unmet = term("unmet_kwh")
    requested = float(run["requested_kwh"].mean())
    arrived = float(run["arrived"].sum())
    return {
        "reward_eur": float(reward.mean()),
        "profit_eur": term("charging_revenue_eur") + term("export_revenue_eur") - term("energy_cost_eur"),
        "energy_cost_eur": term("energy_cost_eur"),
        "charging_revenue_eur": term("charging_revenue_eur"),
        "export_revenue_eur": term("export_revenue_eur"),
        "energy_delivered_kwh": float(run["charged_kwh"].mean()),
        "unmet_kwh": unmet,
        "unmet_pct": 100.0 * unmet / requested if requested > 0 else 0.0,
        "overload_requested_kwh": term("overload_requested_kwh"),
        "grid_violation_kwh": term("grid_violation_kwh"),
        "peak_import_kw": float(run["peak_import_kw"].max()),
        "v2g_discharged_kwh": float(run["discharged_kwh"].mean()),
        "degradation_kwh": term("degradation_kwh"),
        "turned_away": float(run["turned_away"].mean()),
        "abandoned": float(run["abandoned"].mean()),
        "mean_wait_hours": float(run["wait_hours"].sum()) / arrived if arrived else 0.0,
        "wall_s": wall_s,
    }


def run_from_config(cfg, output_dir: str | Path | None = None) -> pd.DataFrame:
    """Evaluate the configured policies on the configured site; print the table, save it as CSV.

    ``cfg`` has ``site.preset`` and ``site.overrides`` (passed to ``envs.site.load_site``),
    ``policies`` (name -> a ``_target_`` spec, instantiated, then called with ``params=``), ``num_episodes``,
    ``seed`` and ``num_envs``. The CSV is ``kpis.csv`` in ``output_dir`` when one is given.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = cfg.site.get("overrides")
    overrides = OmegaConf.to_container(overrides, resolve=True) if overrides is not None else {}
    params = load_site(cfg.site.preset, **overrides)
    policies = {name: instantiate(spec, _partial_=True)(params=params) for name, spec in cfg.policies.items()}
    table = evaluate(policies, params, int(cfg.num_episodes), int(cfg.seed), cfg.get("num_envs"))
    print(f"site {params.name!r}: {params.num_ports} ports, {cfg.num_episodes} episodes of "
          f"{params.horizon_steps * params.dt_hours:g} h, seed {cfg.seed}; KPIs per episode")
    print(table.T.to_string(float_format=lambda x: f"{x:.3f}"))
    if output_dir is not None:
        path = Path(output_dir) / "kpis.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path)
        print(f"wrote {path}")
    return table
