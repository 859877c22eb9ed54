"""The data-quality report of loaded session files: what was read, what was left out and why."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

OUTSIDE_RANGE = "outside the file's date range"
OTHER_STATION = "other station"
REPEATED_ACROSS_FILES = "repeated across files"
REPEATED_ID = "repeated session id"


@dataclasses.dataclass(frozen=True)
class SessionReport:
    """What reading one session file (or several) kept, left out and found odd.

    Every reader of ``envs.data.sessions`` puts one in the table's ``attrs["report"]`` (for
    several files, the totals, with each file's own report in ``per_file``);
    ``envs.data.replay.ReplayGenerator.report(params)`` adds what the site makes of the sessions.
    ``summary()`` is a few lines of text, ``to_dict()`` and ``write(path)`` give it as JSON.

    Arguments:
        files: the files read.
        rows_read: the sessions (rows, JSON items) the files hold; blank lines are not rows.
        sessions_kept: the rows of the table.
        dropped: reason -> rows left out: ``invalid <field>`` (with ``skip_invalid``, each row
            counted once, under its first problem; a negative stay is ``invalid departure``),
            ``repeated session id`` (with ``skip_invalid``), ``repeated across files``,
            ``outside the file's date range`` (an ACN JSON ``_meta`` start .. end),
            ``other station`` (the ``stations`` filter).
        negative_stays: rows whose departure is before the arrival (an error without ``skip_invalid``).
        zero_stays: kept sessions whose departure is their arrival.
        requested_from_delivered: kept sessions whose driver gave no request (it is the delivered energy).
        date_range: the start and end (ISO text) the file declares, None when it declares none.
        requested_kwh: the kept sessions' requests, kWh.
        per_file: the report of each file, when several were read.
        site: the site the next fields were measured for (None: not measured).
        capped: sessions whose request exceeds what their whole stay delivers at the site's
            fastest port and best charge efficiency; a replay caps each at that.
        capped_kwh: the requested kWh above it.
        above_port_power: sessions that delivered more than the stay at the fastest port's kW
            could (impossible data: a clock or meter error).

    >>> report = SessionReport(files=("a.csv",), rows_read=3, sessions_kept=2,
    ...                        dropped={"invalid departure": 1})
    >>> print(report.summary())
    a.csv: 3 sessions read, 2 kept; dropped 1 (invalid departure 1)
    """

    files: tuple[str, ...] = ()
    rows_read: int = 0
    sessions_kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    negative_stays: int = 0
    zero_stays: int = 0
    requested_from_delivered: int = 0
    date_range: tuple[str, str] | None = None
    requested_kwh: float = 0.0
    per_file: tuple[SessionReport, ...] = ()
    site: str | None = None
    capped: int = 0
    capped_kwh: float = 0.0
    above_port_power: int = 0

    def summary(self) -> str:
        """A line of counts, and with a site measured, a line of what the site makes of them."""
        dropped = sum(self.dropped.values())
        parts = [f"{', '.join(self.files) or 'session table'}: {self.rows_read} sessions read, "
                 f"{self.sessions_kept} kept"]
        if dropped:
            reasons = ", ".join(f"{why} {count}" for why, count in self.dropped.items())
            parts.append(f"dropped {dropped} ({reasons})")
        for count, what in ((self.negative_stays, "negative stays"), (self.zero_stays, "zero-length stays"),
                            (self.requested_from_delivered, "without a request (the delivered energy)")):
            if count:
                parts.append(f"{count} {what}")
        if self.date_range is not None:
            parts.append(f"declared range {self.date_range[0]} .. {self.date_range[1]}")
        text = "; ".join(parts)
        if self.site is not None:
            share = self.capped_kwh / self.requested_kwh if self.requested_kwh else 0.0
            text += (f"\nsite {self.site!r}: {self.capped} requests above what the stay delivers, capped "
                     f"({self.capped_kwh:.1f} of {self.requested_kwh:.1f} kWh requested, {share:.1%}); "
                     f"{self.above_port_power} sessions delivered more than the fastest port could")
        return text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path) -> Path:
        """The report as JSON at ``path`` (folders made as needed); returns the path."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def table_report(table: pd.DataFrame) -> SessionReport:
    """The table's ``attrs["report"]``, or a report of the table as it is (a table built by hand)."""
    report = table.attrs.get("report")
    if isinstance(report, SessionReport):
        return report
    return SessionReport(rows_read=len(table), sessions_kept=len(table), zero_stays=_zero_stays(table),
                         requested_kwh=_requested(table))


def file_report(table: pd.DataFrame, path, rows_read: int, problems: Sequence[tuple[str | None, str]],
                negative_stays: int, from_delivered: int) -> SessionReport:
    """The report of one file read into ``table``, ``problems`` the (field, message) of each row left out."""
    dropped: dict[str, int] = {}
    for field, message in problems:
        why = REPEATED_ID if message.startswith("repeats session id") else f"invalid {field or 'row'}"
        dropped[why] = dropped.get(why, 0) + 1
    return SessionReport(files=(str(path),), rows_read=rows_read, sessions_kept=len(table), dropped=dropped,
                         negative_stays=negative_stays, zero_stays=_zero_stays(table),
                         requested_from_delivered=from_delivered, requested_kwh=_requested(table))


def dropping(report: SessionReport, table: pd.DataFrame, keep: np.ndarray, why: str,
             **fields) -> tuple[pd.DataFrame, SessionReport]:
    """``table`` without the rows ``keep`` leaves out, and ``report`` counting them under ``why``."""
    keep = np.asarray(keep, dtype=bool)
    left_out = int(np.count_nonzero(~keep))
    kept = table[keep].reset_index(drop=True)
    if left_out:
        dropped = {**report.dropped, why: report.dropped.get(why, 0) + left_out}
        fields.update(dropped=dropped, zero_stays=_zero_stays(kept), requested_kwh=_requested(kept))
    kept.attrs = {**table.attrs, "report": dataclasses.replace(report, sessions_kept=len(kept), **fields)}
    return kept, kept.attrs["report"]


def combined(reports: Sequence[SessionReport]) -> SessionReport:
    """The totals of several files' reports, each kept in ``per_file``."""
    dropped: dict[str, int] = {}
    for report in reports:
        for why, count in report.dropped.items():
            dropped[why] = dropped.get(why, 0) + count
    ranges = [report.date_range for report in reports if report.date_range is not None]
    return SessionReport(
        files=tuple(file for report in reports for file in report.files),
        rows_read=sum(r.rows_read for r in reports), sessions_kept=sum(r.sessions_kept for r in reports),
        dropped=dropped, negative_stays=sum(r.negative_stays for r in reports),
        zero_stays=sum(r.zero_stays for r in reports),
        requested_from_delivered=sum(r.requested_from_delivered for r in reports),
        date_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
        requested_kwh=sum(r.requested_kwh for r in reports), per_file=tuple(reports))


def _zero_stays(table: pd.DataFrame) -> int:
    if not {"arrival", "departure"} <= set(table.columns):
        return 0
    return int((table["departure"] == table["arrival"]).sum())


def _requested(table: pd.DataFrame) -> float:
    return float(table["requested_kwh"].sum()) if "requested_kwh" in table.columns else 0.0
