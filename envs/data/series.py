"""Exogenous time series for episodes: CSV readers, the wall-clock step grid, resampling.

Conventions shared by every reader here:

* A series is a pandas object on a regular, sorted, tz-aware UTC index; each value holds for the
  interval that starts at its timestamp and lasts one ``freq`` (power as the interval's mean kW,
  prices and emission rates as the interval's rate).
* Readers repair duplicated timestamps (the first row wins) and gaps (linear in time) and say so
  in one ``warnings.warn`` that counts them; the counts are kept in ``attrs``. Unparseable input
  raises :class:`~envs.data.errors.DataError` naming the file, the line and the field.
* An episode lives on a *wall-clock grid* in the site's time zone: step ``k`` of an episode that
  starts on local date ``D`` is the local clock time ``D + start_minute + k * dt``, so a local
  day is always ``24 / dt`` steps and the observation's time of day is the local clock time. On
  the spring-forward day the clock times that do not exist (e.g. 02:00-02:59) read the hour
  before them (step-hold across the jump, one hour of data used twice); on the fall-back day the
  repeated clock hour takes its first (summer-time) occurrence and the second one is skipped.
"""

from __future__ import annotations

import io
import numbers
import warnings
import zoneinfo
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError, file_text
from envs.errors import ConfigError, cut, cut_text
from envs.limits import above, limit
from envs.site import SiteParams

RESAMPLE_METHODS = ("hold", "interpolate")


def _line(lines, i: int) -> int:
    return int(lines + i) if np.isscalar(lines) else int(lines[i])


def check_tz(tz: str | None, field: str = "tz") -> str | None:
    """``tz`` when it is None or a time zone name pandas knows, else ConfigError naming ``field``."""
    if tz is None:
        return None
    try:
        pd.Timestamp("2000-01-01", tz=tz)
    except (zoneinfo.ZoneInfoNotFoundError, KeyError, ValueError, TypeError, AttributeError):
        raise ConfigError(f"{field} {cut(tz)} is not a time zone name (an IANA name such as "
                          "'Europe/Amsterdam', or 'UTC')") from None
    return tz


def read_text_csv(path, **kwargs) -> pd.DataFrame:
    """A CSV file as text columns; DataError when it is missing, not UTF-8 or not CSV."""
    text = file_text(path)
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError.at(path, None, None, f"is not a readable CSV file ({cut_text(err)})") from None


def read_times(values: pd.Series, formats: Sequence[str] | None = None) -> tuple[pd.Series, bool]:
    """Strings to naive datetimes (NaT where no format reads them) and whether any was tz-aware.

    Each row is read by the first of ``formats`` that reads it (ISO 8601 if None); tz-aware
    strings come back as naive UTC times.
    """
    values = values.astype(object)
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    aware = False
    for fmt in formats or (None,):
        todo = parsed.isna().to_numpy()
        if not todo.any():
            break
        got = pd.to_datetime(values[todo], errors="coerce", format="ISO8601" if fmt is None else fmt)
        if got.dt.tz is not None:
            aware = True
            got = got.dt.tz_convert("UTC").dt.tz_localize(None)
        parsed[todo] = got.dt.as_unit("ns")
    return parsed, aware


def time_problem(value, formats: Sequence[str] | None) -> str:
    tried = f"formats tried: {', '.join(formats)}" if formats else "expected ISO 8601"
    return f"cannot read {cut(value)} as a time ({tried})"


def parse_times(values: pd.Series, path, field: str, formats: Sequence[str] | None = None,
                lines=2) -> pd.DatetimeIndex:
    """Strings to datetimes, each row by the first of ``formats`` that reads it (ISO 8601 if None).

    Tz-aware strings come back in UTC. Raises DataError naming the line of the first row no
    format reads: ``lines`` is the line of row 0 (rows on consecutive lines) or one per row.
    """
    parsed, aware = read_times(values, formats)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = bad[0]
        raise DataError.at(path, _line(lines, i), repr(field), time_problem(values.iloc[i], formats))
    index = pd.DatetimeIndex(parsed.to_numpy())
    return index.tz_localize("UTC") if aware else index


def read_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Numbers from strings (NaN for empty cells) and a mask of the cells that are not finite numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    text = values.astype(object)
    filled = text.notna().to_numpy() & (text.astype(str).str.strip() != "").to_numpy()
    return numbers, filled & ~np.isfinite(numbers)


def number_problem(value) -> str:
    return f"cannot read {cut(value)} as a finite number"


def parse_numbers(values: pd.Series, path, field: str, lines=2) -> np.ndarray:
    """Numbers from strings; empty cells become NaN (gaps), other text (or inf) raises DataError."""
    numbers, bad = read_numbers(values)
    bad = np.flatnonzero(bad)
    if len(bad):
        raise DataError.at(path, _line(lines, bad[0]), repr(field), number_problem(values.iloc[bad[0]]))
    return numbers


def regularize(frame: pd.DataFrame, source: str, freq: pd.Timedelta | None = None) -> pd.DataFrame:
    """Sort, drop repeated timestamps (first wins) and fill gaps linearly on a regular grid.

    ``freq`` defaults to the most common step. Warns once with the counts, which also go to
    ``attrs``: ``duplicates`` (rows dropped), ``conflicting_duplicates`` (of those, rows whose
    values differed from the kept one), ``gaps`` (grid steps with no row) and ``missing`` (empty
    cells), all filled by linear interpolation in time.
    """
    frame = frame.sort_index(kind="stable")
    repeated = frame.index.duplicated(keep="first")
    duplicates = int(repeated.sum())
    conflicting = 0
    if duplicates:
        kept = frame[~repeated]
        conflicting = int((frame[repeated].ne(kept.reindex(frame.index[repeated]))).any(axis=1).sum())
        frame = kept
    if len(frame) < 2:
        raise DataError(f"{source}: needs at least two distinct timestamps, got {len(frame)}")
    if freq is None:
        steps = np.diff(frame.index.as_unit("ns").asi8)
        values, counts = np.unique(steps, return_counts=True)
        freq = pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")
    _check_span(frame.index, freq, source)
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=freq)
    off_grid = ~frame.index.isin(grid)
    if off_grid.any():
        raise DataError(f"{source}: timestamp {frame.index[off_grid][0]} is off the {freq} grid "
                        f"that starts at {frame.index[0]}")
    missing = int(frame.isna().to_numpy().sum())
    gaps = len(grid) - len(frame)
    frame = frame.reindex(grid)
    if gaps or missing:
        frame = frame.interpolate(method="time", limit_direction="both")
    if duplicates or gaps or missing:
        warnings.warn(f"{source}: repaired {duplicates} duplicated timestamps ({conflicting} with "
                      f"different values; the first row kept), {gaps} missing steps and {missing} empty "
                      f"cells (filled linearly in time)", stacklevel=3)
    frame.attrs.update(source=source, duplicates=duplicates, conflicting_duplicates=conflicting,
                       gaps=gaps, missing=missing, freq=freq)
    return frame


def _check_span(index: pd.DatetimeIndex, freq: pd.Timedelta, source: str) -> None:
    """DataError when the regular grid would be longer, or a gap to fill wider, than the limits."""
    steps = (index[-1] - index[0]) / freq + 1
    problem = above("series_steps", steps, f"the step count of the series from {index[0]} to {index[-1]} "
                                           f"on its {freq} grid")
    if problem is not None:
        raise DataError(f"{source}: {problem}", path=source)
    gaps = np.diff(index.as_unit("ns").asi8)
    widest = int(np.argmax(gaps))
    days = gaps[widest] / 86_400e9
    if days > limit("series_gap_days"):
        problem = above("series_gap_days", days, "the gap to fill, in days,")
        raise DataError(f"{source}: no data from {index[widest]} to {index[widest + 1]}: {problem}",
                        path=source)


def duration(value, field: str = "freq") -> pd.Timedelta:
    """``value`` (e.g. ``"15min"``) as a positive Timedelta, else ConfigError naming ``field``."""
    try:
        step = pd.Timedelta(value)
    except (TypeError, ValueError, OverflowError):
        step = pd.NaT
    if pd.isna(step) or step <= pd.Timedelta(0):
        raise ConfigError(f"{field} must be a positive duration such as '15min' or '1h', got {cut(value)}")
    return step


def _timestamp(value, field: str = "start") -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise ConfigError(f"{field} must be a date and time such as '2020-01-01 00:00', got {cut(value)}")
    return stamp


def _columns(frame: pd.DataFrame) -> str:
    return cut_text(", ".join(map(str, frame.columns)))


def _paths(path) -> list[Path]:
    if isinstance(path, (str, Path)):
        text = str(path)
        if any(ch in text for ch in "*?["):
            found = sorted(Path(text).parent.glob(Path(text).name))
            if not found:
                raise DataError(f"{text}: no file matches")
            return found
        return [Path(text)]
    return [Path(p) for p in path]


def read_series_csv(path, columns: Sequence[str] | None = None, time_column: str | None = "time",
                    tz: str | None = None, start=None, freq=None) -> pd.DataFrame:
    """Numeric columns of one CSV or several (a list or a glob, e.g. monthly files), on a UTC grid.

    Times come from ``time_column`` (ISO 8601; naive times are local times in ``tz``, UTC when
    ``tz`` is None); a file without one (``time_column=None``) gives its first row's time as
    ``start`` (local in ``tz``) and its step as ``freq``. Rows a later file repeats with the same
    values (monthly files that overlap by a day) are dropped silently and counted in
    ``attrs["overlap_rows"]``; other repeats are repaired by ``regularize``, with its warning.
    """
    check_tz(tz)
    frames = []
    for file in _paths(path):
        raw = read_text_csv(file, skip_blank_lines=False)
        wanted = list(columns) if columns is not None else [c for c in raw.columns if c != time_column]
        for column in wanted + ([time_column] if time_column else []):
            if column not in raw.columns:
                raise DataError(f"{file}: no column {column!r} (columns: {_columns(raw)})")
        if time_column:
            index = parse_times(raw[time_column], file, time_column)
        else:
            if start is None or freq is None:
                raise DataError(f"{file}: without a time column, give start and freq")
            index = pd.date_range(_timestamp(start), periods=len(raw), freq=duration(freq))
        if index.tz is None:
            index = pd.DatetimeIndex(_localize(index.to_numpy(), tz)).tz_localize("UTC")
        data = {c: parse_numbers(raw[c], file, c) for c in wanted}
        frames.append(pd.DataFrame(data, index=pd.DatetimeIndex(index).as_unit("ns")))
    files = _paths(path)
    frame, overlap = frames[0], 0
    for later in frames[1:]:
        shared = later.index.isin(frame.index)
        same = shared.copy()
        earlier = frame[~frame.index.duplicated()].reindex(later.index[shared])
        same[shared] = (later[shared].to_numpy() == earlier.to_numpy()).all(axis=1)
        overlap += int(same.sum())
        frame = pd.concat([frame, later[~same]])
    source = str(files[0]) + (f" (+{len(files) - 1} files)" if len(files) > 1 else "")
    frame = regularize(frame, source, None if freq is None else duration(freq))
    frame.attrs["overlap_rows"] = overlap
    return frame


BUILDING_COLUMNS = ("non_shiftable_load", "solar_generation")


def read_building_csv(path, columns: Sequence[str] = BUILDING_COLUMNS, year: int = 2016,
                      tz: str = "Etc/GMT+8") -> pd.DataFrame:
    """Hourly building series without a year column (CityLearn layout: ``month``, ``hour`` 1-24).

    ``hour`` h is the hour ending at h o'clock, so the row covers [h-1, h). Rows are consecutive
    hours; the first row at ``hour`` 1 whose month differs from the row before it is midnight
    of the first of that month in ``year`` (and the rows wrap into the next year). Clock times
    are standard time all year in ``tz`` (the default, UTC-8, is Pacific standard time: the
    CityLearn 2022 homes in California, August 2016 to July 2017, ``daylight_savings_status``
    0 throughout). Units are the file's (load kWh per hour = kW; PV W per kW installed): scale
    them in the scenario spec.
    """
    file = Path(path)
    check_tz(tz)
    if isinstance(year, bool) or not isinstance(year, numbers.Integral) or not 1678 <= year <= 2261:
        raise ConfigError(f"year must be a whole year in 1678..2261, got {cut(year)}")
    raw = read_text_csv(file)
    for column in ("month", "hour", *columns):
        if column not in raw.columns:
            raise DataError(f"{file}: no column {column!r} (columns: {_columns(raw)})")
    month = parse_numbers(raw["month"], file, "month")
    hour = parse_numbers(raw["hour"], file, "hour")
    for name, values, low, high in (("month", month, 1, 12), ("hour", hour, 1, 24)):
        bad = np.flatnonzero(~((values >= low) & (values <= high) & (values == np.round(values))))
        if len(bad):
            raise DataError.at(file, bad[0] + 2, repr(name),
                               f"must be an integer in {low}..{high}, got {cut(raw[name].iloc[bad[0]])}")
    starts = np.flatnonzero((hour == 1) & (np.r_[np.nan, month[:-1]] != month))
    if not len(starts):
        raise DataError(f"{file}: no row starts a month (hour 1 after a row of another month)")
    anchor = starts[0]
    origin = pd.Timestamp(year=year, month=int(month[anchor]), day=1)
    local = origin + pd.to_timedelta(np.arange(len(raw)) - anchor, unit="h")
    mismatch = np.flatnonzero(local.month.to_numpy() != month)
    if len(mismatch):
        raise DataError.at(file, mismatch[0] + 2, "'month'", f"is {int(month[mismatch[0]])} but consecutive "
                           f"hours from {origin.date()} give {local[mismatch[0]]:%Y-%m-%d %H:00}")
    offset = pd.Timestamp("2000-01-01", tz=tz).utcoffset()
    index = pd.DatetimeIndex(local - offset).tz_localize("UTC").as_unit("ns")
    data = {c: parse_numbers(raw[c], file, c) for c in columns}
    return regularize(pd.DataFrame(data, index=index), str(file), pd.Timedelta(hours=1))


def _localize(naive: np.ndarray, tz: str | None) -> np.ndarray:
    """Wall-clock times (datetime64, any shape) to UTC datetime64[ns], with the DST rules above."""
    flat = pd.DatetimeIndex(naive.ravel()).as_unit("ns")
    if tz not in (None, "UTC"):
        check_tz(tz)
        flat = flat.tz_localize(tz, ambiguous=np.ones(len(flat), dtype=bool),
                                nonexistent=pd.Timedelta(hours=-1)).tz_convert("UTC").tz_localize(None)
    return flat.to_numpy().reshape(naive.shape)


def step_times(dates, start_minute: int, dt_minutes: int, length: int,
               tz: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and UTC start times of ``length`` steps from each local date: two (B, length)
    datetime64[ns] arrays (local naive, UTC naive). See the module docstring for DST days."""
    days = np.asarray(dates, dtype="datetime64[D]").reshape(-1)
    minutes = start_minute + dt_minutes * np.arange(length)
    local = days[:, None].astype("datetime64[ns]") + minutes[None, :].astype("timedelta64[m]")
    return local, _localize(local, tz)


def site_step_times(params: SiteParams, dates, tz: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``step_times`` for the ``horizon_steps + forecast_steps + 1`` series entries of an episode."""
    return step_times(dates, params.start_minute, round(params.dt_hours * 60),
                      params.horizon_steps + params.forecast_steps + 1, tz)


def resample(series: pd.Series, starts_utc: np.ndarray, dt_minutes: float,
             method: str = "hold") -> np.ndarray:
    """Mean of ``series`` over each step [start, start + dt), for UTC starts of any shape.

    ``hold`` treats each source value as constant over its interval (a day-ahead price holds its
    hour), so a step gets the time-weighted mean of the intervals it overlaps. ``interpolate``
    draws straight lines through the values at their interval midpoints and reads them at the
    step midpoint (smoother PV and load when the source is coarser than the step); for a step
    longer than the source interval it averages like ``hold``. Steps must lie in the series.
    """
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"resample method must be one of {RESAMPLE_METHODS}, got {method!r}")
    index = series.index
    t0 = index[0].as_unit("ns").value
    step_ns = float(pd.Timedelta(index[1] - index[0]).value)
    values = series.to_numpy(dtype=np.float64)
    n = len(values)
    starts = (np.asarray(starts_utc, dtype="datetime64[ns]").astype(np.int64) - t0) / step_ns
    width = dt_minutes * 60e9 / step_ns
    if starts.size and (starts.min() < -1e-9 or starts.max() + width > n + 1e-9):
        raise ValueError(f"steps from {pd.Timestamp(int(starts.min() * step_ns + t0))} run outside "
                         f"the series {index[0]} .. {index[-1]}")
    if method == "interpolate" and width <= 1:
        return np.interp(starts + width / 2, np.arange(n) + 0.5, values)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    padded = np.append(values, values[-1])

    def integral(u):
        u = np.clip(u, 0.0, n)
        i = np.minimum(np.floor(u).astype(np.int64), n)
        return cumulative[i] + padded[i] * (u - i)

    first = np.minimum(np.floor(starts + 1e-9).astype(np.int64), n - 1)
    inside = starts + width <= first + 1 + 1e-9
    return np.where(inside, padded[first], (integral(starts + width) - integral(starts)) / width)


def candidate_dates(ranges: Iterable[tuple[pd.Timestamp, pd.Timestamp]], params: SiteParams,
                    tz: str | None) -> np.ndarray:
    """Local dates (datetime64[D]) whose whole episode window lies inside every (start, end) range."""
    ranges = list(ranges)
    lo = max(r[0] for r in ranges).tz_convert(tz or "UTC").tz_localize(None).normalize()
    hi = min(r[1] for r in ranges).tz_convert(tz or "UTC").tz_localize(None).normalize()
    if hi < lo:
        return np.array([], dtype="datetime64[D]")
    days = np.arange((lo - pd.Timedelta(days=1)).to_datetime64().astype("datetime64[D]"),
                     (hi + pd.Timedelta(days=1)).to_datetime64().astype("datetime64[D]"))
    _, utc = site_step_times(params, days, tz)
    dt = np.timedelta64(round(params.dt_hours * 60), "m")
    ok = np.ones(len(days), dtype=bool)
    for start, end in ranges:
        ok &= (utc[:, 0] >= start.tz_convert("UTC").tz_localize(None).to_datetime64())
        ok &= (utc[:, -1] + dt <= end.tz_convert("UTC").tz_localize(None).to_datetime64())
    return days[ok]


def series_range(series: pd.Series | pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first start, last end) of a regularized series in UTC."""
    return series.index[0], series.index[-1] + (series.index[1] - series.index[0])
