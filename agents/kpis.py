"""KPIs of policy rollouts: per episode, summarized per policy, normalized, and written as tables."""

from __future__ import annotations

import math
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
    "energy_delivered_pct",
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
EPISODE_COLUMNS = KPI_COLUMNS + ("arrived",)
TABLE_FORMATS = ("csv", "md", "jsonl")


def episode_kpis(params: SiteParams, run: Mapping[str, np.ndarray], wall_s: float) -> pd.DataFrame:
    """One row of ``EPISODE_COLUMNS`` per episode of a rollout (arrays of ``agents.evaluate.rollout``).

    ``score`` is left NaN (``add_score`` fills it); percentages are 0 and 100 on episodes
    where no departed EV asked for energy.
    """
    totals = run["totals"]

    def term(name):
        return totals[:, TERM_INDEX[name]]

    requested, unmet, arrived = run["requested_kwh"], term("unmet_kwh"), run["arrived"]
    with np.errstate(divide="ignore", invalid="ignore"):
        unmet_pct = np.where(requested > 0, 100.0 * unmet / requested, 0.0)
        wait = np.where(arrived > 0, run["wait_hours"] / arrived, 0.0)
    columns = {
        "reward_eur": totals @ params.reward.coefficients(),
        "score": np.full(len(totals), np.nan),
        "profit_eur": term("charging_revenue_eur") + term("export_revenue_eur") - term("energy_cost_eur"),
        "energy_cost_eur": term("energy_cost_eur"),
        "charging_revenue_eur": term("charging_revenue_eur"),
        "export_revenue_eur": term("export_revenue_eur"),
        "energy_requested_kwh": requested,
        "energy_delivered_kwh": run["charged_kwh"],
        "energy_delivered_pct": 100.0 - unmet_pct,
        "unmet_kwh": unmet,
        "unmet_pct": unmet_pct,
        "overload_requested_kwh": term("overload_requested_kwh"),
        "grid_violation_kwh": term("grid_violation_kwh"),
        "peak_import_kw": run["peak_import_kw"],
        "v2g_discharged_kwh": run["discharged_kwh"],
        "degradation_kwh": term("degradation_kwh"),
        "turned_away": run["turned_away"],
        "abandoned": run["abandoned"],
        "mean_wait_hours": wait,
        "wall_s": np.full(len(totals), wall_s),
        "arrived": arrived,
    }
    return pd.DataFrame({name: np.asarray(columns[name], dtype=np.float64) for name in EPISODE_COLUMNS})


def add_score(per_episode: pd.DataFrame, uncontrolled: str | None, optimum: str | None) -> None:
    """Fill ``score`` in place: ``(R - R_uncontrolled) / (R_optimum - R_uncontrolled)`` per episode.

    ``per_episode`` is indexed by (policy, episode). The score stays NaN when either reference
    policy is missing, and on episodes where the two references earn the same reward.
    """
    if uncontrolled is None or optimum is None:
        return
    reward = per_episode["reward_eur"].unstack("policy")
    low, high = reward[uncontrolled], reward[optimum]
    span = (high - low).where((high - low).abs() > 1e-9)
    score = reward.sub(low, axis=0).div(span, axis=0)
    per_episode["score"] = score.stack().reorder_levels(per_episode.index.names).reindex(per_episode.index)


def summarize(per_episode: pd.DataFrame) -> pd.DataFrame:
    """``KPI_COLUMNS`` per policy, in first-seen order: means per episode, except ratios of sums.

    ``unmet_pct`` and ``energy_delivered_pct`` weigh episodes by requested energy,
    ``mean_wait_hours`` by arrivals; ``peak_import_kw`` is the highest of any episode and
    ``score`` the mean over the episodes where it is defined.
    """
    groups = per_episode.groupby(level="policy", sort=False)
    table = groups.mean()
    sums = groups.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        requested = sums["energy_requested_kwh"]
        table["unmet_pct"] = np.where(requested > 0, 100.0 * sums["unmet_kwh"] / requested, 0.0)
        table["energy_delivered_pct"] = 100.0 - table["unmet_pct"]
        waits = (per_episode["mean_wait_hours"] * per_episode["arrived"]).groupby(level="policy", sort=False)
        arrived = sums["arrived"]
        table["mean_wait_hours"] = np.where(arrived > 0, waits.sum() / arrived, 0.0)
    table["peak_import_kw"] = groups["peak_import_kw"].max()
    return table[list(KPI_COLUMNS)]


def markdown_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table of ``frame`` with its index as the first column; numbers right-aligned.

    Floats get ``digits`` decimals, or two significant digits below 0.1; NaN reads ``n/a``.
    """

    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            if math.isnan(value):
                return "n/a"
            return f"{value:,.{digits}f}" if value == 0 or abs(value) >= 0.1 else f"{value:.2g}"
        return str(value).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes]
    header = [str(frame.index.name or "")] + [str(column) for column in frame.columns]
    rule = ["---"] + ["---:" if is_number else "---" for is_number in numeric]
    rows = [[cell(index)] + [cell(value) for value in row] for index, row in
            zip(frame.index, frame.itertuples(index=False), strict=True)]
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, rule, *rows]) + "\n"


def write_tables(table: pd.DataFrame, directory: str | Path, formats: Iterable[str] = TABLE_FORMATS,
                 stem: str = "kpis") -> list[Path]:
    """Write ``table`` (one row per policy) as ``<stem>.csv``, ``.md`` (KPIs as rows) and ``.jsonl``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        if fmt == "csv":
            table.to_csv(path)
        elif fmt == "md":
            path.write_text(markdown_table(table.T.rename_axis("KPI")))
        elif fmt == "jsonl":
            table.reset_index().to_json(path, orient="records", lines=True)
        else:
            raise ValueError(f"unknown table format {fmt!r}; known: {', '.join(TABLE_FORMATS)}")
        paths.append(path)
    return paths
