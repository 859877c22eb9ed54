"""OCPP ``SetChargingProfile`` payloads from a scheduler's decision, for OCPP 1.6J, 2.0.1 and 2.1.

numpy, the standard library and ``envs`` only; ``validate`` imports the ``ocpp`` package (for the JSON
schemas it ships) and ``jsonschema`` when called.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.errors import cut
from envs.site import SiteParams

VERSIONS = ("1.6", "2.0.1", "2.1")
ACTION = "SetChargingProfile"
KINDS = ("Absolute", "Relative")
SCHEMA_FILES = {"1.6": "v16/schemas/SetChargingProfile.json",
                "2.0.1": "v201/schemas/SetChargingProfileRequest.json",
                "2.1": "v21/schemas/SetChargingProfileRequest.json"}
PORT_LIMIT_TOLERANCE_KW = 1e-6
_UNDER_1_W_KW = 0.0009  # |kW| below which a setpoint is 0 whole watts


class ProfileError(ValueError):
    """A decision or port binding that cannot become a charging profile; names the port and the field."""


class DischargeNotSupportedError(ProfileError):
    """A discharging setpoint for a protocol (1.6, 2.0.1) or session (2.1 without ``v2x``) that cannot
    express it."""


@dataclasses.dataclass(frozen=True)
class PortBinding:
    """Where the session on a port runs in OCPP.

    ``charge_point`` is the charge point's (1.6) or charging station's (2.x) identity, as in its
    websocket URL; ``connector_id`` its ``connectorId`` (1.6) or ``evseId`` (2.x), from 1.
    ``transaction_id`` is the integer of ``StartTransaction.conf`` (1.6; None: the connector's
    ongoing transaction) or the ``transactionId`` string of ``TransactionEvent`` (2.x; required,
    an int is written as its decimal string). ``phases`` and ``voltage_v`` (phase to neutral)
    convert W to A for 1.6's ``unit="A"``. ``v2x`` (2.1): the session negotiated bidirectional
    power transfer, so its periods carry ``operationMode`` ``CentralSetpoint``.
    """

    charge_point: str
    connector_id: int
    transaction_id: int | str | None = None
    phases: int = 3
    voltage_v: float = 230.0
    v2x: bool = False


@dataclasses.dataclass(frozen=True)
class ProfileCall:
    """One ``SetChargingProfile`` request: ``payload`` (JSON-ready, the wire's camelCase) goes to
    ``charge_point`` under OCPP ``version``; ``power_w`` is the signed grid-side power it asks for
    after rounding (for amperes, their power at the binding's phases and voltage)."""

    port: str
    charge_point: str
    version: str
    power_w: float
    payload: dict[str, Any]
    action: str = ACTION


class ChargingProfiles:
    """Turns a ``Decision`` of ``agents.scheduler.Scheduler`` into ``SetChargingProfile`` requests.

    ## Description

    One request per bound port, each a ``TxProfile`` with one schedule of one period (start 0) that
    holds the port's setpoint. ``kind="Absolute"`` starts the schedule at ``start`` and lasts one
    step of the site (``duration``): if no next decision replaces it, the charger falls back to its
    lower profiles (a ``TxDefaultProfile`` or ``ChargePointMaxProfile`` the site sets as its safe
    floor). ``kind="Relative"`` writes neither ``startSchedule`` nor ``duration``: the limit holds
    until the next profile replaces it or the transaction ends. Each port keeps one profile id,
    ``first_profile_id`` + its index on the site (the schedule id in 2.x too), so every decision
    replaces the port's previous profile.

    Setpoints are grid-side kW per port. Limits are written in W as whole watts, rounded toward
    zero after rounding to 1e-6 W (which undoes float noise such as 6.6 kW = 6600.000000000001 W):
    a charge limit never exceeds its setpoint, a discharge never exceeds its setpoint's magnitude,
    each by under 1 W, and neither exceeds the port's limit. 1.6's ``unit="A"`` writes
    ``setpoint / (phases * voltage_v)`` rounded down to 0.1 A (the schema's ``multipleOf``) with
    ``numberPhases``.

    Discharging: OCPP 1.6 and 2.0.1 limits cannot ask an EV to discharge, and writing 0 instead
    would raise the site's import by the missing discharge and could break a node limit the
    decision relied on. So a setpoint of -1 W or less is refused (``DischargeNotSupportedError``
    naming the ports): deploy an artifact for a unidirectional site, or use 2.1. In 2.1 a
    ``v2x`` session gets ``operationMode`` ``CentralSetpoint`` with ``setpoint`` (signed W),
    ``limit`` = max(setpoint, 0) and ``dischargeLimit`` = min(setpoint, 0), which bound the
    EV's overshoot to the setpoint itself; other 2.1 sessions get a charge ``limit`` as in 2.0.1.

    ## Arguments

    * ``params``: the site the decisions are for (port names, limits and step length).
    * ``stack_level``: the profiles' ``stackLevel`` (>= 0).
    * ``first_profile_id``: profile id of the site's first port.
    * ``kind``: ``"Absolute"`` or ``"Relative"``.

    >>> import datetime as dt, numpy as np
    >>> from envs.site import load_site
    >>> from agents.scheduler import Decision
    >>> params = load_site("caltech")
    >>> setpoint_kw = np.zeros(params.num_ports)
    >>> setpoint_kw[0] = 6.6
    >>> decision = Decision(setpoint_kw, setpoint_kw / 6.6, np.zeros(1), params.port_names,
    ...                     ("s1",) + (None,) * (params.num_ports - 1), False, None, 0.0, 6.6)
    >>> ports = {"evse0": PortBinding("CP-1", 1, transaction_id=42)}
    >>> start = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.timezone.utc)
    >>> [call] = ChargingProfiles(params).build(decision, ports, start, "1.6")
    >>> call.charge_point, call.payload["connectorId"], call.payload["csChargingProfiles"]["transactionId"]
    ('CP-1', 1, 42)
    >>> schedule = call.payload["csChargingProfiles"]["chargingSchedule"]
    >>> schedule["startSchedule"], schedule["duration"], schedule["chargingSchedulePeriod"]
    ('2026-03-02T08:00:00Z', 900, [{'startPeriod': 0, 'limit': 6600}])
    """

    def __init__(self, params: SiteParams, *, stack_level: int = 0, first_profile_id: int = 1,
                 kind: str = "Absolute"):
        if kind not in KINDS:
            raise ProfileError(f"kind must be one of {', '.join(KINDS)}, got {cut(kind)}")
        for name, value in (("stack_level", stack_level), ("first_profile_id", first_profile_id)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProfileError(f"{name} must be a whole number >= 0, got {cut(value)}")
        self.params, self.stack_level, self.kind = params, stack_level, kind
        self.first_profile_id = first_profile_id
        self.step_seconds = round(params.dt_hours * 3600)

    def build(self, decision, ports: Mapping[str, PortBinding], start: dt.datetime, version: str = "1.6",
              unit: str = "W") -> list[ProfileCall]:
        """The requests for the ports in ``ports`` (port name -> binding), in site order.

        ``decision`` is a ``Decision`` for this site taken at ``start`` (an aware datetime);
        every port holding a session or a non-zero setpoint needs a binding. ``unit`` "A" is
        for 1.6 only. Raises ``ProfileError`` naming the port and field.
        """
        if version not in VERSIONS:
            raise ProfileError(f"version must be one of {', '.join(VERSIONS)}, got {cut(version)}")
        if unit not in ("W", "A") or (unit == "A" and version != "1.6"):
            raise ProfileError(f"unit must be 'W' (or 'A' with version 1.6), got {cut(unit)} for {version}")
        kw = self._setpoints_kw(decision, ports).tolist()
        when = rfc3339(start)
        absolute, version_v2x = self.kind == "Absolute", version == "2.1"
        calls, refused = [], []
        for index, name in enumerate(self.params.port_names):
            if name not in ports:
                continue
            binding, power_w = _binding(ports[name], name, version), _whole_watts(kw[index])
            v2x = version_v2x and binding.v2x
            if power_w < 0 and not v2x:
                refused.append(f"{name} ({power_w} W)")
                continue
            if unit == "A":
                volts = binding.phases * binding.voltage_v
                amps = max(math.floor(round(kw[index] * 1000.0 / volts * 10, 6)), 0) / 10
                period = {"startPeriod": 0, "limit": amps, "numberPhases": binding.phases}
                power_w = amps * volts
            elif v2x:
                period = {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": power_w,
                          "limit": max(power_w, 0), "dischargeLimit": min(power_w, 0)}
            else:
                period = {"startPeriod": 0, "limit": power_w}
            schedule = {"duration": self.step_seconds, "startSchedule": when} if absolute else {}
            schedule["chargingRateUnit"] = unit
            schedule["chargingSchedulePeriod"] = [period]
            profile_id = self.first_profile_id + index
            payload = self._payload(version, binding, profile_id, schedule)
            calls.append(ProfileCall(name, binding.charge_point, version, float(power_w), payload))
        if refused:
            raise DischargeNotSupportedError(
                f"OCPP {version} cannot ask for discharging, refused on {len(refused)} port(s): "
                f"{', '.join(refused[:5])}{' ...' if len(refused) > 5 else ''} (use 2.1 with v2x bindings, "
                "or an artifact for a site without discharging)")
        return calls

    def _setpoints_kw(self, decision, ports: Mapping[str, PortBinding]) -> np.ndarray:
        """The decision's setpoints, checked against the site and the bindings, clipped to the port
        limits they may pass by round-off."""
        params = self.params
        if tuple(decision.port_names) != params.port_names:
            raise ProfileError(f"the decision's ports {cut(decision.port_names)} are not site "
                               f"{params.name!r}'s ports")
        if not isinstance(ports, Mapping):
            raise ProfileError(f"ports must map port names to PortBinding, got {cut(ports)}")
        known = _port_set(params.port_names)
        for name in ports:
            if name not in known:
                raise ProfileError(f"ports: {cut(name)} is not a port of site {params.name!r}")
        kw = np.asarray(decision.setpoint_kw, dtype=np.float64)
        if kw.shape != (params.num_ports,):
            raise ProfileError(f"setpoint_kw has shape {kw.shape}, expected ({params.num_ports},)")
        high, low = params.port_max_charge_kw, -params.port_max_discharge_kw
        tolerance = PORT_LIMIT_TOLERANCE_KW
        with np.errstate(invalid="ignore"):
            inside = bool(((kw >= low - tolerance) & (kw <= high + tolerance)).all())  # False on NaN
        if inside and (len(ports) == params.num_ports or all(
                name in ports or (session is None and (-_UNDER_1_W_KW < value < _UNDER_1_W_KW
                                                        or _whole_watts(value) == 0))
                for name, session, value in zip(params.port_names, decision.session_ids, kw.tolist(),
                                                strict=True))):
            return np.clip(kw, low, high)
        for index, name in enumerate(params.port_names):  # the first port at fault, named
            value, session = kw[index], decision.session_ids[index]
            if not math.isfinite(value):
                raise ProfileError(f"port {name!r}: setpoint_kw is {value}; it must be finite")
            if not low[index] - PORT_LIMIT_TOLERANCE_KW <= value <= high[index] + PORT_LIMIT_TOLERANCE_KW:
                raise ProfileError(f"port {name!r}: setpoint {value:g} kW is outside its limits "
                                   f"[{low[index]:g}, {high[index]:g}] kW")
            if name not in ports and (session is not None or _whole_watts(value) != 0):
                raise ProfileError(f"port {name!r} (session {cut(session)}, setpoint {value:g} kW) has no "
                                   "binding in ports")
        return np.clip(kw, low, high)

    def _payload(self, version: str, binding: PortBinding, profile_id: int, schedule: dict) -> dict:
        purpose, kind, tx = "TxProfile", self.kind, binding.transaction_id
        if version == "1.6":
            profile = {"chargingProfileId": profile_id, "stackLevel": self.stack_level,
                       "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
                       "chargingSchedule": schedule}
            if tx is not None:
                profile["transactionId"] = tx
            return {"connectorId": binding.connector_id, "csChargingProfiles": profile}
        profile = {"id": profile_id, "stackLevel": self.stack_level, "chargingProfilePurpose": purpose,
                   "chargingProfileKind": kind, "transactionId": str(tx),
                   "chargingSchedule": [{"id": profile_id, **schedule}]}
        return {"evseId": binding.connector_id, "chargingProfile": profile}


@functools.lru_cache(maxsize=16)
def _port_set(port_names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(port_names)


def _whole_watts(kw: float) -> int:
    """W rounded toward zero after rounding to 1e-6 W (which undoes float noise)."""
    return int(math.trunc(round(float(kw) * 1000.0, 6)))


def _binding(binding: PortBinding, port: str, version: str) -> PortBinding:
    if type(binding) is PortBinding and _plain_binding(binding, version):
        return binding
    where = f"ports[{port!r}]"
    if not isinstance(binding, PortBinding):
        raise ProfileError(f"{where} must be a PortBinding, got {type(binding).__name__}")
    if not isinstance(binding.charge_point, str) or not binding.charge_point:
        raise ProfileError(f"{where}.charge_point must be a non-empty string, got "
                           f"{cut(binding.charge_point)}")
    for name, high in (("connector_id", math.inf), ("phases", 3)):
        value = getattr(binding, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ProfileError(f"{where}.{name} must be a whole number in [1, {high}], got {cut(value)}")
    if not (isinstance(binding.voltage_v, int | float) and math.isfinite(binding.voltage_v)
            and binding.voltage_v > 0):
        raise ProfileError(f"{where}.voltage_v must be a finite number > 0, got {cut(binding.voltage_v)}")
    if not isinstance(binding.v2x, bool):
        raise ProfileError(f"{where}.v2x must be True or False, got {cut(binding.v2x)}")
    tx = binding.transaction_id
    if version == "1.6":
        if tx is not None and (isinstance(tx, bool) or not isinstance(tx, int)):
            raise ProfileError(f"{where}.transaction_id must be an integer (or None) in OCPP 1.6, got "
                               f"{cut(tx)}")
    elif isinstance(tx, bool) or not isinstance(tx, int | str) or not 1 <= len(str(tx)) <= 36:
        raise ProfileError(f"{where}.transaction_id must be a string of 1 to 36 characters (or an int) in "
                           f"OCPP {version}, got {cut(tx)}")
    return binding


def _plain_binding(binding: PortBinding, version: str) -> bool:
    """The common binding (built-in types, in range) checked at once; anything else goes through
    ``_binding``'s checks, which name the field."""
    tx, connector, phases, volts = (binding.transaction_id, binding.connector_id, binding.phases,
                                    binding.voltage_v)
    if version == "1.6":
        tx_ok = tx is None or type(tx) is int
    else:
        tx_ok = (type(tx) is int or type(tx) is str) and 1 <= len(str(tx)) <= 36
    return (tx_ok and type(binding.charge_point) is str and binding.charge_point != ""
            and type(connector) is int and connector >= 1 and type(phases) is int and 1 <= phases <= 3
            and (type(volts) is float or type(volts) is int) and 0 < volts < math.inf
            and type(binding.v2x) is bool)


def rfc3339(moment: dt.datetime) -> str:
    """``moment`` in UTC as OCPP writes date-times: ``2026-03-02T07:00:00Z`` (milliseconds when not 0)."""
    if not isinstance(moment, dt.datetime) or moment.utcoffset() is None:
        raise ProfileError(f"start must be a datetime with a time zone (OCPP times are absolute; a "
                           f"SiteState's now is the site's local clock: attach its zone), got {cut(moment)}")
    utc = moment.astimezone(dt.timezone.utc)
    return utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds").replace("+00:00", "Z")


_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", re.ASCII)


def _is_date_time(text) -> bool:
    if not isinstance(text, str):
        return True
    if not _DATE_TIME.fullmatch(text):
        return False
    dt.datetime.fromisoformat(text.replace("Z", "+00:00"))  # raises ValueError for 2026-13-40
    return True


@functools.cache
def schema(version: str) -> dict:
    """The ``SetChargingProfile`` request schema the installed ``ocpp`` package ships for ``version``,
    numbers parsed as ``Decimal`` (as ``ocpp`` does, so that ``multipleOf: 0.1`` checks exactly)."""
    from importlib.resources import files

    if version not in SCHEMA_FILES:
        raise ProfileError(f"version must be one of {', '.join(VERSIONS)}, got {cut(version)}")
    text = files("ocpp").joinpath(SCHEMA_FILES[version]).read_text(encoding="utf-8-sig")
    return json.loads(text, parse_float=decimal.Decimal)


def validate(payload: dict, version: str) -> None:
    """Raises ``jsonschema.ValidationError`` unless ``payload`` (its JSON text, floats read as
    ``Decimal``) validates against ``schema(version)``, date-times checked as RFC 3339."""
    instance = json.loads(json.dumps(payload, allow_nan=False), parse_float=decimal.Decimal)
    _validator(version).validate(instance)


@functools.cache
def _validator(version: str):
    import jsonschema

    document = schema(version)
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time", raises=ValueError)(_is_date_time)
    return jsonschema.validators.validator_for(document)(document, format_checker=checker)
