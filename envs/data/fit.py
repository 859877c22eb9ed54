"""Scenario generator fitted to charging sessions: per-slot arrival rates and conditional quantile tables.

This module holds the generator and what sampling and validating it need (numpy only, so that a
fitted preset loads neither pandas nor scipy); ``envs.data.fitting`` fits its tables to sessions
and measures fidelity, ``envs.data.fit_presets`` writes fitted site presets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.episode import Episode, demand_windows, pack_evs
from envs.parametric import ParametricGenerator
from envs.site import MINUTES_PER_DAY, SiteError, SiteParams

FITTED_FIELDS = ("arrivals_weekday", "arrivals_weekend", "day_of_week_factors", "arrival_scale",
                 "dwell_quantiles_hours", "dwell_quantiles_hours_weekend", "energy_quantiles_kwh",
                 "energy_quantiles_kwh_weekend", "dwell_energy_copula", "dwell_energy_copula_weekend",
                 "departure_error_quantiles_hours", "departure_error_quantiles_hours_weekend",
                 "departure_error_dwell_hours", "port_current", "fleet", "cap_request_to_stay")
FITTED_TABLES = tuple(field for field in FITTED_FIELDS if field not in ("fleet", "cap_request_to_stay"))
PARAMETRIC_EV_FIELDS = ("sessions_per_day", "weekend_factor", "peak_hours", "peak_widths_hours",
                        "peak_weights", "dwell_mean_hours", "dwell_sigma", "energy_mean_kwh", "energy_sigma",
                        "departure_error_minutes")
MEAN_NODES = 256
CAPPED_MEAN_DRAWS = 1024
FLEET_KEYS = ("battery_kwh", "max_charge_kw", "max_discharge_kw", "max_dc_charge_kw", "max_dc_discharge_kw",
              "share")


@dataclasses.dataclass(frozen=True, eq=False)
class FittedGenerator:
    """Episodes whose EVs follow fitted tables; everything else follows the site's parametric fields.

    Description:
        Arrivals are a non-homogeneous Poisson process per time slot: ``arrivals_weekday`` and
        ``arrivals_weekend`` give the expected arrivals in each of the S equal slots of a day
        (S divides 1440 minutes; rates are re-binned to the site's step), times
        ``day_of_week_factors`` (Monday..Sunday) and ``arrival_scale``. The stay and the energy
        request are drawn conditionally on the arrival time: ``dwell_quantiles_hours`` and
        ``energy_quantiles_kwh`` are (D, Q) tables, row d the Q quantiles at equally spaced
        levels 0..1 for arrivals in the d-th of D equal blocks of the day (``*_weekend`` tables
        of the same shape for Saturday and Sunday, default the weekday ones); a draw interpolates
        the inverse CDF at u ~ U(0, 1). The two levels are coupled by a checkerboard copula:
        ``dwell_energy_copula`` is a (C, C) table of the joint frequencies of the dwell level's
        and the energy level's C equal bins (``*_weekend`` on Saturday and Sunday, default the
        weekday one; none: independent), so that short stays bring small requests. The
        announced departure is the real one plus a draw (announced - real) from row r of
        ``departure_error_quantiles_hours`` (R, E), r the bin of the stay among the R - 1
        increasing edges ``departure_error_dwell_hours`` (``departure_error_quantiles_hours_weekend``,
        same shape and edges, for arrivals on Saturday and Sunday, default the weekday table); it is
        at least one step after arrival.
        The car model comes from ``fleet`` (shares), among the models whose battery holds the
        request (the largest one when none does); the request is capped by the battery, and the
        arrival SoC, uniform in ``soc_arrival_range``, is capped so that the request fits.
        ``port_current`` ("ac" or "dc") picks the fleet's AC or DC power limits.
        ``cap_request_to_stay`` (default false) also caps the request, before the SoC is drawn, at
        what full power could deliver over the (rounded) stay: stay hours times the smaller of the
        car's and the site's fastest port's kW times the site's best charge efficiency, ignoring
        taper; a modelling rule for tables fitted to delivered energy, whose coarse copula
        otherwise pairs some short stays with undeliverable energies. As the cap lowers the
        energies, ``fit_site_preset`` calibrates the energy tables of a scenario with it to the site
        (``envs.data.fitting.calibrate_capped_energy``): the capped requests, not the drawn ones,
        then have the fitted quantiles per arrival block.

    Arguments:
        base: the ParametricGenerator of the remaining scenario fields (prices, loads, PV,
            carbon, setpoint, outages, weekday, V2G consent, minimum SoC); it draws the
            exogenous series and port ranks, this generator replaces the EV arrays.

    A site selects it with ``scenario: {generator: fitted, ...}``; ``from_config`` reads that
    block (raising SiteError naming the field) and ``envs.data.fitting.fit_sessions`` produces it.

    >>> import numpy as np
    >>> from envs.site import load_site
    >>> params = load_site({"nodes": [{"name": "grid", "limit_kw": 50}],
    ...     "ports": [{"node": "grid", "count": 4, "max_charge_kw": 11}],
    ...     "scenario": {"generator": "fitted", "arrivals_weekday": [0.25] * 24,
    ...                  "dwell_quantiles_hours": [[1.0, 8.0]], "energy_quantiles_kwh": [[2.0, 20.0]]}})
    >>> generator = FittedGenerator.from_config(params.scenario)
    >>> episode = generator.sample(params, np.random.default_rng(0), 3)
    >>> episode.check(params)
    >>> episode.num_envs, bool(episode.ev_valid.any())
    (3, True)
    """

    arrivals_weekday: np.ndarray  # (S,) expected arrivals per slot of a weekday
    arrivals_weekend: np.ndarray  # (S,)
    day_of_week_factors: np.ndarray  # (7,) Monday..Sunday
    arrival_scale: float
    dwell_quantiles_hours: np.ndarray  # (2, D, Q) weekday and weekend tables
    energy_quantiles_kwh: np.ndarray  # (2, D', Q')
    dwell_energy_copula: tuple  # weekday, weekend: (C, C) row-conditional CDFs of the energy bin, or None
    departure_error_quantiles_hours: np.ndarray  # (2, R, E) weekday and weekend tables
    departure_error_dwell_hours: np.ndarray  # (R - 1,) increasing
    fleet_battery_kwh: np.ndarray  # (M,) sorted ascending
    fleet_max_charge_kw: np.ndarray  # (M,) at the site's port current
    fleet_max_discharge_kw: np.ndarray  # (M,)
    fleet_share: np.ndarray  # (M,) sums to 1
    base: ParametricGenerator
    cap_request_to_stay: bool = False

    def __post_init__(self):
        object.__setattr__(self, "_cap_cuts", {})  # (dt, port kW, efficiency) -> _mean_cap_cut

    @classmethod
    def from_config(cls, config: Mapping[str, Any], site_name: str = "") -> FittedGenerator:
        config = dict(config or {})
        config.pop("generator", None)

        def fail(field, problem):
            raise SiteError(f"site {site_name!r}: scenario.{field} {problem}")

        for field in PARAMETRIC_EV_FIELDS:
            if field in config:
                fail(field, "is not used by the fitted generator (generator: fitted); "
                            "scale arrivals with arrival_scale")
        parametric = {f.name for f in dataclasses.fields(ParametricGenerator)} - set(PARAMETRIC_EV_FIELDS)
        for field in config:
            if field not in parametric and field not in FITTED_FIELDS:
                known = ", ".join(sorted(parametric | set(FITTED_FIELDS)))
                fail(field, f"is not a known field (known: {known})")
        fitted = {k: config.pop(k) for k in FITTED_FIELDS if k in config}
        for field in ("arrivals_weekday", "dwell_quantiles_hours", "energy_quantiles_kwh"):
            if field not in fitted:
                fail(field, "is required by the fitted generator")
        weekday = _table(fitted["arrivals_weekday"], "arrivals_weekday", 1, fail)
        weekend = _table(fitted.get("arrivals_weekend", weekday), "arrivals_weekend", 1, fail)
        for name, rates in (("arrivals_weekday", weekday), ("arrivals_weekend", weekend)):
            if MINUTES_PER_DAY % len(rates) or len(rates) != len(weekday):
                fail(name, f"must list one rate per slot of a day (a divisor of 1440), the same for weekdays "
                           f"and weekends, got {len(rates)}")
            if np.any(rates < 0):
                fail(name, "must be >= 0")
        factors = _table(fitted.get("day_of_week_factors", [1.0] * 7), "day_of_week_factors", 1, fail)
        if len(factors) != 7 or np.any(factors < 0):
            fail("day_of_week_factors", f"must list 7 values >= 0 (Monday..Sunday), got {factors.tolist()}")
        scale = _number(fitted.get("arrival_scale", 1.0), "arrival_scale", 0.0, np.inf, fail)
        tables = {}
        for name in ("dwell_quantiles_hours", "energy_quantiles_kwh"):
            weekday_table = _table(fitted[name], name, 2, fail)
            weekend_table = _table(fitted.get(name + "_weekend", weekday_table), name + "_weekend", 2, fail)
            for field, table in ((name, weekday_table), (name + "_weekend", weekend_table)):
                rows, levels = table.shape
                if MINUTES_PER_DAY % rows or levels < 2 or table.shape != weekday_table.shape:
                    fail(field, f"must have one row per block of the day (a divisor of 1440) and >= 2 "
                                f"quantiles, weekend as weekday, got shape {table.shape}")
                if np.any(table < 0):
                    fail(field, "must be >= 0")
            tables[name] = np.stack([weekday_table, weekend_table])
        name = "dwell_energy_copula"
        copula = _copula(fitted.get(name), name, fail)
        weekend_copula = _copula(fitted[name + "_weekend"], name + "_weekend", fail) if (
            name + "_weekend" in fitted) else copula
        edges = np.asarray(fitted.get("departure_error_dwell_hours", []), dtype=np.float64).ravel()
        errors = []
        for name in ("departure_error_quantiles_hours", "departure_error_quantiles_hours_weekend"):
            table = np.atleast_2d(_table(fitted.get(name, (errors or [[0.0, 0.0]])[0]), name, None, fail))
            if (table.shape[1] < 2 or len(edges) != len(table) - 1
                    or errors and table.shape != errors[0].shape):
                fail(name, f"must have >= 2 quantiles per row and one row more than the {len(edges)} edges "
                           f"of departure_error_dwell_hours (weekend as weekday), got shape {table.shape}")
            errors.append(table)
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            fail("departure_error_dwell_hours", f"must be increasing finite stays, got {edges.tolist()}")
        current = fitted.get("port_current", "ac")
        if current not in ("ac", "dc"):
            fail("port_current", f"must be 'ac' or 'dc', got {current!r}")
        fleet = _fleet(fitted.get("fleet"), current, fail)
        cap = fitted.get("cap_request_to_stay", False)
        if not isinstance(cap, bool):
            fail("cap_request_to_stay", f"must be true or false, got {cap!r}")
        base = ParametricGenerator.from_config({**config, "sessions_per_day": 0.0}, site_name)
        return cls(weekday, weekend, factors, scale, tables["dwell_quantiles_hours"],
                   tables["energy_quantiles_kwh"], (copula, weekend_copula), np.stack(errors), edges, *fleet,
                   base, cap)

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode:
        episode = self.base.sample(params, rng, num_envs)
        clock = _EpisodeClock(params, episode.weekday)
        rates = self._rates(clock)
        demand = None
        if params.demand_forecast:
            demand = demand_windows(rates, rates * self._mean_request(params, clock), params.forecast_steps)
        evs = self._sample_evs(params, rng, clock, rates)
        return dataclasses.replace(episode, demand_forecast=demand, **evs)

    def arrival_rates(self, params: SiteParams, weekday) -> np.ndarray:
        """(B, T) expected arrivals per step of episodes starting on ``weekday`` (0 = Monday)."""
        return self._rates(_EpisodeClock(params, np.atleast_1d(weekday)))

    def mean_request_kwh(self, params: SiteParams, weekday) -> np.ndarray:
        """(B, T) expected request of an EV arriving at each step, for episodes starting on ``weekday``:
        the table's mean capped by the largest battery, less with ``cap_request_to_stay`` the mean
        cut of the stay cap (estimated from a fixed sample, ``_mean_cap_cut``; at least 0)."""
        return self._mean_request(params, _EpisodeClock(params, np.atleast_1d(weekday)))

    def _rates(self, clock: _EpisodeClock) -> np.ndarray:
        weekday_rate, weekend_rate = self.step_rates(clock.dt_minutes)
        step_of_day = clock.time_of_day // clock.dt_minutes
        rate = np.where(clock.weekend, weekend_rate[step_of_day], weekday_rate[step_of_day])
        return rate * (self.arrival_scale * self.day_of_week_factors)[clock.day_of_week]

    def _mean_request(self, params: SiteParams, clock: _EpisodeClock) -> np.ndarray:
        tables = self.energy_quantiles_kwh
        levels = (np.arange(MEAN_NODES) + 0.5) / MEAN_NODES
        rows = np.arange(tables.shape[0] * tables.shape[1])
        values = inverse_cdf(tables.reshape(len(rows), -1), np.repeat(rows, MEAN_NODES),
                             np.tile(levels, len(rows)))
        means = np.minimum(values, self.fleet_battery_kwh[-1]).reshape(tables.shape[:2] + (MEAN_NODES,))
        means = means.mean(-1)
        if self.cap_request_to_stay:
            cut = self._mean_cap_cut(params)
            # the cut is estimated from draws: where the cap takes nearly everything it may exceed the mean
            means = np.maximum(np.repeat(means, cut.shape[1] // means.shape[1], axis=1) - cut, 0.0)
        block = clock.time_of_day * means.shape[1] // MINUTES_PER_DAY
        return means[clock.weekend.astype(np.int64), block]

    def _mean_cap_cut(self, params: SiteParams) -> np.ndarray:
        """(2, L) mean kWh that ``cap_request_to_stay`` takes off the requests of weekday and weekend
        arrivals in each of the L blocks of ``_block_requests``, over CAPPED_MEAN_DRAWS EVs per block,
        cached per site."""
        key = (params.dt_hours, params.port_max_charge_kw.max(), params.port_charge_efficiency.max())
        if key not in self._cap_cuts:
            energy, cap = self._block_requests(params, CAPPED_MEAN_DRAWS)
            self._cap_cuts[key] = (energy - np.minimum(energy, cap)).mean(-1)
        return self._cap_cuts[key]

    def _block_requests(self, params: SiteParams, draws: int) -> tuple[np.ndarray, np.ndarray]:
        """Requests (capped by the battery) and stay caps (``_stay_cap``) of ``draws`` EVs arriving at
        the start of each weekday and weekend block, both (2, L, draws), L the blocks refining both the
        dwell and the energy blocks: a Latin hypercube sample (seed 0) of the uniforms of every block."""
        blocks = np.lcm(self.dwell_quantiles_hours.shape[1], self.energy_quantiles_kwh.shape[1])
        rng = np.random.default_rng(0)
        strata = rng.permuted(np.broadcast_to(np.arange(draws), (5, 2 * blocks, draws)), axis=-1)
        u = ((strata + rng.random(strata.shape)) / draws).reshape(5, -1)
        minute = np.tile(np.repeat(np.arange(blocks) * (MINUTES_PER_DAY // blocks), draws), 2)
        weekend = np.repeat([False, True], blocks * draws)
        _, dwell, energy, model = self._stays_and_requests(params, minute, weekend, u)
        cap = self._stay_cap(params, dwell, model)
        return energy.reshape(2, blocks, draws), cap.reshape(2, blocks, draws)

    def step_rates(self, dt_minutes: int) -> tuple[np.ndarray, np.ndarray]:
        """Expected arrivals per step of a weekday and of a weekend day, at ``dt_minutes``."""
        slot_edges = np.linspace(0, MINUTES_PER_DAY, len(self.arrivals_weekday) + 1)
        step_edges = np.arange(0, MINUTES_PER_DAY + 1, dt_minutes)
        return tuple(np.diff(np.interp(step_edges, slot_edges, np.r_[0.0, np.cumsum(rates)]))
                     for rates in (self.arrivals_weekday, self.arrivals_weekend))

    def _sample_evs(self, params: SiteParams, rng: np.random.Generator, clock: _EpisodeClock,
                    rates: np.ndarray):
        b, t_len = rates.shape
        time_of_day = clock.time_of_day
        counts = rng.poisson(rates)
        per_env = counts.sum(axis=1)
        total = int(per_env.sum())
        env_of = np.repeat(np.arange(b), per_env)
        arrival = np.repeat(np.tile(np.arange(t_len), b), counts.ravel())

        weekend = clock.weekend[env_of, arrival]
        u = rng.random((5, total))
        dwell_h, dwell, energy, model = self._stays_and_requests(params, time_of_day[arrival], weekend, u)
        if self.cap_request_to_stay:
            energy = np.minimum(energy, self._stay_cap(params, dwell, model))
        _, bins, levels = self.departure_error_quantiles_hours.shape
        row = np.searchsorted(self.departure_error_dwell_hours, dwell_h, side="right") + bins * weekend
        error_h = inverse_cdf(self.departure_error_quantiles_hours.reshape(2 * bins, levels), row, u[2])
        error = np.rint(error_h / params.dt_hours).astype(np.int64)
        announced = np.maximum(arrival + 1, arrival + dwell + error)
        battery = self.fleet_battery_kwh[model]
        lo, hi = self.base.soc_arrival_range
        soc = np.minimum(rng.uniform(lo, hi, total), 1.0 - energy / battery)
        consent = rng.random(total) < self.base.v2g_consent_share

        return pack_evs(
            b, env_of, arrival_step=arrival, departure_step=arrival + dwell,
            announced_departure_step=announced, battery_kwh=battery, soc_arrival=soc,
            requested_kwh=energy, max_charge_kw=self.fleet_max_charge_kw[model],
            max_discharge_kw=self.fleet_max_discharge_kw[model],
            v2g_consent=consent, min_soc=self.base.min_soc)

    def _stays_and_requests(self, params: SiteParams, minute_of_day: np.ndarray, weekend: np.ndarray,
                            u: np.ndarray):
        """Stay (hours and whole steps), request (capped by the battery) and car model of EVs arriving
        at ``minute_of_day`` on weekend days or not, from the uniforms ``u`` (5, E): rows 0, 1 and 4
        draw the stay and energy levels (row 1 is overwritten by the copula), row 3 the car model."""
        for day_type, cdf in enumerate(self.dwell_energy_copula):
            if cdf is not None:
                picked = weekend == bool(day_type)
                row = np.minimum((u[0, picked] * len(cdf)).astype(np.int64), len(cdf) - 1)
                column = (cdf[row] < u[1, picked, None]).sum(axis=1)
                u[1, picked] = (column + u[4, picked]) / len(cdf)
        dwell_h = _conditional(self.dwell_quantiles_hours, minute_of_day, weekend, u[0])
        energy = _conditional(self.energy_quantiles_kwh, minute_of_day, weekend, u[1])
        dwell = np.maximum(1, np.rint(dwell_h / params.dt_hours)).astype(np.int64)

        cum_share = np.cumsum(self.fleet_share)
        fits = np.minimum(np.searchsorted(self.fleet_battery_kwh, energy, side="left"), len(cum_share) - 1)
        start = np.where(fits > 0, cum_share[fits - 1], 0.0)
        model = np.searchsorted(cum_share, start + u[3] * (cum_share[-1] - start), side="right")
        model = np.minimum(model, len(cum_share) - 1)
        return dwell_h, dwell, np.minimum(energy, self.fleet_battery_kwh[model]), model

    def _stay_cap(self, params: SiteParams, dwell: np.ndarray, model: np.ndarray) -> np.ndarray:
        """The most kWh EVs of car ``model`` can take in ``dwell`` steps at full power (no taper)."""
        power = np.minimum(self.fleet_max_charge_kw[model], params.port_max_charge_kw.max())
        return dwell * params.dt_hours * power * params.port_charge_efficiency.max()


class _EpisodeClock:
    """Clock time and day of every step of a batch of episodes starting on ``weekday``."""

    def __init__(self, params: SiteParams, weekday: np.ndarray):
        self.dt_minutes = round(params.dt_hours * 60)
        minutes = params.start_minute + self.dt_minutes * np.arange(params.horizon_steps)
        self.time_of_day = minutes % MINUTES_PER_DAY
        first = np.asarray(weekday, dtype=np.int64)[:, None]
        self.day_of_week = (first + minutes[None, :] // MINUTES_PER_DAY) % 7
        self.weekend = self.day_of_week >= 5


def inverse_cdf(table: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Values at levels ``u`` of the piecewise-linear inverse CDFs ``table[row]`` (Q equal level steps)."""
    q = table.shape[1]
    position = u * (q - 1)
    index = np.minimum(position.astype(np.int64), q - 2)
    flat = table.ravel()
    left = flat[row * q + index]
    return left + (position - index) * (flat[row * q + index + 1] - left)


def _conditional(tables: np.ndarray, minute_of_day: np.ndarray, weekend: np.ndarray, u: np.ndarray):
    days, blocks, levels = tables.shape
    row = minute_of_day * blocks // MINUTES_PER_DAY + blocks * weekend
    return inverse_cdf(tables.reshape(days * blocks, levels), row, u)


def _copula(value, field, fail) -> np.ndarray | None:
    if value is None:
        return None
    table = _table(value, field, 2, fail)
    if table.shape[0] != table.shape[1] or np.any(table < 0) or np.any(table.sum(axis=1) <= 0):
        fail(field, f"must be a square table of frequencies >= 0 with positive rows, got shape {table.shape}")
    cdf = np.cumsum(table, axis=1)
    return cdf / cdf[:, -1:]


def _number(value, field, low, high, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        fail(field, f"must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _table(value, field, ndim, fail) -> np.ndarray:
    try:
        table = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        fail(field, "must be a list of numbers" + (" per row (rows of equal length)" if ndim == 2 else ""))
    if table.size == 0 or (table.ndim != ndim if ndim else table.ndim not in (1, 2)):
        fail(field, f"must be a non-empty {'list' if ndim == 1 else 'list of equal-length lists'} of numbers")
    if not np.all(np.isfinite(table)):
        fail(field, "must be finite")
    if ndim != 1 and "copula" not in field and np.any(np.diff(table, axis=-1) < 0):
        fail(field, "must be nondecreasing along each row (quantiles)")
    return table


def _fleet(fleet, current, fail) -> tuple[np.ndarray, ...]:
    if fleet is None:
        fleet = [dataclasses.asdict(m) for m in ParametricGenerator.fleet]
    if not isinstance(fleet, Sequence) or not fleet:
        fail("fleet", "must be a non-empty list of car models")
    rows = []
    for i, model in enumerate(fleet):
        if not isinstance(model, Mapping):
            fail(f"fleet[{i}]", "must be a mapping")
        unknown = sorted(set(model) - set(FLEET_KEYS))
        if unknown:
            fail(f"fleet[{i}].{unknown[0]}", f"is not a known field (known: {', '.join(FLEET_KEYS)})")
        values = {}
        for key in FLEET_KEYS:
            default = {"max_discharge_kw": 0.0, "share": 1.0,
                       "max_dc_charge_kw": model.get("max_charge_kw"),
                       "max_dc_discharge_kw": model.get("max_discharge_kw", 0.0)}.get(key)
            value = model.get(key, default)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                fail(f"fleet[{i}].{key}", f"must be a finite number >= 0, got {value!r}")
            values[key] = float(value)
        for key in ("battery_kwh", "max_charge_kw", "share"):
            if values[key] <= 0:
                fail(f"fleet[{i}].{key}", f"must be > 0, got {values[key]:g}")
        prefix = "max_dc_" if current == "dc" else "max_"
        rows.append((values["battery_kwh"], values[prefix + "charge_kw"], values[prefix + "discharge_kw"],
                     values["share"]))
    battery, charge, discharge, share = np.array(sorted(rows)).T
    return battery, charge, discharge, share / share.sum()
