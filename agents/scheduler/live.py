"""The live state of a site as a scheduler sees it, and its translation into the env's observation inputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from envs.errors import cut
from envs.observability import port_is_dc
from envs.site import SiteParams


class SiteStateError(ValueError):
    """A live site state the artifact cannot act on; names the field and, for a session, the session."""


@dataclasses.dataclass(frozen=True)
class PluggedSession:
    """An EV plugged into ``port`` (a port name of the site), with what the site knows of it.

    None means unknown. ``energy_requested_kwh`` is what the driver wants in the battery over
    the whole session and ``energy_delivered_kwh`` what the battery received since plug-in
    (battery side: the meter's grid-side kWh times the port's charge efficiency);
    ``departure`` the announced departure; ``max_charge_kw`` and ``max_discharge_kw`` the car's
    own limits (the port's apply on top); ``min_soc`` is needed only where the EV may discharge.
    ``plugged_in`` is when the session started (same clock as ``now``), needed by artifacts of an
    ``observability`` level other than ``full``: they estimate what the level hides from it and
    from ``energy_delivered_kwh`` (``envs.observability``), and ignore the hidden fields if given.
    """

    port: str
    session_id: str
    soc: float | None = None
    battery_kwh: float | None = None
    energy_requested_kwh: float | None = None
    energy_delivered_kwh: float = 0.0
    departure: dt.datetime | None = None
    max_charge_kw: float | None = None
    max_discharge_kw: float = 0.0
    v2g_consent: bool = False
    min_soc: float | None = None
    plugged_in: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class SiteState:
    """Everything a scheduler is told about its site at one decision (None: not known).

    ``now`` is the site's local wall-clock time (time of day and weekday come from it; naive
    or aware, like the sessions' departures). Series hold the value now, then one per step for
    at least the site's ``forecast_steps`` (longer ones are cut): buy and sell prices, grid
    carbon intensity, and the whole site's inflexible load and PV. ``node_load_kw`` and
    ``node_pv_kw`` map node names to the load and PV hanging on that node itself (nodes left out
    have none). ``expected_arrivals`` and ``expected_energy_kwh`` (the next ``forecast_steps``
    steps) are needed by sites with ``demand_forecast``. A session on a port in
    ``unavailable_ports`` is not charged and not shown to the policy (the env unplugs EVs from
    a port that goes out of order).
    """

    now: dt.datetime
    sessions: Sequence[PluggedSession] = ()
    price_buy_eur_kwh: Sequence[float] | None = None
    price_sell_eur_kwh: Sequence[float] | None = None
    carbon_kg_kwh: Sequence[float] | None = None
    site_load_forecast_kw: Sequence[float] | None = None
    site_pv_forecast_kw: Sequence[float] | None = None
    node_load_kw: Mapping[str, float] | None = None
    node_pv_kw: Mapping[str, float] | None = None
    setpoint_kw: float | None = None
    queue_length: int | None = None
    peak_import_kw: float | None = None
    expected_arrivals: Sequence[float] | None = None
    expected_energy_kwh: Sequence[float] | None = None
    unavailable_ports: Collection[str] = ()


DEMAND_FIELDS = ("expected_arrivals", "expected_energy_kwh")
FORECAST_FIELDS = ("price_buy_eur_kwh", "price_sell_eur_kwh", "carbon_kg_kwh", "site_load_forecast_kw",
                   "site_pv_forecast_kw")
HIDDEN_FIELDS = ("soc", "battery_kwh", "energy_requested_kwh", "departure")  # what a level may hide
FULL_FIELDS = ("soc", "battery_kwh", "energy_requested_kwh", "departure", "max_charge_kw")
_SESSION_NUMBERS = {  # field -> (low, high) allowed
    "soc": (0.0, 1.0), "battery_kwh": (0.0, math.inf), "energy_requested_kwh": (0.0, math.inf),
    "energy_delivered_kwh": (-math.inf, math.inf), "max_charge_kw": (0.0, math.inf),
    "max_discharge_kw": (0.0, math.inf), "min_soc": (0.0, 1.0),
}


def observation_inputs(params: SiteParams, state: SiteState, required: Mapping[str, Sequence[str]]):
    """Keyword arguments of ``envs.observation.observe_live`` (a batch of one) for ``state``, and the
    session id on each port (None where empty).

    Raises ``SiteStateError`` naming the field (and the session) that is missing, unknown or
    out of range. Fields the artifact does not need may be absent; extra knowledge is ignored.
    ``required["session"]`` names the session fields needed on every port and
    ``required["session_on_dc_ports"]`` (if any) those needed on DC ports only
    (``agents.scheduler.artifact.required_fields``). At an ``observability`` level other than
    ``full`` the inputs add each EV's ``arrival_hour``, ``elapsed_hours`` and ``delivered_kwh``.
    """
    if not isinstance(state, SiteState):
        raise SiteStateError(f"state must be a SiteState, got {type(state).__name__}")
    now = state.now
    if not isinstance(now, dt.datetime):
        raise SiteStateError(f"now must be a datetime, got {cut(now)}")
    p, h = params.num_ports, params.forecast_steps
    unavailable = _port_set(params, state.unavailable_ports)
    masked = params.observability != "full"
    names = ("soc", "battery_kwh", "remaining_kwh", "hours_to_departure", "ev_max_charge_kw",
             "ev_max_discharge_kw", "min_soc")
    if masked:
        names += ("arrival_hour", "elapsed_hours", "delivered_kwh")
    ports: dict[str, np.ndarray] = {name: np.zeros((1, p)) for name in names}
    dc = port_is_dc(params)
    on_every_port = tuple(required.get("session", ()))
    on_dc = on_every_port + tuple(required.get("session_on_dc_ports", ()))
    occupied = np.zeros((1, p), dtype=bool)
    session_ids: list[str | None] = [None] * p
    for session in state.sessions:
        if not isinstance(session, PluggedSession):
            raise SiteStateError(f"sessions must hold PluggedSession entries, got {type(session).__name__}")
        index = _port_index(params, session)
        if session_ids[index] is not None:
            raise SiteStateError(f"session {cut(session.session_id)}: port {session.port!r} already holds "
                                 f"session {cut(session_ids[index])}")
        session_ids[index] = session.session_id
        if index in unavailable:
            continue
        values = _session_values(params, session, now, on_dc if dc[index] else on_every_port)
        occupied[0, index] = True
        for name, value in values.items():
            ports[name][0, index] = value
    forecasts = np.stack([_series(state, name, h + 1) for name in FORECAST_FIELDS])[None]
    demand = None
    if params.demand_forecast:
        demand = np.stack([_series(state, name, h) for name in DEMAND_FIELDS])[None]
    available = np.ones((1, p), dtype=bool)
    available[0, sorted(unavailable)] = False
    hours = now.hour + now.minute / 60 + (now.second + now.microsecond / 1e6) / 3600
    inputs = dict(
        occupied=occupied, available=available, **ports,
        node_load_kw=_node_values(params, state, "node_load_kw")[None],
        node_pv_kw=_node_values(params, state, "node_pv_kw")[None],
        hours=np.array([hours]), weekday=np.array([now.weekday()]),
        setpoint_kw=np.array([_number(state, "setpoint_kw")]),
        queue_length=np.array([_count(state, "queue_length")]),
        forecasts=forecasts, demand=demand,
        peak_import_kw=np.array([_number(state, "peak_import_kw", low=0.0)]),
    )
    return inputs, session_ids


def _port_set(params: SiteParams, names) -> set[int]:
    if isinstance(names, str):
        raise SiteStateError("unavailable_ports must be a collection of port names, got a string")
    out = set()
    for name in names:
        if name not in params.port_names:
            raise SiteStateError(f"unavailable_ports: unknown port {cut(name)} on site {params.name!r}")
        out.add(params.port_names.index(name))
    return out


def _port_index(params: SiteParams, session: PluggedSession) -> int:
    try:
        return params.port_names.index(session.port)
    except ValueError:
        raise SiteStateError(f"session {cut(session.session_id)}: port {cut(session.port)} is not a port of "
                             f"site {params.name!r}") from None


def _session_values(params: SiteParams, session: PluggedSession, now: dt.datetime, required) -> dict:
    where = f"session {cut(session.session_id)} on port {session.port!r}"
    may_discharge = params.bidirectional and bool(session.v2g_consent) and (session.max_discharge_kw or 0) > 0
    masked = params.observability != "full"
    needed = set(required) | (set() if masked else set(FULL_FIELDS))
    if may_discharge:
        needed.add("min_soc")
    ignored = {name for name in HIDDEN_FIELDS if name not in needed} if masked else set()
    numbers = {}
    for name, (low, high) in _SESSION_NUMBERS.items():
        value = None if name in ignored else getattr(session, name)
        if value is None:
            if name in needed:
                raise SiteStateError(f"{where}: {name} is unknown (None) but this artifact needs it")
            value = 0.0
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SiteStateError(f"{where}: {name} must be a number, got {cut(value)}") from None
        if not low <= value <= high:
            problem = f"expected a value in [{low}, {high}]" if math.isfinite(value) else "it must be finite"
            raise SiteStateError(f"{where}: {name} is {value}; {problem}")
        numbers[name] = value
    if "battery_kwh" not in ignored and numbers["battery_kwh"] <= 0:
        raise SiteStateError(f"{where}: battery_kwh is {numbers['battery_kwh']}, expected > 0")
    hours = 0.0 if "departure" in ignored else _hours_until(where, "departure", session.departure, now)
    values = {"soc": numbers["soc"], "battery_kwh": numbers["battery_kwh"],
              "remaining_kwh": numbers["energy_requested_kwh"] - numbers["energy_delivered_kwh"],
              "hours_to_departure": hours, "ev_max_charge_kw": numbers["max_charge_kw"],
              "ev_max_discharge_kw": numbers["max_discharge_kw"] if may_discharge else 0.0,
              "min_soc": numbers["min_soc"]}
    if masked:
        elapsed = -_hours_until(where, "plugged_in", session.plugged_in, now)
        if elapsed < 0:
            raise SiteStateError(f"{where}: plugged_in is {-elapsed:.3g} h after now; it must not be later")
        plugged = session.plugged_in
        values.update(arrival_hour=plugged.hour + plugged.minute / 60 + plugged.second / 3600,
                      elapsed_hours=elapsed, delivered_kwh=numbers["energy_delivered_kwh"])
    return values


def _hours_until(where: str, name: str, moment, now: dt.datetime) -> float:
    """Hours from ``now`` to the datetime ``moment`` of the session field ``name``."""
    if moment is None:
        raise SiteStateError(f"{where}: {name} is unknown (None) but this artifact needs it")
    if not isinstance(moment, dt.datetime):
        raise SiteStateError(f"{where}: {name} must be a datetime, got {cut(moment)}")
    try:
        return (moment - now).total_seconds() / 3600
    except TypeError:
        raise SiteStateError(f"{where}: {name} and now must both be naive or both carry a time "
                             "zone") from None


def _series(state: SiteState, name: str, length: int) -> np.ndarray:
    values = getattr(state, name)
    if values is None:
        raise SiteStateError(f"{name} is unknown (None) but this artifact needs it ({length} values "
                             "from now)")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SiteStateError(f"{name} must be a sequence of numbers, got {cut(values)}") from None
    if array.ndim != 1 or len(array) < length:
        raise SiteStateError(f"{name} has shape {array.shape}; this artifact needs at least {length} values "
                             "(now and the forecast steps)")
    if not np.isfinite(array[:length]).all():
        raise SiteStateError(f"{name}[{int(np.argmin(np.isfinite(array[:length])))}] is not finite")
    return array[:length]


def _node_values(params: SiteParams, state: SiteState, name: str) -> np.ndarray:
    mapping = getattr(state, name)
    if mapping is None:
        raise SiteStateError(f"{name} is unknown (None) but this artifact needs it (node name -> kW; "
                             "an empty mapping for none)")
    if not isinstance(mapping, Mapping):
        raise SiteStateError(f"{name} must map node names to kW, got {cut(mapping)}")
    values = np.zeros(params.num_nodes)
    for node, value in mapping.items():
        if node not in params.node_names:
            raise SiteStateError(f"{name}: unknown node {cut(node)} on site {params.name!r}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SiteStateError(f"{name}[{node!r}] must be a number, got {cut(value)}") from None
        if not math.isfinite(value):
            raise SiteStateError(f"{name}[{node!r}] is {value}; it must be finite")
        values[params.node_names.index(node)] = value
    return values


def _number(state: SiteState, name: str, low: float = -math.inf) -> float:
    value = getattr(state, name)
    if value is None:
        raise SiteStateError(f"{name} is unknown (None) but this artifact needs it")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SiteStateError(f"{name} must be a number, got {cut(value)}") from None
    if not math.isfinite(value) or value < low:
        raise SiteStateError(f"{name} is {value}, expected a finite value >= {low}")
    return value


def _count(state: SiteState, name: str) -> int:
    value = getattr(state, name)
    if value is None:
        raise SiteStateError(f"{name} is unknown (None) but this artifact needs it")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise SiteStateError(f"{name} must be a whole number >= 0, got {cut(value)}")
    return int(value)
