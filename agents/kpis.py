"""KPIs of policy rollouts: per episode, per policy with bootstrap intervals, the normalized score, tables.

Glossary of ``KPI_COLUMNS`` (EUR, kWh and counts per episode; a policy's value is the mean
over its episodes, except where a ratio of sums or a maximum is named):

=========================  =======  ==========================================================
column                     unit     meaning
=========================  =======  ==========================================================
``reward_eur``             EUR      the env's reward: weighted sum of the terms of envs.reward
``score``                  1        ``(R - R_unc) / (R_opt - R_unc)`` as a ratio of sums over
                                    the scored episodes: 0 uncontrolled, 1 the offline optimum
``profit_eur``             EUR      charging and export revenue minus energy cost
``energy_cost_eur``        EUR      site import times the buy price
``charging_revenue_eur``   EUR      tariff times the net energy into the batteries
``export_revenue_eur``     EUR      site export times the sell price
``energy_requested_kwh``   kWh      energy asked for by the EVs that departed in the episode
``energy_delivered_kwh``   kWh      energy into the batteries (after charger losses) of every
                                    EV, departed or still plugged, before any V2G discharge
``request_met_pct``        %        ``100 - unmet_pct``: the share of ``energy_requested_kwh``
                                    the departed EVs got (a ratio of sums per policy)
``unmet_kwh``              kWh      what the departed EVs asked for and did not get
``unmet_pct``              %        ``unmet_kwh`` over ``energy_requested_kwh`` (ratio of sums)
``unmet_at_horizon_kwh``   kWh      what the EVs still plugged in at the horizon (staying on
                                    past the episode) lack then; not in ``unmet_kwh``
``overload_requested_kwh`` kWh      power asked beyond node limits, cut by the env
``grid_violation_kwh``     kWh      node overload no action could avoid
``peak_import_kw``         kW       highest site import (per policy: of any episode)
``v2g_discharged_kwh``     kWh      energy taken out of the batteries by V2G
``degradation_kwh``        kWh      battery throughput, charge plus discharge
``turned_away``            EVs      arrivals that found the queue full
``abandoned``              EVs      queued EVs that gave up waiting
``mean_wait_hours``        h        queue time per arriving EV (ratio of sums per policy)
``solver_fallbacks``       count    decisions an optimizer handed to its fallback policy
``wall_s``                 s        policy and env time per episode, planning included
=========================  =======  ==========================================================

Per-episode tables add ``arrived`` (EVs), ``reward_gain_eur`` (``R - R_unc``),
``optimum_gap_eur`` (``R_opt - R_unc``), ``no_room_to_improve`` (1 where that gap is below
the materiality threshold, so no per-episode ratio is reported) and ``failed`` (1 where the
policy raised on the episode; its KPIs are then NaN and it is left out of every statistic).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from envs.reward import TERM_INDEX
from envs.site import SiteParams

KPI_COLUMNS = (
    "reward_eur",
    "score",
    "profit_eur",
    "energy_cost_eur",
    "charging_revenue_eur",
    "export_revenue_eur",
    "energy_requested_kwh",
    "energy_delivered_kwh",
    "request_met_pct",
    "unmet_kwh",
    "unmet_pct",
    "unmet_at_horizon_kwh",
    "overload_requested_kwh",
    "grid_violation_kwh",
    "peak_import_kw",
    "v2g_discharged_kwh",
    "degradation_kwh",
    "turned_away",
    "abandoned",
    "mean_wait_hours",
    "solver_fallbacks",
    "wall_s",
)
SCORE_COLUMNS = ("arrived", "reward_gain_eur", "optimum_gap_eur", "no_room_to_improve", "failed")
EPISODE_COLUMNS = KPI_COLUMNS + SCORE_COLUMNS
COUNT_COLUMNS = ("episodes", "failed_episodes", "scored_episodes", "no_room_to_improve", "optimum_failed")
TABLE_FORMATS = ("csv", "md", "jsonl")
MIN_GAP_EUR_PER_PORT_DAY = 0.1
_INDEX = {name: i for i, name in enumerate(EPISODE_COLUMNS)}


def episode_kpis(params: SiteParams, run: Mapping[str, np.ndarray], wall_s: float) -> pd.DataFrame:
    """One row of ``EPISODE_COLUMNS`` per episode of a rollout (arrays of ``agents.evaluate.rollout``).

    The score columns are left NaN (``add_score`` fills them), ``failed`` 0; percentages are 0
    and 100 on episodes where no departed EV asked for energy.
    """
    totals = run["totals"]
    count = len(totals)

    def term(name):
        return totals[:, TERM_INDEX[name]]

    requested, unmet, arrived = run["requested_kwh"], term("unmet_kwh"), run["arrived"]
    with np.errstate(divide="ignore", invalid="ignore"):
        unmet_pct = np.where(requested > 0, 100.0 * unmet / requested, 0.0)
        wait = np.where(arrived > 0, run["wait_hours"] / arrived, 0.0)
    columns = {
        "reward_eur": totals @ params.reward.coefficients(),
        "profit_eur": term("charging_revenue_eur") + term("export_revenue_eur") - term("energy_cost_eur"),
        "energy_cost_eur": term("energy_cost_eur"),
        "charging_revenue_eur": term("charging_revenue_eur"),
        "export_revenue_eur": term("export_revenue_eur"),
        "energy_requested_kwh": requested,
        "energy_delivered_kwh": run["charged_kwh"],
        "request_met_pct": 100.0 - unmet_pct,
        "unmet_kwh": unmet,
        "unmet_pct": unmet_pct,
        "unmet_at_horizon_kwh": term("unmet_at_horizon_kwh"),
        "overload_requested_kwh": term("overload_requested_kwh"),
        "grid_violation_kwh": term("grid_violation_kwh"),
        "peak_import_kw": run["peak_import_kw"],
        "v2g_discharged_kwh": run["discharged_kwh"],
        "degradation_kwh": term("degradation_kwh"),
        "turned_away": run["turned_away"],
        "abandoned": run["abandoned"],
        "mean_wait_hours": wait,
        "solver_fallbacks": run.get("solver_fallbacks", np.zeros(count)),
        "wall_s": np.full(count, wall_s),
        "arrived": arrived,
        "failed": np.zeros(count),
    }
    return pd.DataFrame({name: np.broadcast_to(np.asarray(columns.get(name, np.nan), dtype=np.float64), count)
                         for name in EPISODE_COLUMNS})


def failed_kpis(count: int) -> pd.DataFrame:
    """``count`` rows of ``EPISODE_COLUMNS`` for episodes a policy failed on: NaN, ``failed`` 1."""
    table = pd.DataFrame(np.nan, index=range(count), columns=list(EPISODE_COLUMNS))
    table["failed"] = 1.0
    return table


def min_gap_eur(params: SiteParams, min_gap_eur_per_port_day: float = MIN_GAP_EUR_PER_PORT_DAY) -> float:
    """The smallest ``R_opt - R_unc`` of one episode of ``params`` that is worth a ratio (EUR)."""
    if not min_gap_eur_per_port_day >= 0:
        raise ValueError(f"min_gap_eur_per_port_day must be >= 0, got {min_gap_eur_per_port_day}")
    days = params.horizon_steps * params.dt_hours / 24.0
    return float(min_gap_eur_per_port_day) * params.num_ports * days


def add_score(per_episode: pd.DataFrame, uncontrolled: str | None, optimum: str | None,
              min_gap: float = 0.0) -> None:
    """Fill the score columns of ``per_episode`` (indexed by policy and episode) in place.

    ``reward_gain_eur`` is ``R - R_unc`` and ``optimum_gap_eur`` is ``R_opt - R_unc`` of the same
    episode; the gap stays NaN where a reference failed (the episode is left out of the score),
    and both everywhere when a reference policy is missing. ``no_room_to_improve`` is 1 where
    the gap is below ``min_gap`` EUR (or not positive); ``score`` is ``reward_gain_eur /
    optimum_gap_eur`` on the other episodes only, never a ratio of noise.
    """
    if uncontrolled is None or optimum is None:
        return
    reward = per_episode["reward_eur"].unstack("policy")
    low, high = reward[uncontrolled], reward[optimum]
    gap = (high - low).to_numpy()
    room = np.where(np.isnan(gap), np.nan, ((gap >= min_gap) & (gap > 0)).astype(np.float64))

    def spread(values: np.ndarray) -> pd.Series:
        frame = pd.DataFrame(np.broadcast_to(values, reward.shape), index=reward.index,
                             columns=reward.columns).where(reward.notna())
        return frame.stack().reorder_levels(per_episode.index.names).reindex(per_episode.index)

    gain = reward.sub(low, axis=0).to_numpy()
    per_episode["reward_gain_eur"] = spread(gain)
    per_episode["optimum_gap_eur"] = spread(gap[:, None])
    per_episode["no_room_to_improve"] = spread(1.0 - room[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        per_episode["score"] = spread(np.where(room[:, None] == 1.0, gain / gap[:, None], np.nan))


def _statistics(group: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """(W, len(KPI_COLUMNS)) KPIs of one policy's episodes (rows of ``group``) under each row of
    episode ``weights`` (W, n): weighted means, ratios of sums where the glossary says so."""
    values = group[list(EPISODE_COLUMNS)].to_numpy(dtype=np.float64)
    w = weights * (values[:, _INDEX["failed"]] != 1.0)
    x = np.nan_to_num(values, nan=0.0)

    def total(name):
        return w @ x[:, _INDEX[name]]

    with np.errstate(divide="ignore", invalid="ignore"):
        out = (w @ x) / w.sum(axis=1, keepdims=True)
        requested = total("energy_requested_kwh")
        out[:, _INDEX["unmet_pct"]] = np.where(requested > 0, 100.0 * total("unmet_kwh") / requested, 0.0)
        out[:, _INDEX["request_met_pct"]] = 100.0 - out[:, _INDEX["unmet_pct"]]
        arrived = total("arrived")
        waits = w @ (x[:, _INDEX["mean_wait_hours"]] * x[:, _INDEX["arrived"]])
        out[:, _INDEX["mean_wait_hours"]] = np.where(arrived > 0, waits / arrived, 0.0)
        scored = w * np.isfinite(values[:, _INDEX["optimum_gap_eur"]])
        room = scored @ (values[:, _INDEX["no_room_to_improve"]] == 0.0)
        gain, gap = scored @ x[:, _INDEX["reward_gain_eur"]], scored @ x[:, _INDEX["optimum_gap_eur"]]
        out[:, _INDEX["score"]] = np.where((room > 0) & (gap > 0), gain / gap, np.nan)
    peaks = np.where(w > 0, x[:, _INDEX["peak_import_kw"]], -np.inf).max(axis=1)
    out[:, _INDEX["peak_import_kw"]] = np.where(np.isfinite(peaks), peaks, np.nan)
    out[w.sum(axis=1) == 0] = np.nan
    return out[:, : len(KPI_COLUMNS)]


def summarize(per_episode: pd.DataFrame) -> pd.DataFrame:
    """``KPI_COLUMNS`` per policy, in first-seen order: the statistics of the glossary over the
    episodes each policy completed (``score`` over the episodes scored, NaN where none had room
    to improve or no score was computed)."""
    per_episode = _complete(per_episode)
    rows = {name: _statistics(group, np.ones((1, len(group))))[0]
            for name, group in per_episode.groupby(level="policy", sort=False)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(KPI_COLUMNS)).rename_axis("policy")


def summary(per_episode: pd.DataFrame, resamples: int = 1000, seed: int = 0,
            level: float = 0.95) -> pd.DataFrame:
    """Per policy: every KPI of ``summarize`` with its bootstrap interval, and episode counts.

    The interval (columns ``<kpi>_low`` and ``<kpi>_high``) is the percentile interval at
    ``level`` of the same statistic over ``resamples`` resamples of the episodes with
    replacement, drawn with ``seed`` and shared by every policy (paired). Counts:
    ``episodes`` completed, ``failed_episodes``, ``scored_episodes`` (in the score: both
    references completed them), ``no_room_to_improve`` among those, ``optimum_failed``
    (left out of the score because a reference failed on them).
    """
    if not 0 < level < 1 or int(resamples) < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level} and {resamples}")
    per_episode = _complete(per_episode)
    groups = list(per_episode.groupby(level="policy", sort=False))
    episodes = len(groups[0][1])
    weights = np.random.default_rng(seed).multinomial(episodes, np.full(episodes, 1.0 / episodes),
                                                      size=int(resamples))
    tail = 100.0 * (1.0 - level) / 2.0
    rows = {}
    for name, group in groups:
        point = _statistics(group, np.ones((1, episodes)))[0]
        draws = _statistics(group, weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no interval
            low, high = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0)
        failed = group["failed"].to_numpy() == 1.0
        gap = group["optimum_gap_eur"].to_numpy()
        scored = np.isfinite(gap) & ~failed
        row = {}
        for i, column in enumerate(KPI_COLUMNS):
            row.update({column: point[i], f"{column}_low": low[i], f"{column}_high": high[i]})
        has_score = per_episode["reward_gain_eur"].notna().any()
        row.update({"episodes": float((~failed).sum()), "failed_episodes": float(failed.sum()),
                    "scored_episodes": float(scored.sum()) if has_score else np.nan,
                    "no_room_to_improve": float((group["no_room_to_improve"].to_numpy()[scored] == 1).sum())
                    if has_score else np.nan,
                    "optimum_failed": float((~np.isfinite(gap) & ~failed).sum()) if has_score else np.nan})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("policy")


def _complete(per_episode: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in EPISODE_COLUMNS if column not in per_episode]
    if not missing:
        return per_episode
    per_episode = per_episode.copy()
    for column in missing:
        per_episode[column] = 0.0 if column == "failed" else np.nan
    return per_episode


def summary_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """``summary``'s table as Markdown: one row per KPI, one column per policy, cells ``mean [low, high]``;
    KPIs that are NaN for every policy (a score without references) are left out."""
    rows = {}
    for column in KPI_COLUMNS:
        if column not in table or table[column].isna().all():
            continue
        rows[column] = [_interval_cell(table.loc[name, column], table.loc[name, f"{column}_low"],
                                       table.loc[name, f"{column}_high"], digits) for name in table.index]
    for column in COUNT_COLUMNS:
        if column in table and not table[column].isna().all():
            rows[column] = [_number(value, 0) for value in table[column]]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(table.index)).rename_axis("KPI")
    return markdown_table(frame, digits)


def _interval_cell(point: float, low: float, high: float, digits: int) -> str:
    if math.isnan(point):
        return "n/a"
    if math.isnan(low) or np.isclose([low, high], point, rtol=1e-9, atol=0.0).all():
        return _number(point, digits)
    return f"{_number(point, digits)} [{_number(low, digits)}, {_number(high, digits)}]"


def _number(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}" if value == 0 or abs(value) >= 0.1 or digits == 0 else f"{value:.2g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table of ``frame`` with its index as the first column; numbers right-aligned.

    Floats get ``digits`` decimals, or two significant digits below 0.1; NaN reads ``n/a``.
    """
    numeric = [pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes]
    header = [str(frame.index.name or "")] + [str(column) for column in frame.columns]
    rule = ["---"] + ["---:" if is_number else "---" for is_number in numeric]
    rows = [[_number(index, digits)] + [_number(value, digits) for value in row] for index, row in
            zip(frame.index, frame.itertuples(index=False), strict=True)]
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, rule, *rows]) + "\n"


def write_tables(table: pd.DataFrame, directory: str | Path, formats: Iterable[str] = TABLE_FORMATS,
                 stem: str = "kpis", markdown: str | None = None) -> list[Path]:
    """Write ``table`` as ``<stem>.csv``, ``.md`` and ``.jsonl`` in ``directory``.

    The Markdown is ``markdown`` when given, else ``table`` with its columns as rows (a
    per-policy table reads KPI by KPI).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"unknown table format {fmt!r}; known: {', '.join(TABLE_FORMATS)}")
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        if fmt == "csv":
            table.to_csv(path)
        elif fmt == "md":
            path.write_text(markdown if markdown is not None else markdown_table(table.T.rename_axis("KPI")))
        else:
            table.reset_index().to_json(path, orient="records", lines=True)
        paths.append(path)
    return paths
