"""Cost against unmet energy and waiting: MPC and trained agents over reward weights, and their front."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agents.kpis import markdown_table
from envs.reward import RewardWeights
from envs.site import SiteParams

WEIGHT_NAMES = tuple(field.name for field in dataclasses.fields(RewardWeights))
OBJECTIVES = {"front_unmet": ("net_cost_eur", "unmet_kwh"), "front_wait": ("net_cost_eur", "mean_wait_hours")}
INTERVAL_COLUMNS = ("net_cost_eur", "unmet_kwh", "mean_wait_hours", "score")
OTHER_COLUMNS = ("energy_cost_eur", "charging_revenue_eur", "export_revenue_eur", "unmet_pct",
                 "peak_import_kw", "reward_eur", "solver_fallbacks", "episodes")


class ParetoError(ValueError):
    """A sweep setting or run directory that cannot be used; the message names it."""


class WeightedPlanner:
    """A planner that plans with its own reward weights on a site scored with the site's.

    Description:
        ``planner`` (an ``agents.mpc.ModelPredictiveControl``, or any policy whose
        ``begin(params, episode)`` reads ``params.reward``) is handed the site with ``weights``
        in place of its reward weights, so each weight is one operating point while every
        policy is run and scored on the same site. The dynamics do not depend on the weights.
        ``predict`` and every other attribute (``solver_fallbacks``) are the planner's.

    >>> from agents.mpc import ModelPredictiveControl
    >>> from envs.site import load_site
    >>> params = load_site("caltech", horizon_steps=8)
    >>> weights = RewardWeights(unmet_eur_per_kwh=2.0)
    >>> planner = WeightedPlanner(ModelPredictiveControl(params, horizon_steps=4), weights)
    >>> planner.weights.unmet_eur_per_kwh, params.reward.unmet_eur_per_kwh
    (2.0, 0.5)
    """

    def __init__(self, planner, weights: RewardWeights):
        self.planner, self.weights = planner, weights
        self._sites: tuple[SiteParams, SiteParams] | None = None

    def begin(self, params: SiteParams, episode) -> None:
        if self._sites is None or self._sites[0] is not params:
            self._sites = params, params.replace(reward=self.weights)
        self.planner.begin(self._sites[1], episode)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        return self.planner.predict(observation, state, episode_start, deterministic)

    def __getattr__(self, name: str):
        if name in ("planner", "_sites"):
            raise AttributeError(name)
        return getattr(self.planner, name)


def weighted_planner(planner, params: SiteParams,
                     weights: Mapping[str, float] | None = None) -> WeightedPlanner:
    """``planner(params=...)`` planning with the site's weights, ``weights`` (name -> value) replacing some.

    A ``_target_`` for configs: with ``planner`` a partial spec (``_partial_: true``), it is what
    ``experiment=pareto`` clones (``imitation.teacher.weights: ${env.reward}``), so each run
    imitates a planner of its own training reward.
    """
    unknown = sorted(set(weights or {}) - set(WEIGHT_NAMES))
    if unknown:
        raise ParetoError(f"{unknown[0]} is not a reward weight (known: {', '.join(WEIGHT_NAMES)})")
    changes = {name: float(value) for name, value in (weights or {}).items()}
    planned = dataclasses.replace(params.reward, **changes)
    return WeightedPlanner(planner(params=params.replace(reward=planned)), planned)


def weight_grid(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the values of ``grid`` (reward weight name -> values), in order."""
    if not grid:
        raise ParetoError("grid must name at least one reward weight, e.g. grid.unmet_eur_per_kwh=[0,0.5,2]")
    for name, values in grid.items():
        if name not in WEIGHT_NAMES:
            raise ParetoError(f"grid.{name} is not a reward weight (known: {', '.join(WEIGHT_NAMES)})")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ParetoError(f"grid.{name} must be a non-empty list of numbers, got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ParetoError(f"grid.{name} must hold numbers >= 0, got {value!r}")
    names = list(grid)
    return [dict(zip(names, map(float, values), strict=True)) for values in itertools.product(*grid.values())]


def weight_label(weights: Mapping[str, float]) -> str:
    """``unmet=0.5`` for ``{"unmet_eur_per_kwh": 0.5}``: short names of the swept weights."""
    return ",".join(f"{_short(name)}={value:g}" for name, value in weights.items())


def _short(name: str) -> str:
    for suffix in ("_eur_per_kwh", "_eur_per_kw", "_eur_per_kg"):
        name = name.removesuffix(suffix)
    return name


def trained_weights(run: str | Path) -> RewardWeights:
    """The reward weights a run was trained with: its site's, with the run's ``env.reward`` replacing some.

    Read from the newest checkpoint's ``config.json`` (``agents.checkpoints``), else the run's
    ``.hydra/config.yaml``; ``run`` is a run directory or its ``policy/`` folder.
    """
    from agents.checkpoints import latest_checkpoint
    from agents.train import CHECKPOINT_DIR, site_params, training_params

    run = Path(run)
    run = run.parent if run.name == "policy" else run
    checkpoint = latest_checkpoint(run / CHECKPOINT_DIR)
    if checkpoint is not None:
        cfg = checkpoint.config()
    elif (run / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=True)
    else:
        raise ParetoError(f"{run}: no checkpoints/*/config.json nor .hydra/config.yaml to read the "
                          "training reward from")
    return training_params(site_params(cfg), cfg.get("env") or {}).reward


def non_dominated(points: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of ``points`` (N, D) that no other row dominates, every column minimized.

    A row dominates another when it is no worse in every column and better in one; rows with a
    NaN are never on the front, and equal rows are both on it.
    """
    points = np.asarray(points, dtype=np.float64)
    valid = ~np.isnan(points).any(axis=1)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        others = points[valid]
        dominated = (others <= points[i]).all(axis=1) & (others < points[i]).any(axis=1)
        front[i] = not dominated.any()
    return front


def pareto_table(summary: pd.DataFrame, kinds: Mapping[str, str],
                 weights: Mapping[str, Mapping[str, float]], weight_names: Sequence[str]) -> pd.DataFrame:
    """One row per policy of ``summary`` (``agents.kpis.summary``): its kind (``baseline``, ``mpc``,
    ``trained``, ``optimum``), the ``weight_names`` it planned or was trained with, and its objectives.

    ``net_cost_eur`` is energy cost minus charging and export revenue (``-profit_eur``), EUR per
    episode, with its bootstrap interval as the other ``INTERVAL_COLUMNS``. ``front_unmet`` and
    ``front_wait`` mark the rows no other dominates in (net cost, unmet energy) and in (net cost,
    mean waiting time), ``on_front`` those no other dominates in all three; the offline optimum,
    which knows the whole day ahead, is a reference and never on a front.
    """
    table = pd.DataFrame(index=summary.index)
    table["kind"] = [kinds[name] for name in summary.index]
    for name in weight_names:
        table[name] = [weights.get(policy, {}).get(name, np.nan) for policy in summary.index]
    table["net_cost_eur"] = -summary["profit_eur"]
    table["net_cost_eur_low"] = -summary["profit_eur_high"]
    table["net_cost_eur_high"] = -summary["profit_eur_low"]
    for column in INTERVAL_COLUMNS[1:]:
        for suffix in ("", "_low", "_high"):
            table[column + suffix] = summary[column + suffix] if column + suffix in summary else np.nan
    for column in OTHER_COLUMNS:
        table[column] = summary[column]
    candidates = (table["kind"] != "optimum").to_numpy()
    for flag, columns in OBJECTIVES.items():
        table[flag] = _front(table, list(columns), candidates)
    table["on_front"] = _front(table, ["net_cost_eur", "unmet_kwh", "mean_wait_hours"], candidates)
    return table


def _front(table: pd.DataFrame, columns: list[str], candidates: np.ndarray) -> np.ndarray:
    points = table[columns].to_numpy(dtype=np.float64)
    front = np.zeros(len(table), dtype=bool)
    front[candidates] = non_dominated(points[candidates])
    return front


def pareto_markdown(table: pd.DataFrame, weight_names: Sequence[str], digits: int = 2) -> str:
    """``table`` as Markdown: objectives as ``mean [low, high]``, the fronts as ``yes``."""
    frame = pd.DataFrame(index=table.index)
    frame["kind"] = table["kind"]
    for name in weight_names:
        frame[name] = [("" if np.isnan(v) else f"{v:g}") for v in table[name]]
    for column in ("net_cost_eur", "unmet_kwh", "unmet_pct", "mean_wait_hours", "peak_import_kw", "score"):
        if column in INTERVAL_COLUMNS:
            frame[column] = [_cell(row[column], row[f"{column}_low"], row[f"{column}_high"], digits)
                             for _, row in table.iterrows()]
        else:
            frame[column] = table[column]
    for flag in ("front_unmet", "front_wait", "on_front"):
        frame[flag] = np.where(table[flag], "yes", "")
    return markdown_table(frame, digits)


def _cell(point: float, low: float, high: float, digits: int) -> str:
    if np.isnan(point):
        return "n/a"
    if np.isnan(low) or np.isclose([low, high], point, rtol=1e-9, atol=0.0).all():
        return f"{point:,.{digits}f}"
    return f"{point:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"


def front_figure(table: pd.DataFrame, title: str = ""):
    """Two panels, net cost against unmet energy and against mean waiting time: one marker per policy
    (baselines and the offline optimum as references, MPC along its weights, trained agents), bootstrap
    intervals in the table only, the non-dominated points circled and joined by a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    styles = {"baseline": ("s", "tab:grey"), "mpc": ("o", "tab:blue"), "trained": ("^", "tab:orange"),
              "optimum": ("*", "tab:green")}
    for axis, (flag, (y_name, x_name)) in zip(axes, OBJECTIVES.items(), strict=True):
        for kind, (marker, color) in styles.items():
            rows = table[table["kind"] == kind]
            if rows.empty:
                continue
            x, y = rows[x_name].to_numpy(float), rows[y_name].to_numpy(float)
            axis.scatter(x, y, marker=marker, color=color, s=90 if kind == "optimum" else 40, alpha=0.85,
                         label=kind if kind != "optimum" else "offline optimum (reference)")
            for i, (name, xi, yi) in enumerate(zip(rows.index, x, y, strict=True)):
                axis.annotate(_point_label(name, rows.loc[name]), (xi, yi), textcoords="offset points",
                              xytext=(5, 9 * (i % 3) - 9), fontsize=7, color=color)
        front = table[table[flag]].sort_values(x_name)
        axis.step(front[x_name], front[y_name], where="post", color="tab:red", linewidth=1.2, zorder=0,
                  label="front (non-dominated)")
        axis.scatter(front[x_name], front[y_name], s=140, facecolors="none", edgecolors="tab:red", zorder=3)
        axis.set_xlabel({"unmet_kwh": "unmet energy (kWh per episode)",
                         "mean_wait_hours": "mean waiting time in the queue (h per arriving EV)"}[x_name])
        axis.grid(alpha=0.3)
        values = table[x_name].dropna().to_numpy(float)
        if len(values) > 1 and values.max() - values.min() < 1e-9:
            axis.set_title("the same for every policy: who plugs in when does not depend on charging",
                           fontsize=8, color="dimgrey")
    axes[0].set_ylabel("net cost: energy cost - revenues (EUR per episode)")
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _point_label(name: str, row: pd.Series) -> str:
    if row["kind"] == "mpc":
        return str(name).removeprefix("mpc ")
    return str(name)


def run_pareto(cfg, output_dir: str | Path | None = None) -> pd.DataFrame:
    """MPC at every weight of ``cfg.grid``, the trained runs of ``cfg.trained``, the baselines and the
    offline optimum on the same episodes; print the front and write ``pareto.csv``, ``pareto.md`` and
    ``pareto.png`` (and the per-episode KPIs ``kpis.csv``) to ``cfg.output_dir`` or ``output_dir``.

    ``cfg``: ``site`` (``preset``, ``overrides``), ``policies`` (baselines: name -> ``_target_``
    spec called with ``params=``), ``optimum`` and ``planner`` (``_target_`` specs; the planner is
    built once per weight combination and plans with those weights), ``grid`` (reward weight ->
    values), ``trained`` (run directories, each labelled by the weights it was trained with),
    ``num_episodes``, ``seed``, ``num_envs``, ``bootstrap``. Every policy is scored with the site's
    own weights (``reward_eur``, ``score``). Returns the table.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from agents import load_policy
    from agents.evaluate import episodes_for, run_policies
    from agents.kpis import write_tables
    from envs.site import load_site

    plain = OmegaConf.to_container(cfg, resolve=True)
    params = load_site(plain["site"]["preset"], **(plain["site"].get("overrides") or {}))
    grid = weight_grid(plain.get("grid") or {})
    policies, kinds, weights = {}, {}, {}

    def add(name: str, policy, kind: str, point: Mapping[str, float] | None = None) -> None:
        if name in policies:
            raise ParetoError(f"policy name {name!r} is taken twice; rename a run directory or a baseline")
        policies[name], kinds[name] = policy, kind
        if point is not None:
            weights[name] = dict(point)

    for name, spec in (plain.get("policies") or {}).items():
        add(name, instantiate(spec, _partial_=True)(params=params), "baseline")
    site_weights = dataclasses.asdict(params.reward)
    names = list(grid[0])
    for point in grid:
        planner = weighted_planner(instantiate(plain["planner"], _partial_=True), params, point)
        add(f"mpc {weight_label(point)}", planner, "mpc", point)
    for run in map(Path, plain.get("trained") or []):
        trained = dataclasses.asdict(trained_weights(run))
        run_name = run.parent.name if run.name == "policy" else run.name
        add(run_name, load_policy(run), "trained", trained)
        names += [name for name, value in trained.items()
                  if name not in names and value != site_weights[name]]
    if plain.get("optimum") is not None:
        add("offline_optimal", instantiate(plain["optimum"], _partial_=True)(params=params), "optimum",
            site_weights)
    episode = episodes_for(params, None, int(plain["num_episodes"]), int(plain["seed"]))
    result = run_policies(policies, params, episode, plain.get("num_envs"))
    summary = result.summary(**(plain.get("bootstrap") or {}))
    table = pareto_table(summary, kinds, weights, names)
    hours = params.horizon_steps * params.dt_hours
    description = (f"site {params.name!r}, {episode.num_envs} episodes of {hours:g} h from seed "
                   f"{plain['seed']}; net cost and unmet energy per episode, 95% bootstrap intervals; "
                   f"scored with the site's weights {json.dumps({k: site_weights[k] for k in names})}")
    print(description)
    print(pareto_markdown(table, names))
    for failure in result.failures:
        print(f"FAILED: {failure}")
    directory = plain.get("output_dir") or output_dir
    if directory is not None:
        directory = Path(directory)
        paths = write_tables(table, directory, ("csv",), "pareto")
        (directory / "pareto.md").write_text(f"{description}\n\n{pareto_markdown(table, names)}")
        paths += [directory / "pareto.md", *write_tables(result.per_episode, directory, ("csv",), "kpis")]
        paths.append(_save(front_figure(table, description.split(";")[0]), directory / "pareto.png"))
        for path in paths:
            print(f"wrote {path}")
    return table


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
