"""What an evaluation prints and writes: KPI tables (CSV, Markdown, JSON lines) and PNG figures."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from agents.evaluate import Evaluation, EvaluationError
from agents.kpis import TABLE_FORMATS, markdown_table, summary_markdown, write_tables

TABLE_KINDS = ("episodes", "summary", "policies")
SCORE_ONLY = ("score", "reward_gain_eur", "optimum_gap_eur", "no_room_to_improve", "scored_episodes",
              "optimum_failed")


def print_report(result: Evaluation, summary: pd.DataFrame, description: str) -> None:
    """Print the KPIs per policy (``n/a`` where undefined), the score with its interval and what it
    left out, the solver fallbacks and every failure."""
    params = result.params
    print(f"site {params.name!r}: {params.num_ports} ports; {description}; "
          f"{params.horizon_steps * params.dt_hours:g} h episodes; KPIs per episode")
    table = _without_score(result.table(), result)
    print(table.T.to_string(float_format=lambda x: f"{x:.3f}", na_rep="n/a"))
    if result.scored:
        first = summary.loc[result.uncontrolled]
        print(f"score = (sum R - sum R_unc) / (sum R_opt - sum R_unc), 95% bootstrap interval, over "
              f"{first['scored_episodes']:.0f} episodes; {first['no_room_to_improve']:.0f} of them with no "
              f"room to improve (R_opt - R_unc < {result.min_gap_eur:.2f} EUR, no per-episode ratio); "
              f"{first['optimum_failed']:.0f} left out (the optimum failed on them)")
        width = max(len(str(name)) for name in summary.index)
        if summary["score"].isna().all():
            print("  n/a for every policy: no scored episode has room to improve")
        for name, row in summary[summary["score"].notna()].iterrows():
            print(f"  {name:<{width}}  {row['score']:.3f} [{row['score_low']:.3f}, {row['score_high']:.3f}]")
    fallbacks = result.per_episode["solver_fallbacks"].groupby(level="policy", sort=False).sum()
    for name, count in fallbacks[fallbacks > 0].items():
        print(f"{name}: {count:.0f} decisions fell back to the policy's fallback after its solver failed")
    for failure in result.failures:
        print(f"FAILED: {failure}")


def write_report(result: Evaluation, summary: pd.DataFrame, directory: str | Path,
                 tables: Mapping[str, str], formats: Iterable[str] = TABLE_FORMATS,
                 plots: bool = False) -> list[Path]:
    """Write each ``tables`` entry (file stem -> one of ``TABLE_KINDS``) in ``formats``, and with
    ``plots`` the figures of ``plots/``: ``day_<policy>.png`` per traced policy and ``score.png``.
    Without both references the score columns are left out."""
    directory, formats, paths = Path(directory), list(formats), []
    for stem, kind in tables.items():
        if kind == "episodes":
            frame = _without_score(result.per_episode, result)
            markdown = markdown_table(frame.reset_index(level="episode"))
        elif kind == "summary":
            frame = _without_score(summary, result)
            markdown = summary_markdown(frame)
        elif kind == "policies":
            frame, markdown = _without_score(result.table(), result), None
        else:
            raise EvaluationError(f"tables.{stem} is {kind!r}; known: {', '.join(TABLE_KINDS)}")
        paths += write_tables(frame, directory, formats, stem, markdown)
    if plots:
        paths += write_plots(result, summary, directory / "plots")
    return paths


def _without_score(frame: pd.DataFrame, result: Evaluation) -> pd.DataFrame:
    if result.scored:
        return frame
    return frame.drop(columns=[c for c in frame.columns if c.removesuffix("_low").removesuffix("_high")
                               in SCORE_ONLY])


def write_plots(result: Evaluation, summary: pd.DataFrame, directory: str | Path) -> list[Path]:
    """PNG figures: the traced day of each policy (``envs.render.EpisodeTrace``) and, with both
    references, the score of each policy with its interval."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, trace in result.traces.items():
        figure = trace.figure()
        figure.suptitle(f"{name} on site {result.params.name!r}, episode {result.trace_episode}")
        paths.append(_save(figure, directory / f"day_{_file_name(name)}.png", plt))
    if result.scored:
        paths.append(_save(score_figure(summary), directory / "score.png", plt))
    return paths


def score_figure(summary: pd.DataFrame):
    """Horizontal bars of ``score`` per policy with their bootstrap intervals; 0 is uncontrolled,
    1 the offline optimum. Policies without a score are listed as n/a."""
    import matplotlib.pyplot as plt

    names = list(summary.index)
    score = summary["score"].to_numpy(dtype=float)
    defined = np.isfinite(score)
    low = np.where(defined, score - summary["score_low"].to_numpy(dtype=float), 0.0)
    high = np.where(defined, summary["score_high"].to_numpy(dtype=float) - score, 0.0)
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    rows = np.arange(len(names))
    axis.barh(rows, np.where(defined, score, 0.0), xerr=np.nan_to_num(np.vstack([low, high])), capsize=3)
    axis.set_yticks(rows, [name if ok else f"{name} (n/a)" for name, ok in zip(names, defined, strict=True)])
    axis.invert_yaxis()
    for anchor in (0.0, 1.0):
        axis.axvline(anchor, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("score (0 uncontrolled, 1 offline optimum), 95% bootstrap interval")
    figure.tight_layout()
    return figure


def _save(figure, path: Path, plt) -> Path:
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name)) or "policy"
