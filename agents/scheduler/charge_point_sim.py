"""Simulated OCPP charge points that replay an env episode in accelerated time: they report what the env's
EVs do and draw the power of the charging profiles they receive.

Imports the ``ocpp`` and ``websockets`` packages, numpy and ``envs``; no torch or stable-baselines3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping

import numpy as np
from ocpp.routing import on
from websockets.asyncio.client import connect

from agents.scheduler.central_system import NEEDS_MESSAGE_ID, OCPP_FIELDS, SUBPROTOCOLS, VENDOR_ID
from agents.scheduler.ocpp_profiles import rfc3339
from agents.scheduler.replay import episode_start, site_state_from_env, step_time
from envs.core import reset, step
from envs.episode import Episode
from envs.site import SiteParams

FIRST_REGISTER_WH = 10_000.0  # connector n's meter reads n times this when the simulation starts
CHARGE_NEEDS = ("departureTime", "energyAmount", "evEnergyCapacity", "evMaxPower")  # 1.6: no discharging


@dataclasses.dataclass
class Port:
    """One connector of a simulated charge point: its meter (Wh), ongoing transaction and profile."""

    index: int
    connector_id: int
    import_wh: float
    export_wh: float = 0.0
    power_w: float = 0.0
    transaction_id: int | str | None = None
    transactions: int = 0
    seq_no: int = 0
    profile: dict | None = None  # transaction_id, start, duration_s, limit_w

    def limit_w(self, now: dt.datetime) -> float:
        """The power the active TxProfile allows at ``now`` (0 without one: the site's safe floor)."""
        profile = self.profile
        if profile is None or self.transaction_id is None or profile["transaction_id"] not in (
                None, self.transaction_id):
            return 0.0
        start, seconds = profile["start"], profile["duration_s"]
        if start is not None and (now < start or seconds is not None and now >= start + dt.timedelta(
                seconds=seconds)):
            return 0.0
        return profile["limit_w"]


def _profile(schedule: dict, transaction_id, period_key: str = "limit", phases: int = 3,
             voltage_v: float = 230.0) -> dict:
    """A snake-case OCPP ChargingSchedule (first period) as the limit it sets, in W."""
    period = schedule["charging_schedule_period"][0]
    value = float(period.get(period_key, period["limit"]))
    if schedule["charging_rate_unit"] == "A":
        value *= int(period.get("number_phases", phases)) * voltage_v
    start = schedule.get("start_schedule")
    return {"transaction_id": transaction_id, "limit_w": value, "duration_s": schedule.get("duration"),
            "start": None if start is None else dt.datetime.fromisoformat(start.replace("Z", "+00:00"))}


class _Client:
    """What every simulated charge point shares: its connectors and the profile check."""

    def __init__(self, identity, connection, ports: dict[int, Port]):
        super().__init__(identity, connection)
        self.ports = ports

    def take_profile(self, connector_id: int, purpose: str, profile: dict) -> str:
        port = self.ports.get(connector_id)
        if port is None or purpose != "TxProfile" or port.transaction_id is None or (
                profile["transaction_id"] not in (None, port.transaction_id)):
            return "Rejected"
        port.profile = profile
        return "Accepted"

    def samples(self, port: Port, context: str, now: dt.datetime, soc: float) -> list[dict]:
        values = (("Energy.Active.Import.Register", port.import_wh, "Wh"),
                  ("Energy.Active.Export.Register", port.export_wh, "Wh"),
                  ("Power.Active.Import", port.power_w, "W"), ("SoC", soc * 100.0, "Percent"))
        return [{"timestamp": rfc3339(now), "sampledValue": [
            self.sample(value, measurand, unit, context) for measurand, value, unit in values]}]


class Client16(_Client):
    """An OCPP 1.6J charge point (mixed into ``ocpp.v16.ChargePoint`` by ``CLIENTS``)."""

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, **_):
        profile = cs_charging_profiles
        status = self.take_profile(connector_id, profile["charging_profile_purpose"],
                                   _profile(profile["charging_schedule"], profile.get("transaction_id")))
        return self._call_result.SetChargingProfile(status=status)

    @staticmethod
    def sample(value, measurand, unit, context):
        return {"value": repr(float(value)), "context": context, "measurand": measurand, "unit": unit}

    async def boot(self, now):
        await self.call(self._call.BootNotification(charge_point_model="replay",
                                                    charge_point_vendor=VENDOR_ID))
        for port in self.ports.values():
            await self.status(port, "Available", now)

    async def status(self, port: Port, status: str, now):
        await self.call(self._call.StatusNotification(connector_id=port.connector_id, error_code="NoError",
                                                      status=status, timestamp=rfc3339(now)))

    async def plug_in(self, port: Port, needs: dict, soc: float, now):
        await self.status(port, "Preparing", now)
        data = json.dumps({"connectorId": port.connector_id, **{key: needs[key] for key in CHARGE_NEEDS}})
        await self.call(self._call.DataTransfer(vendor_id=VENDOR_ID, message_id=NEEDS_MESSAGE_ID, data=data))
        answer = await self.call(self._call.StartTransaction(
            connector_id=port.connector_id, id_tag=f"EV-{port.index}", meter_start=round(port.import_wh),
            timestamp=rfc3339(now)), suppress=False)
        port.transaction_id, port.profile = answer.transaction_id, None
        await self.meter(port, soc, now, "Transaction.Begin")
        await self.status(port, "Charging", now)

    async def meter(self, port: Port, soc: float, now, context: str = "Sample.Periodic"):
        await self.call(self._call.MeterValues(
            connector_id=port.connector_id, transaction_id=port.transaction_id,
            meter_value=self.samples(port, context, now, soc)))

    async def unplug(self, port: Port, now, status: str = "Available"):
        await self.call(self._call.StopTransaction(
            meter_stop=round(port.import_wh), timestamp=rfc3339(now), transaction_id=port.transaction_id,
            reason="EVDisconnected"))
        port.transaction_id, port.profile = None, None
        await self.status(port, status, now)


class Client2x(_Client):
    """An OCPP 2.0.1 or 2.1 charging station, one connector per EVSE."""

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id, charging_profile, **_):
        profile = charging_profile
        schedule = profile["charging_schedule"][0]
        mode = schedule["charging_schedule_period"][0].get("operation_mode")
        key = "setpoint" if mode == "CentralSetpoint" else "limit"
        status = self.take_profile(evse_id, profile["charging_profile_purpose"],
                                   _profile(schedule, profile.get("transaction_id"), key))
        return self._call_result.SetChargingProfile(status=status)

    @staticmethod
    def sample(value, measurand, unit, context):
        return {"value": float(value), "context": context, "measurand": measurand,
                "unitOfMeasure": {"unit": unit}}

    async def boot(self, now):
        await self.call(self._call.BootNotification(
            charging_station={"model": "replay", "vendorName": VENDOR_ID}, reason="PowerUp"))
        for port in self.ports.values():
            await self.status(port, "Available", now)

    async def status(self, port: Port, status: str, now):
        await self.call(self._call.StatusNotification(timestamp=rfc3339(now), connector_status=status,
                                                      evse_id=port.connector_id, connector_id=1))

    async def transaction(self, port: Port, event: str, trigger: str, now, samples=None, **info):
        port.seq_no += 1
        await self.call(self._call.TransactionEvent(
            event_type=event, timestamp=rfc3339(now), trigger_reason=trigger, seq_no=port.seq_no,
            transaction_info={"transactionId": port.transaction_id, **info}, meter_value=samples,
            evse={"id": port.connector_id, "connectorId": 1}))

    async def plug_in(self, port: Port, needs: dict, soc: float, now):
        await self.status(port, "Occupied", now)
        port.transactions += 1
        port.transaction_id = f"{self.id}-{port.connector_id}-{port.transactions}"
        port.profile, port.seq_no = None, -1
        await self.transaction(port, "Started", "CablePluggedIn", now,
                               self.samples(port, "Transaction.Begin", now, soc), chargingState="EVConnected")
        whole = self._ocpp_version == "2.0.1"  # 2.0.1's DC parameters are integers
        number = round if whole else float
        dc = {"evMaxCurrent": number(needs["evMaxPower"] / 400.0), "evMaxVoltage": 400,
              "evMaxPower": number(needs["evMaxPower"]), "energyAmount": number(needs["energyAmount"]),
              "evEnergyCapacity": number(needs["evEnergyCapacity"]), "stateOfCharge": round(soc * 100.0)}
        charging_needs = {"requestedEnergyTransfer": "DC", "departureTime": needs["departureTime"],
                          "dcChargingParameters": dc}
        if self._ocpp_version == "2.1" and needs["evMaxDischargePower"] > 0:  # ISO 15118-20 bidirectional
            charging_needs["requestedEnergyTransfer"] = "DC_BPT"
            charging_needs["v2xChargingParameters"] = {
                "maxDischargePower": needs["evMaxDischargePower"],
                "evMinV2XEnergyRequest": (needs["minSoC"] - soc) * needs["evEnergyCapacity"]}
        await self.call(self._call.NotifyEVChargingNeeds(evse_id=port.connector_id,
                                                         charging_needs=charging_needs))

    async def meter(self, port: Port, soc: float, now):
        await self.transaction(port, "Updated", "MeterValuePeriodic", now,
                               self.samples(port, "Sample.Periodic", now, soc), chargingState="Charging")

    async def unplug(self, port: Port, now, status: str = "Available"):
        await self.transaction(port, "Ended", "EVDeparted", now, None, chargingState="Idle",
                               stoppedReason="EVDisconnected")
        port.transaction_id, port.profile = None, None
        await self.status(port, status, now)


def _clients() -> dict[str, type]:
    from ocpp import v16, v21, v201

    return {"1.6": type("ChargePoint16", (Client16, v16.ChargePoint), {}),
            "2.0.1": type("ChargingStation201", (Client2x, v201.ChargePoint), {}),
            "2.1": type("ChargingStation21", (Client2x, v21.ChargePoint), {})}


CLIENTS = _clients()


class SimulatedSite:
    """The charge points of a site replaying one env episode (a batch of one) over OCPP.

    ## Description

    ``connect(url)`` opens one websocket per charge point of ``layout`` and boots it. Each step,
    ``report()`` tells the central system what changed on every connector since the last step:
    a departed EV stops its transaction, an arrived one sends its charging needs (1.6:
    DataTransfer; 2.x: NotifyEVChargingNeeds with DC parameters, whole W and Wh in 2.0.1; 2.1 adds
    ``v2xChargingParameters`` for an EV with V2G consent) and starts one, a port out of order turns
    ``Faulted``, and every ongoing transaction sends its meter values (import and export registers in
    Wh, the last step's power in W, SoC in %). ``advance()`` steps the env with, on every port,
    the limit of the connector's TxProfile active now (0 W without one) as the fraction of
    the port's available power the env takes, and meters the energy drawn. ``run(steps, decide)``
    alternates ``report()``, ``decide(now)`` (the central system's dispatch) and ``advance()``.
    ``drawn_kw`` holds each step's grid-side kW per port; ``feed(now)`` is what a site
    outside OCPP (tariffs, forecasts, site meter) tells the central system.

    ## Arguments

    * ``params``: the site; ``episode``: its exogenous data (a batch of one).
    * ``layout``: port name -> (charge point identity, connector id), as the central system's.
    * ``version``: ``"1.6"``, ``"2.0.1"`` or ``"2.1"``; ``zone``: the site's time zone.

    >>> import asyncio, tempfile, numpy as np
    >>> from agents.export import export_baseline
    >>> from agents.scheduler import Scheduler
    >>> from envs.generators import generator_for
    >>> from envs.site import load_site
    >>> params = load_site("caltech", horizon_steps=8, start_hour=8)
    >>> artifact = tempfile.mkdtemp()
    >>> _ = export_baseline({"_target_": "agents.baselines.PriceAware"}, artifact, params)
    >>> episode = generator_for(params).sample(params, np.random.default_rng(0), 1)
    >>> replay = asyncio.run(replay_over_ocpp(Scheduler(artifact, params), episode, version="2.0.1"))
    >>> replay.drawn_kw.shape, len(replay.dispatches), replay.dispatches[-1].error
    ((8, 54), 8, None)
    """

    def __init__(self, params: SiteParams, episode: Episode, layout: Mapping[str, tuple[str, int]],
                 version: str = "1.6", zone: dt.tzinfo = dt.timezone.utc):
        if episode.num_envs != 1:
            raise ValueError(f"a simulated site replays one episode, got a batch of {episode.num_envs}")
        self.params, self.version = params, version
        self.state = reset(params, episode)
        self.start = episode_start(params, self.state).replace(tzinfo=zone)
        self.ports: dict[str, dict[int, Port]] = {}
        for name, (identity, connector) in layout.items():
            index = params.port_names.index(name)
            port = Port(index, connector, connector * FIRST_REGISTER_WH)
            self.ports.setdefault(identity, {})[connector] = port
        self.on_port = np.full(params.num_ports, -1)
        self.down = np.zeros(params.num_ports, dtype=bool)
        self.clients: dict[str, object] = {}
        self.connections: list = []
        self.tasks: list[asyncio.Task] = []
        self.drawn_kw: list[np.ndarray] = []

    @property
    def now(self) -> dt.datetime:
        return step_time(self.params, self.start, self.state.t)

    def feed(self, now: dt.datetime | None = None) -> dict:
        """The SiteState fields that do not come over OCPP, as the env has them at its current step."""
        live = site_state_from_env(self.params, self.state)
        return {f.name: getattr(live, f.name) for f in dataclasses.fields(live) if f.name not in OCPP_FIELDS}

    async def connect(self, url: str) -> None:
        for identity, ports in self.ports.items():
            connection = await connect(f"{url}/{identity}", subprotocols=[SUBPROTOCOLS[self.version]])
            self.connections.append(connection)
            client = CLIENTS[self.version](identity, connection, ports)
            self.clients[identity] = client
            self.tasks.append(asyncio.create_task(client.start()))
        await asyncio.gather(*(client.boot(self.now) for client in self.clients.values()))

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def report(self) -> None:
        await asyncio.gather(*(self._report(self.clients[name], ports) for name, ports in self.ports.items()))

    async def _report(self, client, ports: dict[int, Port]) -> None:
        state, now = self.state, self.now
        down = np.zeros(self.params.num_ports, dtype=bool)
        if state.episode.port_down is not None:
            down = state.episode.port_down[0, min(state.t, state.episode.port_down.shape[1] - 1)]
        for port in ports.values():
            p, ev = port.index, int(state.port_ev[0, port.index])
            if port.transaction_id is not None and ev != self.on_port[p]:
                await client.unplug(port, now, "Faulted" if down[p] else "Available")
            elif down[p] != self.down[p]:
                await client.status(port, "Faulted" if down[p] else "Available", now)
            self.on_port[p], self.down[p] = ev, down[p]
            soc = float(state.soc[0, p])
            if ev >= 0 and port.transaction_id is None:
                await client.plug_in(port, self._needs(p), soc, now)
            elif ev >= 0:
                await client.meter(port, soc, now)

    def _needs(self, p: int) -> dict:
        """The charging needs the EV on port ``p`` announces when it plugs in (as 1.6 DataTransfer data;
        its discharge power is 0 without V2G consent)."""
        state, params = self.state, self.params
        departure = step_time(params, self.start, state.announced_departure_step[0, p])
        return {"departureTime": rfc3339(departure),
                "energyAmount": max(float(state.remaining_kwh[0, p]), 0.0) * 1e3,
                "evEnergyCapacity": float(state.battery_kwh[0, p]) * 1e3,
                "evMaxPower": float(state.ev_max_charge_kw[0, p]) * 1e3,
                "evMaxDischargePower": float(state.ev_max_discharge_kw[0, p]) * 1e3,
                "minSoC": float(state.min_soc[0, p])}

    def advance(self) -> np.ndarray:
        """Steps the env with the active profiles' limits; returns the kW drawn per port."""
        state, now = self.state, self.now
        limit_kw = np.zeros(self.params.num_ports)
        for ports in self.ports.values():
            for port in ports.values():
                limit_kw[port.index] = port.limit_w(now) / 1000.0
        high, low = state.max_charge_kw[0], state.max_discharge_kw[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = np.where((limit_kw > 0) & (high > 0), limit_kw / high,
                                np.where((limit_kw < 0) & (low > 0), limit_kw / low, 0.0))
        fraction = np.clip(fraction, -1.0, 1.0)
        drawn_kw = np.maximum(fraction, 0.0) * high + np.minimum(fraction, 0.0) * low
        hours = self.params.dt_hours
        for ports in self.ports.values():
            for port in ports.values():
                kw = drawn_kw[port.index]
                port.power_w = kw * 1000.0
                port.import_wh += max(kw, 0.0) * hours * 1000.0
                port.export_wh += max(-kw, 0.0) * hours * 1000.0
        self.state, _, _ = step(self.params, state, fraction[None])
        self.drawn_kw.append(drawn_kw)
        return drawn_kw

    async def run(self, steps: int, decide: Callable[[dt.datetime], Awaitable]) -> np.ndarray:
        """``steps`` steps (at most to the horizon) of report, ``decide(now)``, advance; returns the kW
        drawn, (steps, P)."""
        for _ in range(min(steps, self.params.horizon_steps - self.state.t)):
            await self.report()
            await decide(self.now)
            self.advance()
        return np.array(self.drawn_kw)


@dataclasses.dataclass(frozen=True)
class Replay:
    """The outcome of ``replay_over_ocpp``: kW drawn per step and port (steps, P), the central
    system's ``Dispatch`` of each step, the env's state at the end and the URL it served on."""

    drawn_kw: np.ndarray
    dispatches: tuple
    state: object
    url: str


async def replay_over_ocpp(scheduler, episode: Episode, *, version: str = "1.6", unit: str = "W",
                           kind: str = "Absolute", charge_points: int = 3, host: str = "127.0.0.1",
                           port: int = 0, steps: int | None = None, zone: dt.tzinfo = dt.timezone.utc,
                           response_timeout_s: float = 10.0) -> Replay:
    """Serves ``scheduler`` from a ``CentralSystem`` on ``host``:``port`` (0: a free port) to the
    ``charge_points`` simulated charge points of its site replaying ``episode`` for ``steps`` steps
    (None: to the horizon)."""
    from agents.scheduler.central_system import CentralSystem, charge_point_layout

    params = scheduler.params
    layout = charge_point_layout(params, charge_points)
    site = SimulatedSite(params, episode, layout, version, zone)
    central = CentralSystem(scheduler, layout, site.feed, version, unit, kind, response_timeout_s)
    url = await central.start(host, port)
    dispatches = []

    async def decide(now):
        dispatches.append(await central.dispatch(now))

    try:
        await site.connect(url)
        drawn_kw = await site.run(params.horizon_steps if steps is None else steps, decide)
    finally:
        await site.close()
        await central.close()
    return Replay(drawn_kw, tuple(dispatches), site.state, url)
