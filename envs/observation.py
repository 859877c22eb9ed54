"""Flat observation: its declared layout, its physical scale and its builder, shared with the scheduler."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from envs.dynamics import EV_FIELDS, available_power, plug_limits
from envs.episode import DEMAND_BLOCK, FORECAST_BLOCK, Episode
from envs.observability import FLAG_FIELDS, SessionEstimator, estimator_for, site_view
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
    the forecasts, then ``peak_import_kw``; sites whose ``observability`` is not ``full`` end with
    the per-port ``FLAG_FIELDS`` (``envs.observability``), so every other column keeps its place.
    """
    p, n, h = params.num_ports, params.num_nodes, params.forecast_steps + 1
    sizes = [(name, p) for name in PORT_FIELDS]
    sizes += [("node_headroom_kw", n)] + list(STEP_BLOCK_SIZES.items())
    sizes += [(name, h) for name in FORECAST_BLOCK]
    if params.demand_forecast:
        sizes += [(name, h - 1) for name in DEMAND_BLOCK]
    sizes += [(PEAK_FIELD, 1)]
    if params.observability != "full":
        sizes += [(name, p) for name in FLAG_FIELDS]
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
    per-node fields one per node in ``params.node_names`` order (depth-first, root first); the
    per-port estimate flags (``flag_fields``, ``envs.observability.FLAG_FIELDS``: 1 where the
    port's ``soc``, ``remaining_kwh`` or ``hours_to_departure`` is an estimate) exist on sites
    whose ``observability`` is not ``full`` and are kept apart from ``port_fields``, so a
    network built at one level reads the same port columns at another; every other field is
    site-wide. Policies read columns through these index arrays (read-only), never
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
    flag_fields: tuple[str, ...] = ()
    flag_columns: np.ndarray | None = None  # (P, len(flag_fields)) column of flag f for port p


@functools.lru_cache(maxsize=128)
def declared_layout(params: SiteParams) -> ObservationLayout:
    slices = observation_layout(params)
    flag_fields = tuple(name for name in FLAG_FIELDS if name in slices)
    grouped = set(PORT_FIELDS) | set(NODE_FIELDS) | set(flag_fields)
    site_fields = tuple(name for name in slices if name not in grouped)

    def columns(fields, rows):
        if not fields:
            return _frozen(np.zeros((rows, 0), dtype=np.int64))
        return _frozen(np.stack([np.arange(slices[f].start, slices[f].stop) for f in fields], axis=1))

    site = [np.arange(slices[f].start, slices[f].stop) for f in site_fields]
    p = params.num_ports
    return ObservationLayout(slices, PORT_FIELDS, NODE_FIELDS, site_fields, columns(PORT_FIELDS, p),
                             columns(NODE_FIELDS, params.num_nodes), _frozen(np.concatenate(site)),
                             layout_size(params), flag_fields, columns(flag_fields, p))


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
    flags = declared_layout(params).flag_fields
    for name in ("occupied", "available", "soc", "v2g_allowed", "weekday", *flags):
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
    time_of_day, weekday = calendar_fields(hours, episode.weekday[:, None] + (hours // 24).astype(np.int64))
    put("time_of_day", time_of_day)
    put("weekday", weekday)
    put("setpoint_kw", episode.setpoint_kw[:, :steps, None])
    put("queue_length", queue_length[:, :, None])
    return out


def calendar_fields(hours, weekday) -> tuple[np.ndarray, np.ndarray]:
    """``time_of_day`` (..., 2) (sine, cosine of the hour of the day; ``hours`` may run past 24)
    and ``weekday`` (..., 7) one-hot (0 = Monday, taken modulo 7)."""
    angle = 2 * np.pi * (np.asarray(hours) % 24) / 24
    day = np.asarray(weekday) % 7
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1), day[..., None] == np.arange(7)


def write_port_fields(params: SiteParams, obs: np.ndarray, occupied, available, soc, remaining_kwh,
                      hours_to_departure, max_charge_kw, max_discharge_kw, ev_max_discharge_kw) -> None:
    """Write the ``PORT_FIELDS`` columns of ``obs`` (B, D) from (B, P) arrays, in place.

    ``hours_to_departure`` is 0 on empty ports; ``ev_max_discharge_kw`` is the EV's discharge
    limit on its port (0 without V2G consent), so ``v2g_allowed`` is where it is positive.
    """
    layout = observation_layout(params)
    obs[:, layout["occupied"]] = occupied
    obs[:, layout["available"]] = available
    obs[:, layout["soc"]] = soc
    np.maximum(remaining_kwh, 0.0, out=obs[:, layout["remaining_kwh"]])
    obs[:, layout["hours_to_departure"]] = hours_to_departure
    obs[:, layout["max_charge_kw"]] = max_charge_kw
    obs[:, layout["max_discharge_kw"]] = max_discharge_kw
    np.greater(ev_max_discharge_kw, 0.0, out=obs[:, layout["v2g_allowed"]], casting="unsafe")


def observe(params: SiteParams, state: State) -> np.ndarray:
    """Observation (B, D) float32 of a batch at its current step, in physical units."""
    t = state.t
    obs = np.empty((state.num_envs, layout_size(params)), dtype=np.float32)
    occupied = state.port_ev >= 0
    down = state.episode.port_down
    steps_left = state.announced_departure_step - t
    steps_left *= occupied
    steps_left *= params.dt_hours
    write_port_fields(params, obs, occupied, 1.0 if down is None else ~down[:, t], state.soc,
                      state.remaining_kwh, steps_left, state.max_charge_kw, state.max_discharge_kw,
                      state.ev_max_discharge_kw)
    obs[:, _step_block(params)] = state.step_obs[:, t]
    issued = state.episode.forecast_windows
    window = state.forecast_series[:, :, t:t + params.forecast_steps + 1] if issued is None else issued[:, t]
    demand = state.episode.demand_forecast[:, t] if params.demand_forecast else None
    _write_site_fields(params, obs, window, demand, state.peak_import_kw)
    if params.observability != "full":
        _write_site_view(params, obs, _view_of_state(params, state, obs))
    return obs


def _view_of_state(params: SiteParams, state: State, obs: np.ndarray):
    """The site's view (``envs.observability.site_view``) of the EVs of ``state``; their plug-in
    time is taken as their arrival at the site (an EV that queued plugged in later, so its wait
    counts as time plugged in)."""
    layout = observation_layout(params)
    occupied = state.port_ev >= 0
    arrival_step = np.take_along_axis(state.episode.ev_arrival_step, np.maximum(state.port_ev, 0), axis=1)
    return site_view(params, estimator_for(params), occupied, state.soc, state.battery_kwh,
                     obs[:, layout["remaining_kwh"]], obs[:, layout["hours_to_departure"]],
                     params.start_minute / 60 + params.dt_hours * arrival_step,
                     params.dt_hours * (state.t - arrival_step), state.delivered_kwh)


def _write_site_view(params: SiteParams, obs: np.ndarray, view) -> None:
    """Write the estimated port fields and their ``FLAG_FIELDS`` (levels other than ``full``)."""
    layout = observation_layout(params)
    obs[:, layout["soc"]] = view.soc
    np.maximum(view.remaining_kwh, 0.0, out=obs[:, layout["remaining_kwh"]], casting="unsafe")
    obs[:, layout["hours_to_departure"]] = view.hours_to_departure
    for name, flag in zip(FLAG_FIELDS, view.flags, strict=True):
        obs[:, layout[name]] = flag


def _write_site_fields(params: SiteParams, obs: np.ndarray, window, demand, peak_import_kw) -> None:
    """Forecast windows (B, len(FORECAST_BLOCK), H+1), demand (B, 2, H) and the peak so far (B,)."""
    layout = observation_layout(params)
    b = obs.shape[0]
    obs[:, layout[FORECAST_BLOCK[0]].start:layout[FORECAST_BLOCK[-1]].stop] = window.reshape(b, -1)
    if params.demand_forecast:
        obs[:, layout[DEMAND_BLOCK[0]].start:layout[DEMAND_BLOCK[-1]].stop] = demand.reshape(b, -1)
    obs[:, layout[PEAK_FIELD].start] = peak_import_kw


class LiveObservation(NamedTuple):
    """What ``observe_live`` derives from a site's live state, for a batch of B sites."""

    obs: np.ndarray  # (B, D) float32, as ``observe`` builds it
    max_charge_kw: np.ndarray  # (B, P) grid-side charge power each port can take this step
    max_discharge_kw: np.ndarray  # (B, P) grid-side discharge power each port can give this step
    node_exo_kw: np.ndarray  # (B, N) inflexible load minus PV of each node's subtree


def subtree_sums(params: SiteParams, node_values: np.ndarray) -> np.ndarray:
    """(..., N) sums over each node's subtree of per-node values (..., N) (preorder prefix sums)."""
    prefix = np.zeros(node_values.shape[:-1] + (node_values.shape[-1] + 1,))
    np.cumsum(node_values, axis=-1, out=prefix[..., 1:])
    return prefix[..., params.node_subtree_end] - prefix[..., :-1]


def observe_live(params: SiteParams, *, occupied, available, soc, battery_kwh, remaining_kwh,
                 hours_to_departure, ev_max_charge_kw, ev_max_discharge_kw, min_soc, node_load_kw,
                 node_pv_kw, hours, weekday, setpoint_kw, queue_length, forecasts, demand,
                 peak_import_kw, arrival_hour=None, elapsed_hours=None, delivered_kwh=None,
                 estimator: SessionEstimator | None = None) -> LiveObservation:
    """The observation ``observe`` would show for a site in the given live state, without an episode.

    For a runtime that sees a real site: per port (B, P), the plugged EV's ``soc``,
    ``battery_kwh``, ``remaining_kwh`` (energy still wanted in the battery),
    ``hours_to_departure`` (to the announced departure), the car's own ``ev_max_charge_kw``, its
    ``ev_max_discharge_kw`` (0 without V2G consent) and ``min_soc``; ``available`` is False on a
    port out of order. Per node (B, N): the inflexible load and PV hanging on the node itself.
    Per site (B,): ``hours`` (hour of the day, from midnight), ``weekday`` (0 = Monday),
    ``setpoint_kw``, ``queue_length``, ``peak_import_kw``; ``forecasts`` (B, 5, H+1) the
    ``FORECAST_BLOCK`` series from now on (lead 0 is now), ``demand`` (B, 2, H) the
    ``DEMAND_BLOCK`` for the next H steps (sites with ``demand_forecast``; else ignored).

    The port limits come from the env's own pieces (``envs.dynamics.plug_limits`` and
    ``available_power``: port and car limits, taper, battery room, request, min SoC), the node
    headroom from the subtree sums the env takes at reset, and the columns are written by the
    functions ``observe`` writes them with. Values on empty ports are ignored.

    On a site whose ``observability`` is not ``full``, what the level hides is replaced by the
    estimates of ``envs.observability.site_view`` (``estimator``, default the site's own,
    ``estimator_for``) from each EV's ``arrival_hour`` (hour of the day it plugged in),
    ``elapsed_hours`` since and ``delivered_kwh`` metered into its battery (B, P); the values
    given for hidden fields are ignored. The available power then follows the site's view (an
    estimated SoC and battery set the taper), where the env's own observation shows the
    power the car really takes (``observe``).
    """
    occupied = np.asarray(occupied, dtype=bool)
    b, p = occupied.shape

    def port(values):
        values = np.asarray(values, dtype=np.float64)
        return np.where(occupied, values if values.shape == (b, p) else np.broadcast_to(values, (b, p)), 0.0)

    soc, battery_kwh, remaining_kwh = port(soc), port(battery_kwh), port(remaining_kwh)
    hours_to_departure, view = port(hours_to_departure), None
    if params.observability != "full":
        view = site_view(params, estimator or estimator_for(params), occupied, soc, battery_kwh,
                         remaining_kwh, hours_to_departure, port(arrival_hour), port(elapsed_hours),
                         port(delivered_kwh))
        soc, battery_kwh, remaining_kwh, hours_to_departure = view[:4]
    ev = np.zeros((len(EV_FIELDS), b * p))
    for name, value in (("battery_kwh", battery_kwh), ("ev_max_charge_kw", ev_max_charge_kw),
                        ("ev_max_discharge_kw", ev_max_discharge_kw), ("min_soc", min_soc)):
        ev[EV_FIELDS.index(name)] = port(value).reshape(-1)
    plug_limits(params, ev, np.tile(np.arange(p), b))
    ev[:, ~occupied.reshape(-1)] = 0.0
    ev = ev.reshape(len(EV_FIELDS), b, p)
    max_charge_kw, max_discharge_kw = available_power(params, soc, remaining_kwh, ev)
    node_exo_kw = subtree_sums(params, np.asarray(node_load_kw, dtype=np.float64)
                               - np.asarray(node_pv_kw, dtype=np.float64))
    layout = observation_layout(params)
    obs = np.empty((b, layout_size(params)), dtype=np.float32)
    write_port_fields(params, obs, occupied, np.asarray(available, dtype=bool), soc, remaining_kwh,
                      hours_to_departure, max_charge_kw, max_discharge_kw,
                      ev[EV_FIELDS.index("ev_max_discharge_kw")])
    if view is not None:
        _write_site_view(params, obs, view)
    obs[:, layout["node_headroom_kw"]] = params.node_import_limit_kw - node_exo_kw
    time_of_day, day = calendar_fields(hours, weekday)
    obs[:, layout["time_of_day"]] = time_of_day
    obs[:, layout["weekday"]] = day
    obs[:, layout["setpoint_kw"].start] = setpoint_kw
    obs[:, layout["queue_length"].start] = queue_length
    forecasts = np.asarray(forecasts, dtype=np.float32)
    _write_site_fields(params, obs, forecasts, None if demand is None else np.asarray(demand, np.float32),
                       peak_import_kw)
    return LiveObservation(obs, max_charge_kw, max_discharge_kw, node_exo_kw)
