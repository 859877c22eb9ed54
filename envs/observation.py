"""Flat observation: its declared layout, its physical scale and its builder, shared with the scheduler."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

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


NODE_FIELDS = ("node_headroom_kw",)  # import limit minus the subtree's inflexible load and PV
STEP_BLOCK_SIZES = {"time_of_day": 2, "weekday": 7, "setpoint_kw": 1, "queue_length": 1}
PEAK_FIELD = "peak_import_kw"  # highest site import so far in the billing window (the episode)


@functools.lru_cache(maxsize=128)
def observation_layout(params: SiteParams) -> dict[str, slice]:
    """Name -> slice of the flat observation vector; sizes depend on ports, nodes and horizon.

    Sites with ``demand_forecast: true`` add the ``DEMAND_BLOCK`` windows (leads 1 .. H) after
    the forecasts; ``peak_import_kw`` comes last.
    """
    p, n, h = params.num_ports, params.num_nodes, params.forecast_steps + 1
    sizes = [(name, p) for name in PORT_FIELDS]
    sizes += [("node_headroom_kw", n)] + list(STEP_BLOCK_SIZES.items())
    sizes += [(name, h) for name in FORECAST_BLOCK]
    if params.demand_forecast:
        sizes += [(name, h - 1) for name in DEMAND_BLOCK]
    sizes += [(PEAK_FIELD, 1)]
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = slice(start, start + size)
        start += size
    return layout


def layout_size(params: SiteParams) -> int:
    return next(reversed(observation_layout(params).values())).stop


@dataclasses.dataclass(frozen=True, eq=False)
class ObservationLayout:
    """Which columns of the flat observation belong to each port, each node and the whole site.

    Per-port fields (``port_fields``) have one column per port in ``params.port_names`` order,
    per-node fields one per node in ``params.node_names`` order (depth-first, root first); every
    other field is site-wide. Policies read columns through these index arrays (read-only), never
    through hard-coded positions, so that one policy serves sites of any size.

    >>> from envs.site import load_site
    >>> layout = declared_layout(load_site("jpl"))
    >>> layout.port_columns.shape, layout.node_columns.shape, layout.site_columns.shape, layout.size
    ((52, 8), (4, 1), (57,), 477)
    """

    slices: Mapping[str, slice]
    port_fields: tuple[str, ...]
    node_fields: tuple[str, ...]
    site_fields: tuple[str, ...]
    port_columns: np.ndarray  # (P, len(port_fields)) column of field f for port p
    node_columns: np.ndarray  # (N, len(node_fields)) column of field f for node n
    site_columns: np.ndarray  # (S,) site-wide columns in layout order
    size: int


@functools.lru_cache(maxsize=128)
def declared_layout(params: SiteParams) -> ObservationLayout:
    slices = observation_layout(params)
    site_fields = tuple(name for name in slices if name not in PORT_FIELDS and name not in NODE_FIELDS)

    def columns(fields):
        return _frozen(np.stack([np.arange(slices[f].start, slices[f].stop) for f in fields], axis=1))

    site = [np.arange(slices[f].start, slices[f].stop) for f in site_fields]
    return ObservationLayout(slices, PORT_FIELDS, NODE_FIELDS, site_fields, columns(PORT_FIELDS),
                             columns(NODE_FIELDS), _frozen(np.concatenate(site)), layout_size(params))


HOURS_SCALE = 12.0  # hours, and kWh as hours of full port power
PRICE_SCALE_EUR_KWH = 0.35  # when the scenario names no positive tariff_eur_kwh
CARBON_SCALE_KG_KWH = 0.5


@functools.lru_cache(maxsize=128)
def observation_scale(params: SiteParams) -> np.ndarray:
    """(D,) float32 physical scale of every column, read-only; ``obs / scale`` is of order 1.

    Fixed by the site, so no running normalization is needed and a shared network sees
    comparable inputs on every site: port kW by the port's limit; ``remaining_kwh`` by the energy
    the port puts into a battery in ``HOURS_SCALE`` hours, and ``hours_to_departure`` by those
    hours (so their ratio is the share of the stay that full power needs); node headroom by the
    node's import limit; site kW (setpoint, load, PV, peak so far) by the root's import limit and
    the expected energy by that limit over one step; prices by the scenario's tariff
    (``PRICE_SCALE_EUR_KWH`` without one), carbon by ``CARBON_SCALE_KG_KWH``; the queue by its
    capacity and expected arrivals by port-hours of one step. Flags, SoC and calendar are 1.
    """
    layout = observation_layout(params)
    scale = np.ones(layout_size(params), dtype=np.float64)
    root_kw = params.node_import_limit_kw[0]
    tariff = params.scenario.get("tariff_eur_kwh")
    price = float(tariff) if isinstance(tariff, (int, float)) and tariff > 0 else PRICE_SCALE_EUR_KWH
    discharge_kw = np.where(params.port_max_discharge_kw > 0, params.port_max_discharge_kw,
                            params.port_max_charge_kw)
    per_field = {
        "remaining_kwh": params.port_max_charge_kw * params.port_charge_efficiency * HOURS_SCALE,
        "hours_to_departure": HOURS_SCALE,
        "max_charge_kw": params.port_max_charge_kw,
        "max_discharge_kw": discharge_kw,
        "node_headroom_kw": params.node_import_limit_kw,
        "setpoint_kw": root_kw,
        "queue_length": max(params.queue_capacity, 1),
        "price_buy_eur_kwh": price,
        "price_sell_eur_kwh": price,
        "carbon_kg_kwh": CARBON_SCALE_KG_KWH,
        "site_load_kw": root_kw,
        "site_pv_kw": root_kw,
        "expected_arrivals": params.num_ports * params.dt_hours,
        "expected_energy_kwh": root_kw * params.dt_hours,
        PEAK_FIELD: root_kw,
    }
    for name, value in per_field.items():
        if name in layout:
            scale[layout[name]] = value
    return _frozen(scale.astype(np.float32))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def observation_bounds(params: SiteParams) -> tuple[np.ndarray, np.ndarray]:
    layout = observation_layout(params)
    size = layout_size(params)
    low = np.full(size, -np.inf, dtype=np.float32)
    high = np.full(size, np.inf, dtype=np.float32)
    for name in ("occupied", "available", "soc", "v2g_allowed", "weekday"):
        low[layout[name]], high[layout[name]] = 0.0, 1.0
    for name in ("max_charge_kw", "max_discharge_kw", "site_load_kw", "site_pv_kw", "queue_length",
                 "remaining_kwh", PEAK_FIELD, *(DEMAND_BLOCK if params.demand_forecast else ())):
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
        demand = slice(layout[DEMAND_BLOCK[0]].start, layout[DEMAND_BLOCK[-1]].stop)
        obs[:, demand] = state.episode.demand_forecast[:, t].reshape(b, -1)
    obs[:, layout[PEAK_FIELD].start] = state.peak_import_kw
    return obs
