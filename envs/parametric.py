"""The simple parametric scenario generator: Poisson arrivals, lognormal stays, TOU-shaped prices."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.episode import Episode, demand_windows, pack_evs
from envs.errors import cut, cut_key
from envs.limits import above
from envs.scenario_fields import MAX_SIGMA, MIN_PEAK_WIDTH_HOURS, SEQUENCE_FIELDS, ScenarioFields
from envs.site import SiteError, SiteParams

_DEFAULT_PRICES = (0.18, 0.17, 0.16, 0.16, 0.17, 0.19, 0.23, 0.28, 0.30, 0.27, 0.24, 0.22,
                   0.21, 0.21, 0.22, 0.24, 0.27, 0.32, 0.35, 0.33, 0.29, 0.25, 0.22, 0.20)
_DEFAULT_CARBON = (0.30, 0.29, 0.28, 0.28, 0.29, 0.31, 0.34, 0.36, 0.33, 0.28, 0.24, 0.21,
                   0.20, 0.20, 0.21, 0.24, 0.29, 0.35, 0.39, 0.38, 0.36, 0.34, 0.32, 0.31)


@dataclasses.dataclass(frozen=True)
class EvModel:
    battery_kwh: float
    max_charge_kw: float
    max_discharge_kw: float = 0.0
    share: float = 1.0


@dataclasses.dataclass(frozen=True)
class ParametricGenerator:
    """Workplace-style scenario from a handful of parameters (the ``scenario`` block of a site).

    Arrivals are a non-homogeneous Poisson process whose daily profile is a mixture of Gaussian
    peaks (``peak_hours``, ``peak_widths_hours``, ``peak_weights``) scaled to
    ``sessions_per_day`` (times ``weekend_factor`` on Saturday and Sunday). Stays and requests
    are lognormal with the given means; the battery and power limits come from ``fleet``; the
    announced departure is the real one plus Gaussian noise. Prices and carbon follow hourly
    profiles with multiplicative noise (prices times ``price_weekend_factor`` on weekends);
    loads are a base plus a Gaussian bump; PV is a clipped sine with a random daily cloud
    factor. Outages fail each port independently at
    ``failure_rate_per_day`` and repair after ``repair_hours``. ``weekday`` fixes the first
    day of every episode (0 = Monday); a list cycles over the envs of a batch (``[0, ..., 6]``
    makes seven envs a week); None draws it at random.
    """

    sessions_per_day: float = 40.0
    weekend_factor: float = 0.3
    peak_hours: Sequence[float] = (8.5, 13.0)
    peak_widths_hours: Sequence[float] = (1.0, 2.0)
    peak_weights: Sequence[float] = (0.75, 0.25)
    dwell_mean_hours: float = 6.0
    dwell_sigma: float = 0.5
    energy_mean_kwh: float = 12.0
    energy_sigma: float = 0.6
    departure_error_minutes: float = 30.0
    soc_arrival_range: Sequence[float] = (0.2, 0.6)
    v2g_consent_share: float = 0.5
    min_soc: float = 0.2
    fleet: Sequence[EvModel] = (EvModel(60.0, 7.4, 7.4, 0.6), EvModel(40.0, 6.6, 0.0, 0.4))
    price_hourly_eur_kwh: Sequence[float] = _DEFAULT_PRICES
    price_noise: float = 0.1
    price_weekend_factor: float = 0.85
    export_price_factor: float = 0.8
    tariff_eur_kwh: float = 0.35
    carbon_hourly_kg_kwh: Sequence[float] = _DEFAULT_CARBON
    loads: Sequence[Mapping[str, Any]] = ()
    pv: Sequence[Mapping[str, Any]] = ()
    setpoint_kw: float = 0.0
    failure_rate_per_day: float = 0.0
    repair_hours: float = 4.0
    weekday: int | Sequence[int] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], site_name: str = "") -> ParametricGenerator:
        where = f"site {cut(site_name)}: scenario"
        if config is not None and not isinstance(config, Mapping):
            raise SiteError(f"{where} must be a mapping of fields, got {cut(config)}")
        config = dict(config or {})
        config.pop("generator", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((key for key in config if key not in names), key=str)
        if unknown:
            raise SiteError(f"{where}.{cut_key(unknown[0])} is not a known field "
                            f"(known: {', '.join(sorted(names))})")
        check = ScenarioFields(where)
        for key, value in config.items():
            if key in SEQUENCE_FIELDS:
                config[key] = check.numbers(key, value)
            elif key in ("loads", "pv"):
                config[key] = check.node_specs(key, value)
            elif key == "fleet":
                config[key] = tuple(EvModel(**model) for model in check.fleet(value))
            elif key == "weekday":
                config[key] = check.weekday(value)
            else:
                config[key] = check.number(key, value)
        gen = cls(**config)
        gen._validate(site_name)
        return gen

    def _validate(self, site_name: str) -> None:
        def fail(field, problem):
            raise SiteError(f"site {cut(site_name)}: scenario.{field} {problem}")

        for field in ("sessions_per_day", "weekend_factor", "dwell_mean_hours", "energy_mean_kwh",
                      "dwell_sigma", "energy_sigma", "price_noise", "price_weekend_factor", "repair_hours",
                      "failure_rate_per_day", "departure_error_minutes", "export_price_factor"):
            value = getattr(self, field)
            if not np.isfinite(value) or value < 0:
                fail(field, f"must be a finite number >= 0, got {value!r}")
        for field in ("tariff_eur_kwh", "setpoint_kw"):
            if not np.isfinite(getattr(self, field)):
                fail(field, f"must be a finite number, got {getattr(self, field)!r}")
        for field in ("min_soc", "v2g_consent_share"):
            if not 0 <= getattr(self, field) <= 1:
                fail(field, f"must lie in [0, 1], got {getattr(self, field)!r}")
        for field in ("dwell_sigma", "energy_sigma"):
            if getattr(self, field) > MAX_SIGMA:
                fail(field, f"must be <= {MAX_SIGMA} (wider lognormals overflow), got {getattr(self, field)}")
        busiest = self.sessions_per_day * max(1.0, self.weekend_factor)
        problem = above("sessions_per_day", busiest, "the busiest day's expected arrivals")
        if problem is not None:
            fail("sessions_per_day", f"is too large: {problem}")
        if not (len(self.peak_hours) == len(self.peak_widths_hours) == len(self.peak_weights) > 0):
            fail("peak_hours", "peak_widths_hours and peak_weights must have the same nonzero length")
        if min(self.peak_widths_hours) < MIN_PEAK_WIDTH_HOURS:
            fail("peak_widths_hours", f"must all be >= {MIN_PEAK_WIDTH_HOURS}, "
                                      f"got {cut(list(self.peak_widths_hours))}")
        if min(self.peak_weights) < 0 or sum(self.peak_weights) <= 0:
            fail("peak_weights", f"must be >= 0 with a positive sum, got {cut(list(self.peak_weights))}")
        for field in ("price_hourly_eur_kwh", "carbon_hourly_kg_kwh"):
            if len(getattr(self, field)) != 24:
                fail(field, f"must list 24 hourly values, got {len(getattr(self, field))}")
        if self.weekday is not None and not np.all(np.isin(np.atleast_1d(self.weekday), np.arange(7))):
            fail("weekday", f"must be 0..6 (Monday..Sunday) or a list of them, got {cut(self.weekday)}")
        if len(self.soc_arrival_range) != 2:
            fail("soc_arrival_range", f"must be [low, high], got {cut(list(self.soc_arrival_range))}")
        lo, hi = self.soc_arrival_range
        if not 0 <= lo <= hi <= 1:
            fail("soc_arrival_range", f"must satisfy 0 <= low <= high <= 1, got {lo, hi}")
        if not self.fleet or any(m.battery_kwh <= 0 or m.max_charge_kw <= 0 or m.share <= 0
                                 or m.max_discharge_kw < 0 for m in self.fleet):
            fail("fleet", "must list models with battery_kwh > 0, max_charge_kw > 0, share > 0, "
                          "max_discharge_kw >= 0")

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode:
        b, t_len = num_envs, params.horizon_steps
        length = t_len + params.forecast_steps + 1
        step_minutes = params.dt_hours * 60
        minutes = params.start_minute + step_minutes * np.arange(length)
        hour = (minutes % 1440) / 60
        if self.weekday is None:
            weekday0 = rng.integers(0, 7, size=b)
        else:
            weekday0 = np.resize(np.asarray(self.weekday, dtype=np.int64), b)
        day_of_week = (weekday0[:, None] + (minutes // 1440)[None, :].astype(np.int64)) % 7
        weekend = day_of_week >= 5

        rates = self._step_rates(params, hour[:t_len], weekend[:, :t_len])
        evs = self._sample_evs(params, rng, rates)
        price_profile = np.interp(hour, np.arange(25), np.r_[self.price_hourly_eur_kwh,
                                                            self.price_hourly_eur_kwh[0]])
        noise = 1 + self.price_noise * rng.standard_normal((b, length))
        price_buy = price_profile[None, :] * noise * np.where(weekend, self.price_weekend_factor, 1.0)
        carbon = np.interp(hour, np.arange(25), np.r_[self.carbon_hourly_kg_kwh,
                                                     self.carbon_hourly_kg_kwh[0]])
        load, pv = self._sample_node_series(params, rng, hour, weekend)
        return Episode(
            weekday=weekday0,
            price_buy_eur_kwh=price_buy,
            price_sell_eur_kwh=self.export_price_factor * price_buy,
            tariff_eur_kwh=np.full((b, length), self.tariff_eur_kwh),
            carbon_kg_kwh=np.broadcast_to(carbon, (b, length)).copy(),
            setpoint_kw=np.full((b, length), float(self.setpoint_kw)),
            node_load_kw=load,
            node_pv_kw=pv,
            port_rank=np.argsort(rng.random((b, params.num_ports)), axis=1),
            port_down=self._sample_outages(params, rng, b),
            demand_forecast=self._demand_forecast(params, rates),
            **evs,
        )

    def _arrival_profile(self, hour: np.ndarray) -> np.ndarray:
        density = np.zeros_like(hour)
        weights = np.asarray(self.peak_weights, dtype=np.float64)
        for center, width, weight in zip(self.peak_hours, self.peak_widths_hours,
                                         weights / weights.sum(), strict=True):
            gap = (hour - center + 12) % 24 - 12
            density += weight * np.exp(-0.5 * (gap / width) ** 2) / (width * np.sqrt(2 * np.pi))
        return density

    def arrival_rates(self, params: SiteParams, weekday) -> np.ndarray:
        """Expected arrivals per step of an episode that starts on ``weekday`` (0 = Monday).

        Returns a (T,) array over ``horizon_steps`` (a (B, T) one for B weekdays): the Poisson
        means that ``sample`` draws the arrivals from.
        """
        weekday = np.asarray(weekday, dtype=np.int64)
        minutes = params.start_minute + params.dt_hours * 60 * np.arange(params.horizon_steps)
        hour = (minutes % 1440) / 60
        day_of_week = (weekday[..., None] + (minutes // 1440).astype(np.int64)) % 7
        return self._step_rates(params, hour, day_of_week >= 5)

    def _step_rates(self, params, hour, weekend) -> np.ndarray:
        rate = self.sessions_per_day * self._arrival_profile(hour) * params.dt_hours
        return rate * np.where(weekend, self.weekend_factor, 1.0)

    def _demand_forecast(self, params: SiteParams, rates: np.ndarray) -> np.ndarray | None:
        if not params.demand_forecast:
            return None
        return demand_windows(rates, rates * self.mean_request_kwh(), params.forecast_steps)

    def mean_request_kwh(self) -> float:
        """Expected request of an arriving EV: the lognormal draw capped by its battery's room.

        Exact for the lognormal (its partial expectation), averaged over the fleet's shares and
        a midpoint rule of 64 nodes over the uniform arrival SoC.
        """
        lo, hi = self.soc_arrival_range
        room = (1 - (lo + (hi - lo) * (np.arange(64) + 0.5) / 64))[:, None] * np.array(
            [m.battery_kwh for m in self.fleet])[None, :]
        mean, sigma = self.energy_mean_kwh, self.energy_sigma
        if sigma == 0 or mean == 0:
            capped = np.minimum(mean, room)
        else:
            mu = math.log(mean) - sigma**2 / 2
            phi = np.frompyfunc(lambda x: 0.5 * math.erfc(-x / math.sqrt(2)), 1, 1)
            log_room = np.log(np.maximum(room, 1e-300))
            capped = (mean * phi((log_room - mu - sigma**2) / sigma).astype(np.float64)
                      + room * (1 - phi((log_room - mu) / sigma).astype(np.float64)))
        shares = np.array([m.share for m in self.fleet])
        return float(capped.mean(axis=0) @ (shares / shares.sum()))

    def _sample_evs(self, params, rng, rates) -> dict[str, np.ndarray]:
        b, t_len = rates.shape
        counts = rng.poisson(rates)
        per_env = counts.sum(axis=1)
        total = int(per_env.sum())
        env_of = np.repeat(np.arange(b), per_env)
        arrival = np.repeat(np.tile(np.arange(t_len), b), counts.ravel())

        dwell_h = rng.lognormal(np.log(max(self.dwell_mean_hours, 1e-9)) - self.dwell_sigma**2 / 2,
                                self.dwell_sigma, total)
        dwell = np.maximum(1, np.rint(dwell_h / params.dt_hours)).astype(np.int64)
        error = rng.normal(0.0, self.departure_error_minutes / 60 / params.dt_hours, total)
        announced = np.maximum(arrival + 1, arrival + dwell + np.rint(error).astype(np.int64))
        shares = np.array([m.share for m in self.fleet])
        model = rng.choice(len(self.fleet), size=total, p=shares / shares.sum())
        battery = np.array([m.battery_kwh for m in self.fleet])[model]
        lo, hi = self.soc_arrival_range
        soc = rng.uniform(lo, hi, total)
        energy = rng.lognormal(np.log(max(self.energy_mean_kwh, 1e-9)) - self.energy_sigma**2 / 2,
                               self.energy_sigma, total)
        consent = rng.random(total) < self.v2g_consent_share

        return pack_evs(
            b, env_of, arrival_step=arrival, departure_step=arrival + dwell,
            announced_departure_step=announced, battery_kwh=battery, soc_arrival=soc,
            requested_kwh=np.minimum(energy, (1 - soc) * battery),
            max_charge_kw=np.array([m.max_charge_kw for m in self.fleet])[model],
            max_discharge_kw=np.array([m.max_discharge_kw for m in self.fleet])[model],
            v2g_consent=consent, min_soc=self.min_soc)

    def _sample_node_series(self, params, rng, hour, weekend):
        b, length = weekend.shape
        load = np.zeros((b, length, params.num_nodes))
        pv = np.zeros((b, length, params.num_nodes))
        for spec in self.loads:
            node = params.node_index(str(spec["node"]))
            base, peak = float(spec.get("base_kw", 0.0)), float(spec.get("peak_kw", 0.0))
            center, width = float(spec.get("peak_hour", 13.0)), float(spec.get("width_hours", 4.0))
            bump = np.exp(-0.5 * (((hour - center + 12) % 24 - 12) / width) ** 2)
            day_factor = np.where(weekend, float(spec.get("weekend_factor", 0.5)), 1.0)
            noise = 1 + float(spec.get("noise", 0.05)) * rng.standard_normal((b, length))
            load[:, :, node] += np.maximum(0.0, (base + (peak - base) * bump * day_factor) * noise)
        for spec in self.pv:
            node = params.node_index(str(spec["node"]))
            shape = np.clip(np.sin(np.pi * (hour - 6) / 12), 0, None) ** 1.5
            day = ((params.start_minute / 60 + params.dt_hours * np.arange(length)) // 24).astype(int)
            cloud = rng.uniform(float(spec.get("min_clear_sky", 0.3)), 1.0, (b, day.max() + 1))
            pv[:, :, node] += float(spec["peak_kw"]) * shape[None, :] * cloud[:, day]
        return load, pv

    def _sample_outages(self, params, rng, b):
        if self.failure_rate_per_day <= 0:
            return None
        steps = params.horizon_steps + 1
        p_fail = min(1.0, self.failure_rate_per_day * params.dt_hours / 24)
        repair = max(1, round(self.repair_hours / params.dt_hours))
        failures = (rng.random((b, steps, params.num_ports)) < p_fail).astype(np.int32)
        count = np.cumsum(failures, axis=1)
        shifted = np.zeros_like(count)
        shifted[:, repair:] = count[:, :-repair]
        return (count - shifted) > 0

