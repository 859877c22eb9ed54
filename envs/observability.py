"""What a real site knows of its EVs (the site's ``observability`` level) and the estimates that stand in
for what it does not know.

Levels (``envs.site.OBSERVABILITY_LEVELS``):

* ``full``: the simulator's truth (SoC, battery, energy request, announced departure), as before.
* ``iso15118``: OCPP 2.0.1 with ISO 15118 (NotifyEVChargingNeeds): the announced departure and the
  energy request on every port; SoC and battery capacity only on DC ports (AC charging reports
  neither). A port is DC when it charges above ``AC_MAX_KW``.
* ``ocpp``: OCPP alone: neither SoC nor battery, request or departure on any port.

What is unknown is replaced by an estimate from the scenario's own sessions (``SessionEstimator``),
and per-port flags (``FLAG_FIELDS``) say which observed values are estimates. Every level knows the
plug-in time, the energy metered since then, the car's power limits and its V2G consent and
minimum SoC; the physics and the reward always use the truth.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from envs.site import OBSERVABILITY_LEVELS, SiteParams

ESTIMATED_FIELDS = ("soc", "remaining_kwh", "hours_to_departure")
FLAG_FIELDS = tuple(f"{name}_estimated" for name in ESTIMATED_FIELDS)
AC_MAX_KW = 22.0  # AC charging tops out at 22 kW (three-phase 32 A); faster ports are DC
REFERENCE_DAYS = 56  # scenario days sampled once per site for the estimator's tables
REFERENCE_SEED = 7919  # apart from the evaluation (1000 + ...) and training seeds
DEPARTURE_QUANTILE = 0.1  # the estimated departure: nine in ten EVs still plugged in stay longer
MIN_SESSIONS_PER_HOUR = 20  # an arrival hour with fewer sessions uses the all-hours row
ENERGY_STEP_KWH = 0.5
MAX_STAY_HOURS = 168.0

__all__ = ["AC_MAX_KW", "ESTIMATED_FIELDS", "FLAG_FIELDS", "OBSERVABILITY_LEVELS", "SessionEstimator",
           "SiteView", "estimator_for", "known_ports", "port_is_dc", "site_view"]


def port_is_dc(params: SiteParams) -> np.ndarray:
    """(P,) True on DC ports: those that charge above ``AC_MAX_KW``."""
    return params.port_max_charge_kw > AC_MAX_KW


def known_ports(params: SiteParams) -> tuple[np.ndarray, np.ndarray]:
    """(P,) bool each: where the site knows the SoC (and battery), and where it knows the request and
    the announced departure, at the site's ``observability`` level."""
    p = params.num_ports
    level = params.observability
    if level == "full":
        return np.ones(p, dtype=bool), np.ones(p, dtype=bool)
    if level == "iso15118":
        return port_is_dc(params), np.ones(p, dtype=bool)
    return np.zeros(p, dtype=bool), np.zeros(p, dtype=bool)


@dataclasses.dataclass(frozen=True, eq=False)
class SessionEstimator:
    """Expected values of what a site cannot see, given what it can: the hour the EV plugged in, the
    hours since then and the energy metered into it.

    * hours to departure: the ``DEPARTURE_QUANTILE`` quantile of the residual stay ``stay - e``
      among the sessions of that arrival hour still there after ``e`` hours, at least one step,
      from ``stay_hours`` (24, E) over elapsed steps. It is a deadline, so a low quantile, not the
      mean: the mean residual stay recedes as the EV stays (long stays are the ones left), and
      rules that defer charging to it (as late as possible, price-aware) then miss most requests
      (0.1 was the best of 0.05, 0.1, 0.25 and 0.5 for price-aware and MPC on caltech's
      validation days; experiments/observability);
    * remaining request: the mean residual request ``E[request - d | request > d, arrival hour]``
      (the EV still charges after ``d`` kWh), from ``request_kwh`` (24, G) over ``d`` in steps of
      ``energy_step_kwh``; 0 once no session of that hour wanted more;
    * SoC: the mean arrival SoC plus the metered energy over the mean battery, at most 1; the
      battery (for the power available near full) is the mean battery.

    Rows are arrival hours 0..23; an hour with fewer than ``MIN_SESSIONS_PER_HOUR`` sessions uses
    the pooled row of all hours. Elapsed steps and energies past the tables read their last
    column. ``to_dict``/``from_dict`` carry it in an export manifest, so the scheduler estimates
    as the env did.
    """

    dt_hours: float
    stay_hours: np.ndarray  # (24, E) expected hours still to stay, by arrival hour and elapsed steps
    request_kwh: np.ndarray  # (24, G) expected kWh still wanted, by arrival hour and metered kWh
    energy_step_kwh: float
    soc_arrival: float
    battery_kwh: float
    sessions: int

    @classmethod
    def from_sessions(cls, dt_hours: float, arrival_hour, stay_hours, requested_kwh, soc_arrival,
                      battery_kwh) -> SessionEstimator:
        """Tables of sessions given as flat arrays (arrival hour of the day, stay in hours, ...)."""
        arrival = np.floor(np.asarray(arrival_hour, dtype=np.float64) % 24).astype(np.int64)
        stay = np.asarray(stay_hours, dtype=np.float64)
        request = np.asarray(requested_kwh, dtype=np.float64)
        if len(stay) == 0:
            raise ValueError("the estimator needs at least one session")
        steps = int(np.ceil(min(stay.max(), MAX_STAY_HOURS) / dt_hours)) + 1
        elapsed = dt_hours * np.arange(steps)
        energies = ENERGY_STEP_KWH * np.arange(int(np.ceil(request.max() / ENERGY_STEP_KWH)) + 2)
        pooled_stay = _residual_quantile(stay, elapsed, dt_hours)
        pooled_request = _mean_residual(request, energies, 0.0)
        stay_table = np.empty((24, steps))
        request_table = np.empty((24, len(energies)))
        for hour in range(24):
            chosen = arrival == hour
            few = np.count_nonzero(chosen) < MIN_SESSIONS_PER_HOUR
            stay_table[hour] = pooled_stay if few else _residual_quantile(stay[chosen], elapsed, dt_hours)
            request_table[hour] = pooled_request if few else _mean_residual(request[chosen], energies, 0.0)
        return cls(float(dt_hours), stay_table, request_table, ENERGY_STEP_KWH,
                   float(np.mean(soc_arrival)), float(np.mean(battery_kwh)), len(stay))

    def estimate(self, arrival_hour, elapsed_hours, delivered_kwh):
        """(SoC, battery kWh, remaining kWh, hours to departure) arrays for EVs (any shape)."""
        hour = np.floor(np.asarray(arrival_hour, dtype=np.float64) % 24).astype(np.int64)
        elapsed = np.rint(np.asarray(elapsed_hours, dtype=np.float64) / self.dt_hours).astype(np.int64)
        elapsed = np.clip(elapsed, 0, self.stay_hours.shape[1] - 1)
        delivered = np.asarray(delivered_kwh, dtype=np.float64)
        energy = np.clip(np.floor(np.maximum(delivered, 0.0) / self.energy_step_kwh).astype(np.int64), 0,
                         self.request_kwh.shape[1] - 1)
        soc = np.clip(self.soc_arrival + delivered / self.battery_kwh, 0.0, 1.0)
        battery = np.full(np.shape(soc), self.battery_kwh)
        return soc, battery, self.request_kwh[hour, energy], self.stay_hours[hour, elapsed]

    def to_dict(self) -> dict[str, Any]:
        return {"dt_hours": self.dt_hours, "stay_hours": self.stay_hours.tolist(),
                "request_kwh": self.request_kwh.tolist(), "energy_step_kwh": self.energy_step_kwh,
                "soc_arrival": self.soc_arrival, "battery_kwh": self.battery_kwh, "sessions": self.sessions}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SessionEstimator:
        stay = np.asarray(spec["stay_hours"], dtype=np.float64)
        request = np.asarray(spec["request_kwh"], dtype=np.float64)
        numbers = [float(spec[key]) for key in ("dt_hours", "energy_step_kwh", "soc_arrival", "battery_kwh")]
        if (stay.ndim != 2 or request.ndim != 2 or len(stay) != 24 or len(request) != 24 or not stay.size
                or not request.size or not all(np.isfinite(numbers)) or min(numbers[:2] + numbers[3:]) <= 0
                or not (np.isfinite(stay).all() and np.isfinite(request).all())):
            raise ValueError("estimator tables must be finite (24, n) arrays with positive dt_hours, "
                             "energy_step_kwh and battery_kwh")
        dt, step, soc, battery = numbers
        return cls(dt, stay, request, step, soc, battery, int(spec.get("sessions", 0)))


def _residual_quantile(values: np.ndarray, points: np.ndarray, floor: float,
                       level: float = DEPARTURE_QUANTILE) -> np.ndarray:
    """The ``level`` quantile of ``v - x`` over ``v > x`` at each of ``points`` (linear between order
    statistics; at least ``floor``; ``floor`` where no v > x)."""
    ordered = np.sort(values)
    first = np.searchsorted(ordered, points, side="right")
    count = len(ordered) - first
    position = first + level * np.maximum(count - 1, 0)
    low = np.minimum(np.floor(position).astype(np.int64), len(ordered) - 1)
    high = np.minimum(low + 1, len(ordered) - 1)
    value = ordered[low] + (position - low) * (ordered[high] - ordered[low])
    return np.maximum(np.where(count > 0, value - points, floor), floor)


def _mean_residual(values: np.ndarray, points: np.ndarray, floor: float) -> np.ndarray:
    """``E[v - x | v > x]`` at each of ``points`` (at least ``floor``; ``floor`` where no v > x)."""
    ordered = np.sort(values)
    suffix = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0.0]])
    first = np.searchsorted(ordered, points, side="right")
    count = len(ordered) - first
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(count > 0, suffix[first] / np.maximum(count, 1) - points, floor)
    return np.maximum(residual, floor)


@functools.lru_cache(maxsize=32)
def estimator_for(params: SiteParams) -> SessionEstimator:
    """The estimator of ``REFERENCE_DAYS`` days drawn from the site's ``session_model`` with
    ``REFERENCE_SEED`` (the same every time; the stays are the real ones, not the announced)."""
    episode = session_model(params).sample(params, np.random.default_rng(REFERENCE_SEED), REFERENCE_DAYS)
    valid = episode.ev_valid
    arrival = episode.ev_arrival_step[valid]
    hour = params.start_minute / 60 + params.dt_hours * arrival
    stay = params.dt_hours * (episode.ev_departure_step[valid] - arrival)
    return SessionEstimator.from_sessions(params.dt_hours, hour, stay, episode.ev_requested_kwh[valid],
                                          episode.ev_soc_arrival[valid], episode.ev_battery_kwh[valid])


def session_model(params: SiteParams):
    """The scenario's model of its sessions: ``envs.data.fit.FittedGenerator`` when the scenario holds
    fitted tables (``generator: fitted``, or a replay over them), else
    ``envs.parametric.ParametricGenerator``, of the scenario fields it reads. A replay's own sessions
    are never used (they are the days a policy is scored on), and series and forecasts leave the
    sessions alone, so neither is read (nor ``envs.generators``, which sits above the observation).
    """
    from envs.data.fit import FITTED_FIELDS, FITTED_TABLES, PARAMETRIC_EV_FIELDS, FittedGenerator
    from envs.parametric import ParametricGenerator

    scenario = params.scenario
    known = {field.name for field in dataclasses.fields(ParametricGenerator)}
    model = ParametricGenerator
    if any(key in scenario for key in FITTED_TABLES):
        known, model = (known - set(PARAMETRIC_EV_FIELDS)) | set(FITTED_FIELDS), FittedGenerator
    return model.from_config({key: value for key, value in scenario.items() if key in known}, params.name)


class SiteView(NamedTuple):
    """Port arrays (B, P) as the site sees them: truth where known, estimates elsewhere."""

    soc: np.ndarray
    battery_kwh: np.ndarray
    remaining_kwh: np.ndarray
    hours_to_departure: np.ndarray
    flags: np.ndarray  # (len(FLAG_FIELDS), B, P) 1.0 where the value is an estimate (occupied ports)


def site_view(params: SiteParams, estimator: SessionEstimator, occupied, soc, battery_kwh, remaining_kwh,
              hours_to_departure, arrival_hour, elapsed_hours, delivered_kwh) -> SiteView:
    """The site's view of its plugged EVs (B, P) at its ``observability`` level.

    ``arrival_hour`` is the hour of the day each EV plugged in, ``elapsed_hours`` the time since,
    ``delivered_kwh`` the energy metered into its battery since; values on unknown fields are
    ignored, empty ports get 0.
    """
    occupied = np.asarray(occupied, dtype=bool)
    soc_known, needs_known = known_ports(params)
    est_soc, est_battery, est_remaining, est_hours = estimator.estimate(arrival_hour, elapsed_hours,
                                                                       delivered_kwh)
    soc_estimated = occupied & ~soc_known
    needs_estimated = occupied & ~needs_known

    def pick(estimated, estimate, truth):
        return np.where(occupied, np.where(estimated, estimate, truth), 0.0)

    flags = np.stack([soc_estimated, needs_estimated, needs_estimated]).astype(np.float64)
    return SiteView(pick(soc_estimated, est_soc, soc), pick(soc_estimated, est_battery, battery_kwh),
                    pick(needs_estimated, est_remaining, remaining_kwh),
                    pick(needs_estimated, est_hours, hours_to_departure), flags)
