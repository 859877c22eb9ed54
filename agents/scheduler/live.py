"""The live state of a site as a scheduler sees it, and its translation into the env's observation inputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import math
import operator
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
    names = ("soc", "battery_kwh", "remaining_kwh", "hours_to_departure", "ev_max_charge_kw",
             "ev_max_discharge_kw", "min_soc")
    if params.observability != "full":
        names += ("arrival_hour", "elapsed_hours", "delivered_kwh")
    dc = port_is_dc(params)
    on_every_port = tuple(required.get("session", ()))
    on_dc = on_every_port + tuple(required.get("session_on_dc_ports", ()))
    sessions = tuple(state.sessions)
    read = _read_sessions(params, sessions, now, unavailable, on_every_port, on_dc, names, dc)
    if read is None:  # something is wrong: the session-by-session reading names it
        read = _read_each_session(params, sessions, now, unavailable, on_every_port, on_dc, names, dc)
    occupied, ports, session_ids = read
    forecasts = _all_series(state, FORECAST_FIELDS, h + 1)[None]
    demand = None
    if params.demand_forecast:
        demand = _all_series(state, DEMAND_FIELDS, h)[None]
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


def _read_each_session(params: SiteParams, sessions, now: dt.datetime, unavailable: set[int], on_every_port,
                       on_dc, names, dc) -> tuple[np.ndarray, dict[str, np.ndarray], list[str | None]]:
    """(occupied (1, P), port fields (1, P) by name, session id by port), session by session;
    raises ``SiteStateError`` on the first bad field of the first bad session."""
    ports: dict[str, np.ndarray] = {name: np.zeros((1, params.num_ports)) for name in names}
    occupied = np.zeros((1, params.num_ports), dtype=bool)
    session_ids: list[str | None] = [None] * params.num_ports
    for session in sessions:
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
    return occupied, ports, session_ids


_NUMBER_TYPES = (int, float, np.integer, np.floating, np.bool_)
_NUMBER_ROW = {name: row for row, name in enumerate(_SESSION_NUMBERS)}
_NUMBER_LOW = np.array([[low] for low, _ in _SESSION_NUMBERS.values()])
_NUMBER_HIGH = np.array([[high] for _, high in _SESSION_NUMBERS.values()])
_SESSION_FIELDS = ("port", "session_id", "v2g_consent", "departure", "plugged_in", *_SESSION_NUMBERS)
_session_fields = operator.attrgetter(*_SESSION_FIELDS)


def _read_sessions(params: SiteParams, sessions, now: dt.datetime, unavailable: set[int], on_every_port,
                   on_dc, names, dc):
    """What ``_read_each_session`` returns, every field of every session read at once; None where
    any session or field is not plainly valid (``_read_each_session`` then names it)."""
    p = params.num_ports
    try:
        if not set(map(type, sessions)) <= {PluggedSession}:
            return None
        rows = list(map(_session_fields, sessions))
        port_index = _indices(params)[0]
        index = np.array([port_index[row[0]] for row in rows], dtype=np.int64)
    except (KeyError, TypeError):
        return None
    if len(set(index.tolist())) != len(index):
        return None
    session_ids: list[str | None] = [None] * p
    for position, row in zip(index.tolist(), rows, strict=True):
        session_ids[position] = row[1]
    keep = np.ones(len(index), dtype=bool)
    if unavailable:
        keep = ~np.isin(index, sorted(unavailable))
        rows = [row for row, kept in zip(rows, keep.tolist(), strict=True) if kept]
        index = index[keep]
    occupied = np.zeros((1, p), dtype=bool)
    ports: dict[str, np.ndarray] = {name: np.zeros((1, p)) for name in names}
    if not rows:
        return occupied, ports, session_ids
    columns = dict(zip(_SESSION_FIELDS, zip(*rows, strict=True), strict=True))
    numbers = _session_numbers(params, columns, dc[index], on_every_port, on_dc)
    if numbers is None:
        return None
    masked = params.observability != "full"
    hidden = _ignored(params, on_every_port, on_dc, dc[index])
    try:
        hours = _hours_from(now, columns["departure"], hidden["departure"])
        values = {"soc": numbers["soc"], "battery_kwh": numbers["battery_kwh"],
                  "remaining_kwh": numbers["energy_requested_kwh"] - numbers["energy_delivered_kwh"],
                  "hours_to_departure": hours, "ev_max_charge_kw": numbers["max_charge_kw"],
                  "ev_max_discharge_kw": np.where(numbers["may_discharge"], numbers["max_discharge_kw"], 0.0),
                  "min_soc": numbers["min_soc"]}
        if masked:
            plugged = columns["plugged_in"]
            elapsed = -_hours_from(now, plugged, np.zeros(len(plugged), dtype=bool))
            if not (elapsed >= 0).all():
                return None
            values.update(arrival_hour=np.array([moment.hour + moment.minute / 60 + moment.second / 3600
                                                 for moment in plugged]),
                          elapsed_hours=elapsed, delivered_kwh=numbers["energy_delivered_kwh"])
    except (TypeError, AttributeError):
        return None
    occupied[0, index] = True
    for name, value in values.items():
        ports[name][0, index] = value
    return occupied, ports, session_ids


def _ignored(params: SiteParams, on_every_port, on_dc, dc: np.ndarray) -> dict[str, np.ndarray]:
    """Hidden field -> (S,) True on the sessions whose value this artifact ignores."""
    if params.observability == "full":
        return {name: np.zeros(len(dc), dtype=bool) for name in HIDDEN_FIELDS}
    return {name: np.where(dc, name not in on_dc, name not in on_every_port) for name in HIDDEN_FIELDS}


def _session_numbers(params: SiteParams, columns: Mapping[str, tuple], dc: np.ndarray, on_every_port,
                     on_dc) -> dict[str, np.ndarray] | None:
    """The ``_SESSION_NUMBERS`` fields (S,) as ``_session_values`` reads them (0 for unknown and
    ignored ones), and ``may_discharge``; None if any is missing, malformed or out of range."""
    if not all(kind is type(None) or issubclass(kind, _NUMBER_TYPES)
               for kind in set(map(type, columns["max_discharge_kw"]))):
        return None  # ``_session_values`` compares it before reading it as a number
    try:
        consent = np.fromiter(map(bool, columns["v2g_consent"]), dtype=bool, count=len(dc))
    except (TypeError, ValueError):
        return None
    ignored = _ignored(params, on_every_port, on_dc, dc)
    all_numbers = itertools.chain.from_iterable(columns[name] for name in _SESSION_NUMBERS)
    if set(map(type, all_numbers)) <= {float, int}:
        return _plain_numbers(params, columns, consent, ignored)
    discharge_kw = np.array([value or 0 for value in columns["max_discharge_kw"]], dtype=np.float64)
    may_discharge = params.bidirectional & consent & (discharge_kw > 0)
    masked = params.observability != "full"
    numbers = {"may_discharge": may_discharge}
    for name, (low, high) in _SESSION_NUMBERS.items():
        column = columns[name]
        types = set(map(type, column))
        if not all(kind is type(None) or issubclass(kind, _NUMBER_TYPES) for kind in types):
            return None
        skipped = ignored.get(name, np.zeros(len(dc), dtype=bool))
        needed = np.where(dc, name in on_dc, name in on_every_port) | (not masked and name in FULL_FIELDS)
        if name == "min_soc":
            needed = needed | may_discharge
        try:
            values = np.array(column, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return None
        if type(None) in types:
            unknown = np.array([value is None for value in column]) & ~skipped
            if (unknown & needed).any():
                return None
            skipped = skipped | unknown
        values[skipped] = 0.0
        if values.shape != (len(dc),) or not ((low <= values) & (values <= high)).all():
            return None
        numbers[name] = values
    if ((numbers["battery_kwh"] <= 0) & ~ignored["battery_kwh"]).any():
        return None
    return numbers


def _plain_numbers(params: SiteParams, columns: Mapping[str, tuple], consent: np.ndarray,
                   ignored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """``_session_numbers`` where every number is a plain float or int (none unknown): one table."""
    try:
        table = np.array([columns[name] for name in _SESSION_NUMBERS], dtype=np.float64)
    except OverflowError:
        return None
    for name, skipped in ignored.items():
        if name in _SESSION_NUMBERS:
            table[_NUMBER_ROW[name], skipped] = 0.0
    if not ((_NUMBER_LOW <= table) & (table <= _NUMBER_HIGH)).all():
        return None
    numbers = dict(zip(_SESSION_NUMBERS, table, strict=True))
    if ((numbers["battery_kwh"] <= 0) & ~ignored["battery_kwh"]).any():
        return None
    numbers["may_discharge"] = params.bidirectional & consent & (numbers["max_discharge_kw"] > 0)
    return numbers


def _hours_from(now: dt.datetime, moments: tuple, skipped: np.ndarray) -> np.ndarray:
    """(S,) hours from ``now`` to each datetime in ``moments`` (0 where ``skipped``); TypeError on a
    value that is not a datetime or does not subtract."""
    skip = skipped.tolist()
    if not set(map(type, moments)) <= {dt.datetime} and not all(
            chosen or isinstance(moment, dt.datetime) for moment, chosen in zip(moments, skip, strict=True)):
        raise TypeError("not a datetime")
    return np.array([0.0 if chosen else (moment - now).total_seconds() / 3600
                     for moment, chosen in zip(moments, skip, strict=True)], dtype=np.float64)


def _port_set(params: SiteParams, names) -> set[int]:
    if isinstance(names, str):
        raise SiteStateError("unavailable_ports must be a collection of port names, got a string")
    index = _indices(params)[0]
    out = set()
    for name in names:
        try:
            out.add(index[name])
        except (KeyError, TypeError):
            raise SiteStateError(f"unavailable_ports: unknown port {cut(name)} on site "
                                 f"{params.name!r}") from None
    return out


@functools.lru_cache(maxsize=64)
def _indices(params: SiteParams) -> tuple[dict[str, int], dict[str, int]]:
    """(port name -> index, node name -> index) of a site."""
    return ({name: i for i, name in enumerate(params.port_names)},
            {name: i for i, name in enumerate(params.node_names)})


def _port_index(params: SiteParams, session: PluggedSession) -> int:
    try:
        return _indices(params)[0][session.port]
    except (KeyError, TypeError):
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


def _all_series(state: SiteState, names: Sequence[str], length: int) -> np.ndarray:
    """(len(names), length) the first ``length`` values of each series; at once where they are plain
    lists of floats of one length, else series by series (``_series`` names what is wrong)."""
    values = [getattr(state, name) for name in names]
    if all(type(series) is list for series in values) and len({len(series) for series in values}) == 1:
        try:
            table = np.array(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            table = None
        if table is not None and table.ndim == 2 and table.shape[1] >= length \
                and np.isfinite(table[:, :length]).all():
            return table[:, :length]
    return np.stack([_series(state, name, length) for name in names])


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
    index = _indices(params)[1]
    for node, value in mapping.items():
        try:
            position = index[node]
        except (KeyError, TypeError):
            raise SiteStateError(f"{name}: unknown node {cut(node)} on site {params.name!r}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SiteStateError(f"{name}[{node!r}] must be a number, got {cut(value)}") from None
        if not math.isfinite(value):
            raise SiteStateError(f"{name}[{node!r}] is {value}; it must be finite")
        values[position] = value
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


def reported_soc(params: SiteParams, state: SiteState, ports: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SoC (1, P), battery kWh (1, P)) the sessions on ``ports`` (P,) bool report themselves, whatever
    the site's ``observability`` level; NaN where a session reports no SoC or battery in range
    (SoC in [0, 1], battery above 0 and finite)."""
    soc = np.full((1, params.num_ports), np.nan)
    battery = np.full((1, params.num_ports), np.nan)
    index = _indices(params)[0]
    for session in state.sessions:
        port = index.get(session.port) if isinstance(session, PluggedSession) else None
        if port is None or not ports[port]:
            continue
        try:
            reported = float(session.soc), float(session.battery_kwh)
        except (TypeError, ValueError, OverflowError):
            continue
        if 0.0 <= reported[0] <= 1.0 and 0.0 < reported[1] < math.inf:
            soc[0, port], battery[0, port] = reported
    return soc, battery
