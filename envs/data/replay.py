"""Replay of real charging sessions: each episode is one real day of a session table."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from envs.data.fit import FITTED_TABLES, FittedGenerator
from envs.data.forecasts import DemandRegression, fit_daily_demand
from envs.data.session_report import SessionReport, table_report
from envs.episode import Episode, Generator, demand_windows, pack_evs
from envs.parametric import EvModel, ParametricGenerator
from envs.site import SiteParams

_US_PER_MINUTE = 60_000_000
_US_PER_HOUR = 60 * _US_PER_MINUTE
REPLAY_FIELDS = ("days", "shuffle", "carry_over", "min_sessions", "special_days", "cap_request_to_stay")
REPLAY_KEYS = ("sessions", "date_range", *REPLAY_FIELDS)  # a replay's own fields of a site's scenario
_REQUIRED = ("arrival", "departure", "announced_departure", "requested_kwh")


@dataclasses.dataclass(frozen=True, eq=False)
class ReplayGenerator:
    """Episodes whose EVs are the real sessions of a session table, one calendar day each.

    Description:
        ``sessions`` is a table of ``envs.data.sessions.SESSION_COLUMNS`` (tz-aware times). The
        episode of local date ``D`` covers the wall-clock window that starts at ``D`` 00:00 plus
        the site's ``start_hour`` and lasts ``horizon_steps`` steps, in the sessions' time zone
        (steps are wall-clock steps: on a daylight-saving change day a stay across the change
        reads one hour longer or shorter). Another window is another site: set ``start_hour``
        and ``horizon_steps`` (several days are fine).

        Every session arriving in the window is an EV: its arrival step is the step its arrival
        falls in (floor), its departure and announced departure steps are the first step
        boundaries at or after them (ceiling), so the EV's steps ``a .. d-1`` cover its real
        stay; both are at least ``a + 1``. On sites with ``stay_timing: exact`` the EV counts
        in its first and last step only for the part of the step it is there
        (``Episode.ev_first_step_fraction``, ``ev_last_step_fraction``). With ``carry_over``
        (default), sessions that arrived before the window and leave inside or after it are
        EVs from step 0, requesting the share of their request proportional to the part of
        their stay inside the window.
        The request is the table's ``requested_kwh``. The battery and the car's charge limit
        are the table's ``battery_kwh`` and ``max_charge_kw`` where known; otherwise a car
        model is drawn from ``fleet`` by share among the models whose battery holds the
        request (the largest model when none does), which also gives the discharge limit. A
        request larger than the battery is capped at the battery, and with
        ``cap_request_to_stay`` (default) at what the stay can deliver: its real hours in the
        window (wall-clock) times the smaller of the car's and the site's fastest port's kW times
        the site's best charge efficiency (drivers' requests often exceed that: 15-20 % of the
        requested kWh of the ACN files). The table keeps the raw request; ``report(params)``
        counts the sessions the cap binds. The arrival SoC, uniform in the scenario's
        ``soc_arrival_range``, is lowered where needed so the request fits.
        V2G consent (``v2g_consent_share``) and ``min_soc`` come from the scenario too. EVs
        that find the site full queue or are turned away in the env (``envs.plugging``), which
        counts them in its plug schedule; the generator drops nothing.

        Everything else (prices, loads, PV, carbon, setpoint, outages, port ranks) is drawn by
        ``base`` with its ``weekday`` fixed to each replayed day's weekday; the episode's
        ``weekday`` is the replayed day's.

        Sites with ``demand_forecast: true`` get the expected arrivals and kWh of a
        ``DemandRegression`` on the table's sessions (arrival clock times and requests), fitted
        for each replayed day on the days before it only (``demand_model``).

    Arguments:
        sessions: the session table.
        days: local dates to replay (dates, ``"2019-05-01"`` strings, timestamps); None: every
            day of ``replay_days(sessions, params, min_sessions)``. Each window must lie within
            the table's first and last arrival dates.
        shuffle: True draws each env's day with the sampling rng (distinct days while the
            batch is no larger than the list); False gives env ``i`` day ``i % len(days)``, the
            same at every call, so a batch of ``len(days)`` envs replays each day once.
        base: generator of the exogenous series (and of the fleet, when it has ``fleet_*``
            arrays, as a fitted generator does); None: the site's parametric scenario
            (``ParametricGenerator.from_config``; its ``series`` and ``forecasts`` left out). For
            a site with another generator pass it: ``envs.generators.generator_for(params)``.
        fleet: car models (``EvModel`` or mappings); None: the fleet of ``base`` (a fitted
            generator's ``fleet_*`` arrays, else the parametric scenario's ``fleet``).
        carry_over: include the sessions already plugged in when the window opens.
        min_sessions: with ``days=None``, days with fewer arrivals in their window are left out.
        special_days: local dates (holidays, events) the demand regression treats apart.
        cap_request_to_stay: cap each request at what its stay can deliver (above).

    A site selects it with ``scenario: {generator: replay, sessions: {path: ...}, ...}``
    (``envs.data.replay_config.replay_from_config``).

    >>> import numpy as np, pandas as pd
    >>> from envs.site import load_site
    >>> params = load_site("caltech")
    >>> times = pd.to_datetime(["2019-05-06 08:05", "2019-05-06 17:40", "2019-05-06 09:50",
    ...                         "2019-05-06 12:00"]).tz_localize("America/Los_Angeles")
    >>> sessions = pd.DataFrame({"arrival": times[[0, 2]], "departure": times[[1, 3]],
    ...     "announced_departure": times[[1, 3]], "requested_kwh": [20.0, 5.0]})
    >>> replay_days(sessions, params)
    [datetime.date(2019, 5, 6)]
    >>> episode = ReplayGenerator(sessions).sample(params, np.random.default_rng(0), 2)
    >>> episode.ev_arrival_step[0], episode.ev_departure_step[0], episode.weekday
    (array([32, 39]), array([71, 48]), array([0, 0]))
    """

    sessions: pd.DataFrame = dataclasses.field(repr=False)
    days: Sequence[Any] | None = None
    shuffle: bool = True
    base: Generator | None = None
    fleet: Sequence[EvModel | Mapping[str, float]] | None = None
    carry_over: bool = True
    min_sessions: int = 1
    special_days: Sequence[Any] = ()
    cap_request_to_stay: bool = True

    def __post_init__(self):
        table = _checked(self.sessions)
        arrival = _wall_us(table["arrival"])
        for name, value in (
            ("_arrival_us", arrival),
            ("_departure_us", _wall_us(table["departure"])),
            ("_announced_us", _wall_us(table["announced_departure"])),
            ("_requested_kwh", table["requested_kwh"].to_numpy(dtype=np.float64)),
            ("_delivered_kwh", _optional(table, "delivered_kwh", positive=False)),
            ("_battery_kwh", _optional(table, "battery_kwh")),
            ("_max_charge_kw", _optional(table, "max_charge_kw")),
            ("_day_range", _day_range(arrival)),
            ("_day_list", None if self.days is None else as_days(self.days)),
            ("_special_days", as_days(self.special_days)),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_max_stay_us", int(np.max(self._departure_us - arrival)))
        object.__setattr__(self, "_demand_models", {})
        if self._day_list is not None and not len(self._day_list):
            raise ValueError("days must list at least one date")

    def days_for(self, params: SiteParams) -> np.ndarray:
        """The local dates (datetime64[D]) this generator replays for ``params``."""
        if self._day_list is None:
            days = _available(self._arrival_us, self._day_range, params, self.min_sessions)
            if not len(days):
                raise ValueError(f"no day of the sessions has a full window with >= {self.min_sessions} "
                                 f"arrivals for site {params.name!r}")
            return days
        start = self._window_start_us(self._day_list, params)
        end = start + params.horizon_steps * _step_us(params)
        first, last = self._day_range
        outside = (start < first) | (end > last)
        if outside.any():
            day = self._day_list[np.argmax(outside)]
            raise ValueError(f"day {day} of site {params.name!r} runs outside the sessions' dates "
                             f"{np.datetime64(first, 'us').astype('datetime64[D]')} .. "
                             f"{np.datetime64(last, 'us').astype('datetime64[D]') - 1}")
        return self._day_list

    @property
    def tz(self) -> str:
        """The sessions' time zone, in which days and steps are wall-clock ones."""
        return str(self.sessions["arrival"].dt.tz)

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode:
        return self.sample_with_dates(params, rng, num_envs)[0]

    def sample_with_dates(self, params: SiteParams, rng: np.random.Generator, num_envs: int
                          ) -> tuple[Episode, np.ndarray]:
        """The episodes and the local date (B,) datetime64[D] each replays."""
        days = self.days_for(params)
        if self.shuffle:
            chosen = days[rng.choice(len(days), size=num_envs, replace=num_envs > len(days))]
        else:
            chosen = days[np.arange(num_envs) % len(days)]
        weekday = (chosen.astype(np.int64) + 3) % 7
        base = _site_base(params) if self.base is None else self.base
        scenario = _scenario(base, params)
        episode = _with_weekday(base, weekday).sample(params, rng, num_envs)
        evs = self._evs(params, rng, self._window_start_us(chosen, params), base, scenario)
        demand = None
        if params.demand_forecast:
            arrivals, energy = self.demand_model(round(params.dt_hours * 60)).episode_rates(params, chosen)
            demand = demand_windows(arrivals, energy, params.forecast_steps)
        return dataclasses.replace(episode, weekday=weekday, demand_forecast=demand, **evs), chosen

    def report(self, params: SiteParams | None = None) -> SessionReport:
        """The data-quality report of the table (``envs.data.session_report``), with ``params``
        also what the site makes of the sessions: how many requests (and kWh) exceed what the
        whole stay delivers at the site's fastest port (the car's kW where the table has it) and
        best charge efficiency, and how many sessions delivered more than that port could."""
        report = table_report(self.sessions)
        if params is None:
            return report
        stay_h = (self._departure_us - self._arrival_us) / _US_PER_HOUR
        port_kw = float(params.port_max_charge_kw.max())
        car_kw = np.where(np.isnan(self._max_charge_kw), port_kw, np.minimum(self._max_charge_kw, port_kw))
        most = stay_h * car_kw * float(params.port_charge_efficiency.max())
        over = self._requested_kwh > most * (1 + 1e-9)
        above = self._delivered_kwh > stay_h * port_kw * (1 + 1e-9)
        return dataclasses.replace(
            report, site=params.name, capped=int(over.sum()),
            capped_kwh=round(float((self._requested_kwh - most)[over].sum()), 3),
            above_port_power=int(np.count_nonzero(above)))

    def demand_model(self, dt_minutes: int) -> DemandRegression:
        """The demand regression on this table's sessions at ``dt_minutes`` (fitted once, then cached)."""
        if dt_minutes not in self._demand_models:
            self._demand_models[dt_minutes] = fit_daily_demand(
                self._arrival_us.astype("datetime64[us]"), self._requested_kwh, dt_minutes,
                self._special_days)
        return self._demand_models[dt_minutes]

    def _window_start_us(self, days: np.ndarray, params: SiteParams) -> np.ndarray:
        return days.astype("datetime64[us]").astype(np.int64) + params.start_minute * _US_PER_MINUTE

    def _evs(self, params: SiteParams, rng: np.random.Generator, start: np.ndarray, base: Generator,
             scenario: ParametricGenerator) -> dict[str, np.ndarray]:
        b, dt = len(start), _step_us(params)
        arrival_us = self._arrival_us
        hi = np.searchsorted(arrival_us, start + params.horizon_steps * dt, side="left")
        lo = np.searchsorted(arrival_us, start - self._max_stay_us if self.carry_over else start, side="left")
        counts = hi - lo
        env = np.repeat(np.arange(b), counts)
        idx = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - lo, counts)
        keep = (arrival_us[idx] >= start[env]) | (self._departure_us[idx] > start[env])
        env, idx = env[keep], idx[keep]
        since_start = arrival_us[idx] - start[env]
        arrival = np.maximum(since_start // dt, 0)
        departure = np.maximum(-((start[env] - self._departure_us[idx]) // dt), arrival + 1)
        announced = np.maximum(-((start[env] - self._announced_us[idx]) // dt), arrival + 1)
        stay = self._departure_us[idx] - arrival_us[idx]
        inside = np.where(since_start < 0, (stay + since_start) / np.maximum(stay, 1), 1.0)
        requested = self._requested_kwh[idx] * inside

        fleet = _fleet(self.fleet, base, scenario)
        model_battery = np.array([m.battery_kwh for m in fleet])
        table_battery, table_charge = self._battery_kwh[idx], self._max_charge_kw[idx]
        fits = (model_battery[None, :] >= requested[:, None]) | ~np.isnan(table_battery)[:, None]
        fits[~fits.any(axis=1), np.argmax(model_battery)] = True
        weights = np.cumsum(fits * np.array([m.share for m in fleet]), axis=1)
        u = rng.random(len(idx)) * weights[:, -1]
        model = np.minimum((u[:, None] >= weights).sum(axis=1), len(fleet) - 1)
        battery = np.where(np.isnan(table_battery), model_battery[model], table_battery)
        requested = np.minimum(requested, battery)
        max_charge = np.where(np.isnan(table_charge), np.array([m.max_charge_kw for m in fleet])[model],
                              table_charge)
        if self.cap_request_to_stay:
            stay_h = (self._departure_us[idx] - np.maximum(arrival_us[idx], start[env])) / _US_PER_HOUR
            power = np.minimum(max_charge, params.port_max_charge_kw.max())
            requested = np.minimum(requested, stay_h * power * params.port_charge_efficiency.max())
        low, high = scenario.soc_arrival_range
        soc = np.clip(np.minimum(rng.uniform(low, high, len(idx)), 1 - requested / battery), 0.0, 1.0)
        consent = rng.random(len(idx)) < scenario.v2g_consent_share

        timing = {}
        if params.stay_timing == "exact":
            into_step = since_start - arrival * dt
            timing["first_step_fraction"] = np.where(since_start < 0, 1.0, (dt - into_step) / dt)
            last = (self._departure_us[idx] - start[env] - (departure - 1) * dt) / dt
            timing["last_step_fraction"] = np.clip(last, 0.0, 1.0)
        return pack_evs(
            b, env, arrival_step=arrival, departure_step=departure, announced_departure_step=announced,
            battery_kwh=battery, soc_arrival=soc, requested_kwh=requested, max_charge_kw=max_charge,
            max_discharge_kw=np.array([m.max_discharge_kw for m in fleet])[model], v2g_consent=consent,
            min_soc=scenario.min_soc, **timing)


def replay_days(sessions: pd.DataFrame, params: SiteParams, min_sessions: int = 1) -> list[datetime.date]:
    """Local dates whose episode window lies within the sessions' first and last arrival dates
    and holds at least ``min_sessions`` arrivals (0 lists every day of that range)."""
    arrival = _wall_us(_checked(sessions)["arrival"])
    return _available(arrival, _day_range(arrival), params, min_sessions).astype(datetime.date).tolist()


def _checked(sessions: pd.DataFrame) -> pd.DataFrame:
    missing = [name for name in _REQUIRED if name not in sessions.columns]
    if missing:
        raise ValueError(f"session table lacks column {missing[0]!r} "
                         "(see envs.data.sessions.SESSION_COLUMNS)")
    if not len(sessions):
        raise ValueError("session table is empty")
    for name in ("arrival", "departure", "announced_departure"):
        if not isinstance(sessions[name].dtype, pd.DatetimeTZDtype):
            raise ValueError(f"session table column {name!r} must hold tz-aware datetimes, "
                             f"got {sessions[name].dtype}")
        if sessions[name].isna().any():
            raise ValueError(f"session table column {name!r} has missing values")
    tz = sessions["arrival"].dt.tz
    table = sessions.assign(**{name: sessions[name].dt.tz_convert(tz)
                               for name in ("departure", "announced_departure")})
    requested = table["requested_kwh"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(requested) & (requested >= 0)):
        raise ValueError("session table column 'requested_kwh' must be finite and >= 0")
    if (table["departure"] < table["arrival"]).any():
        raise ValueError("session table has a departure before its arrival")
    return table.sort_values("arrival", kind="stable")


def _wall_us(times: pd.Series) -> np.ndarray:
    """Local wall-clock times as int64 microseconds since 1970-01-01 00:00 (local)."""
    return times.dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)


def _optional(table: pd.DataFrame, name: str, positive: bool = True) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), np.nan)
    values = table[name].to_numpy(dtype=np.float64, na_value=np.nan)
    if positive and np.any(values <= 0):
        raise ValueError(f"session table column {name!r} must be > 0 where known")
    return values


def _step_us(params: SiteParams) -> int:
    return round(params.dt_hours * 60) * _US_PER_MINUTE


def _day_range(arrival_us: np.ndarray) -> tuple[int, int]:
    """Local midnight of the first arrival's date and the midnight after the last arrival's date."""
    day_us = 1440 * _US_PER_MINUTE
    return int(arrival_us.min() // day_us * day_us), int((arrival_us.max() // day_us + 1) * day_us)


def _available(arrival_us: np.ndarray, day_range: tuple[int, int], params: SiteParams,
               min_sessions: int) -> np.ndarray:
    first, last = day_range
    day_us = 1440 * _US_PER_MINUTE
    days = np.arange(first // day_us, last // day_us).astype("datetime64[D]")
    start = days.astype("datetime64[us]").astype(np.int64) + params.start_minute * _US_PER_MINUTE
    end = start + params.horizon_steps * _step_us(params)
    counts = np.searchsorted(arrival_us, end) - np.searchsorted(arrival_us, start)
    return days[(end <= last) & (counts >= min_sessions)]


def as_days(days: Sequence[Any]) -> np.ndarray:
    if isinstance(days, (str, bytes)):
        raise ValueError(f"dates must be a list of dates, got the string {days!r}")
    return np.array([np.datetime64(pd.Timestamp(day).date(), "D") for day in days], dtype="datetime64[D]")


def _site_base(params: SiteParams) -> ParametricGenerator:
    """The site's parametric scenario (less a replay's own fields), the default base of a replay."""
    scenario = {key: value for key, value in params.scenario.items()
                if key not in ("series", "forecasts", "generator", *REPLAY_KEYS)}
    kind = params.scenario.get("generator", "parametric")
    if kind not in ("parametric", "replay") or any(key in scenario for key in FITTED_TABLES):
        raise ValueError(f"ReplayGenerator(base=None) draws the series and the fleet from a parametric "
                         f"scenario, but site {params.name!r} has generator: {kind}; pass "
                         "base=envs.generators.generator_for(params) (or its scenario's generator)")
    return ParametricGenerator.from_config(scenario, params.name)


def _scenario(base: Generator, params: SiteParams) -> ParametricGenerator:
    """The parametric scenario whose EV fields (fleet, SoC range, consent) fill in the table's gaps:
    ``base`` or the first one down its chain of ``base`` generators, else the site's."""
    candidate = base
    for _ in range(8):
        if isinstance(candidate, ParametricGenerator):
            return candidate
        candidate = getattr(candidate, "base", None)
    return _site_base(params)


def _fleet(fleet, base: Generator, scenario: ParametricGenerator) -> list[EvModel]:
    if fleet is not None:
        return [model if isinstance(model, EvModel) else EvModel(**model) for model in fleet]
    arrays = [getattr(base, f"fleet_{name}", None)
              for name in ("battery_kwh", "max_charge_kw", "max_discharge_kw", "share")]
    if all(array is not None for array in arrays):
        return [EvModel(*map(float, row)) for row in zip(*arrays, strict=True)]
    return list(scenario.fleet)


def _with_weekday(base: Generator, weekday: np.ndarray) -> Generator:
    """``base`` with its weekday fixed per env (and no EVs of its own, when it is parametric or fitted)."""
    if isinstance(base, ParametricGenerator):
        return dataclasses.replace(base, weekday=tuple(weekday.tolist()), sessions_per_day=0.0)
    if isinstance(base, FittedGenerator):
        return dataclasses.replace(base, base=_with_weekday(base.base, weekday), arrival_scale=0.0)
    if dataclasses.is_dataclass(base):
        fields = {field.name for field in dataclasses.fields(base)}
        if "weekday" in fields:
            return dataclasses.replace(base, weekday=tuple(weekday.tolist()))
        if "base" in fields and base.base is not None:
            return dataclasses.replace(base, base=_with_weekday(base.base, weekday))
    return base
