"""Flat observation: its layout (name -> slice) and its builder, shared with the scheduler."""

from __future__ import annotations

import functools

import numpy as np

from envs.episode import DEMAND_BLOCK, FORECAST_BLOCK, Episode
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


STEP_BLOCK_SIZES = {"time_of_day": 2, "weekday": 7, "setpoint_kw": 1, "queue_length": 1}


@functools.lru_cache(maxsize=128)
def observation_layout(params: SiteParams) -> dict[str, slice]:
    """Name -> slice of the flat observation vector; sizes depend on ports, nodes and horizon.

    Sites with ``demand_forecast: true`` end it with the ``DEMAND_BLOCK`` windows (leads 1 .. H).
    """
    p, n, h = params.num_ports, params.num_nodes, params.forecast_steps + 1
    sizes = [(name, p) for name in PORT_FIELDS]
    sizes += [("node_headroom_kw", n)] + list(STEP_BLOCK_SIZES.items())
    sizes += [(name, h) for name in FORECAST_BLOCK]
    if params.demand_forecast:
        sizes += [(name, h - 1) for name in DEMAND_BLOCK]
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = slice(start, start + size)
        start += size
    return layout


def layout_size(params: SiteParams) -> int:
    return next(reversed(observation_layout(params).values())).stop


def observation_bounds(params: SiteParams) -> tuple[np.ndarray, np.ndarray]:
    layout = observation_layout(params)
    size = layout_size(params)
    low = np.full(size, -np.inf, dtype=np.float32)
    high = np.full(size, np.inf, dtype=np.float32)
    for name in ("occupied", "available", "soc", "v2g_allowed", "weekday"):
        low[layout[name]], high[layout[name]] = 0.0, 1.0
    for name in ("max_charge_kw", "max_discharge_kw", "site_load_kw", "site_pv_kw",
                 "queue_length", "remaining_kwh", *(DEMAND_BLOCK if params.demand_forecast else ())):
        low[layout[name]] = 0.0
    low[layout["time_of_day"]], high[layout["time_of_day"]] = -1.0, 1.0
    return low, high


def _step_block(params: SiteParams) -> slice:
    layout = observation_layout(params)
    return slice(layout["node_headroom_kw"].start, layout[FORECAST_BLOCK[0]].start)


def forecast_series(episode: Episode) -> np.ndarray:
    """The ``FORECAST_BLOCK`` series stacked as (B, 5, L) float32, so a window is one copy."""
    return np.stack([episode.price_buy_eur_kwh, episode.price_sell_eur_kwh, episode.carbon_kg_kwh,
                     episode.node_load_kw.sum(axis=2), episode.node_pv_kw.sum(axis=2)],
                    axis=1).astype(np.float32)


def step_observations(params: SiteParams, episode: Episode, node_exo_kw: np.ndarray,
                      queue_length: np.ndarray) -> np.ndarray:
    """Node headroom and the ``STEP_BLOCK_SIZES`` fields for every step: (B, T+1, width) float32.

    Computed once at reset; ``observe`` copies the row of the current step. Forecast windows
    are copied from the episode at each step instead, to keep reset memory small.
    """
    layout = observation_layout(params)
    block = _step_block(params)
    offset = block.start
    b, steps = episode.num_envs, params.horizon_steps + 1
    out = np.empty((b, steps, block.stop - offset), dtype=np.float32)

    def put(name, values):
        field = layout[name]
        out[:, :, field.start - offset:field.stop - offset] = values

    hours = params.start_minute / 60 + params.dt_hours * np.arange(steps)
    put("node_headroom_kw", params.node_import_limit_kw - node_exo_kw[:, :steps])
    angle = 2 * np.pi * (hours % 24) / 24
    put("time_of_day", np.stack([np.sin(angle), np.cos(angle)], axis=1))
    day = (episode.weekday[:, None] + (hours // 24).astype(np.int64)) % 7
    put("weekday", day[:, :, None] == np.arange(7))
    put("setpoint_kw", episode.setpoint_kw[:, :steps, None])
    put("queue_length", queue_length[:, :, None])
    return out


def observe(params: SiteParams, state: State) -> np.ndarray:
    """Observation (B, D) float32 of a batch at its current step, in physical units."""
    layout = observation_layout(params)
    t = state.t
    obs = np.empty((state.num_envs, layout_size(params)), dtype=np.float32)
    occupied = state.port_ev >= 0
    obs[:, layout["occupied"]] = occupied
    down = state.episode.port_down
    obs[:, layout["available"]] = 1.0 if down is None else ~down[:, t]
    obs[:, layout["soc"]] = state.soc
    np.maximum(state.remaining_kwh, 0.0, out=obs[:, layout["remaining_kwh"]])
    steps_left = state.announced_departure_step - t
    steps_left *= occupied
    np.multiply(steps_left, params.dt_hours, out=obs[:, layout["hours_to_departure"]])
    obs[:, layout["max_charge_kw"]] = state.max_charge_kw
    obs[:, layout["max_discharge_kw"]] = state.max_discharge_kw
    np.greater(state.ev_max_discharge_kw, 0.0, out=obs[:, layout["v2g_allowed"]], casting="unsafe")
    obs[:, _step_block(params)] = state.step_obs[:, t]
    issued = state.episode.forecast_windows
    window = state.forecast_series[:, :, t:t + params.forecast_steps + 1] if issued is None else issued[:, t]
    b = state.num_envs
    obs[:, layout[FORECAST_BLOCK[0]].start:layout[FORECAST_BLOCK[-1]].stop] = window.reshape(b, -1)
    if params.demand_forecast:
        obs[:, layout[DEMAND_BLOCK[0]].start:] = state.episode.demand_forecast[:, t].reshape(b, -1)
    return obs
