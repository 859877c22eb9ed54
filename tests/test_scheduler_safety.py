"""Whatever the policy outputs, the scheduler's setpoints keep every port, car, SoC and node limit.

Artifacts hold ONNX graphs built here (onnx.helper) that answer with huge finite values,
+/-inf, NaN or mixtures that depend on the state; each runs through whole rollouts of a site
(unidirectional caltech, the V2G workplace, the 1100-port city) that its own setpoints drive,
and every decision is checked against the env's state with independent arithmetic; random live
states beyond what the env produces (car limits above the port's, SoC at min SoC, delivered
above requested, loads and PV past the node limits) are checked from the state alone. A
non-finite output must be replaced by the declared fallback's decision. The checker itself is
shown to fail on a runtime without the node projection or with oversized setpoints.

At the masked ``observability`` levels (``iso15118``, ``ocpp``) the sessions report what a real
site knows (the hidden fields None, or the SoC reported anyway); the runtime charges on
estimates there, which a car's own limits cut, but it must never discharge below min SoC.
"""

import dataclasses
import datetime as dt
import hashlib
import json
import zlib

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from agents.export.writer import build_manifest
from agents.scheduler import PluggedSession, Scheduler, runtime
from agents.scheduler.artifact import INPUT_NAME, MANIFEST_FILE, OUTPUT_NAME, POLICY_FILE
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.dynamics import battery_energy_kwh, node_flows, split_power
from envs.generators import generator_for
from envs.observability import known_ports
from envs.observation import declared_layout, layout_size
from envs.site import load_site

TOLERANCE_KW = 1e-6
TOLERANCE_SOC = 1e-9
KINDS = ("huge", "constant", "overflow", "saturate", "nan_some_hours")
WEEKDAY = {"scenario": {"weekday": [1]}}  # a busy Tuesday
# site -> (overrides, steps per rollout, variants): whole days on the small sites, a busy morning on city
SITES = {
    "caltech": (WEEKDAY, 96, 10),
    "v2g_workplace": (WEEKDAY, 96, 10),
    "city": ({**WEEKDAY, "start_hour": 7}, 12, 5),
    "v2g_workplace@iso15118": ({**WEEKDAY, "observability": "iso15118"}, 96, 6),
    "v2g_workplace@ocpp": ({**WEEKDAY, "observability": "ocpp"}, 96, 6),
}
FALLBACKS = ("agents.baselines.EarliestDeadlineFirst", "agents.baselines.Uncontrolled",
             "agents.baselines.V2GArbitrage")
GUARDS = ((None, False), (1.0, False), (2.0, True))  # deadline guard hours, fits headroom
SPECIALS = np.array([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e30, -1e30, 1.0, -1.0, 0.0, -0.0, 1e-30,
                     0.5, -0.5, 2.0, -2.0], dtype=np.float32)


def adversarial_graph(params, kind: str, rng: np.random.Generator) -> bytes:
    """An ONNX model observation (batch, D) -> action (batch, ports) of the given kind, read from
    a few observation columns times W, plus b: ``huge`` of scale up to 1e6 from 16 random
    columns (finite); ``constant`` special values (NaN, +/-inf, +/-3.4e38, ...; finite on some
    seeds); ``saturate`` +/-3.4e38 per port, mostly positive (every port at full power);
    ``overflow`` 1e38 times a wave over the time of day (+/-inf on some hours, huge and finite on
    others); ``nan_some_hours`` that minus itself (NaN where it overflowed, else 0)."""
    obs_size, ports = layout_size(params), params.num_ports
    columns, bias, gain = [0], np.zeros(ports), None
    if kind == "constant":
        bias = rng.choice(SPECIALS, ports)
        if rng.random() < 0.4:
            bias = np.where(np.isfinite(bias), bias, np.float32(-1e30))
        weights = np.zeros((1, ports))
    elif kind == "saturate":
        bias = np.where(rng.random(ports) < 0.8, 3.4e38, -3.4e38)
        weights = np.zeros((1, ports))
    elif kind == "huge":
        scale = 10.0 ** rng.uniform(0, 6)
        columns = rng.choice(obs_size, 16, replace=False)
        weights, bias = rng.normal(0.0, scale, (16, ports)), rng.normal(0.0, scale, ports)
    else:
        columns = list(range(obs_size)[declared_layout(params).slices["time_of_day"]])
        phase, port_gain = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0, ports)
        weights = 5 * np.stack([np.cos(phase) * port_gain, np.sin(phase) * port_gain])
        gain = 1e38
    initializers = [numpy_helper.from_array(np.asarray(columns, dtype=np.int64), "columns")] + [
        numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)
        for name, array in (("weights", weights), ("bias", bias), ("gain", gain or 1.0))]
    last = OUTPUT_NAME if kind != "nan_some_hours" else "blown"
    nodes = [helper.make_node("Gather", [INPUT_NAME, "columns"], ["picked"], axis=1),
             helper.make_node("MatMul", ["picked", "weights"], ["product"]),
             helper.make_node("Mul", ["product", "gain"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], [last])]
    if kind == "nan_some_hours":
        nodes.append(helper.make_node("Sub", ["blown", "blown"], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes, f"adversarial_{kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", obs_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", ports])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_artifact(folder, params, model: bytes, fallback: str, guard_hours, fits: bool):
    folder.mkdir(parents=True)
    (folder / POLICY_FILE).write_bytes(model)
    policy = {"file": POLICY_FILE, "sha256": hashlib.sha256(model).hexdigest(), "input": INPUT_NAME,
              "output": OUTPUT_NAME}
    manifest = build_manifest(params, policy, {"class": fallback, "arguments": {}}, guard_hours, fits)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def check_decision(params, state, env: int, decision) -> None:
    """Every limit the env enforces, from the env's own state, with independent arithmetic (at a
    masked ``observability`` level, where the runtime charges on estimates of the SoC and the
    request, the charge is held to the port's and car's limits, not to the battery's room or the
    request the site cannot see)."""
    masked = params.observability != "full"
    kw = decision.setpoint_kw
    b = env
    assert kw.shape == (params.num_ports,) and np.isfinite(kw).all()
    present = state.port_ev[b] >= 0
    if state.episode.port_down is not None:
        present &= ~state.episode.port_down[b, state.t]
    assert np.all(np.abs(kw[~present]) <= TOLERANCE_KW), "power on an empty or unavailable port"
    assert np.all(kw <= params.port_max_charge_kw + TOLERANCE_KW), "port charge limit"
    assert np.all(kw >= -params.port_max_discharge_kw - TOLERANCE_KW), "port discharge limit"
    assert np.all(kw <= state.ev_max_charge_kw[b] + TOLERANCE_KW), "car charge limit"
    assert np.all(kw >= -state.ev_max_discharge_kw[b] - TOLERANCE_KW), "car discharge limit or no consent"
    assert masked or np.all(kw <= state.max_charge_kw[b] + TOLERANCE_KW), "available charge power"
    assert np.all(kw >= -state.max_discharge_kw[b] - TOLERANCE_KW), "available discharge power"
    charge, discharge = split_power(kw[None])
    energy = battery_energy_kwh(params, charge, discharge)[0]
    battery = np.where(present, state.ev_on_port[0, b], 1.0)
    soc, min_soc = state.soc[b], state.min_soc[b]
    soc_next = soc + np.where(present, energy / battery, 0.0)
    discharging = kw < -TOLERANCE_KW
    assert np.all(soc_next[discharging] >= np.minimum(min_soc, soc)[discharging] - TOLERANCE_SOC), "min SoC"
    assert not np.any(discharging & (soc <= min_soc)), "discharge at or below min SoC"
    if not masked:
        assert np.all(soc_next[present] <= 1.0 + TOLERANCE_SOC), "battery over full"
        assert np.all(energy <= np.maximum(state.remaining_kwh[b], 0.0) + TOLERANCE_SOC), "beyond the request"
    exo = state.node_exo_kw[b, state.t][None]
    flows = node_flows(params, kw[None], exo)[0]
    excess = (np.maximum(flows - params.node_import_limit_kw, 0)
              + np.maximum(-params.node_export_limit_kw - flows, 0))
    idle = node_flows(params, np.zeros((1, params.num_ports)), exo)[0]
    unavoidable = (np.maximum(idle - params.node_import_limit_kw, 0)
                   + np.maximum(-params.node_export_limit_kw - idle, 0)).sum()
    if unavoidable <= TOLERANCE_KW:
        assert excess.max() <= TOLERANCE_KW, (
            f"node limit broken by {excess.max():.4g} kW at {params.node_names[int(excess.argmax())]}")
    else:
        assert excess.sum() <= unavoidable + TOLERANCE_KW, "more violation than all ports off"
    assert decision.violation_kw == pytest.approx(excess.sum(), abs=TOLERANCE_KW)
    assert decision.site_import_kw == pytest.approx(flows[0], abs=TOLERANCE_KW)


def check_source(scheduler, raw_session, decision) -> bool:
    """The action comes from the policy when its output is finite, else from the declared fallback
    (``fell_back`` with a reason); returns whether it fell back."""
    obs = decision.observation[None]
    raw = raw_session.run(None, {INPUT_NAME: obs})[0]
    if np.isfinite(raw).all():
        assert not decision.fell_back and decision.reason is None
        action = np.clip(raw[0], -1.0, 1.0)
    else:
        assert decision.fell_back, "a non-finite output was not replaced"
        assert "not finite" in decision.reason and scheduler.fallback_name.rsplit(".")[-1] in decision.reason
        action = np.clip(np.asarray(scheduler.fallback.predict(obs)[0], dtype=np.float32), -1.0, 1.0)
    if scheduler.guard is not None:
        action = scheduler.guard.apply(obs, action)
    np.testing.assert_array_equal(decision.action, np.reshape(action, -1))
    return decision.fell_back


def fractions(setpoint_kw, max_charge_kw, max_discharge_kw):
    """The env action that applies ``setpoint_kw``."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        discharge = np.where((setpoint_kw < 0) & (max_discharge_kw > 0), setpoint_kw / max_discharge_kw, 0.0)
        action = np.where((setpoint_kw > 0) & (max_charge_kw > 0), setpoint_kw / max_charge_kw, discharge)
    return np.clip(action, -1.0, 1.0)


def as_the_site_knows(params, live, report_soc: bool = False):
    """``live`` with the session fields the site's ``observability`` level hides set to None (the
    SoC and battery kept where ``report_soc``)."""
    soc_known, needs_known = known_ports(params)
    sessions = []
    for session in live.sessions:
        port = params.port_names.index(session.port)
        hidden = {} if needs_known[port] else {"energy_requested_kwh": None, "departure": None}
        if not (soc_known[port] or report_soc):
            hidden |= {"soc": None, "battery_kwh": None}
        sessions.append(dataclasses.replace(session, **hidden))
    return dataclasses.replace(live, sessions=tuple(sessions))


def drive(scheduler, raw_session, params, steps: int, seed: int) -> tuple[int, int]:
    """A rollout of one env driven by the scheduler's setpoints, every decision checked;
    (decisions, fallbacks). At a masked level the sessions report what the site knows, on odd
    seeds with the SoC reported anyway."""
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(seed), 1))
    decisions = fallbacks = 0
    for _ in range(min(steps, params.horizon_steps)):
        live = site_state_from_env(params, state, 0)
        if params.observability != "full":
            live = as_the_site_knows(params, live, report_soc=seed % 2 == 1)
        decision = scheduler.decide(live)
        check_decision(params, state, 0, decision)
        fallbacks += check_source(scheduler, raw_session, decision)
        decisions += 1
        action = fractions(decision.setpoint_kw, state.max_charge_kw[0], state.max_discharge_kw[0])
        state, _, _ = step(params, state, action[None])
    return decisions, fallbacks


def variants(site: str, count: int, tmp_path):
    """(scheduler, a plain onnxruntime session of the same graph) for ``count`` adversarial artifacts."""
    overrides, _, _ = SITES[site]
    params = load_site(site.split("@")[0], **overrides)
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        model = adversarial_graph(params, kind, rng)
        guard_hours, fits = GUARDS[index % len(GUARDS)]
        folder = write_artifact(tmp_path / f"{site}_{index}_{kind}", params, model,
                                FALLBACKS[index % len(FALLBACKS)], guard_hours, fits)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        yield params, Scheduler(folder, params), onnxruntime.InferenceSession(model, options)


@pytest.mark.parametrize("site", list(SITES))
def test_no_policy_output_breaks_a_limit(site, tmp_path):
    _, steps, count = SITES[site]
    decisions = fallbacks = 0
    for seed, (params, scheduler, raw) in enumerate(variants(site, count, tmp_path)):
        made, fell = drive(scheduler, raw, params, steps, seed)
        decisions, fallbacks = decisions + made, fallbacks + fell
    assert 0 < fallbacks < decisions  # both paths ran


@pytest.mark.parametrize("level, report_soc", [("full", True), ("iso15118", False), ("iso15118", True),
                                               ("ocpp", False), ("ocpp", True)])
def test_the_v2g_site_is_driven_into_discharge_and_min_soc(level, report_soc, tmp_path):
    """The property is not vacuous on the V2G site: a constant -1 policy discharges consenting EVs
    down to their min SoC and no further; at a masked level (every port AC, so no SoC known) only
    the EVs whose sessions report their SoC discharge."""
    params = load_site("v2g_workplace", **WEEKDAY, observability=level)
    model = _constant_graph(params, -1.0)
    folder = write_artifact(tmp_path / "discharge", params, model, FALLBACKS[0], None, False)
    scheduler = Scheduler(folder, params)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(3), 1))
    discharged = at_min = 0
    for _ in range(params.horizon_steps):
        live = as_the_site_knows(params, site_state_from_env(params, state, 0), report_soc)
        decision = scheduler.decide(live)
        check_decision(params, state, 0, decision)
        discharged += int((decision.setpoint_kw < -1.0).sum())
        consenting = (state.port_ev[0] >= 0) & (state.ev_max_discharge_kw[0] > 0)
        at_min += int((consenting & (state.soc[0] <= state.min_soc[0] + 1e-6)).sum())
        action = fractions(decision.setpoint_kw, state.max_charge_kw[0], state.max_discharge_kw[0])
        state, _, _ = step(params, state, action[None])
    if report_soc:
        assert discharged > 20 and at_min > 0
    else:
        assert discharged == 0


def test_a_runtime_discharging_on_estimates_is_caught(tmp_path, monkeypatch):
    """Without the rule, the runtime discharges on the estimated SoC and the checker catches it."""
    params = load_site("v2g_workplace", **WEEKDAY, observability="ocpp")
    folder = write_artifact(tmp_path / "estimates", params, _constant_graph(params, -1.0), FALLBACKS[0], None,
                            False)
    scheduler = Scheduler(folder, params)
    monkeypatch.setattr(Scheduler, "_discharge_on_known_soc_kw", lambda self, state, inputs, live:
                        live.max_discharge_kw)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(3), 1))
    with pytest.raises(AssertionError, match="min SoC|available discharge"):
        for _ in range(params.horizon_steps):
            decision = scheduler.decide(as_the_site_knows(params, site_state_from_env(params, state, 0)))
            check_decision(params, state, 0, decision)
            action = fractions(decision.setpoint_kw, state.max_charge_kw[0], state.max_discharge_kw[0])
            state, _, _ = step(params, state, action[None])


def _constant_graph(params, value: float) -> bytes:
    rng = np.random.default_rng(0)
    model = onnx.load_from_string(adversarial_graph(params, "constant", rng))
    for tensor in model.graph.initializer:
        if tensor.name == "bias":
            tensor.CopyFrom(numpy_helper.from_array(np.full(params.num_ports, value, np.float32), "bias"))
    return model.SerializeToString()


@pytest.mark.parametrize("broken", ["no_projection", "oversized_setpoints"])
def test_the_checker_catches_a_broken_runtime(broken, tmp_path, monkeypatch):
    params = load_site("caltech", **WEEKDAY)
    model = _constant_graph(params, 1.0)
    folder = write_artifact(tmp_path / "full", params, model, FALLBACKS[0], None, False)
    if broken == "no_projection":
        monkeypatch.setattr(runtime, "project_to_limits", lambda params, power, exo: (
            power, node_flows(params, power, exo)[:, 0], np.zeros(power.shape[0])))
    else:
        monkeypatch.setattr(runtime, "split_power", lambda power: split_power(power * 1.5))
    scheduler = Scheduler(folder, params)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(1), 1))
    with pytest.raises(AssertionError):
        for _ in range(params.horizon_steps):
            decision = scheduler.decide(site_state_from_env(params, state, 0))
            check_decision(params, state, 0, decision)
            state, _, _ = step(params, state, np.ones((1, params.num_ports)))


def random_live_state(params, base, rng: np.random.Generator):
    """``base`` (a live state of the site) with random sessions on random ports, within what
    ``SiteState`` accepts but beyond what the env produces: car limits above the port's, SoC at
    or below min SoC, delivered above requested, departures past, loads and PV past the limits."""
    ports = rng.permutation(params.num_ports)[:rng.integers(0, params.num_ports + 1)]
    sessions = []
    for port in ports:
        soc = float(rng.choice([rng.random(), 0.0, 1.0])) if rng.random() < 0.2 else float(rng.random())
        min_soc = float(rng.choice([soc, rng.uniform(0, 0.9)]))
        requested = float(rng.uniform(0, 100))
        sessions.append(PluggedSession(
            port=params.port_names[port], session_id=f"s{port}", soc=soc,
            battery_kwh=float(rng.uniform(5, 120)), energy_requested_kwh=requested,
            energy_delivered_kwh=float(rng.uniform(-5, 1.2 * requested + 1)),
            departure=base.now + dt.timedelta(hours=float(rng.uniform(-2, 12))),
            max_charge_kw=float(rng.choice([0.0, rng.uniform(0, 1.5 * params.port_max_charge_kw[port])])),
            max_discharge_kw=float(rng.uniform(0, 30)), v2g_consent=bool(rng.random() < 0.7),
            min_soc=min_soc))
    limits = params.node_import_limit_kw
    load = {name: float(rng.uniform(0, 1.2) * limits[i]) for i, name in enumerate(params.node_names)
            if rng.random() < 0.5}
    pv = {name: float(rng.uniform(0, 1.2) * limits[i]) for i, name in enumerate(params.node_names)
          if rng.random() < 0.3}
    down = [params.port_names[p] for p in range(params.num_ports) if rng.random() < 0.05]
    return dataclasses.replace(base, sessions=tuple(sessions), node_load_kw=load, node_pv_kw=pv,
                               unavailable_ports=tuple(down))


def check_live_decision(params, live, decision) -> None:
    """Every limit, from the live state alone: the port's and car's limits, the battery's room,
    the energy still requested, min SoC, V2G consent and each node's limits."""
    kw, p = decision.setpoint_kw, params.num_ports
    assert kw.shape == (p,) and np.isfinite(kw).all()
    fields = {name: np.zeros(p) for name in ("soc", "battery", "room", "wanted", "car_charge",
                                             "car_discharge", "min_soc")}
    plugged = np.zeros(p, dtype=bool)
    for session in live.sessions:
        i = params.port_names.index(session.port)
        if session.port in live.unavailable_ports:
            continue
        plugged[i] = True
        fields["soc"][i], fields["battery"][i], fields["min_soc"][i] = (session.soc, session.battery_kwh,
                                                                       session.min_soc)
        fields["room"][i] = (1.0 - session.soc) * session.battery_kwh
        fields["wanted"][i] = max(session.energy_requested_kwh - session.energy_delivered_kwh, 0.0)
        fields["car_charge"][i] = session.max_charge_kw
        consent = params.bidirectional and session.v2g_consent and session.max_discharge_kw > 0
        fields["car_discharge"][i] = session.max_discharge_kw if consent else 0.0
    assert np.all(np.abs(kw[~plugged]) <= TOLERANCE_KW), "power on an empty or unavailable port"
    assert np.all(kw <= params.port_max_charge_kw + TOLERANCE_KW), "port charge limit"
    assert np.all(kw >= -params.port_max_discharge_kw - TOLERANCE_KW), "port discharge limit"
    assert np.all(kw <= fields["car_charge"] + TOLERANCE_KW), "car charge limit"
    assert np.all(kw >= -fields["car_discharge"] - TOLERANCE_KW), "car discharge limit or no consent"
    charge, discharge = split_power(kw[None])
    energy = battery_energy_kwh(params, charge, discharge)[0]
    assert np.all(energy <= fields["room"] + TOLERANCE_SOC), "battery over full"
    assert np.all(energy <= fields["wanted"] + TOLERANCE_SOC), "beyond the request"
    above_min = np.maximum(fields["soc"] - np.maximum(fields["min_soc"], 0.0), 0.0) * fields["battery"]
    assert np.all(-energy <= above_min + TOLERANCE_SOC), "below min SoC"
    own = np.zeros(params.num_nodes)
    for mapping, sign in ((live.node_load_kw, 1.0), (live.node_pv_kw, -1.0)):
        for name, value in mapping.items():
            own[params.node_names.index(name)] += sign * value
    exo = np.zeros(params.num_nodes)
    for node in range(params.num_nodes):
        ancestor = node
        while ancestor >= 0:
            exo[ancestor] += own[node]
            ancestor = params.node_parent[ancestor]
    flows = node_flows(params, kw[None], exo[None])[0]
    idle = exo
    excess = (np.maximum(flows - params.node_import_limit_kw, 0)
              + np.maximum(-params.node_export_limit_kw - flows, 0))
    unavoidable = (np.maximum(idle - params.node_import_limit_kw, 0)
                   + np.maximum(-params.node_export_limit_kw - idle, 0)).sum()
    if unavoidable <= TOLERANCE_KW:
        assert excess.max() <= TOLERANCE_KW, "node limit broken"
    else:
        assert excess.sum() <= unavoidable + TOLERANCE_KW, "more violation than all ports off"
    assert decision.violation_kw == pytest.approx(excess.sum(), abs=TOLERANCE_KW)


@pytest.mark.parametrize("site", ["v2g_workplace", "jpl", "dc_depot"])
def test_random_live_states_beyond_the_env_keep_every_limit(site, tmp_path):
    params = load_site(site, **WEEKDAY)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(0), 1))
    base = site_state_from_env(params, state, 0)
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    fell_back = 0
    for index, kind in enumerate(KINDS):
        model = adversarial_graph(params, kind, rng)
        guard_hours, fits = GUARDS[index % len(GUARDS)]
        fallback = FALLBACKS[index % len(FALLBACKS)]
        folder = write_artifact(tmp_path / kind, params, model, fallback, guard_hours, fits)
        scheduler = Scheduler(folder, params)
        raw = onnxruntime.InferenceSession(model)
        for _ in range(40):
            live = random_live_state(params, base, rng)
            decision = scheduler.decide(live)
            check_live_decision(params, live, decision)
            fell_back += check_source(scheduler, raw, decision)
    assert 0 < fell_back < 40 * len(KINDS)
