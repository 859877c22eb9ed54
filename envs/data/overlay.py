"""Real price, load, PV and carbon series laid over the episodes of any generator."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs.data.forecasts import episode_forecasts
from envs.data.prices import export_prices, read_day_ahead_csv, read_tariff
from envs.data.series import (
    RESAMPLE_METHODS,
    candidate_dates,
    check_tz,
    read_building_csv,
    read_series_csv,
    site_step_times,
)
from envs.data.series_source import Source, csv_header, infer_format
from envs.episode import FORECAST_BLOCK, Episode, Generator
from envs.errors import ConfigError, cut, cut_key, cut_text
from envs.scenario_fields import ScenarioFields
from envs.site import SiteError, SiteParams

FORMATS = ("day_ahead", "tou", "building", "csv")
_SINGLE = ("price_buy", "price_sell", "tariff", "carbon")
_NODE = ("loads", "pv")
_TOP = {"tz", "match_weekday", "shared_calendar", "dates", "data_dir", *_SINGLE, *_NODE}
_ENTRY = {"path", "format", "column", "time_column", "file_tz", "start", "freq", "year", "country", "scale",
          "offset", "method", "holidays", "eur_kwh", "factor", "node", "forecast_columns",
          "forecast_lead_minutes"}
_TEXT_OPTIONS = ("column", "time_column", "file_tz", "country", "freq")
_FORECAST_ROWS = {"price_buy": "price_buy_eur_kwh", "price_sell": "price_sell_eur_kwh",
                  "carbon": "carbon_kg_kwh"}


class SeriesOverlay:
    """A Generator that samples a base generator, then swaps in windows cut from real series.

    Description:
        Each episode gets a local start date drawn with ``rng`` among the dates whose whole
        window (``horizon_steps + forecast_steps + 1`` steps) lies inside the series, with the
        episode's weekday when ``match_weekday`` (default true). The steps are the wall-clock grid
        of ``envs.data.series`` in the site's time zone ``tz`` (a local day is always
        ``24 / dt`` steps; DST days hold or skip one clock hour). Series are resampled to the step
        (``method``: ``hold``, the default, averages the source intervals a step overlaps;
        ``interpolate`` reads straight lines through the interval midpoints). With
        ``shared_calendar`` (default true) every series is cut from the same date; otherwise each
        draws its own (use it when the files cover different years) and TOU tariffs follow the
        first dated series. Over a base that replays real days (``sample_with_dates``, as
        ``ReplayGenerator``), every series is cut from each episode's replayed day instead, in the
        sessions' time zone unless ``tz`` is given, and must cover it.

    Arguments (the scenario's ``series:`` block):
        ``tz`` (site time zone, default UTC), ``match_weekday``, ``shared_calendar``, ``dates``
        ([first, last] local start dates allowed, e.g. a train/test split), ``data_dir`` (base of
        relative paths, default the working directory), and the entries ``price_buy``,
        ``price_sell``, ``tariff`` (paid by drivers), ``carbon``, and lists ``loads`` and ``pv``
        whose items name a ``node``. An entry is ``{eur_kwh: c}`` (a constant) or a file:
        ``path`` (a glob joins monthly files), ``format`` (``day_ahead``, ``tou`` (JSON),
        ``building`` (hourly, month/hour columns), ``csv`` (a time column); inferred from the
        file when left out), ``column``, ``time_column``, ``file_tz`` (zone of naive file times),
        ``start`` and ``freq`` (for a file without times), ``year`` (building files), ``country``
        (day-ahead), ``holidays`` (TOU), ``method``, and ``scale`` and ``offset``: the value used
        is ``file value * scale + offset`` (units: EUR/kWh, kg/kWh, kW). ``price_sell`` may also
        be ``{factor: f}`` (times the new buy price); left out while ``price_buy`` is replaced,
        it keeps the base episode's sell/buy ratio. Node entries replace the base load (or PV)
        of their node; the others keep the base's. A ``csv`` entry of ``price_buy``,
        ``price_sell`` or ``carbon`` may also carry the forecasts its file issued with each
        value: ``forecast_columns`` (a list of columns for leads 1, 2, ..., or a prefix ``f`` for
        ``f1``, ``f2``, ...) and ``forecast_lead_minutes`` (the time between two leads, default the
        file's step); the observation then shows them (``file_forecast_windows``), and a sell
        price derived from the buy price follows the buy forecast.

    >>> from envs.parametric import ParametricGenerator
    >>> from envs.site import load_site
    >>> params = load_site("caltech")
    >>> spec = {"tariff": {"eur_kwh": 0.4}, "dates": ["2020-01-06", "2020-01-12"]}
    >>> overlay = SeriesOverlay(ParametricGenerator(), spec)
    >>> episode, dates = overlay.sample_with_dates(params, np.random.default_rng(0), 3)
    >>> float(episode.tariff_eur_kwh.max()), bool(((dates.astype(np.int64) + 3) % 7 == episode.weekday).all())
    (0.4, True)
    """

    def __init__(self, base_generator: Generator, spec: Mapping[str, Any], site_name: str = ""):
        self.base = base_generator
        self.site_name = site_name
        self.fields = ScenarioFields(f"site {site_name!r}: scenario.series")
        if spec is not None and not isinstance(spec, Mapping):
            raise SiteError(f"site {site_name!r}: scenario.series must be a mapping of entries (price_buy, "
                            f"tariff, loads, ...), got {cut(spec)}")
        spec = dict(spec or {})
        unknown = sorted(map(cut_key, set(spec) - _TOP))
        if unknown:
            self._fail(unknown[0], f"is not a known field (known: {', '.join(sorted(_TOP))})")
        self.tz = spec.get("tz", getattr(base_generator, "tz", None))
        if self.tz is not None and not _is_zone(self.tz):
            self._fail("tz", f"is not a time zone name, got {cut(self.tz)}")
        for key in ("match_weekday", "shared_calendar"):
            if not isinstance(spec.get(key, True), bool):
                self._fail(key, f"must be true or false, got {cut(spec[key])}")
        self.match_weekday = spec.get("match_weekday", True)
        self.shared_calendar = spec.get("shared_calendar", True)
        if spec.get("data_dir") and not isinstance(spec["data_dir"], str | os.PathLike):
            self._fail("data_dir", f"must be a path, got {cut(spec['data_dir'])}")
        self.data_dir = Path(spec["data_dir"]).expanduser() if spec.get("data_dir") else None
        self.dates = None
        if spec.get("dates") is not None:
            try:
                first, last = (np.datetime64(pd.Timestamp(d).date(), "D") for d in spec["dates"])
            except (TypeError, ValueError):
                self._fail("dates", f"must be [first, last] dates, got {cut(spec['dates'])}")
            if last < first:
                self._fail("dates", f"ends before it starts: {cut(spec['dates'])}")
            self.dates = (first, last)
        self._cache: dict = {}
        self.sources: dict[str, Source] = {}
        for key in _SINGLE:
            if spec.get(key) is not None:
                self.sources[key] = self._source(key, spec[key])
        for key in _NODE:
            entries = spec.get(key) or []
            if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
                self._fail(key, "must be a list of entries with a node")
            for i, entry in enumerate(entries):
                source = self._source(f"{key}[{i}]", entry)
                if source.node is None:
                    self._fail(f"{key}[{i}].node", "is required")
                if key == "pv":
                    self._check_nonnegative(source)
                self.sources[f"{key}[{i}]"] = source
        dated = [s for s in self.sources.values() if s.range() is not None]
        if not dated and self.dates is None and self.sources:
            self._fail("dates", "is required when no entry is a dated series (only tariffs or constants)")
        self._cache.clear()

    def _fail(self, field, problem):
        raise SiteError(f"site {self.site_name!r}: scenario.series.{field} {problem}")

    def _source(self, field: str, entry) -> Source:
        if not isinstance(entry, Mapping):
            self._fail(field, f"must be a mapping, got {cut(entry)}")
        unknown = sorted(map(cut_key, set(entry) - _ENTRY))
        if unknown:
            self._fail(f"{field}.{unknown[0]}", f"is not a known field (known: {', '.join(sorted(_ENTRY))})")
        method = entry.get("method", "hold")
        if not isinstance(method, str) or method not in RESAMPLE_METHODS:
            self._fail(f"{field}.method", f"must be one of {RESAMPLE_METHODS}, got {cut(method)}")
        node = entry.get("node")
        if node is not None and (isinstance(node, bool) or not isinstance(node, str | int)):
            self._fail(f"{field}.node", f"must be a node name, got {cut(node)}")
        common = {"field": field, "method": method, "node": None if node is None else str(node)}
        common["scale"] = self.fields.number(f"{field}.scale", entry.get("scale", 1.0))
        common["offset"] = self.fields.number(f"{field}.offset", entry.get("offset", 0.0))
        if "factor" in entry:
            if field != "price_sell":
                self._fail(f"{field}.factor", "is only for price_sell")
            return Source(constant=self.fields.number(f"{field}.factor", entry["factor"]),
                          **{**common, "field": "price_sell.factor"})
        if "eur_kwh" in entry:
            return Source(constant=self.fields.number(f"{field}.eur_kwh", entry["eur_kwh"]), **common)
        if "path" not in entry:
            self._fail(field, "needs a path, eur_kwh" + (" or factor" if field == "price_sell" else ""))
        if not isinstance(entry["path"], str | os.PathLike):
            self._fail(f"{field}.path", f"must be a path, got {cut(entry['path'])}")
        self._check_options(field, entry)
        path = Path(entry["path"]).expanduser()
        if not path.is_absolute() and self.data_dir is not None:
            path = self.data_dir / path
        fmt = entry.get("format") or infer_format(path)
        if not isinstance(fmt, str) or fmt not in FORMATS:
            self._fail(f"{field}.format", f"must be one of {FORMATS}, got {cut(fmt)}")
        forecast_columns = self._forecast_columns(field, path, fmt, entry)
        key = (str(path), fmt, entry.get("column"), entry.get("time_column"), entry.get("file_tz"),
               entry.get("country"), entry.get("year"), entry.get("start"), entry.get("freq"),
               forecast_columns)
        if key not in self._cache:
            try:
                self._cache[key] = self._read(field, path, fmt, entry, list(forecast_columns))
            except SiteError:
                raise
            except ConfigError as err:  # an option the reader cannot use
                self._fail(field, f"has an option the {fmt} reader cannot use: {cut_text(err)}")
        loaded = self._cache[key]
        if fmt == "tou":
            return Source(tariff=loaded, holidays=self._holidays(field, entry.get("holidays")), **common)
        if not forecast_columns:
            return Source(series=loaded, **common)
        step = (loaded.index[1] - loaded.index[0]).total_seconds() / 60
        lead = entry.get("forecast_lead_minutes", step)
        if isinstance(lead, bool) or not isinstance(lead, (int, float)) or not 0 < lead < float("inf"):
            self._fail(f"{field}.forecast_lead_minutes",
                       f"must be a finite number of minutes > 0, got {cut(lead)}")
        return Source(series=loaded.iloc[:, 0], forecasts=loaded, lead_minutes=float(lead), **common)

    def _check_options(self, field: str, entry: Mapping) -> None:
        """The file options that are texts are texts (``start`` may be a date, ``year`` a whole number)."""
        for key in _TEXT_OPTIONS:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                self._fail(f"{field}.{key}", f"must be a text, got {cut(entry[key])}")
        start = entry.get("start")
        if start is not None and not isinstance(start, str | datetime.date):
            self._fail(f"{field}.start", f"must be a date or time, got {cut(start)}")
        year = entry.get("year")
        if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
            self._fail(f"{field}.year", f"must be a whole year, got {cut(year)}")
        if entry.get("file_tz") is not None and not _is_zone(entry["file_tz"]):
            self._fail(f"{field}.file_tz", f"is not a time zone name, got {cut(entry['file_tz'])}")

    def _holidays(self, field: str, value) -> tuple:
        if value is None:
            return ()
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            self._fail(f"{field}.holidays", f"must be a list of dates, got {cut(value)}")
        try:
            return tuple(pd.Timestamp(day) for day in value)
        except (TypeError, ValueError):
            self._fail(f"{field}.holidays", f"must be a list of dates, got {cut(value)}")

    def _check_nonnegative(self, source: Source) -> None:
        """PV power (file value * scale + offset, or a constant) is never negative."""
        if source.series is not None:
            values = source.series.to_numpy(dtype=np.float64) * source.scale + source.offset
            if len(values) and values.min() < 0:
                at = int(np.argmin(values))
                self._fail(source.field, f"has a negative PV power of {values[at]:g} kW at "
                           f"{source.series.index[at]} (file value * scale + offset); PV power is >= 0")
        elif source.constant is not None and source.constant * source.scale + source.offset < 0:
            self._fail(f"{source.field}.eur_kwh", f"gives a negative PV power of "
                       f"{source.constant * source.scale + source.offset:g} kW; PV power is >= 0")

    def _forecast_columns(self, field: str, path: Path, fmt: str, entry) -> tuple[str, ...]:
        """The forecast columns an entry names: a list, or a prefix ``f`` for ``f1``, ``f2``, ..."""
        wanted = entry.get("forecast_columns")
        if wanted is None:
            if "forecast_lead_minutes" in entry:
                self._fail(f"{field}.forecast_lead_minutes", "needs forecast_columns")
            return ()
        if field not in _FORECAST_ROWS or fmt != "csv":
            self._fail(f"{field}.forecast_columns", f"is for csv files of {', '.join(_FORECAST_ROWS)}")
        if isinstance(wanted, str):
            header = csv_header(path)
            count = 0
            while f"{wanted}{count + 1}" in header:
                count += 1
            if not count:
                self._fail(f"{field}.forecast_columns",
                           f"prefix {cut(wanted)} finds no column {cut(wanted)[1:-1]}1 in {path}")
            return tuple(f"{wanted}{k}" for k in range(1, count + 1))
        if not isinstance(wanted, Sequence) or not wanted or not all(isinstance(c, str) for c in wanted):
            self._fail(f"{field}.forecast_columns",
                       f"must be a column prefix or a list of columns, got {cut(wanted)}")
        return tuple(wanted)

    def _read(self, field, path, fmt, entry, forecast_columns: list[str]):
        if fmt == "tou":
            return read_tariff(path)
        if fmt == "day_ahead":
            kwargs = {k: entry[k] for k in ("time_column", "country") if entry.get(k) is not None}
            if entry.get("column"):
                kwargs["price_column"] = entry["column"]
            if entry.get("file_tz"):
                kwargs["tz"] = entry["file_tz"]
            return read_day_ahead_csv(path, **kwargs)
        column = entry.get("column")
        if not column:
            self._fail(f"{field}.column", f"is required for a {fmt} file")
        if fmt == "building":
            kwargs = {k: entry[k] for k in ("year",) if entry.get(k) is not None}
            if entry.get("file_tz"):
                kwargs["tz"] = entry["file_tz"]
            return read_building_csv(path, columns=(column,), **kwargs)[column]
        time_column = entry.get("time_column", "time")
        frame = read_series_csv(path, columns=[column, *forecast_columns], time_column=time_column,
                                tz=entry.get("file_tz"), start=entry.get("start"), freq=entry.get("freq"))
        return frame if forecast_columns else frame[column]

    def ranges(self) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
        """UTC (start, end) of every dated series, by spec field."""
        return {name: s.range() for name, s in self.sources.items() if s.range() is not None}

    def _candidates(self, params: SiteParams, ranges: list) -> np.ndarray:
        if ranges:
            days = candidate_dates(ranges, params, self.tz)
        else:
            days = np.arange(self.dates[0], self.dates[1] + 1)
        if self.dates is not None:
            days = days[(days >= self.dates[0]) & (days <= self.dates[1])]
        return days

    def _draw(self, params, rng, weekday: np.ndarray, ranges: list, what: str) -> np.ndarray:
        days = self._candidates(params, ranges)
        out = np.empty(len(weekday), dtype="datetime64[D]")
        groups = np.unique(weekday) if self.match_weekday else [None]
        for day in groups:
            envs = np.arange(len(weekday)) if day is None else np.flatnonzero(weekday == day)
            pool = days if day is None else days[(days.astype(np.int64) + 3) % 7 == day]
            if not len(pool):
                spans = ", ".join(f"{a} .. {b}" for a, b in ranges) or f"{self.dates[0]} .. {self.dates[1]}"
                self._fail("dates", f"leave no start date for {what}"
                           + ("" if day is None else f" on weekday {day}") + f" (series cover {spans})")
            out[envs] = pool[rng.integers(0, len(pool), size=len(envs))]
        return out

    def calendar(self, params: SiteParams, rng: np.random.Generator, weekday: np.ndarray) -> dict:
        """Local start date (B,) datetime64[D] of each source, drawn with ``rng``."""
        dated = {name: s.range() for name, s in self.sources.items() if s.range() is not None}
        if self.shared_calendar or not dated:
            dates = self._draw(params, rng, weekday, list(dated.values()), "all series")
            return dict.fromkeys(self.sources, dates)
        out = {name: self._draw(params, rng, weekday, [span], name) for name, span in dated.items()}
        first = next(iter(out.values()))
        return {name: out.get(name, first) for name in self.sources}

    def _replayed_calendar(self, params: SiteParams, days: np.ndarray) -> dict:
        """Every source cut from the days the base replays, which its series must cover."""
        for name, span in self.ranges().items():
            outside = ~np.isin(days, self._candidates(params, [span]))
            if outside.any():
                self._fail("dates", f"leave out the replayed day {days[np.argmax(outside)]}: {name} covers "
                           f"{span[0]} .. {span[1]}")
        return dict.fromkeys(self.sources, days)

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode:
        return self.sample_with_dates(params, rng, num_envs)[0]

    def sample_with_dates(self, params: SiteParams, rng: np.random.Generator, num_envs: int):
        """The episode and the local start dates (B,) of its series (those of ``price_buy`` or the
        first source when calendars are not shared)."""
        replayed = getattr(self.base, "sample_with_dates", None)
        if replayed is not None:
            episode, days = replayed(params, rng, num_envs)
        else:
            episode, days = self.base.sample(params, rng, num_envs), None
        if not self.sources:
            return episode, np.full(num_envs, np.datetime64("NaT"), dtype="datetime64[D]")
        dt_minutes = round(params.dt_hours * 60)
        if days is None:
            calendar = self.calendar(params, rng, np.asarray(episode.weekday))
        else:
            calendar = self._replayed_calendar(params, days)
        grids: dict = {}

        def grid(name):
            key = calendar[name].tobytes()
            if key not in grids:
                grids[key] = site_step_times(params, calendar[name], self.tz)
            return grids[key]

        def values(name):
            return self.sources[name].values(*grid(name), dt_minutes)

        changes = {}
        if "price_buy" in self.sources:
            changes["price_buy_eur_kwh"] = values("price_buy")
        buy = changes.get("price_buy_eur_kwh", episode.price_buy_eur_kwh)
        sell = self.sources.get("price_sell")
        sell_per_buy = None
        if sell is not None and sell.field == "price_sell.factor":
            changes["price_sell_eur_kwh"] = export_prices(buy, factor=sell.constant)
            sell_per_buy = sell.constant
        elif sell is not None:
            changes["price_sell_eur_kwh"] = values("price_sell")
        elif "price_buy" in self.sources:
            base_buy = episode.price_buy_eur_kwh.sum(axis=1, keepdims=True)
            ratio = np.divide(episode.price_sell_eur_kwh.sum(axis=1, keepdims=True), base_buy,
                              out=np.zeros_like(base_buy), where=base_buy != 0)
            changes["price_sell_eur_kwh"] = ratio * buy
            sell_per_buy = ratio[:, :, None]
        if "tariff" in self.sources:
            changes["tariff_eur_kwh"] = values("tariff")
        if "carbon" in self.sources:
            changes["carbon_kg_kwh"] = values("carbon")
        for key, field in (("loads", "node_load_kw"), ("pv", "node_pv_kw")):
            names = [name for name in self.sources if name.startswith(f"{key}[")]
            if not names:
                continue
            array = getattr(episode, field).copy()
            nodes = [params.node_index(self.sources[name].node) for name in names]
            array[:, :, nodes] = 0.0
            for name, node in zip(names, nodes, strict=True):
                array[:, :, node] += values(name)
            changes[field] = array
        forecasting = [name for name, source in self.sources.items() if source.forecasts is not None]
        if forecasting:
            truth_only = dataclasses.replace(episode, **changes, forecast_windows=None)
            windows = episode_forecasts(params, truth_only)
            row = {name: FORECAST_BLOCK.index(field) for name, field in _FORECAST_ROWS.items()}
            for name in forecasting:
                truth = changes[_FORECAST_ROWS[name]]
                windows[:, :, row[name]] = self.sources[name].forecast(grid(name)[1], truth, dt_minutes,
                                                                        params.forecast_steps)
            if "price_buy" in forecasting and sell_per_buy is not None:
                windows[:, :, row["price_sell"]] = sell_per_buy * windows[:, :, row["price_buy"]]
            changes["forecast_windows"] = windows
        first = "price_buy" if "price_buy" in calendar else next(iter(calendar))
        return dataclasses.replace(episode, **changes), calendar[first]


def _is_zone(name) -> bool:
    """Whether ``name`` is a time zone name pandas knows (a text, never a number of seconds)."""
    try:
        return isinstance(name, str) and check_tz(name) == name
    except ConfigError:
        return False


def with_series(generator: Generator, scenario_block: Mapping[str, Any] | None,
                params: SiteParams) -> Generator:
    """``generator`` wrapped in a SeriesOverlay when the scenario block has a ``series`` key.

    Node names are checked against ``params`` here, so a bad spec fails when the env is built.
    """
    spec = (scenario_block or {}).get("series")
    if spec is None:
        return generator
    overlay = SeriesOverlay(generator, spec, site_name=params.name)
    for name, source in overlay.sources.items():
        if source.node is not None and source.node not in params.node_names:
            overlay._fail(f"{name}.node", f"names unknown node {cut(source.node)} "
                          f"(nodes: {', '.join(params.node_names)})")
    return overlay
