"""Score policies on the same episodes and tabulate their KPIs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.baselines import Uncontrolled
from agents.kpis import KPI_COLUMNS, add_score, episode_kpis, summarize, write_tables
from envs.core import reset, step
from envs.episode import Episode, Generator
from envs.generators import generator_for
from envs.observation import observe
from envs.plugging import DEPARTED
from envs.site import SiteParams, load_site

__all__ = ["KPI_COLUMNS", "evaluate", "episodes_for", "rollout", "run_from_config"]

OPTIMUM_CLASS = "OfflineOptimal"


def evaluate(policies: Mapping[str, Any], params: SiteParams, num_episodes: int | None = None,
             seed: int = 0, num_envs: int | None = None, episodes: Episode | Generator | None = None,
             per_episode: bool = False) -> pd.DataFrame:
    """KPIs (``agents.kpis.KPI_COLUMNS``) of each policy on the same episodes, one row per policy.

    The episodes are ``episodes`` when it is an ``Episode`` (replayed days, for instance), else
    ``num_episodes`` drawn with ``seed`` from ``episodes`` as a generator, by default the site's
    scenario; every policy is reset from them, so the rows differ only by the policy. They run
    as one batch, or in batches of ``num_envs``. Policies follow SB3's predictor protocol; one
    with a ``begin(params, episode)`` method is handed each batch's episodes before its
    rollout (an optimizer that plans on them), and that time counts in its ``wall_s``.

    EUR, kWh and counts are per episode; ``unmet_pct`` is unmet energy over the energy
    requested by the EVs that departed; ``peak_import_kw`` is the highest site import of any
    episode; ``mean_wait_hours`` is queue time per arriving EV; ``wall_s`` is the time per
    episode of the policy and the env, reset included. ``score`` is ``(R - R_uncontrolled) /
    (R_optimum - R_uncontrolled)`` per episode, averaged, where the policies include an
    ``Uncontrolled`` and an ``OfflineOptimal`` (found by class); NaN otherwise. With
    ``per_episode`` the table has one row per (policy, episode) instead, plus ``arrived``.
    """
    episode = episodes_for(params, episodes, num_episodes, seed)
    total = episode.num_envs
    batch = total if num_envs is None else max(1, int(num_envs))
    frames = {}
    batches = [slice(lo, lo + batch) for lo in range(0, total, batch)]
    for name, policy in policies.items():
        start = time.perf_counter()
        parts = [rollout(policy, params, episode.take(envs)) for envs in batches]
        wall_s = (time.perf_counter() - start) / total
        frames[name] = episode_kpis(params, {key: np.concatenate([part[key] for part in parts])
                                             for key in parts[0]}, wall_s)
    table = pd.concat(frames, names=["policy", "episode"])
    add_score(table, _find(policies, lambda p: isinstance(p, Uncontrolled)),
              _find(policies, lambda p: type(p).__name__ == OPTIMUM_CLASS))
    return table if per_episode else summarize(table)


def episodes_for(params: SiteParams, episodes: Episode | Generator | None = None,
                 num_episodes: int | None = None, seed: int = 0) -> Episode:
    """The episodes to evaluate on: ``episodes`` itself, or ``num_episodes`` sampled from it (or
    from the site's scenario when None) with ``seed``."""
    if isinstance(episodes, Episode):
        if num_episodes is not None and num_episodes != episodes.num_envs:
            raise ValueError(f"num_episodes is {num_episodes} but the given Episode holds "
                             f"{episodes.num_envs}; pass None to use them all")
        episodes.check(params)
        return episodes
    if num_episodes is None or num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    generator = generator_for(params) if episodes is None else episodes
    return generator.sample(params, np.random.default_rng(seed), int(num_episodes))


def rollout(policy, params: SiteParams, episode: Episode) -> dict[str, np.ndarray]:
    """Run ``policy`` through a batch of episodes; per-episode arrays for ``agents.kpis.episode_kpis``."""
    begin = getattr(policy, "begin", None)
    if callable(begin):
        begin(params, episode)
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


def _find(policies: Mapping[str, Any], test) -> str | None:
    return next((name for name, policy in policies.items() if test(policy)), None)


def run_from_config(cfg, output_dir: str | Path | None = None) -> pd.DataFrame:
    """Evaluate the configured policies on the configured site; print the table and write it.

    ``cfg`` has ``site.preset`` and ``site.overrides`` (passed to ``envs.site.load_site``),
    ``policies`` (name -> a ``_target_`` spec, instantiated, then called with ``params=``),
    ``num_episodes``, ``seed`` and ``num_envs``; optionally ``episodes`` (a ``_target_`` spec
    that builds an ``Episode`` or a generator, e.g. replayed days; default: the site's
    scenario), ``formats`` (subset of ``csv``, ``md``, ``jsonl``; default ``[csv]``) and
    ``output_dir`` (where the tables go, instead of ``output_dir``). Tables are
    ``kpis.<format>``; nothing is written when neither directory is given.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = cfg.site.get("overrides")
    overrides = OmegaConf.to_container(overrides, resolve=True) if overrides is not None else {}
    params = load_site(cfg.site.preset, **overrides)
    policies = {name: instantiate(spec, _partial_=True)(params=params) for name, spec in cfg.policies.items()}
    source = cfg.get("episodes")
    episodes = instantiate(source) if source is not None else None
    num_episodes = None if isinstance(episodes, Episode) else int(cfg.num_episodes)
    table = evaluate(policies, params, num_episodes, int(cfg.seed), cfg.get("num_envs"), episodes=episodes)
    count = episodes.num_envs if isinstance(episodes, Episode) else num_episodes
    origin = f"seed {cfg.seed}" if num_episodes is not None else "given episodes"
    print(f"site {params.name!r}: {params.num_ports} ports, {count} episodes of "
          f"{params.horizon_steps * params.dt_hours:g} h, {origin}; KPIs per episode")
    print(table.T.to_string(float_format=lambda x: f"{x:.3f}"))
    directory = cfg.get("output_dir") or output_dir
    if directory is not None:
        for path in write_tables(table, directory, cfg.get("formats") or ("csv",)):
            print(f"wrote {path}")
    return table
