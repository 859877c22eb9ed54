"""Raw session columns to the checked canonical session table, each bad row named by its line.

A reader of one file format hands its raw columns (canonical name -> Series of text or typed
values) and the line of each row to ``assemble``, which parses dates, numbers and ids and
flags each invalid row with its first problem in ``SessionRows``; ``SessionRows.finish`` then
raises the first problem as a ``DataError`` or, with ``skip_invalid``, leaves the flagged rows
out and reports them. The table's columns and conventions are those of ``envs.data.sessions``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError
from envs.data.session_report import file_report
from envs.errors import ConfigError, cut, cut_text

ENERGY_COLUMNS = ("delivered_kwh", "requested_kwh")
_CAR_COLUMNS = ("battery_kwh", "max_charge_kw")
_AWARE = re.compile(r"(?:[+-]\d{2}:?\d{2}|Z|GMT|UTC)$")


class SessionRows:
    """The rows of one file being read: their line numbers and the first problem of each."""

    def __init__(self, path: Path, lines, names: dict[str, str], unit: str = "line"):
        self.path, self.unit, self.names = str(path), unit, names
        self.lines = np.asarray(lines, dtype=np.int64)
        self.bad = np.zeros(len(self.lines), dtype=bool)
        self.problems: dict[int, tuple[str | None, str]] = {}

    def flag(self, mask, field: str | None, problem: str, values: pd.Series | None = None) -> None:
        hits = np.flatnonzero(np.asarray(mask, dtype=bool) & ~self.bad)
        for i in hits:
            self.problems[i] = (field, problem if values is None else f"{problem}, got {values.iloc[i]!r}")
        self.bad[hits] = True

    def error(self, i: int, more: int = 0) -> DataError:
        field, problem = self.problems[i]
        if more:
            problem += f" ({more} more invalid rows; skip_invalid=True leaves them out and reports them)"
        described = None
        if field is not None:
            source = self.names.get(field)
            plain = source is None or source == f"column {field!r}"
            described = f"{field!r}" if plain else f"{field!r} ({source})"
        return DataError.at(self.path, int(self.lines[i]), described, problem, self.unit)

    def finish(self, table: pd.DataFrame, skip_invalid: bool, from_delivered: np.ndarray) -> pd.DataFrame:
        """``table`` sorted by arrival, with ``attrs``, once repeated session ids are flagged too.

        The first invalid row raises its ``DataError``; with ``skip_invalid`` the invalid rows are
        left out instead and a warning counts them.
        """
        valid = np.flatnonzero(~self.bad)
        ids = table["session_id"].iloc[valid]
        repeated = ids.duplicated().to_numpy()
        if repeated.any():
            first_line = dict(zip(ids[~repeated], self.lines[valid[~repeated]], strict=True))
            for i in valid[repeated]:
                session = table["session_id"].iloc[i]
                self.problems[i] = ("session_id", f"repeats session id {session!r} of {self.unit} "
                                                  f"{first_line[session]}")
            self.bad[valid[repeated]] = True
        bad = np.flatnonzero(self.bad)
        if bad.size and not skip_invalid:
            raise self.error(bad[0], more=bad.size - 1)
        if bad.size:
            shown = ", ".join(str(line) for line in self.lines[bad[:10]]) + (", ..." if bad.size > 10 else "")
            warnings.warn(f"{self.path}: skipped {bad.size} invalid rows ({self.unit}s {shown}); "
                          "see attrs['skipped']", stacklevel=3)
        keep = ~self.bad
        negative = int(np.count_nonzero((table["departure"] < table["arrival"]).to_numpy(dtype=bool)))
        table = table[keep].sort_values("arrival", kind="stable").reset_index(drop=True)
        from_delivered = int(np.count_nonzero(from_delivered & keep))
        table.attrs = {
            "source": self.path,
            "requested_from_delivered": from_delivered,
            "skipped": {"count": int(bad.size), "lines": self.lines[bad].tolist(),
                        "messages": [str(self.error(i)) for i in bad]},
        }
        problems = [self.problems[i] for i in bad]
        rows_read = len(self.lines)
        table.attrs["report"] = file_report(table, self.path, rows_read, problems, negative, from_delivered)
        return table


def assemble(rows: SessionRows, raw: dict[str, pd.Series], tz: str, *, date_format: str | None = None,
             dayfirst: bool = False, decimal: str = ".", thousands: str | None = None,
             energy_scale: float = 1.0) -> pd.DataFrame:
    """The canonical table of ``raw``, one row per row of ``rows`` (flagged there when invalid)."""
    n = len(rows.lines)
    arrival = _times(rows, raw["arrival"], "arrival", tz, date_format, dayfirst)
    departure = _times(rows, raw["departure"], "departure", tz, date_format, dayfirst)
    announced = departure
    if "announced_departure" in raw:
        announced = _times(rows, raw["announced_departure"], "announced_departure", tz, date_format, dayfirst,
                           required=False).fillna(departure)
    numbers = {}
    for name in (*ENERGY_COLUMNS, *_CAR_COLUMNS):
        if name in raw:
            numbers[name] = _numbers(rows, raw[name], name, decimal, thousands, positive=name in _CAR_COLUMNS,
                                     required=name in ENERGY_COLUMNS)
        else:
            numbers[name] = np.full(n, np.nan)
    rows.flag((departure < arrival).to_numpy(), "departure", "is before the arrival")
    rows.flag((announced < arrival).to_numpy(), "announced_departure", "is before the arrival")
    station = _text(rows, raw["station_id"], "station_id", False) if "station_id" in raw else ""
    session = (_text(rows, raw["session_id"], "session_id", True) if "session_id" in raw
               else pd.Series(rows.lines.astype(str)))
    return pd.DataFrame({
        "arrival": arrival,
        "departure": departure,
        "announced_departure": announced,
        "requested_kwh": numbers["requested_kwh"] * energy_scale,
        "delivered_kwh": numbers["delivered_kwh"] * energy_scale,
        "station_id": station,
        "session_id": session,
        "battery_kwh": numbers["battery_kwh"],
        "max_charge_kw": numbers["max_charge_kw"],
    }, index=pd.RangeIndex(n)).astype({"station_id": str, "session_id": str})


def _times(rows: SessionRows, raw: pd.Series, name: str, tz: str, fmt: str | None, dayfirst: bool,
           required: bool = True) -> pd.Series:
    dtype = pd.DatetimeTZDtype("us", tz)
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw.dt.tz_convert(tz) if raw.dt.tz is not None else _localize(raw, tz)
        missing = parsed.isna().to_numpy()
    else:
        text = raw.astype("string").str.strip()
        missing = (text.isna() | (text == "")).to_numpy()
        if fmt is None:
            aware = text.str.contains(_AWARE, na=False).to_numpy(dtype=bool)
        else:
            aware = np.full(len(text), "%z" in fmt or "%Z" in fmt)
        parsed = pd.Series(pd.NaT, index=raw.index, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for subset, utc in ((aware & ~missing, True), (~aware & ~missing, False)):
                if subset.any():
                    try:
                        values = pd.to_datetime(text[subset], format=fmt, dayfirst=dayfirst, utc=utc,
                                                errors="coerce")
                    except ValueError as err:  # a format pandas cannot use ('%Q'); bad values coerce
                        raise ConfigError(f"date_format {cut(fmt)} is not a usable strftime format "
                                          f"({cut_text(err)})") from None
                    values = values.dt.tz_convert(tz) if utc else _localize(values, tz)
                    parsed[subset] = values.astype(dtype)
        rows.flag(~missing & parsed.isna().to_numpy(), name, "cannot be read as a date", raw)
    if required:
        rows.flag(missing, name, "is empty")
    return parsed.astype(dtype)


def _localize(values: pd.Series, tz: str) -> pd.Series:
    return values.dt.tz_localize(tz, ambiguous=np.ones(len(values), dtype=bool), nonexistent="shift_forward")


def _numbers(rows: SessionRows, raw: pd.Series, name: str, decimal: str, thousands: str | None,
             positive: bool, required: bool) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
    else:
        text = raw.astype("string").str.strip()
        missing = (text.isna() | (text == "")).to_numpy()
        if thousands:
            text = text.str.replace(thousands, "", regex=False)
        if decimal != ".":
            text = text.str.replace(decimal, ".", regex=False)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    rows.flag(~missing & ~np.isfinite(values), name, "is not a finite number", raw)
    if required:
        rows.flag(missing, name, "is empty")
    with np.errstate(invalid="ignore"):
        too_small = values <= 0 if positive else values < 0
    rows.flag(too_small, name, "must be > 0" if positive else "must be >= 0 (a negative energy)", raw)
    return values


def _text(rows: SessionRows, raw: pd.Series, name: str, required: bool) -> pd.Series:
    text = raw.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy()
    if required:
        rows.flag(missing, name, "is empty")
    return text.fillna("")
