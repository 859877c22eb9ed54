"""Flat observation: its layout (name -> slice) and its builder, shared with the scheduler."""

from __future__ import annotations

import numpy as np

from envs.site import SiteParams
from envs.state import State

PORT_FIELDS = (
    "occupied",  # 1 if an EV is plugged in
    "available",  # 0 while the port is out of order
    "soc",  # state of charge of the plugged EV
    "remaining_kwh",  # energy the driver still wants
    "hours_to_departure",  # until the announced departure (negative once overdue)
    "max_charge_kw",  # grid-side charge power available now
    "max_discharge_kw",  # grid-side discharge power available now
    "v2g_allowed",  # 1 if the EV may be discharged (consent, car and port)
)


def observation_layout(params: SiteParams) -> dict[str, slice]:
    """Name -> slice of the flat observation vector; sizes depend on ports, nodes and horizon."""
    p, n, h = params.num_ports, params.num_nodes, params.forecast_steps + 1
    sizes = [(name, p) for name in PORT_FIELDS]
    sizes += [("node_headroom_kw", n), ("time_of_day", 2), ("weekday", 7),
              ("price_buy_eur_kwh", h), ("price_sell_eur_kwh", h), ("carbon_kg_kwh", h),
              ("site_load_kw", h), ("site_pv_kw", h), ("setpoint_kw", 1), ("queue_length", 1)]
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = slice(start, start + size)
        start += size
    return layout


def observation_bounds(params: SiteParams) -> tuple[np.ndarray, np.ndarray]:
    layout = observation_layout(params)
    size = next(reversed(layout.values())).stop
    low = np.full(size, -np.inf, dtype=np.float32)
    high = np.full(size, np.inf, dtype=np.float32)
    for name in ("occupied", "available", "soc", "v2g_allowed", "weekday"):
        low[layout[name]], high[layout[name]] = 0.0, 1.0
    for name in ("max_charge_kw", "max_discharge_kw", "site_load_kw", "site_pv_kw",
                 "queue_length", "remaining_kwh"):
        low[layout[name]] = 0.0
    low[layout["time_of_day"]], high[layout["time_of_day"]] = -1.0, 1.0
    return low, high


def observe(params: SiteParams, state: State) -> np.ndarray:
    """Observation (B, D) float32 of a batch at its current step, in physical units."""
    layout = observation_layout(params)
    b, t = state.num_envs, state.t
    episode, h = state.episode, params.forecast_steps + 1
    obs = np.empty((b, next(reversed(layout.values())).stop), dtype=np.float32)
    occupied = state.occupied
    obs[:, layout["occupied"]] = occupied
    down = episode.port_down
    obs[:, layout["available"]] = 1.0 if down is None else ~down[:, t]
    obs[:, layout["soc"]] = state.soc
    obs[:, layout["remaining_kwh"]] = np.maximum(state.remaining_kwh, 0.0)
    obs[:, layout["hours_to_departure"]] = np.where(
        occupied, (state.announced_departure_step - t) * params.dt_hours, 0.0)
    obs[:, layout["max_charge_kw"]] = state.max_charge_kw
    obs[:, layout["max_discharge_kw"]] = state.max_discharge_kw
    obs[:, layout["v2g_allowed"]] = state.ev_max_discharge_kw > 0
    obs[:, layout["node_headroom_kw"]] = params.node_import_limit_kw - state.node_exo_kw[:, t]
    angle = 2 * np.pi * ((params.start_minute / 60 + t * params.dt_hours) % 24) / 24
    obs[:, layout["time_of_day"]] = (np.sin(angle), np.cos(angle))
    day = (episode.weekday + int((params.start_minute / 60 + t * params.dt_hours) // 24)) % 7
    obs[:, layout["weekday"]] = day[:, None] == np.arange(7)
    window = slice(t, t + h)
    obs[:, layout["price_buy_eur_kwh"]] = episode.price_buy_eur_kwh[:, window]
    obs[:, layout["price_sell_eur_kwh"]] = episode.price_sell_eur_kwh[:, window]
    obs[:, layout["carbon_kg_kwh"]] = episode.carbon_kg_kwh[:, window]
    obs[:, layout["site_load_kw"]] = episode.node_load_kw[:, window].sum(axis=2)
    obs[:, layout["site_pv_kw"]] = episode.node_pv_kw[:, window].sum(axis=2)
    obs[:, layout["setpoint_kw"]] = episode.setpoint_kw[:, t : t + 1]
    obs[:, layout["queue_length"]] = state.schedule.queue_length[:, t : t + 1]
    return obs
