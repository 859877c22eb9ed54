"""OCPP charging profiles: hand-computed payloads for a 3-port decision in 1.6 (W and A), 2.0.1 and 2.1,
a V2G discharge in 2.1 and its refusal in 1.6 and 2.0.1, rounding within setpoint and port limits, and
every payload (hand-made and from real scheduler runs) valid against the ``ocpp`` package's schemas."""

import asyncio
import copy
import datetime as dt
import subprocess
import sys
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import jsonschema
import numpy as np
import pytest
from ocpp.messages import Call, validate_payload

from agents.export import export_baseline
from agents.scheduler import Decision, Scheduler
from agents.scheduler.ocpp_profiles import (
    SCHEMA_FILES,
    VERSIONS,
    ChargingProfiles,
    DischargeNotSupportedError,
    PortBinding,
    ProfileError,
    rfc3339,
    schema,
    validate,
)
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.generators import generator_for
from envs.site import load_site

THREE = load_site({
    "name": "three", "dt_minutes": 15, "nodes": [{"name": "grid", "limit_kw": 40}],
    "ports": [{"name": "ac3_", "node": "grid", "max_charge_kw": 11},
              {"name": "ac1_", "node": "grid", "max_charge_kw": 7.4},
              {"name": "v2g", "node": "grid", "max_charge_kw": 11, "max_discharge_kw": 11}],
})
START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.timezone.utc)
STAMP = "2026-03-02T08:00:00Z"


def decision(params, setpoint_kw, sessions=None):
    setpoint_kw = np.asarray(setpoint_kw, dtype=np.float64)
    sessions = tuple(sessions or (f"s{i}" for i in range(params.num_ports)))
    return Decision(setpoint_kw, np.zeros_like(setpoint_kw), np.zeros(1), params.port_names, sessions,
                    False, None, 0.0, float(setpoint_kw.sum()))


def bindings(transactions=(17, 18, 19), v2x=False):
    return {"ac3_0": PortBinding("CP-A", 1, transactions[0]),
            "ac1_0": PortBinding("CP-A", 2, transactions[1], phases=1),
            "v2g0": PortBinding("CP-B", 1, transactions[2], v2x=v2x)}


def ocpp_accepts(payload, version):
    """The ``ocpp`` package's own check of a request (what its ChargePoint.call runs before sending)."""
    asyncio.run(validate_payload(Call("1", "SetChargingProfile", copy.deepcopy(payload)), version))


def schedule_16(limit, unit="W", **period):
    return {"duration": 900, "startSchedule": STAMP, "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit, **period}]}


def profile_16(profile_id, transaction, schedule):
    profile = {"chargingProfileId": profile_id, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
               "chargingProfileKind": "Absolute", "chargingSchedule": schedule}
    if transaction is not None:
        profile["transactionId"] = transaction
    return profile


def request_2x(evse, profile_id, transaction, period):
    return {"evseId": evse, "chargingProfile": {
        "id": profile_id, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute", "transactionId": transaction,
        "chargingSchedule": [{"id": profile_id, "duration": 900, "startSchedule": STAMP,
                              "chargingRateUnit": "W", "chargingSchedulePeriod": [period]}]}}


CHARGING = [7.4, 3.3333339, 0.0]  # 7.4 * 1000 is 7400.000000000001 in floats


def test_three_ports_by_hand_in_16_watts():
    calls = ChargingProfiles(THREE).build(decision(THREE, CHARGING), bindings((17, None, 19)), START, "1.6")
    assert [(c.port, c.charge_point, c.version, c.action, c.power_w) for c in calls] == [
        ("ac3_0", "CP-A", "1.6", "SetChargingProfile", 7400.0), ("ac1_0", "CP-A", "1.6", "SetChargingProfile",
                                                                  3333.0),
        ("v2g0", "CP-B", "1.6", "SetChargingProfile", 0.0)]
    assert [c.payload for c in calls] == [
        {"connectorId": 1, "csChargingProfiles": profile_16(1, 17, schedule_16(7400))},
        {"connectorId": 2, "csChargingProfiles": profile_16(2, None, schedule_16(3333))},  # the ongoing one
        {"connectorId": 1, "csChargingProfiles": profile_16(3, 19, schedule_16(0))},
    ]


def test_three_ports_by_hand_in_16_amperes():
    """7400 W / (3 x 230 V) = 10.72 A -> 10.7 A; 3333.33 W / 230 V = 14.49 A -> 14.4 A (down to 0.1 A)."""
    calls = ChargingProfiles(THREE).build(decision(THREE, CHARGING), bindings(), START, "1.6", unit="A")
    assert [c.payload["csChargingProfiles"]["chargingSchedule"] for c in calls] == [
        schedule_16(10.7, "A", numberPhases=3), schedule_16(14.4, "A", numberPhases=1),
        schedule_16(0.0, "A", numberPhases=3)]
    assert [c.power_w for c in calls] == pytest.approx([10.7 * 690, 14.4 * 230, 0.0])
    for call in calls:
        validate(call.payload, "1.6")
        ocpp_accepts(call.payload, "1.6")


def test_three_ports_by_hand_in_201():
    calls = ChargingProfiles(THREE).build(decision(THREE, CHARGING), bindings(("a-17", 18, "c-19")), START,
                                          "2.0.1")
    assert [c.payload for c in calls] == [
        request_2x(1, 1, "a-17", {"startPeriod": 0, "limit": 7400}),
        request_2x(2, 2, "18", {"startPeriod": 0, "limit": 3333}),
        request_2x(1, 3, "c-19", {"startPeriod": 0, "limit": 0}),
    ]


def test_a_v2g_discharge_in_21_is_a_central_setpoint():
    setpoints = [7.4, 3.3333339, -5.0]
    calls = ChargingProfiles(THREE).build(decision(THREE, setpoints), bindings(("a", "b", "c"), v2x=True),
                                          START, "2.1")
    assert [c.payload for c in calls] == [
        request_2x(1, 1, "a", {"startPeriod": 0, "limit": 7400}),
        request_2x(2, 2, "b", {"startPeriod": 0, "limit": 3333}),
        request_2x(1, 3, "c", {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": -5000,
                               "limit": 0, "dischargeLimit": -5000}),
    ]
    assert [c.power_w for c in calls] == [7400.0, 3333.0, -5000.0]
    v2x_ports = bindings("abc", v2x=True)
    charging = ChargingProfiles(THREE).build(decision(THREE, [0.0, 0.0, 6.6]), v2x_ports, START, "2.1")
    assert charging[2].payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": 6600, "limit": 6600,
         "dischargeLimit": 0}]
    for call in calls + charging:
        validate(call.payload, "2.1")
        ocpp_accepts(call.payload, "2.1")


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_a_discharge_the_protocol_cannot_express_is_refused_naming_the_port(version):
    """1.6 and 2.0.1 have only charge limits, and 2.1 without a bidirectional (v2x) session too:
    writing 0 instead would raise the site's import by 5 kW the decision counted on."""
    ports = bindings((1, 2, 3) if version == "1.6" else "abc")
    build = ChargingProfiles(THREE).build
    with pytest.raises(DischargeNotSupportedError, match=rf"OCPP {version} .* v2g0 \(-5000 W\)"):
        build(decision(THREE, [7.4, 0.0, -5.0]), ports, START, version)
    roundoff = build(decision(THREE, [7.4, 0.0, -4e-4]), ports, START, version)
    assert roundoff[2].power_w == 0.0  # -0.4 W is round-off, not a discharge


def test_rounding_stays_within_the_setpoint_and_the_port_limit():
    rng = np.random.default_rng(0)
    profiles = ChargingProfiles(THREE)
    ports = bindings(("a", "b", "c"), v2x=True)
    upper, lower = THREE.port_max_charge_kw, -THREE.port_max_discharge_kw
    cases = [rng.uniform(lower, upper) for _ in range(300)]
    cases += [upper, upper + 5e-7, lower - 5e-7, np.full(3, 0.1 + 0.2), np.array([6.6, 6.6, -6.6])]
    for kw in cases:
        exact_w = np.clip(kw * 1000, lower * 1000, upper * 1000)
        power_w = np.array([c.power_w for c in profiles.build(decision(THREE, kw), ports, START, "2.1")])
        assert np.all(np.abs(power_w) <= np.abs(exact_w) + 1e-6) and np.all(np.abs(power_w - exact_w) < 1.0)
        assert np.all(power_w <= upper * 1000) and np.all(power_w >= lower * 1000)
        charge = np.maximum(kw, 0.0)
        amps = profiles.build(decision(THREE, charge), bindings(), START, "1.6", unit="A")
        volts = np.array([3 * 230.0, 230.0, 3 * 230.0])
        amps_w = np.array([c.power_w for c in amps])
        assert np.all(amps_w <= np.minimum(charge * 1000, upper * 1000) + 1e-6)
        assert np.all(np.minimum(charge * 1000, upper * 1000) - amps_w < 0.1 * volts + 1e-6)
    noisy = profiles.build(decision(THREE, [6.6, 0.1 + 0.2, -6.6]), ports, START, "2.1")
    assert [c.power_w for c in noisy] == [6600.0, 300.0, -6600.0]


def test_profile_ids_are_stable_per_port_and_relative_profiles_hold():
    profiles = ChargingProfiles(THREE, stack_level=2, first_profile_id=100, kind="Relative")
    only_v2g = decision(THREE, CHARGING, ("s0", "s1", "s2"))
    with pytest.raises(ProfileError, match="port 'ac3_0' \\(session 's0', setpoint 7.4 kW\\) has no binding"):
        profiles.build(only_v2g, {"v2g0": bindings()["v2g0"]}, START, "1.6")
    only_v2g = decision(THREE, [0.0, 0.0, 0.0], (None, None, "s2"))
    calls = profiles.build(only_v2g, {"v2g0": bindings()["v2g0"]}, START, "1.6")
    assert len(calls) == 1
    assert calls[0].payload["csChargingProfiles"] == {
        "chargingProfileId": 102, "stackLevel": 2, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative", "transactionId": 19,
        "chargingSchedule": {"chargingRateUnit": "W",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0}]}}
    validate(calls[0].payload, "1.6")
    only_ac1 = decision(THREE, [0.0, 3.0, 0.0], (None, "s1", None))
    [call] = profiles.build(only_ac1, {"ac1_0": PortBinding("CP-A", 2, "t")}, START, "2.0.1")
    assert call.payload["chargingProfile"]["id"] == 101
    assert call.payload["chargingProfile"]["chargingSchedule"][0]["id"] == 101
    validate(call.payload, "2.0.1")


def test_times_are_utc_with_a_zone_and_naive_times_are_refused():
    local = dt.datetime(2026, 3, 2, 8, 0, tzinfo=ZoneInfo("America/Los_Angeles"))
    assert rfc3339(local) == "2026-03-02T16:00:00Z"
    assert rfc3339(START + dt.timedelta(microseconds=250_500)) == "2026-03-02T08:00:00.250Z"
    with pytest.raises(ProfileError, match="time zone"):
        ChargingProfiles(THREE).build(decision(THREE, CHARGING), bindings(), START.replace(tzinfo=None))


def test_the_schemas_are_the_ocpp_packages_and_catch_bad_payloads():
    """The validator is real: each of these breaks one rule of the shipped schema."""
    assert set(SCHEMA_FILES) == set(VERSIONS)
    assert schema("1.6")["title"] == "SetChargingProfileRequest"
    assert "dischargeLimit" in schema("2.1")["definitions"]["ChargingSchedulePeriodType"]["properties"]
    assert "dischargeLimit" not in schema("2.0.1")["definitions"]["ChargingSchedulePeriodType"]["properties"]
    good_16 = ChargingProfiles(THREE).build(decision(THREE, CHARGING), bindings(), START, "1.6")[0].payload
    good_21 = ChargingProfiles(THREE).build(decision(THREE, [0, 0, -5.0]), bindings("abc", v2x=True), START,
                                            "2.1")[2].payload
    validate(good_16, "1.6")
    validate(good_21, "2.1")
    broken = []
    fine_limit = copy.deepcopy(good_16)
    fine_limit["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 7400.05
    broken.append((fine_limit, "1.6", "multipleOf"))
    bad_time = copy.deepcopy(good_16)
    bad_time["csChargingProfiles"]["chargingSchedule"]["startSchedule"] = "2026-03-02 08:00"
    broken.append((bad_time, "1.6", "format"))
    positive_discharge = copy.deepcopy(good_21)
    period = positive_discharge["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    period["dischargeLimit"] = 5
    broken.append((positive_discharge, "2.1", "maximum"))
    broken.append((good_21, "2.0.1", "additionalProperties"))  # 2.0.1 has no setpoint / dischargeLimit
    string_tx = copy.deepcopy(good_16)
    string_tx["csChargingProfiles"]["transactionId"] = "17"
    broken.append((string_tx, "1.6", "type"))
    for payload, version, rule in broken:
        with pytest.raises(jsonschema.ValidationError) as error:
            validate(payload, version)
        assert error.value.validator == rule, (version, rule, error.value.message)


def test_bad_inputs_are_refused_by_name():
    profiles = ChargingProfiles(THREE)
    build = profiles.build
    with pytest.raises(ProfileError, match="'ac1_0' \\(session 's1', setpoint 3.33333 kW\\) has no binding"):
        build(decision(THREE, CHARGING), {"ac3_0": bindings()["ac3_0"]}, START, "1.6")
    idle = build(decision(THREE, [7.4, 0.0, 0.0], ("s0", None, None)), {"ac3_0": bindings()["ac3_0"]}, START)
    assert [c.port for c in idle] == ["ac3_0"]  # empty ports at 0 need no binding
    with pytest.raises(ProfileError, match="'nowhere' is not a port of site 'three'"):
        build(decision(THREE, CHARGING), {**bindings(), "nowhere": bindings()["ac3_0"]}, START)
    with pytest.raises(ProfileError, match="'ac1_0': setpoint 7.5 kW is outside its limits \\[-0, 7.4\\]"):
        build(decision(THREE, [0.0, 7.5, 0.0]), bindings(), START)
    with pytest.raises(ProfileError, match="port 'ac3_0': setpoint_kw is nan"):
        build(decision(THREE, [np.nan, 0.0, 0.0]), bindings(), START)
    with pytest.raises(ProfileError, match="transaction_id must be an integer .* in OCPP 1.6, got 'x'"):
        build(decision(THREE, CHARGING), bindings(("x", 1, 2)), START, "1.6")
    with pytest.raises(ProfileError, match="transaction_id must be a string of 1 to 36 characters"):
        build(decision(THREE, CHARGING), bindings((None, "b", "c")), START, "2.0.1")
    with pytest.raises(ProfileError, match="transaction_id must be a string of 1 to 36 characters"):
        build(decision(THREE, CHARGING), bindings(("t" * 37, "b", "c")), START, "2.1")
    with pytest.raises(ProfileError, match="connector_id must be a whole number in \\[1, inf\\], got 0"):
        build(decision(THREE, CHARGING), {**bindings(), "v2g0": PortBinding("CP-B", 0, 3)}, START)
    with pytest.raises(ProfileError, match="v2x must be True or False, got 'yes'"):
        build(decision(THREE, CHARGING), {**bindings(), "v2g0": PortBinding("CP-B", 1, 3, v2x="yes")}, START)
    with pytest.raises(ProfileError, match="phases must be a whole number in \\[1, 3\\], got 4"):
        build(decision(THREE, CHARGING), {**bindings(), "v2g0": PortBinding("CP-B", 1, 3, phases=4)}, START)
    with pytest.raises(ProfileError, match="unit must be 'W' \\(or 'A' with version 1.6\\), got 'A' for 2.0"):
        build(decision(THREE, CHARGING), bindings("abc"), START, "2.0.1", unit="A")
    with pytest.raises(ProfileError, match="version must be one of"):
        build(decision(THREE, CHARGING), bindings(), START, "2.0")
    with pytest.raises(ProfileError, match="not site 'three'"):
        build(decision(load_site("caltech"), np.zeros(54)), bindings(), START)
    with pytest.raises(ProfileError, match="kind must be one of Absolute, Relative"):
        ChargingProfiles(THREE, kind="Recurring")
    with pytest.raises(ProfileError, match="stack_level must be a whole number >= 0"):
        ChargingProfiles(THREE, stack_level=-1)


def _bound(params, decision_, version, v2x=False):
    """A binding for every plugged session: two connectors per charge point, transaction ids from the
    session ids (integers in 1.6)."""
    ports = {}
    for index, (port, session) in enumerate(zip(decision_.port_names, decision_.session_ids, strict=True)):
        if session is not None:
            transaction = int(session[2:]) + 1000 if version == "1.6" else f"tx-{session}"
            ports[port] = PortBinding(f"CP-{index // 2:03d}", index % 2 + 1, transaction, v2x=v2x)
    return ports


def _episode_decisions(scheduler, params, steps, seed):
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(seed), 1))
    zone = ZoneInfo("Europe/Amsterdam")
    for _ in range(steps):
        live = site_state_from_env(params, state, 0)
        decided = scheduler.decide(live)
        yield live.now.replace(tzinfo=zone), decided
        state, _, _ = step(params, state, decided.action[None])


def test_an_exported_policy_s_decisions_convert_and_validate_in_every_version():
    from test_export import SEED_SITE, exported

    params = load_site("caltech", **SEED_SITE)
    scheduler = Scheduler(exported("per_port"), params)
    profiles = ChargingProfiles(params)
    checked = 0
    for start, decided in _episode_decisions(scheduler, params, params.horizon_steps, seed=2):
        plugged = sum(s is not None for s in decided.session_ids)
        for version, unit in [("1.6", "W"), ("1.6", "A"), ("2.0.1", "W"), ("2.1", "W")]:
            calls = profiles.build(decided, _bound(params, decided, version), start, version, unit)
            assert len(calls) == plugged
            for call in calls:
                validate(call.payload, version)
            for call in calls[:2]:
                ocpp_accepts(call.payload, version)
            if unit == "W":
                setpoint_w = dict(zip(params.port_names, 1000 * decided.setpoint_kw, strict=True))
                assert all(0 <= setpoint_w[c.port] - c.power_w < 1 for c in calls)
            checked += len(calls)
    assert checked > 100


def test_a_v2g_scheduler_s_discharges_become_21_setpoints_and_are_refused_in_201():
    params = load_site("v2g_workplace")
    folder = tempfile.mkdtemp()
    export_baseline({"_target_": "agents.baselines.V2GArbitrage", "margin_hours": 1.0}, folder, params)
    scheduler = Scheduler(folder, params)
    profiles = ChargingProfiles(params)
    discharges = 0
    for start, decided in _episode_decisions(scheduler, params, 48, seed=1):
        calls = profiles.build(decided, _bound(params, decided, "2.1", v2x=True), start, "2.1")
        for call in calls:
            validate(call.payload, "2.1")
            period = call.payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
            assert period["setpoint"] == call.power_w and period["dischargeLimit"] == min(call.power_w, 0)
        if any(c.power_w < 0 for c in calls):
            discharges += 1
            ocpp_accepts(calls[0].payload, "2.1")
            with pytest.raises(DischargeNotSupportedError, match="OCPP 2.0.1 cannot ask for discharging"):
                profiles.build(decided, _bound(params, decided, "2.0.1"), start, "2.0.1")
    assert discharges >= 3



LIGHT = """
import sys, datetime as dt, numpy as np
from agents.scheduler import Decision
from agents.scheduler.ocpp_profiles import ChargingProfiles, PortBinding
from envs.site import load_site
params = load_site("caltech")
kw = np.zeros(params.num_ports)
kw[0] = 6.6
sessions = ("s",) + (None,) * (params.num_ports - 1)
decided = Decision(kw, kw, kw, params.port_names, sessions, False, None, 0.0, 6.6)
start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
[call] = ChargingProfiles(params).build(decided, {"evse0": PortBinding("CP", 1, "x")}, start, "2.1")
assert call.payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"] == [
    {"startPeriod": 0, "limit": 6600}]
print(sorted({"torch", "stable_baselines3", "hydra", "ocpp", "jsonschema"} & set(sys.modules)))
"""


def test_building_profiles_imports_neither_torch_nor_the_ocpp_package():
    """The runtime side stays light: ``ocpp`` and ``jsonschema`` load only when ``validate`` is called."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", LIGHT], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
