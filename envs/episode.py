"""Exogenous episode data (sampled once at reset) and the generator protocol."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from envs.site import SiteParams

NO_ARRIVAL = np.iinfo(np.int32).max // 2
FORECAST_BLOCK = ("price_buy_eur_kwh", "price_sell_eur_kwh", "carbon_kg_kwh", "site_load_kw", "site_pv_kw")
DEMAND_BLOCK = ("expected_arrivals", "expected_energy_kwh")


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """Everything the environment does not control, for a batch of B episodes.

    Series have ``L = horizon_steps + forecast_steps + 1`` entries so that the observation at
    the final step still has a full forecast. EVs are listed per env in order of arrival and
    padded to a common K; padding has ``ev_valid`` False and ``ev_arrival_step == NO_ARRIVAL``.
    ``forecast_windows`` holds the forecasts the observation shows (lead 0 is the value now);
    None means perfect forecasts, read from the series themselves. ``demand_forecast`` holds
    the expected arrivals and requested kWh of each of the next H steps, as known at each step
    (``demand_windows``); sites with ``demand_forecast: true`` show it and need it. Steps are
    indices of the episode's time grid; an EV with arrival ``a`` and departure ``d`` is present
    during the intervals ``a .. d-1``, all of each unless ``ev_first_step_fraction`` and
    ``ev_last_step_fraction`` say it is there for only part of step ``a`` (from its arrival to
    the step's end) or of step ``d - 1`` (from the step's start to its departure); generators
    that know sub-step times fill them for sites with ``stay_timing: exact``. The first-step
    fraction applies when the EV plugs in at its arrival step (not after queueing), the last
    when it leaves from a port.
    """

    weekday: np.ndarray  # (B,) int, 0 = Monday, of the episode's first step
    price_buy_eur_kwh: np.ndarray  # (B, L)
    price_sell_eur_kwh: np.ndarray  # (B, L) paid for energy exported to the grid
    tariff_eur_kwh: np.ndarray  # (B, L) paid by EV users per kWh delivered to their battery
    carbon_kg_kwh: np.ndarray  # (B, L) marginal emissions of grid imports
    setpoint_kw: np.ndarray  # (B, L) requested site import for setpoint tracking
    node_load_kw: np.ndarray  # (B, L, N) inflexible load hanging on each node
    node_pv_kw: np.ndarray  # (B, L, N) PV generation hanging on each node
    ev_valid: np.ndarray  # (B, K) bool
    ev_arrival_step: np.ndarray  # (B, K) int
    ev_departure_step: np.ndarray  # (B, K) int, real departure
    ev_announced_departure_step: np.ndarray  # (B, K) int, what the driver told us
    ev_battery_kwh: np.ndarray  # (B, K)
    ev_soc_arrival: np.ndarray  # (B, K) in [0, 1]
    ev_requested_kwh: np.ndarray  # (B, K) energy wanted in the battery by departure
    ev_max_charge_kw: np.ndarray  # (B, K) the car's own limit at the plug
    ev_max_discharge_kw: np.ndarray  # (B, K) 0 if the car cannot discharge
    ev_v2g_consent: np.ndarray  # (B, K) bool
    ev_min_soc: np.ndarray  # (B, K) never discharged below this SoC
    port_rank: np.ndarray  # (B, P) int, free ports are taken in increasing rank
    port_down: np.ndarray | None  # (B, horizon_steps + 1, P) bool outage schedule, or None
    forecast_windows: np.ndarray | None = None  # (B, T+1, 5, H+1) FORECAST_BLOCK as issued at each step
    demand_forecast: np.ndarray | None = None  # (B, T+1, 2, H) DEMAND_BLOCK for steps t+1 .. t+H
    ev_first_step_fraction: np.ndarray | None = None  # (B, K) in [0, 1] share of step a the EV is there
    ev_last_step_fraction: np.ndarray | None = None  # (B, K) in [0, 1] share of step d - 1 the EV is there

    @property
    def num_envs(self) -> int:
        return self.weekday.shape[0]

    @property
    def max_evs(self) -> int:
        return self.ev_valid.shape[1]

    def take(self, envs) -> Episode:
        """The episodes of the given env indices (an int array or a slice), as a new batch."""
        return Episode(**{
            field.name: None if getattr(self, field.name) is None else getattr(self, field.name)[envs]
            for field in dataclasses.fields(self)
        })

    def check(self, params: SiteParams) -> None:
        """Raise ValueError naming the field whose shape or values do not fit ``params``."""
        b = self.num_envs
        length = params.horizon_steps + params.forecast_steps + 1
        n, p, k = params.num_nodes, params.num_ports, self.max_evs
        expected = {
            "weekday": (b,),
            "port_rank": (b, p),
            "node_load_kw": (b, length, n),
            "node_pv_kw": (b, length, n),
        }
        for name in ("price_buy_eur_kwh", "price_sell_eur_kwh", "tariff_eur_kwh", "carbon_kg_kwh",
                     "setpoint_kw"):
            expected[name] = (b, length)
        for field in dataclasses.fields(self):
            if field.name.startswith("ev_") and getattr(self, field.name) is not None:
                expected[field.name] = (b, k)
        if self.port_down is not None:
            expected["port_down"] = (b, params.horizon_steps + 1, p)
        if self.forecast_windows is not None:
            expected["forecast_windows"] = (b, params.horizon_steps + 1, len(FORECAST_BLOCK),
                                            params.forecast_steps + 1)
        if self.demand_forecast is not None:
            expected["demand_forecast"] = (b, params.horizon_steps + 1, len(DEMAND_BLOCK),
                                           params.forecast_steps)
        elif params.demand_forecast:
            raise ValueError(f"site {params.name!r} observes a demand forecast (demand_forecast: true) but "
                             "the episode has none: its generator must fill Episode.demand_forecast")
        for name, shape in expected.items():
            value = getattr(self, name)
            if value.shape != shape:
                raise ValueError(f"episode field {name} has shape {value.shape}, expected {shape}")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"episode field {name} has non-finite values")
        valid = self.ev_valid
        if np.any(valid & (self.ev_departure_step <= self.ev_arrival_step)):
            raise ValueError("episode field ev_departure_step must be after ev_arrival_step")
        if np.any(np.diff(self.ev_arrival_step, axis=1) < 0):
            raise ValueError("episode field ev_arrival_step must be sorted within each env")
        if np.any(valid & ((self.ev_soc_arrival < 0) | (self.ev_soc_arrival > 1))):
            raise ValueError("episode field ev_soc_arrival must lie in [0, 1]")
        for name in ("ev_battery_kwh", "ev_requested_kwh", "ev_max_charge_kw", "ev_max_discharge_kw"):
            if np.any(valid & (getattr(self, name) < 0)):
                raise ValueError(f"episode field {name} must be >= 0")
        for name in ("ev_first_step_fraction", "ev_last_step_fraction"):
            value = getattr(self, name)
            if value is not None and np.any(valid & ((value < 0) | (value > 1))):
                raise ValueError(f"episode field {name} must lie in [0, 1]")
        if self.demand_forecast is not None and np.any(self.demand_forecast < 0):
            raise ValueError("episode field demand_forecast must be >= 0")


def demand_windows(arrivals: np.ndarray, energy_kwh: np.ndarray, forecast_steps: int) -> np.ndarray:
    """``Episode.demand_forecast`` (B, T+1, 2, H) float32 from expected demand per step.

    ``arrivals`` and ``energy_kwh`` (B, T) are the expected arrivals and requested kWh in each
    step of the episode. Entry ``[b, t, :, h - 1]`` is their value at step ``t + h``; steps at
    or after the horizon ``T`` get no arrivals. Arrivals at step ``t`` itself are not forecast:
    they are already plugged in or queued when the agent observes step ``t``.
    """
    demand = np.stack(np.broadcast_arrays(np.asarray(arrivals, dtype=np.float64),
                                          np.asarray(energy_kwh, dtype=np.float64)), axis=1)
    b, _, steps = demand.shape
    padded = np.zeros((b, len(DEMAND_BLOCK), steps + forecast_steps + 1), dtype=np.float32)
    padded[:, :, :steps] = demand
    windows = np.lib.stride_tricks.sliding_window_view(padded[:, :, 1:], forecast_steps, axis=2)
    return np.ascontiguousarray(windows.transpose(0, 2, 1, 3))


EV_COLUMNS = ("arrival_step", "departure_step", "announced_departure_step", "battery_kwh", "soc_arrival",
              "requested_kwh", "max_charge_kw", "max_discharge_kw", "v2g_consent", "min_soc")
OPTIONAL_EV_COLUMNS = ("first_step_fraction", "last_step_fraction")


def pack_evs(num_envs: int, env: np.ndarray, **columns) -> dict[str, np.ndarray]:
    """The ``ev_*`` fields of an Episode from flat per-EV arrays.

    ``env`` (E,) gives each EV's env, sorted, with each env's EVs in order of arrival; the
    columns, named as in ``EV_COLUMNS`` (the field names without ``ev_``) and optionally
    ``OPTIONAL_EV_COLUMNS``, are (E,) arrays or scalars. K is the most EVs of any env (at
    least 1); padding is invalid and never arrives.
    """
    if not set(EV_COLUMNS) <= set(columns) <= set(EV_COLUMNS + OPTIONAL_EV_COLUMNS):
        raise TypeError(f"pack_evs needs the columns {EV_COLUMNS} and optionally {OPTIONAL_EV_COLUMNS}, "
                        f"got {sorted(columns)}")
    per_env = np.bincount(env, minlength=num_envs)
    k = max(int(per_env.max(initial=0)), 1)
    slot = np.arange(len(env)) - np.repeat(np.cumsum(per_env) - per_env, per_env)
    fills = {"arrival_step": (NO_ARRIVAL, np.int64), "departure_step": (NO_ARRIVAL + 1, np.int64),
             "announced_departure_step": (NO_ARRIVAL + 1, np.int64), "v2g_consent": (False, bool)}
    fields = {"ev_valid": np.zeros((num_envs, k), dtype=bool)}
    fields["ev_valid"][env, slot] = True
    for name in (*EV_COLUMNS, *(name for name in OPTIONAL_EV_COLUMNS if name in columns)):
        fill, dtype = fills.get(name, (1.0 if name in OPTIONAL_EV_COLUMNS else 0.0, np.float64))
        fields[f"ev_{name}"] = np.full((num_envs, k), fill, dtype=dtype)
        fields[f"ev_{name}"][env, slot] = columns[name]
    return fields


class Generator(Protocol):
    """Samples a batch of exogenous episodes; the only source of randomness of an environment."""

    def sample(self, params: SiteParams, rng: np.random.Generator, num_envs: int) -> Episode: ...
