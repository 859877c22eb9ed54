"""An OCPP central system (1.6J, 2.0.1, 2.1) that runs the scheduler on what its charge points report and
sends each decision back as ``SetChargingProfile`` requests.

Imports the ``ocpp`` and ``websockets`` packages, numpy and ``envs`` (through the runtime); no torch or
stable-baselines3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import numpy as np
from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError, PropertyConstraintViolationError
from ocpp.messages import unpack
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agents.scheduler.live import PluggedSession, SiteState, SiteStateError
from agents.scheduler.ocpp_profiles import VERSIONS, ChargingProfiles, PortBinding, ProfileCall, ProfileError
from agents.scheduler.runtime import Decision, Scheduler
from envs.errors import cut
from envs.site import SiteParams

LOG = logging.getLogger(__name__)
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
VENDOR_ID = "smartcharging"  # DataTransfer vendorId of the EV charging needs in OCPP 1.6
NEEDS_MESSAGE_ID = "EVChargingNeeds"
DOWN_STATUSES = ("Unavailable", "Faulted")
OCPP_FIELDS = ("now", "sessions", "unavailable_ports")  # what a SiteState takes from the charge points
Feed = Callable[[dt.datetime], Mapping[str, Any]]


def charge_point_layout(params: SiteParams, charge_points: int, prefix: str = "CP"
                        ) -> dict[str, tuple[str, int]]:
    """Port name -> (charge point identity, connector id from 1): the site's ports in order, split into
    ``charge_points`` charge points of consecutive ports (``CP-1``, ``CP-2``, ...).

    >>> from envs.site import load_site
    >>> layout = charge_point_layout(load_site("caltech"), 3)
    >>> layout["evse0"], layout["evse17"], layout["evse18"], layout["evse53"]
    (('CP-1', 1), ('CP-1', 18), ('CP-2', 1), ('CP-3', 18))
    """
    if isinstance(charge_points, bool) or not isinstance(charge_points, int) or not 1 <= charge_points <= (
            params.num_ports):
        raise ValueError(f"charge_points must be a whole number in [1, {params.num_ports}], got "
                         f"{cut(charge_points)}")
    layout = {}
    for number, ports in enumerate(np.array_split(np.arange(params.num_ports), charge_points), start=1):
        for connector, port in enumerate(ports.tolist(), start=1):
            layout[params.port_names[port]] = (f"{prefix}-{number}", connector)
    return layout


@dataclasses.dataclass
class Connector:
    """What the central system knows of one connector, from its charge point's reports only.

    ``needs`` holds the EV's charging needs (departure, energy_wh, capacity_wh, max_power_w,
    max_discharge_w, min_soc, v2x) once reported; registers are Wh, ``*_start`` the transaction's
    first reading.
    """

    port: str
    status: str = "Available"
    transaction_id: int | str | None = None
    started_at: dt.datetime | None = None
    needs: dict | None = None
    soc_percent: float | None = None
    import_wh: float = 0.0
    export_wh: float = 0.0
    import_start_wh: float = 0.0
    export_start_wh: float = 0.0

    def start(self, transaction_id, timestamp: str, import_wh: float | None = None) -> None:
        self.transaction_id, self.started_at, self.soc_percent = transaction_id, _parse_time(timestamp), None
        if import_wh is not None:
            self.import_wh = self.import_start_wh = float(import_wh)
        self.export_start_wh = self.export_wh

    def stop(self) -> None:
        self.transaction_id, self.started_at, self.needs, self.soc_percent = None, None, None, None

    def read(self, meter_values, begin: bool = False) -> None:
        """Takes the registers and SoC of ``meter_values`` (snake-case OCPP MeterValue list)."""
        for meter_value in meter_values or ():
            for sample in meter_value.get("sampled_value", ()):
                measurand = sample.get("measurand", "Energy.Active.Import.Register")
                unit = sample.get("unit") or (sample.get("unit_of_measure") or {}).get("unit")
                try:
                    value = float(sample["value"]) * (1000.0 if unit in ("kWh", "kW") else 1.0)
                except (TypeError, ValueError):
                    raise PropertyConstraintViolationError(
                        description=f"{measurand} value {cut(sample['value'])} is not a number") from None
                begins = begin or sample.get("context") == "Transaction.Begin"
                if measurand == "Energy.Active.Import.Register":
                    self.import_wh = value
                    if begins:
                        self.import_start_wh = value
                elif measurand == "Energy.Active.Export.Register":
                    self.export_wh = value
                    if begins:
                        self.export_start_wh = value
                elif measurand == "SoC":
                    self.soc_percent = value

    def session(self, charge_efficiency: float, discharge_efficiency: float,
                zone: dt.tzinfo | None = None) -> PluggedSession:
        """The session as the scheduler reads it; ``plugged_in`` is the transaction's start, on the
        clock of ``zone`` (the site's, so its hour of the day is the site's)."""
        needs = self.needs or {}
        kw = {name: needs[key] / 1000.0 if needs.get(key) is not None else None for name, key in (
            ("battery_kwh", "capacity_wh"), ("energy_requested_kwh", "energy_wh"),
            ("max_charge_kw", "max_power_w"))}
        plugged_in = self.started_at
        if plugged_in is not None and zone is not None and plugged_in.tzinfo is not None:
            plugged_in = plugged_in.astimezone(zone)
        delivered_kwh = ((self.import_wh - self.import_start_wh) * charge_efficiency
                         - (self.export_wh - self.export_start_wh) / discharge_efficiency) / 1000.0
        return PluggedSession(
            port=self.port, session_id=str(self.transaction_id),
            soc=None if self.soc_percent is None else self.soc_percent / 100.0,
            energy_delivered_kwh=delivered_kwh, departure=needs.get("departure"),
            max_discharge_kw=(needs.get("max_discharge_w") or 0.0) / 1000.0,
            v2g_consent=bool(needs.get("v2x")), min_soc=needs.get("min_soc"), plugged_in=plugged_in, **kw)


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One step of the central system: the decision (None when the scheduler refused the state), the
    requests sent, ``error`` when none were (the state or a profile refused, e.g. a discharge OCPP 1.6
    cannot ask for), and ``rejected`` ("port: status or error") for requests not accepted."""

    now: dt.datetime
    decision: Decision | None
    calls: tuple[ProfileCall, ...] = ()
    rejected: tuple[str, ...] = ()
    error: str | None = None


class CentralSystem:
    """An OCPP central system (CSMS) for one site, on websockets.

    ## Description

    Charge points connect to ``ws://host:port/<identity>`` with the version's subprotocol
    (``ocpp1.6``, ``ocpp2.0.1``, ``ocpp2.1``). The handshake refuses an identity not in ``layout``
    with HTTP 404 naming it, another version's subprotocol with 400; a frame that is not OCPP gets
    a CALLERROR (message id ``"-1"`` when none can be read), a request for an unknown connector a
    ``PropertyConstraintViolation`` naming it. From StatusNotification, transactions (1.6
    StartTransaction/StopTransaction, 2.x TransactionEvent), meter values (registers and SoC) and
    the EV's charging needs (1.6: DataTransfer ``smartcharging``/``EVChargingNeeds``; 2.x:
    NotifyEVChargingNeeds) it keeps one ``Connector`` per port. ``dispatch(now)`` builds the
    ``SiteState`` from those alone plus ``feed(now)`` (prices, forecasts, site meter: the
    SiteState fields OCPP does not carry), runs the scheduler, and sends one TxProfile per
    ongoing transaction (``agents.scheduler.ocpp_profiles``), awaiting the answers. Only 2.1
    sessions whose needs carry ``v2xChargingParameters`` (maximum discharge power, energy to the
    minimum SoC) may discharge, through ``CentralSetpoint`` periods; in 1.6 and 2.0.1, which cannot
    ask for a discharge, the scheduler sees every EV as charge-only.

    ## Arguments

    * ``scheduler``: an ``agents.scheduler.Scheduler`` for the site.
    * ``layout``: port name -> (charge point identity, connector or EVSE id), e.g. from
      ``charge_point_layout``.
    * ``feed``: now -> the SiteState's other fields (not ``now``, ``sessions``, ``unavailable_ports``).
    * ``version``: ``"1.6"``, ``"2.0.1"`` or ``"2.1"``; ``unit``: "W", or "A" (1.6 only);
      ``kind``: "Absolute" (one step long) or "Relative".
    * ``response_timeout_s``: how long a request waits for its answer.
    """

    def __init__(self, scheduler: Scheduler, layout: Mapping[str, tuple[str, int]], feed: Feed,
                 version: str = "1.6", unit: str = "W", kind: str = "Absolute",
                 response_timeout_s: float = 10.0):
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {cut(version)}")
        params = scheduler.params
        unknown = sorted(set(layout) - set(params.port_names))
        if unknown:
            raise ValueError(f"layout names ports {unknown[:5]} that site {params.name!r} lacks")
        self.scheduler, self.params, self.feed = scheduler, params, feed
        self.version, self.unit = version, unit
        self.layout = dict(layout)
        self.profiles = ChargingProfiles(params, kind=kind)
        self.response_timeout_s = response_timeout_s
        self.connectors = {where: Connector(port) for port, where in self.layout.items()}
        self.stations: dict[str, Any] = {}
        self.transaction_ids = itertools.count(1)
        self.server = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listens on ``host``:``port`` (0: a free port) and returns the base URL charge points append
        their identity to."""
        self.server = await serve(self._handle, host, port, subprotocols=[SUBPROTOCOLS[self.version]],
                                  process_request=self._check_identity)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), self.response_timeout_s)

    def site_state(self, now: dt.datetime) -> SiteState:
        """The live state from the charge points' reports and ``feed(now)``."""
        extra = dict(self.feed(now))
        clash = sorted(set(extra) & set(OCPP_FIELDS))
        if clash:
            raise ValueError(f"feed must not give {clash}: they come from the charge points")
        eta_c, eta_d = self.params.port_charge_efficiency, self.params.port_discharge_efficiency
        sessions, down = [], []
        for connector in self.connectors.values():
            index = self.params.port_names.index(connector.port)
            if connector.status in DOWN_STATUSES:
                down.append(connector.port)
            if connector.transaction_id is not None:
                sessions.append(connector.session(float(eta_c[index]), float(eta_d[index]), now.tzinfo))
        return SiteState(now=now, sessions=tuple(sessions), unavailable_ports=tuple(down), **extra)

    async def dispatch(self, now: dt.datetime) -> Dispatch:
        """Decides for ``now`` (an aware datetime, the site's clock) and sends the profiles."""
        bindings = {c.port: PortBinding(where[0], where[1], c.transaction_id,
                                        v2x=bool((c.needs or {}).get("v2x")))
                    for where, c in self.connectors.items() if c.transaction_id is not None}
        decision = None
        try:
            decision = self.scheduler.decide(self.site_state(now))
            calls = self.profiles.build(decision, bindings, now, self.version, self.unit)
        except (SiteStateError, ProfileError) as error:  # a report missing or out of range, a discharge
            LOG.warning("no profiles at %s: %s", now, error)
            return Dispatch(now, decision, error=str(error))
        by_station: dict[str, list[ProfileCall]] = {}
        for call in calls:
            by_station.setdefault(call.charge_point, []).append(call)
        answers = await asyncio.gather(*(self._send_all(name, group) for name, group in by_station.items()))
        rejected = tuple(problem for group in answers for problem in group)
        return Dispatch(now, decision, tuple(calls), rejected)

    async def _send_all(self, name: str, calls: list[ProfileCall]) -> list[str]:
        station = self.stations.get(name)
        if station is None:
            return [f"{call.port}: charge point {name} is not connected" for call in calls]
        problems = []
        for call in calls:
            try:
                status = await station.set_charging_profile(call.payload)
            except (OCPPError, asyncio.TimeoutError, ConnectionClosed) as error:
                status = f"{type(error).__name__}: {error}"
            if status != "Accepted":
                problems.append(f"{call.port}: {status}")
        return problems

    async def _check_identity(self, connection: ServerConnection, request):
        identity = request.path.rstrip("/").rsplit("/", 1)[-1]
        if not any(identity == where[0] for where in self.layout.values()):
            return connection.respond(HTTPStatus.NOT_FOUND, f"unknown charge point {cut(identity)}: this "
                                      f"central system serves site {self.params.name!r}'s charge points\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        identity = connection.request.path.rstrip("/").rsplit("/", 1)[-1]
        if connection.subprotocol != SUBPROTOCOLS[self.version]:
            await connection.close(1002, f"this central system speaks {SUBPROTOCOLS[self.version]} only")
            return
        connectors = {number: self.connectors[(name, number)] for name, number in self.connectors
                      if name == identity}
        station = STATIONS[self.version](identity, connection, connectors, self.transaction_ids,
                                         self.response_timeout_s)
        self.stations[identity] = station
        try:
            await station.start()
        except ConnectionClosed:
            pass
        finally:
            if self.stations.get(identity) is station:
                del self.stations[identity]


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Station:
    """The central system's side of one charge point's connection: a malformed frame gets a CALLERROR
    instead of the ``ocpp`` package's silence, and connectors are looked up by id."""

    def __init__(self, identity, connection, connectors: dict[int, Connector], transaction_ids: Iterator[int],
                 response_timeout_s: float):
        super().__init__(identity, connection, response_timeout=response_timeout_s)
        self.connectors, self.transaction_ids = connectors, transaction_ids

    async def route_message(self, raw_msg):
        try:
            unpack(raw_msg)
        except OCPPError as error:
            await self._send(json.dumps([4, _message_id(raw_msg), error.code, f"{error.description}: "
                                         f"{error.details.get('cause', '')}"[:500], {}]))
            return
        await super().route_message(raw_msg)

    def connector(self, number: int) -> Connector:
        if number not in self.connectors:
            have = f"1..{len(self.connectors)}" if self.connectors else "none"
            raise PropertyConstraintViolationError(
                description=f"charge point {self.id} has no connector {cut(number)} (it has {have})")
        return self.connectors[number]

    @on("BootNotification")
    def on_boot(self, **_):
        return self._call_result.BootNotification(current_time=_utc_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def on_heartbeat(self, **_):
        return self._call_result.Heartbeat(current_time=_utc_now())

    async def set_charging_profile(self, payload: dict) -> str:
        request = self._call.SetChargingProfile(**camel_to_snake_case(payload))
        answer = await self.call(request, suppress=False)
        return answer.status


def _message_id(raw) -> str:
    try:
        message = json.loads(raw)
        return str(message[1]) if isinstance(message, list) and len(message) > 1 else "-1"
    except (TypeError, ValueError):
        return "-1"


def _station_class(base):
    """A 1.6 station class on the ``ocpp`` package's ChargePoint ``base``."""

    class Station16(_Station, base):
        @on("StatusNotification")
        def on_status(self, connector_id, status, **_):
            if connector_id != 0:
                self.connector(connector_id).status = status
            return self._call_result.StatusNotification()

        @on("DataTransfer")
        def on_data_transfer(self, vendor_id, message_id=None, data=None, **_):
            result = self._call_result.DataTransfer
            if vendor_id != VENDOR_ID:
                return result(status="UnknownVendorId")
            if message_id != NEEDS_MESSAGE_ID:
                return result(status="UnknownMessageId")
            try:
                needs = json.loads(data)
                connector = self.connector(int(needs.pop("connectorId")))
                connector.needs = _needs_16(needs)
            except (TypeError, ValueError, KeyError) as error:
                return result(status="Rejected", data=f"EVChargingNeeds: {cut(error)}")
            return result(status="Accepted")

        @on("StartTransaction")
        def on_start(self, connector_id, meter_start, timestamp, **_):
            connector = self.connector(connector_id)
            connector.start(next(self.transaction_ids), timestamp, meter_start)
            return self._call_result.StartTransaction(transaction_id=connector.transaction_id,
                                                      id_tag_info={"status": "Accepted"})

        @on("MeterValues")
        def on_meter_values(self, connector_id, meter_value, **_):
            self.connector(connector_id).read(meter_value)
            return self._call_result.MeterValues()

        @on("StopTransaction")
        def on_stop(self, transaction_id, **_):
            for connector in self.connectors.values():
                if connector.transaction_id == transaction_id:
                    connector.stop()
            return self._call_result.StopTransaction()

    return Station16


def _min_soc(connector: Connector, energy_wh) -> float | None:
    """The SoC below which the EV may not discharge: its SoC now plus the energy (Wh) it reports to
    reach it (ISO 15118-20 EVMinimumV2XEnergyRequest)."""
    capacity_wh = connector.needs.get("capacity_wh")
    if energy_wh is None or connector.soc_percent is None or not capacity_wh:
        return None
    return min(max(connector.soc_percent / 100.0 + energy_wh / capacity_wh, 0.0), 1.0)


def _needs_16(needs: dict) -> dict:
    """The ``EVChargingNeeds`` DataTransfer data (named as 2.x's DC charging parameters) as a connector's
    needs; OCPP 1.6 cannot ask for a discharge, so none is offered to the scheduler."""
    out = {"departure": _parse_time(needs["departureTime"]), "max_discharge_w": 0.0, "min_soc": None,
           "v2x": False}
    for key, name in (("energyAmount", "energy_wh"), ("evEnergyCapacity", "capacity_wh"),
                      ("evMaxPower", "max_power_w")):
        out[name] = None if needs.get(key) is None else float(needs[key])
    return out


def _station_class_2x(base):
    """A 2.0.1 or 2.1 station class on the ``ocpp`` package's ChargePoint ``base``."""

    class Station2x(_Station, base):
        @on("StatusNotification")
        def on_status(self, evse_id, connector_status, **_):
            self.connector(evse_id).status = connector_status
            return self._call_result.StatusNotification()

        @on("NotifyEVChargingNeeds")
        def on_needs(self, evse_id, charging_needs, **_):
            dc = charging_needs.get("dc_charging_parameters") or {}
            departure = charging_needs.get("departure_time")
            connector = self.connector(evse_id)
            connector.needs = {
                "departure": None if departure is None else _parse_time(departure),
                "energy_wh": dc.get("energy_amount"), "capacity_wh": dc.get("ev_energy_capacity"),
                "max_power_w": dc.get("ev_max_power"), "max_discharge_w": 0.0, "min_soc": None, "v2x": False}
            v2x = charging_needs.get("v2x_charging_parameters") or {}
            if self._ocpp_version == "2.1" and (v2x.get("max_discharge_power") or 0) > 0:
                connector.needs.update(v2x=True, max_discharge_w=v2x["max_discharge_power"],
                                       min_soc=_min_soc(connector, v2x.get("ev_min_v2x_energy_request")))
            return self._call_result.NotifyEVChargingNeeds(status="Accepted")

        @on("TransactionEvent")
        def on_transaction(self, event_type, timestamp, transaction_info, evse=None, meter_value=None, **_):
            transaction_id = transaction_info["transaction_id"]
            if evse is not None:
                connector = self.connector(evse["id"])
            else:
                connector = next((c for c in self.connectors.values()
                                  if c.transaction_id == transaction_id), None)
            if connector is None:
                raise PropertyConstraintViolationError(
                    description=f"transaction {cut(transaction_id)} on charge point {self.id} has no evse")
            if event_type == "Started":
                connector.start(transaction_id, timestamp)
                connector.read(meter_value, begin=True)
            elif event_type == "Ended":
                connector.stop()
            else:
                connector.read(meter_value)
            return self._call_result.TransactionEvent()

    return Station2x


def _stations() -> dict[str, type]:
    from ocpp import v16, v21, v201

    return {"1.6": _station_class(v16.ChargePoint), "2.0.1": _station_class_2x(v201.ChargePoint),
            "2.1": _station_class_2x(v21.ChargePoint)}


STATIONS = _stations()
