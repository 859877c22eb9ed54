"""Scenario generator fitted to charging sessions: per-slot arrival rates and conditional quantile tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.episode import NO_ARRIVAL, Episode
from envs.parametric import ParametricGenerator
from envs.site import MINUTES_PER_DAY, SiteError, SiteParams

FITTED_FIELDS = ("arrivals_weekday", "arrivals_weekend", "day_of_week_factors", "arrival_scale",
                 "dwell_quantiles_hours", "dwell_quantiles_hours_weekend", "energy_quantiles_kwh",
                 "energy_quantiles_kwh_weekend", "dwell_energy_copula", "dwell_energy_copula_weekend",
                 "departure_error_quantiles_hours", "departure_error_dwell_hours", "port_current", "fleet")
PARAMETRIC_EV_FIELDS = ("sessions_per_day", "weekend_factor", "peak_hours", "peak_widths_hours",
                        "peak_weights", "dwell_mean_hours", "dwell_sigma", "energy_mean_kwh", "energy_sigma",
                        "departure_error_minutes")
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
        increasing edges ``departure_error_dwell_hours``; it is at least one step after arrival.
        The car model comes from ``fleet`` (shares), among the models whose battery holds the
        request (the largest one when none does); the request is capped by the battery, and the
        arrival SoC, uniform in ``soc_arrival_range``, is capped so that the request fits.
        ``port_current`` ("ac" or "dc") picks the fleet's AC or DC power limits.

    Arguments:
        base: the ParametricGenerator of the remaining scenario fields (prices, loads, PV,
            carbon, setpoint, outages, weekday, V2G consent, minimum SoC); it draws the
            exogenous series and port ranks, this generator replaces the EV arrays.

    A site selects it with ``scenario: {generator: fitted, ...}``; ``from_config`` reads that
    block (raising SiteError naming the field) and ``fit_sessions`` produces it.

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
    departure_error_quantiles_hours: np.ndarray  # (R, E)
    departure_error_dwell_hours: np.ndarray  # (R - 1,) increasing
    fleet_battery_kwh: np.ndarray  # (M,) sorted ascending
    fleet_max_charge_kw: np.ndarray  # (M,) at the site's port current
    fleet_max_discharge_kw: np.ndarray  # (M,)
    fleet_share: np.ndarray  # (M,) sums to 1
    base: ParametricGenerator

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
        error = _table(fitted.get("departure_error_quantiles_hours", [0.0, 0.0]),
                       "departure_error_quantiles_hours", None, fail)
        error = error.reshape(-1, error.shape[-1])
        edges = np.asarray(fitted.get("departure_error_dwell_hours", []), dtype=np.float64).ravel()
        if error.shape[1] < 2 or len(edges) != len(error) - 1:
            fail("departure_error_quantiles_hours", f"must have >= 2 quantiles per row and one row more than "
                 f"departure_error_dwell_hours has edges, got shape {error.shape} and {len(edges)} edges")
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            fail("departure_error_dwell_hours", f"must be increasing finite stays, got {edges.tolist()}")
        current = fitted.get("port_current", "ac")
        if current not in ("ac", "dc"):
            fail("port_current", f"must be 'ac' or 'dc', got {current!r}")
        fleet = _fleet(fitted.get("fleet"), current, fail)
        base = ParametricGenerator.from_config({**config, "sessions_per_day": 0.0}, site_name)
        return cls(weekday, weekend, factors, scale, tables["dwell_quantiles_hours"],
                   tables["energy_quantiles_kwh"], (copula, weekend_copula), error, edges, *fleet, base)

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode:
        episode = self.base.sample(params, rng, num_envs)
        return dataclasses.replace(episode, **self._sample_evs(params, rng, episode.weekday))

    def step_rates(self, dt_minutes: int) -> tuple[np.ndarray, np.ndarray]:
        """Expected arrivals per step of a weekday and of a weekend day, at ``dt_minutes``."""
        slot_edges = np.linspace(0, MINUTES_PER_DAY, len(self.arrivals_weekday) + 1)
        step_edges = np.arange(0, MINUTES_PER_DAY + 1, dt_minutes)
        return tuple(np.diff(np.interp(step_edges, slot_edges, np.r_[0.0, np.cumsum(rates)]))
                     for rates in (self.arrivals_weekday, self.arrivals_weekend))

    def _sample_evs(self, params: SiteParams, rng: np.random.Generator, weekday: np.ndarray):
        b, t_len = len(weekday), params.horizon_steps
        dt_minutes = round(params.dt_hours * 60)
        minutes = params.start_minute + dt_minutes * np.arange(t_len)
        time_of_day = minutes % MINUTES_PER_DAY
        day_of_week = (weekday[:, None] + minutes[None, :] // MINUTES_PER_DAY) % 7
        weekday_rate, weekend_rate = self.step_rates(dt_minutes)
        step_of_day = time_of_day // dt_minutes
        rate = np.where(day_of_week >= 5, weekend_rate[step_of_day], weekday_rate[step_of_day])
        counts = rng.poisson(rate * (self.arrival_scale * self.day_of_week_factors)[day_of_week])
        per_env = counts.sum(axis=1)
        total, k = int(per_env.sum()), max(int(per_env.max(initial=0)), 1)
        env_of = np.repeat(np.arange(b), per_env)
        slot = np.arange(total) - np.repeat(np.cumsum(per_env) - per_env, per_env)
        arrival = np.repeat(np.tile(np.arange(t_len), b), counts.ravel())

        weekend = day_of_week[env_of, arrival] >= 5
        u = rng.random((5, total))
        for day_type, cdf in enumerate(self.dwell_energy_copula):
            if cdf is not None:
                picked = weekend == bool(day_type)
                row = np.minimum((u[0, picked] * len(cdf)).astype(np.int64), len(cdf) - 1)
                column = (cdf[row] < u[1, picked, None]).sum(axis=1)
                u[1, picked] = (column + u[4, picked]) / len(cdf)
        dwell_h = _conditional(self.dwell_quantiles_hours, time_of_day[arrival], weekend, u[0])
        energy = _conditional(self.energy_quantiles_kwh, time_of_day[arrival], weekend, u[1])
        row = np.searchsorted(self.departure_error_dwell_hours, dwell_h, side="right")
        error_h = inverse_cdf(self.departure_error_quantiles_hours, row, u[2])
        dwell = np.maximum(1, np.rint(dwell_h / params.dt_hours)).astype(np.int64)
        error = np.rint(error_h / params.dt_hours).astype(np.int64)
        announced = np.maximum(arrival + 1, arrival + dwell + error)

        cum_share = np.cumsum(self.fleet_share)
        fits = np.minimum(np.searchsorted(self.fleet_battery_kwh, energy, side="left"), len(cum_share) - 1)
        start = np.where(fits > 0, cum_share[fits - 1], 0.0)
        model = np.searchsorted(cum_share, start + u[3] * (cum_share[-1] - start), side="right")
        model = np.minimum(model, len(cum_share) - 1)
        battery = self.fleet_battery_kwh[model]
        energy = np.minimum(energy, battery)
        lo, hi = self.base.soc_arrival_range
        soc = np.minimum(rng.uniform(lo, hi, total), 1.0 - energy / battery)
        consent = rng.random(total) < self.base.v2g_consent_share

        def padded(values, fill, dtype):
            out = np.full((b, k), fill, dtype=dtype)
            out[env_of, slot] = values
            return out

        return {
            "ev_valid": padded(True, False, bool),
            "ev_arrival_step": padded(arrival, NO_ARRIVAL, np.int64),
            "ev_departure_step": padded(arrival + dwell, NO_ARRIVAL + 1, np.int64),
            "ev_announced_departure_step": padded(announced, NO_ARRIVAL + 1, np.int64),
            "ev_battery_kwh": padded(battery, 0.0, np.float64),
            "ev_soc_arrival": padded(soc, 0.0, np.float64),
            "ev_requested_kwh": padded(energy, 0.0, np.float64),
            "ev_max_charge_kw": padded(self.fleet_max_charge_kw[model], 0.0, np.float64),
            "ev_max_discharge_kw": padded(self.fleet_max_discharge_kw[model], 0.0, np.float64),
            "ev_v2g_consent": padded(consent, False, bool),
            "ev_min_soc": padded(np.full(total, self.base.min_soc), 0.0, np.float64),
        }


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


def fleet_from_ev_specs(specs: Mapping[str, Mapping[str, Any]], decimals: int = 3) -> list[dict[str, float]]:
    """Fleet mix from EV specs keyed by model name (EV2Gym's ev_specs JSON layout): models with the
    same battery and limits are merged and shares follow the registration counts."""
    merged: dict[tuple, float] = {}
    for spec in specs.values():
        key = (float(spec["battery_capacity"]), float(spec["max_ac_charge_power"]),
               float(spec.get("max_ac_discharge_power", 0.0)), float(spec.get("max_dc_charge_power", 0.0)),
               float(spec.get("max_dc_discharge_power", 0.0)))
        merged[key] = merged.get(key, 0.0) + float(spec.get("number_of_registrations", 1.0))
    total = sum(merged.values())
    return [{"battery_kwh": b, "max_charge_kw": ac, "max_discharge_kw": ac_out, "max_dc_charge_kw": dc,
             "max_dc_discharge_kw": dc_out, "share": round(count / total, decimals)}
            for (b, ac, ac_out, dc, dc_out), count in sorted(merged.items(), key=lambda item: -item[1])]


def fit_sessions(sessions, dt_minutes: int = 15, tz: str | None = None, *, block_minutes: int = 60,
                 num_quantiles: int = 21, min_block_sessions: int = 50, copula_bins: int = 20,
                 error_dwell_bins: int = 5, energy_column: str = "requested_kwh", start=None,
                 end=None) -> dict[str, Any]:
    """Fitted-generator fields (a site's ``scenario`` block, ``generator: fitted``) from sessions.

    ``sessions`` is a canonical session DataFrame (arrival, departure, announced_departure,
    energy); times are taken in ``tz`` (default: as given). Arrival rates are the mean counts
    per ``dt_minutes`` slot over the weekdays and the weekend days from ``start`` to ``end``
    (default: the first and last arrival dates), with day-of-week factors. Dwell and energy
    (``energy_column``) tables hold ``num_quantiles`` quantiles per ``block_minutes`` block of
    arrival time, for weekdays and weekends; a block with fewer than ``min_block_sessions``
    sessions pools its nearest neighbouring blocks until it has them. The copula is the
    histogram of the dwell and energy ranks within blocks on up to ``copula_bins`` bins (fewer
    when there are under 10 sessions per cell), balanced to uniform margins; the
    announced-departure error gets one quantile row per bin of ``error_dwell_bins`` equally
    filled stay bins.
    """
    from scipy.stats import rankdata

    if MINUTES_PER_DAY % dt_minutes or MINUTES_PER_DAY % block_minutes:
        raise ValueError(f"dt_minutes ({dt_minutes}) and block_minutes ({block_minutes}) must divide 1440")
    data = session_arrays(sessions, tz, energy_column, start, end)
    slot = (data["minute"] // dt_minutes).astype(np.int64)
    counts = np.zeros((7, MINUTES_PER_DAY // dt_minutes))
    np.add.at(counts, (data["day_of_week"], slot), 1.0)
    days = data["days_per_weekday"]
    per_day = counts.sum(axis=1) / np.maximum(days, 1)
    factors, profiles = np.ones(7), {}
    for name, group in (("weekday", np.arange(5)), ("weekend", np.arange(5, 7))):
        group = group[days[group] > 0]
        if len(group):
            profiles[name] = (counts[group] / days[group, None]).mean(axis=0)
            mean = per_day[group].mean()
            factors[group] = per_day[group] / mean if mean > 0 else 1.0
    profiles.setdefault("weekday", profiles.get("weekend"))
    profiles.setdefault("weekend", profiles["weekday"])

    levels = np.linspace(0.0, 1.0, num_quantiles)
    blocks = MINUTES_PER_DAY // block_minutes
    block = (data["minute"] // block_minutes).astype(np.int64)
    weekend = data["day_of_week"] >= 5
    if (weekend.sum() < min_block_sessions) or (~weekend).sum() < min_block_sessions:
        weekend = np.zeros_like(weekend)

    def table(values, day_type):
        out = np.empty((blocks, num_quantiles))
        values, where = values[weekend == day_type], block[weekend == day_type]
        need = min(max(min_block_sessions, 1), len(values))
        for d in range(blocks):
            distance = np.abs(where - d)
            distance = np.minimum(distance, blocks - distance)
            out[d] = np.quantile(values[distance <= np.partition(distance, need - 1)[need - 1]], levels)
        return out

    fitted = {"generator": "fitted",
              "arrivals_weekday": _rounded(profiles["weekday"], 5),
              "arrivals_weekend": _rounded(profiles["weekend"], 5),
              "day_of_week_factors": _rounded(factors, 4)}
    for name, key in (("dwell_quantiles_hours", "dwell_hours"), ("energy_quantiles_kwh", "energy_kwh")):
        values = data[key]
        fitted[name] = _rounded(table(values, False), 4)
        if weekend.any():
            fitted[name + "_weekend"] = _rounded(table(values, True), 4)

    group = block + blocks * weekend
    ranks = np.zeros((2, len(group)))
    for g in np.unique(group):
        members = group == g
        for i, values in enumerate((data["dwell_hours"], data["energy_kwh"])):
            ranks[i, members] = (rankdata(values[members]) - 0.5) / members.sum()
    for day_type, suffix in ((False, ""), (True, "_weekend")):
        if day_type and not weekend.any():
            break
        dwell_rank, energy_rank = ranks[:, weekend == day_type]
        bins = int(np.clip(np.sqrt(len(dwell_rank) / 10), 1, copula_bins))
        counts, _, _ = np.histogram2d(dwell_rank, energy_rank, bins=bins, range=[[0, 1], [0, 1]])
        table = counts + 1e-3
        for _ in range(100):
            table /= table.sum(axis=1, keepdims=True)
            table /= table.sum(axis=0, keepdims=True)
        fitted["dwell_energy_copula" + suffix] = _rounded(table / bins, 6)

    known = np.isfinite(data["error_hours"])
    error, stay = data["error_hours"][known], data["dwell_hours"][known]
    if not len(error):
        error, stay = np.zeros(1), np.zeros(1)
    edges = np.unique(np.round(np.quantile(stay, np.arange(1, error_dwell_bins) / error_dwell_bins), 3))
    row = np.searchsorted(edges, stay, side="right")
    fitted["departure_error_quantiles_hours"] = [_rounded(np.quantile(error[row == r], levels), 4)
                                                 for r in range(len(edges) + 1)]
    fitted["departure_error_dwell_hours"] = edges.tolist()
    return fitted


def _rounded(values: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def session_arrays(sessions, tz: str | None = None, energy_column: str = "requested_kwh", start=None,
                   end=None) -> dict[str, Any]:
    """Arrays of the sessions arriving from ``start`` to ``end`` (dates, inclusive) with a positive stay:
    local arrival minute of day, day of week (0 = Monday), dwell and announced-minus-real departure
    in hours (NaN when unknown), energy; and the number of calendar days per day of week."""
    import pandas as pd

    missing = sorted({"arrival", "departure", energy_column} - set(sessions.columns))
    if missing:
        raise ValueError(f"sessions lack the column(s) {missing}")

    def local(column):
        times = pd.to_datetime(sessions[column])
        if tz is not None:
            times = times.dt.tz_convert(tz) if times.dt.tz is not None else times.dt.tz_localize(tz)
        return times

    arrival, departure = local("arrival"), local("departure")
    energy = pd.to_numeric(sessions[energy_column], errors="coerce")
    dwell = (departure - arrival).dt.total_seconds() / 3600
    if "announced_departure" in sessions.columns:
        error = (local("announced_departure") - departure).dt.total_seconds() / 3600
    else:
        error = pd.Series(np.nan, index=sessions.index)
    date = (arrival.dt.tz_localize(None) if arrival.dt.tz is not None else arrival).dt.normalize()
    valid = dwell.gt(0) & energy.ge(0) & date.notna()
    if not valid.any():
        raise ValueError("no session with a positive stay and a known energy")
    first = pd.Timestamp(start) if start is not None else date[valid].min()
    last = pd.Timestamp(end) if end is not None else date[valid].max()
    keep = (valid & date.ge(first) & date.le(last)).to_numpy()
    if not keep.any():
        raise ValueError(f"no session arrives between {first.date()} and {last.date()}")
    arrival = arrival[keep]
    calendar = pd.date_range(first, last, freq="D")
    return {
        "minute": (arrival.dt.hour * 60 + arrival.dt.minute + arrival.dt.second / 60).to_numpy(np.float64),
        "day_of_week": arrival.dt.day_of_week.to_numpy(np.int64),
        "dwell_hours": dwell[keep].to_numpy(np.float64),
        "energy_kwh": energy[keep].to_numpy(np.float64),
        "error_hours": error[keep].to_numpy(np.float64),
        "days_per_weekday": np.bincount(calendar.day_of_week, minlength=7).astype(np.float64),
        "first_day": str(first.date()),
        "last_day": str(last.date()),
    }


def ks_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov distance (largest gap of the empirical CDFs); None if one is empty."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if not len(a) or not len(b):
        return None
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(gap).max())


def generated_sessions(generator, params: SiteParams, num_days: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The EVs of ``num_days`` one-day episodes (midnight to midnight, whole weeks, weekdays cycling
    Monday..Sunday): arrival step, stay and announced-minus-real departure in steps, energy, and
    whether the day is a weekend day; plus the EV count and weekend flag of each day."""
    day = params.replace(horizon_steps=params.steps_per_day, start_minute=0)
    num_days = 7 * -(-int(num_days) // 7)
    week = tuple(range(7))
    if isinstance(generator, FittedGenerator):
        generator = dataclasses.replace(generator, base=dataclasses.replace(generator.base, weekday=week))
    else:
        generator = dataclasses.replace(generator, weekday=week)
    episode = generator.sample(day, np.random.default_rng(seed), num_days)
    valid = episode.ev_valid
    weekend_day = episode.weekday >= 5
    arrival = episode.ev_arrival_step[valid]
    return {
        "slot": arrival,
        "weekend": np.broadcast_to(weekend_day[:, None], valid.shape)[valid],
        "dwell_steps": episode.ev_departure_step[valid] - arrival,
        "error_steps": episode.ev_announced_departure_step[valid] - episode.ev_departure_step[valid],
        "energy_kwh": episode.ev_requested_kwh[valid],
        "per_day": valid.sum(axis=1),
        "day_weekend": weekend_day,
    }


def fidelity(sessions, generator, params: SiteParams, num_days: int = 2800, *, tz: str | None = None,
             seed: int = 0, energy_column: str = "requested_kwh", start=None, end=None) -> dict[str, Any]:
    """How closely ``generator`` reproduces ``sessions`` on the site's time grid.

    For all days, weekdays and weekend days: two-sample KS distances of the arrival time of day,
    the stay, the announced-minus-real departure (all in steps of the site, the sessions rounded
    as the generator rounds) and the energy, between the sessions and ``num_days`` generated
    days; the Spearman correlation of stay and energy in both; and the mean sessions per day of
    both with the relative error of the generated one.
    """
    data = session_arrays(sessions, tz, energy_column, start, end)
    dt_hours, dt_minutes = params.dt_hours, round(params.dt_hours * 60)
    model = generated_sessions(generator, params, num_days, seed)
    dwell = np.maximum(1, np.rint(data["dwell_hours"] / dt_hours)).astype(np.int64)
    known = np.isfinite(data["error_hours"])
    error = np.maximum(1, dwell + np.rint(np.where(known, data["error_hours"], 0) / dt_hours)) - dwell
    observed = {"slot": data["minute"] // dt_minutes, "dwell_steps": dwell, "error_steps": error,
                "energy_kwh": data["energy_kwh"], "weekend": data["day_of_week"] >= 5}
    days = data["days_per_weekday"]
    report: dict[str, Any] = {"sessions": int(len(dwell)), "first_day": data["first_day"],
                              "last_day": data["last_day"], "days": int(days.sum()),
                              "generated_days": int(len(model["per_day"])), "dt_minutes": dt_minutes}
    for group, weekend in (("overall", None), ("weekday", False), ("weekend", True)):
        mask, generated, day_mask = (np.ones(len(x), bool) if weekend is None else x == weekend
                                     for x in (observed["weekend"], model["weekend"], model["day_weekend"]))
        num_days_data = days.sum() if weekend is None else days[5:].sum() if weekend else days[:5].sum()
        figures = {f"{name}_ks": ks_distance(observed[key][mask & (known if key == "error_steps" else True)],
                                             model[key][generated])
                   for name, key in (("arrival", "slot"), ("dwell", "dwell_steps"), ("energy", "energy_kwh"),
                                     ("departure_error", "error_steps"))}
        figures["dwell_energy_spearman"] = _spearman(dwell[mask], data["energy_kwh"][mask])
        figures["model_dwell_energy_spearman"] = _spearman(model["dwell_steps"][generated],
                                                           model["energy_kwh"][generated])
        report[group] = {**figures, **_rate_figures(mask.sum() / max(num_days_data, 1),
                                                    model["per_day"][day_mask].mean())}
    return _round_report(report)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    if len(a) < 3:
        return None
    ranks = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    return float(ranks) if np.isfinite(ranks) else None


def _rate_figures(observed: float, generated: float) -> dict[str, float | None]:
    return {"sessions_per_day": float(observed), "model_sessions_per_day": float(generated),
            "sessions_per_day_rel_error": float(generated / observed - 1) if observed > 0 else None}


def _round_report(report):
    if isinstance(report, dict):
        return {key: _round_report(value) for key, value in report.items()}
    return round(report, 4) if isinstance(report, float) else report


READERS = ("acn_csv", "acn_json", "csv")
_PRODUCED = ("arrivals_weekday", "arrivals_weekend", "day_of_week_factors", "dwell_quantiles_hours",
             "dwell_quantiles_hours_weekend", "energy_quantiles_kwh", "energy_quantiles_kwh_weekend",
             "dwell_energy_copula_weekend")
_GENERATED = "# fit_scenario: "


def read_sessions(path, format: str = "acn_csv", **options):
    """The sessions of one file or a list of files (concatenated) read by the named reader of
    ``envs.data.sessions``: "acn_csv", "acn_json" or "csv" (``read_sessions_csv``)."""
    import pandas as pd

    from envs.data import sessions as readers

    if format not in READERS:
        raise ValueError(f"format must be one of {', '.join(READERS)}, got {format!r}")
    read = {"acn_csv": readers.read_acn_csv, "acn_json": readers.read_acn_json,
            "csv": readers.read_sessions_csv}[format]
    paths = [path] if isinstance(path, (str, bytes)) or not isinstance(path, Sequence) else list(path)
    return pd.concat([read(p, **options) for p in paths], ignore_index=True)


def fit_site_preset(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fit a site preset as ``configs/fit_scenario.yaml`` describes, write it (YAML) and its fidelity
    figures (JSON), and return the figures.

    The site block is ``site_from``'s (a preset name or a YAML path) with ``site`` replacing
    top-level fields; the scenario keeps ``site_from``'s fields that no fit produces (with
    ``keep_scenario``), then ``scenario``, then the fitted fields (``default_fleet`` when no
    fleet is given). Sessions come from ``sessions.path`` (a file, a list, or for
    ``format: elaad`` the ElaadNL folder).
    """
    import json
    from pathlib import Path

    from envs.parametric import generator_for
    from envs.site import load_site

    source, options = dict(cfg["sessions"]), dict(cfg.get("fit") or {})
    days, seed = int(cfg.get("fidelity_days", 2800)), int(cfg.get("seed", 0))
    path = source["path"]
    names = [Path(p).name for p in ([path] if isinstance(path, str) else path)]
    if source["format"] == "elaad":
        from envs.data.elaad import elaad_fidelity, elaad_scenario, read_elaad

        stats = read_elaad(path, source["kind"])
        volume = source["sessions_per_weekday"]
        fitted = elaad_scenario(stats, volume, weekend_ratio=source.get("weekend_ratio"),
                                block_minutes=options.get("block_minutes", 30),
                                num_quantiles=options.get("num_quantiles", 41))
        described = [f"scenario from the ElaadNL statistics ({Path(path).name}/, {source['kind']} charging) "
                     f"at {volume:g} sessions per weekday"]

        def evaluate(generator, params):
            return elaad_fidelity(stats, generator, params, days, seed)
    else:
        sessions = read_sessions(path, source["format"], **(source.get("reader") or {}))
        window = {"start": source.get("start"), "end": source.get("end")}
        fitted = fit_sessions(sessions, **options, **window)
        described = [f"scenario fitted to {', '.join(names)}"]

        def evaluate(generator, params):
            return fidelity(sessions, generator, params, days, tz=options.get("tz"), seed=seed,
                            energy_column=options.get("energy_column", "requested_kwh"), **window)

    header, spec = _site_source(cfg.get("site_from"))
    carried = dict(spec.pop("scenario", None) or {}) if cfg.get("keep_scenario", True) else {}
    for key in ("generator", *PARAMETRIC_EV_FIELDS, *_PRODUCED):
        carried.pop(key, None)
    output = Path(cfg["output"])
    spec = {"name": output.stem, **{k: v for k, v in spec.items() if k != "name"}, **(cfg.get("site") or {})}
    scenario = {"generator": "fitted", **carried, **(cfg.get("scenario") or {}), **fitted}
    if "fleet" not in scenario and cfg.get("default_fleet"):
        scenario["fleet"] = list(cfg["default_fleet"])
    spec["scenario"] = scenario
    params = load_site(spec)
    figures = evaluate(generator_for(params), params)
    overall = figures["overall"]
    if "sessions" in figures:
        energy = options.get("energy_column", "requested_kwh")
        described.append(f"{figures['sessions']} sessions arriving {figures['first_day']} .. "
                         f"{figures['last_day']}, energy from {energy}")
    described.append("fidelity: KS arrival {arrival_ks}, dwell {dwell_ks}, energy {energy_ks}; sessions per "
                     "day {model_sessions_per_day} vs {sessions_per_day}".format(**overall))
    comment = cfg.get("comment")
    if comment:
        header = [f"# {line}".rstrip() for line in str(comment).strip().splitlines()]
    lines = [*header, *(_GENERATED + line for line in described)]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n" + _dump_yaml(spec))
    fidelity_path = Path(cfg.get("fidelity_path") or output.with_suffix(".fidelity.json"))
    fidelity_path.parent.mkdir(parents=True, exist_ok=True)
    fidelity_path.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _site_source(site_from) -> tuple[list[str], dict[str, Any]]:
    from importlib import resources
    from pathlib import Path

    import yaml

    if site_from is None:
        return [], {}
    path = Path(str(site_from))
    if not path.exists():
        path = resources.files("envs") / "sites" / f"{site_from}.yaml"
    if not path.is_file():
        raise SiteError(f"site_from {str(site_from)!r} is neither a YAML file nor a preset")
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith(_GENERATED):
            header.append(line)
    return header, dict(yaml.safe_load(text) or {})


def _dump_yaml(spec: Mapping[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def is_scalar(value):
        return not isinstance(value, (dict, list)) or (isinstance(value, list) and all(map(is_scalar, value)))

    def mapping(dumper, data):
        flow = all(is_scalar(v) for v in data.values()) and len(data) <= 8
        return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)

    def sequence(dumper, data):
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=all(map(is_scalar, data)))

    Dumper.add_representer(dict, mapping)
    Dumper.add_representer(list, sequence)
    Dumper.add_representer(tuple, sequence)
    return yaml.dump(dict(spec), Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True)
