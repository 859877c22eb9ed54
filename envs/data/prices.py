"""Electricity prices: time-of-use tariffs (JSON), day-ahead series (ENTSO-E CSV), export prices."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError, file_text
from envs.data.series import check_tz, number_problem, read_numbers, read_times, regularize, time_problem
from envs.errors import cut, cut_text
from envs.limits import above
from envs.scenario_fields import MAX_MAGNITUDE

DAY_MASKS = {
    "WEEKDAYS": (True,) * 5 + (False,) * 2,
    "WEEKENDS": (False,) * 5 + (True,) * 2,
    "ALL": (True,) * 7,
}
_LEAP_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MONTH_START = np.concatenate([[0], np.cumsum(_LEAP_MONTH_DAYS)])


@dataclasses.dataclass(frozen=True)
class TariffSchedule:
    """One season and day type of a tariff: prices from clock hours on, and a demand charge."""

    id: str
    start: tuple[int, int]  # (month, day), first day in effect
    end: tuple[int, int]  # (month, day), last day in effect; before start means it wraps over New Year
    day_mask: str  # WEEKDAYS (Monday-Friday), WEEKENDS (Saturday, Sunday, holidays) or ALL
    hours: tuple[float, ...]  # clock hour where each price starts; hours[0] == 0
    prices: tuple[float, ...]  # per kWh from hours[i] until hours[i + 1]
    demand_charge: float  # per kW of the month's peak, per month

    def day_of_year_mask(self) -> np.ndarray:
        """(366,) bool over the days of a leap year on which the season is in effect."""
        first = _MONTH_START[self.start[0] - 1] + self.start[1] - 1
        last = _MONTH_START[self.end[0] - 1] + self.end[1] - 1
        days = np.arange(366)
        return (days >= first) & (days <= last) if first <= last else (days >= first) | (days <= last)


@dataclasses.dataclass(frozen=True)
class Tariff:
    """A time-of-use tariff in the acnportal JSON schema, priced on local clock times.

    The file lists schedules with ``effective_start`` / ``effective_end`` ("M-D", inclusive, a
    season may wrap over New Year), ``dow_mask`` (``WEEKDAYS``, ``WEEKENDS`` or ``ALL``), the
    clock hours ``times`` (fractions allowed, first 0) at which each of ``tariffs`` (currency
    per kWh) starts, and ``demand_charge`` (currency per kW of the month's peak). The schema has
    no holidays: days passed as ``holidays`` are priced as weekend days, the usual rule of US
    TOU tariffs. When several schedules cover a day, one with a WEEKDAYS or WEEKENDS mask wins
    over ALL, then the first listed (with a warning at load time, as for PG&E A-10 whose winter
    schedules are both ALL). Times are wall-clock: naive datetimes, or tz-aware ones read in
    their own zone.

    >>> tariff = Tariff("flat", (TariffSchedule("all", (1, 1), (12, 31), "ALL", (0, 17), (0.1, 0.3), 5.0),))
    >>> tariff.prices(pd.DatetimeIndex(["2019-07-01 16:45", "2019-07-01 17:00"])).tolist()
    [0.1, 0.3]
    """

    name: str
    schedules: tuple[TariffSchedule, ...]
    source: str = ""

    def __post_init__(self):
        covers = np.zeros((len(self.schedules), 366, 2), dtype=bool)
        rank = np.zeros(len(self.schedules), dtype=np.int64)
        for i, schedule in enumerate(self.schedules):
            mask = DAY_MASKS[schedule.day_mask]
            covers[i] = schedule.day_of_year_mask()[:, None] & np.array([mask[0], mask[5]])
            rank[i] = 0 if schedule.day_mask == "ALL" else 1
        score = np.where(covers, rank[:, None, None] + 1, 0)
        best = score.max(axis=0)
        where = f"tariff {self.source or self.name!r}"
        if (best == 0).any():
            day, kind = np.argwhere(best == 0)[0]
            month = int(np.searchsorted(_MONTH_START, day, side="right"))
            day_of_month = day - _MONTH_START[month - 1] + 1
            raise DataError(f"{where}: no schedule covers {month:02d}-{day_of_month:02d} "
                            f"on {'weekdays' if kind == 0 else 'weekends'}")
        winners = score == best[None]
        tied = winners.sum(axis=0) > 1
        if tied.any():
            ids = sorted({self.schedules[i].id for i in np.flatnonzero(winners[:, tied].any(axis=1))})
            warnings.warn(f"{where}: schedules {ids} cover the same days with equally specific day masks on "
                          f"{int(tied.sum())} (day, day type) pairs; the first listed wins", stacklevel=3)
        object.__setattr__(self, "_table", np.argmax(winners, axis=0))

    def schedule_index(self, times, holidays: Iterable = ()) -> np.ndarray:
        """Index into ``schedules`` of the schedule in effect at each time (same shape as ``times``)."""
        index, shape = _as_index(times)
        day_of_year = _MONTH_START[index.month.to_numpy() - 1] + index.day.to_numpy() - 1
        weekend = index.day_of_week.to_numpy() >= 5
        holidays = list(holidays)
        if holidays:
            weekend |= np.asarray(index.normalize().isin(pd.DatetimeIndex(holidays).normalize()))
        return self._table[day_of_year, weekend.astype(np.int64)].reshape(shape)

    def prices(self, times, holidays: Iterable = ()) -> np.ndarray:
        """Energy price (per kWh) at each time, same shape as ``times``."""
        index, shape = _as_index(times)
        which = self.schedule_index(index, holidays).ravel()
        hour = (index.hour.to_numpy() + index.minute.to_numpy() / 60 + index.second.to_numpy() / 3600)
        out = np.empty(len(index))
        for i, schedule in enumerate(self.schedules):
            sel = which == i
            if sel.any():
                period = np.searchsorted(np.asarray(schedule.hours), hour[sel], side="right") - 1
                out[sel] = np.asarray(schedule.prices)[period]
        return out.reshape(shape)

    def demand_charge_per_kw_month(self, times, holidays: Iterable = ()) -> np.ndarray:
        """Demand charge (per kW per month) of the schedule in effect at each time."""
        charges = np.array([s.demand_charge for s in self.schedules], dtype=np.float64)
        return charges[self.schedule_index(times, holidays)]


def _as_index(times) -> tuple[pd.DatetimeIndex, tuple]:
    if isinstance(times, pd.DatetimeIndex):
        return times, (len(times),)
    array = np.asarray(times)
    return pd.DatetimeIndex(array.ravel()), array.shape


def read_tariff(path) -> Tariff:
    """Tariff from a JSON file; DataError names the file and the JSON field of invalid input."""
    path = Path(path)
    try:
        doc = json.loads(file_text(path))
    except json.JSONDecodeError as err:
        raise DataError.at(path, err.lineno, None, f"invalid JSON: {err.msg}") from None
    except RecursionError:
        raise DataError.at(path, None, None, "invalid JSON: nested too deeply to read") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise DataError.at(path, None, None, f"invalid JSON: {cut_text(err)}") from None

    def fail(field, problem):
        raise DataError.at(path, None, repr(field), problem)

    if not isinstance(doc, dict) or not isinstance(doc.get("schedule"), list) or not doc["schedule"]:
        fail("schedule", "must be a non-empty list of schedules")
    problem = above("tariff_schedules", len(doc["schedule"]), "the schedule count")
    if problem is not None:
        fail("schedule", problem)
    schedules = []
    for i, raw in enumerate(doc["schedule"]):
        where = f"schedule[{i}]"
        if not isinstance(raw, dict):
            fail(where, "must be a mapping")
        days = {}
        for key in ("effective_start", "effective_end"):
            try:
                month, day = (int(part) for part in str(raw[key]).split("-"))
                pd.Timestamp(year=2000, month=month, day=day)
            except (KeyError, ValueError, TypeError):
                fail(f"{where}.{key}", f"must be a month-day like '06-01', got {cut(raw.get(key))}")
            days[key] = (month, day)
        mask = raw.get("dow_mask")
        if not isinstance(mask, str) or mask not in DAY_MASKS:
            fail(f"{where}.dow_mask", f"must be one of {', '.join(DAY_MASKS)}, got {cut(mask)}")
        hours = _numbers(raw.get("times"), f"{where}.times", fail)
        prices = _numbers(raw.get("tariffs"), f"{where}.tariffs", fail)
        if not hours or hours[0] != 0 or np.any(np.diff(hours) <= 0) or hours[-1] >= 24:
            fail(f"{where}.times", f"must start at 0 and increase below 24, got {cut(list(hours))}")
        if len(prices) != len(hours) or not np.all(np.isfinite(prices)):
            fail(f"{where}.tariffs", f"must be {len(hours)} finite prices, one per entry of times")
        if np.any(np.abs(prices) > MAX_MAGNITUDE):
            fail(f"{where}.tariffs", f"must lie within +-{MAX_MAGNITUDE:,.0f}, got {cut(list(prices))}")
        charge = raw.get("demand_charge", 0)
        if not _finite(charge) or not 0 <= charge <= MAX_MAGNITUDE:
            fail(f"{where}.demand_charge",
                 f"must be a number in [0, {MAX_MAGNITUDE:,.0f}], got {cut(charge)}")
        schedules.append(TariffSchedule(str(raw.get("id", where)), days["effective_start"],
                                        days["effective_end"], mask, hours, prices, float(charge)))
    return Tariff(str(doc.get("name", path.stem)), tuple(schedules), str(path))


def _finite(value) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def _numbers(value, field: str, fail) -> tuple[float, ...]:
    """A JSON list of finite numbers as floats; ``fail(field, problem)`` otherwise."""
    if not isinstance(value, list):
        fail(field, f"must be a list of numbers, got {cut(value)}")
    if not all(_finite(v) for v in value):
        fail(field, f"must hold finite numbers only, got {cut(value)}")
    return tuple(float(v) for v in value)


def episode_demand_charge(charge_per_kw_month: np.ndarray, local_times, dt_hours: float) -> np.ndarray:
    """Per-episode weight of the episode's peak kW from a monthly demand charge: (...,).

    Rule: each step bills its share of its month, ``charge * dt_hours / (24 * days_in_month)``,
    summed over the steps; for an episode of d days inside one month that is ``charge * d /
    days_in_month``. ``charge_per_kw_month`` and ``local_times`` have the same shape, the
    episode's steps on the last axis (``Tariff.demand_charge_per_kw_month`` gives the charges).
    The monthly bill charges the month's peak once; prorating it over days is the usual way to
    price a shorter episode's peak (use it as ``reward.demand_charge_eur_per_kw``).
    """
    index, shape = _as_index(local_times)
    days_in_month = index.days_in_month.to_numpy().reshape(shape)
    charge = np.asarray(charge_per_kw_month, dtype=np.float64)
    return np.sum(charge * dt_hours / (24 * days_in_month), axis=-1)


def export_prices(price_buy: np.ndarray, factor: float | None = None, eur_kwh: float | None = None,
                  series: np.ndarray | None = None) -> np.ndarray:
    """Feed-in price: ``factor`` times the buy price, a fixed ``eur_kwh``, or its own ``series``."""
    given = [name for name, value in (("factor", factor), ("eur_kwh", eur_kwh), ("series", series))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"export price needs exactly one of factor, eur_kwh, series; got {given or 'none'}")
    price_buy = np.asarray(price_buy, dtype=np.float64)
    if factor is not None:
        return float(factor) * price_buy
    if eur_kwh is not None:
        return np.full_like(price_buy, float(eur_kwh))
    series = np.asarray(series, dtype=np.float64)
    if series.shape != price_buy.shape:
        raise ValueError(f"export price series has shape {series.shape}, expected {price_buy.shape}")
    return series.copy()


DAY_AHEAD_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")


def read_day_ahead_csv(path, time_column: str = "Datetime (UTC)", price_column: str = "Price (EUR/MWhe)",
                       country: str | None = None, tz: str | None = None, per_kwh: float = 1e-3,
                       formats=DAY_AHEAD_FORMATS, *, skip_invalid: bool = False) -> pd.Series:
    """Day-ahead prices (ENTSO-E style CSV) as a Series on a regular UTC grid, in EUR/kWh.

    Columns ``Country, Datetime (UTC), Datetime (Local), Price (EUR/MWhe)``. Each time is read
    by the first of ``formats`` that fits it (the files switch from ``YYYY-MM-DD HH:MM:SS`` to
    ``DD/MM/YYYY HH:MM`` part way; slashes are always day first). Times in ``time_column`` are
    UTC unless ``tz`` names their zone (a clock hour repeated when summer time ends is read in
    file order; if that fails it is ambiguous). ``country`` keeps only its rows. Prices are
    multiplied by ``per_kwh`` (EUR/MWh to EUR/kWh).

    An invalid row (a wrong number of fields, a time no format reads or that does not exist or
    is ambiguous in ``tz``, a price that is not a finite number, an hour repeated with another
    price) raises DataError naming the file, line and field, as the session readers do; with
    ``skip_invalid=True`` the invalid rows are left out instead and a warning counts them. An
    hour repeated with the same price (e.g. a file that repeats a year) is kept once. Empty
    price cells and missing hours are filled linearly (``envs.data.series.regularize``; a gap
    wider than the ``series_gap_days`` limit is an error). ``attrs`` reports: ``rows`` (price
    rows read, of ``country`` when given), ``skipped`` (``count``, ``lines`` and ``messages``
    of the rows left out), ``duplicates`` (same-price repeats dropped), ``gaps`` (missing hours
    filled) and ``missing`` (empty cells filled); ``report`` sums them up as the session
    readers' report does: ``rows_read``, ``rows_kept``, ``dropped`` (reason -> rows: ``invalid
    <column>`` under each row's first problem, ``repeated hour``), ``gaps_filled`` and
    ``empty_cells_filled``.
    """
    check_tz(tz)
    path = Path(path)
    text = file_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty", path=path)
        header = [h.strip() for h in header]
        for column in (time_column, price_column) + (("Country",) if country else ()):
            if column not in header:
                raise DataError.at(path, 1, None,
                                   f"no column {column!r} (columns: {cut_text(', '.join(header))})")
        width, rows, lines, short = len(header), [], [], []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            short.append(f"{len(row)} fields, the header has {width}" if len(row) != width else None)
            rows.append((row + [""] * width)[:width])
            lines.append(reader.line_num)
    except csv.Error as err:
        raise DataError.at(path, reader.line_num, None, f"malformed CSV ({err})") from None
    table = pd.DataFrame(rows, columns=header, dtype=object)
    lines, short = np.asarray(lines, dtype=np.int64), np.asarray(short, dtype=object)
    if country is not None:
        keep = (table["Country"].str.strip() == country).to_numpy() | (short != None)  # noqa: E711
        table, lines, short = table[keep].reset_index(drop=True), lines[keep], short[keep]
    if table.empty:
        raise DataError(f"{path}: no price rows" + (f" for country {cut(country)}" if country else ""),
                        path=path)
    rows = _Rows(path, lines)
    rows.flag(short != None, None, short)  # noqa: E711
    times = _utc_times(rows, table[time_column].str.strip(), time_column, formats, tz)
    prices, unreadable = read_numbers(table[price_column])
    rows.flag(unreadable, repr(price_column), [number_problem(v) for v in table[price_column]])
    _flag_conflicts(rows, times, prices, price_column)
    rows.finish(skip_invalid)
    keep = ~rows.bad
    frame = pd.DataFrame({"price_eur_kwh": prices[keep] * per_kwh},
                         index=pd.DatetimeIndex(times[keep]).tz_localize("UTC").as_unit("ns"))
    frame = regularize(frame, str(path))
    series = frame["price_eur_kwh"]
    dropped = rows.dropped()
    if frame.attrs["duplicates"]:
        dropped["repeated hour"] = frame.attrs["duplicates"]
    report = {"file": str(path), "rows_read": len(lines), "rows_kept": len(lines) - sum(dropped.values()),
              "dropped": dropped, "gaps_filled": frame.attrs["gaps"],
              "empty_cells_filled": frame.attrs["missing"]}
    series.attrs = dict(frame.attrs, unit="EUR/kWh", rows=len(lines), skipped=rows.report(), report=report)
    return series


class _Rows:
    """The rows of a price file: their lines and the first problem of each invalid one."""

    def __init__(self, path: Path, lines: np.ndarray):
        self.path, self.lines = path, lines
        self.bad = np.zeros(len(lines), dtype=bool)
        self.messages: dict[int, str] = {}
        self.fields: dict[int, str | None] = {}

    def flag(self, mask, field: str | None, problems) -> None:
        for i in np.flatnonzero(np.asarray(mask, dtype=bool) & ~self.bad):
            problem = problems if isinstance(problems, str) else problems[i]
            self.messages[i] = str(DataError.at(self.path, int(self.lines[i]), field, problem))
            self.fields[i] = field
            self.bad[i] = True

    def finish(self, skip_invalid: bool) -> None:
        bad = np.flatnonzero(self.bad)
        if bad.size and not skip_invalid:
            more = (f" ({bad.size - 1} more invalid rows; skip_invalid=True leaves them out and reports "
                    "them)") if bad.size > 1 else ""
            raise DataError(self.messages[bad[0]] + more, path=self.path, line=int(self.lines[bad[0]]))
        if bad.size:
            shown = ", ".join(str(line) for line in self.lines[bad[:10]]) + (", ..." if bad.size > 10 else "")
            warnings.warn(f"{self.path}: skipped {bad.size} invalid rows (lines {shown}); see "
                          "attrs['skipped']", stacklevel=3)

    def dropped(self) -> dict[str, int]:
        reasons = [f"invalid {self.fields[i] or 'row'}" for i in np.flatnonzero(self.bad)]
        return {reason: reasons.count(reason) for reason in dict.fromkeys(reasons)}

    def report(self) -> dict:
        bad = np.flatnonzero(self.bad)
        return {"count": int(bad.size), "lines": self.lines[bad].tolist(),
                "messages": [self.messages[i] for i in bad]}


def _utc_times(rows: _Rows, text: pd.Series, column: str, formats, tz: str | None) -> np.ndarray:
    """Naive UTC datetime64[ns] of each row (NaT where invalid, flagged in ``rows``)."""
    parsed, aware = read_times(text, formats)
    unread = parsed.isna().to_numpy()
    rows.flag(unread, repr(column), [time_problem(value, formats) for value in text])
    if aware or tz in (None, "UTC"):
        return parsed.to_numpy(dtype="datetime64[ns]")
    local = pd.DatetimeIndex(parsed)
    exists = local.tz_localize(tz, ambiguous=np.ones(len(local), bool), nonexistent="NaT")
    gone = exists.isna() & ~unread
    rows.flag(gone, repr(column), [f"{t} does not exist in {tz} (the clock skips it when summer time starts)"
                                   for t in local])
    valid = ~(unread | gone)
    try:
        utc = local[valid].tz_localize(tz, ambiguous="infer")
    except (ValueError, TypeError):
        utc = local[valid].tz_localize(tz, ambiguous="NaT")
        unsure = np.zeros(len(local), dtype=bool)
        unsure[np.flatnonzero(valid)[utc.isna()]] = True
        rows.flag(unsure, repr(column), [f"{t} is ambiguous in {tz} (the clock repeats it when summer time "
                                         "ends); give UTC times" for t in local])
    out = np.full(len(local), np.datetime64("NaT"), dtype="datetime64[ns]")
    out[valid] = utc.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return out


def _flag_conflicts(rows: _Rows, times: np.ndarray, prices: np.ndarray, column: str) -> None:
    """Flag each valid row that repeats an earlier valid row's hour with another price."""
    valid = np.flatnonzero(~rows.bad)
    frame = pd.DataFrame({"time": times[valid], "price": prices[valid], "line": rows.lines[valid]})
    first = frame.groupby("time", sort=False).transform("first")
    repeat = frame.duplicated("time", keep="first").to_numpy()
    price, kept = frame["price"].to_numpy(), first["price"].to_numpy()
    differs = repeat & ~((price == kept) | (np.isnan(price) & np.isnan(kept)))
    conflict = np.zeros(len(times), dtype=bool)
    conflict[valid[differs]] = True
    problems = dict(zip(valid[differs], first["line"].to_numpy()[differs], strict=True))
    rows.flag(conflict, repr(column), {i: f"repeats the hour of line {line} with a different price (an "
                                          "identical repeat is kept once)" for i, line in problems.items()})
