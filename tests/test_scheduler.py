"""The scheduler runtime: the env's observation from a live state, episodes equal to the trained policy's,
refusals (altered file, other site, missing fields), the fallback, and a run without torch or SB3."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import SEED_SITE, exported, trained_run

from agents import load_policy
from agents.baselines import EarliestDeadlineFirst, PriceAware
from agents.evaluate import evaluate
from agents.export import export_baseline, export_policy
from agents.scheduler import ArtifactError, PluggedSession, Scheduler, SiteState, SiteStateError
from agents.scheduler.artifact import required_fields
from agents.scheduler.live import observation_inputs
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.dynamics import node_flows
from envs.generators import generator_for
from envs.observation import observe, observe_live
from envs.reward import TERM_INDEX
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]


def fractions(setpoint_kw, max_charge_kw, max_discharge_kw):
    """The env action that asks for ``setpoint_kw`` (what a charger applying the setpoints does); a
    port the env offers no power gets 0 (the runtime may offer it round-off, 1e-15 kW)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        discharge = np.where((setpoint_kw < 0) & (max_discharge_kw > 0), setpoint_kw / max_discharge_kw, 0.0)
        action = np.where((setpoint_kw > 0) & (max_charge_kw > 0), setpoint_kw / max_charge_kw, discharge)
    return np.clip(action, -1.0, 1.0)


class ThroughScheduler:
    """SB3's predictor protocol around the runtime: a shadow env replays the evaluated one, each of
    its sites is reported as a ``SiteState``, and the setpoints go back to the env as fractions."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.fell_back = 0

    def begin(self, params, episode):
        self.params, self.state = params, reset(params, episode)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        params, shadow = self.params, self.state
        np.testing.assert_array_equal(observation, observe(params, shadow))
        actions = np.zeros((shadow.num_envs, params.num_ports))
        for env in range(shadow.num_envs):
            decision = self.scheduler.decide(site_state_from_env(params, shadow, env))
            self.fell_back += decision.fell_back
            actions[env] = fractions(decision.setpoint_kw, shadow.max_charge_kw[env],
                                     shadow.max_discharge_kw[env])
        self.state, _, _ = step(params, shadow, actions)
        return actions, None


@pytest.mark.parametrize("name", ["caltech", "jpl", "v2g_workplace", "dc_depot"])
def test_the_live_observation_is_the_env_observation(name):
    params = load_site(name, horizon_steps=32, demand_forecast=name == "jpl")
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(4), 2))
    rng = np.random.default_rng(5)
    while state.t < params.horizon_steps:
        for env in range(2):
            live_state = site_state_from_env(params, state, env)
            inputs, _ = observation_inputs(params, live_state, required_fields(params))
            live = observe_live(params, **inputs)
            np.testing.assert_allclose(live.obs[0], observe(params, state)[env], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(live.max_charge_kw[0], state.max_charge_kw[env], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(live.max_discharge_kw[0], state.max_discharge_kw[env], rtol=1e-9,
                                       atol=1e-9)
            np.testing.assert_allclose(live.node_exo_kw[0], state.node_exo_kw[env, state.t], atol=1e-9)
        state, _, _ = step(params, state, rng.uniform(-1, 1, (2, params.num_ports)))


@pytest.mark.parametrize("kind", ["per_port", "per_port_fit", "per_port_view"])
def test_an_episode_through_the_runtime_equals_the_trained_policy_in_the_env(kind):
    """Same physical KPIs; the runtime's setpoints are already projected onto the node limits, so
    the env finds nothing to cut (``overload_requested_kwh`` 0) where the raw policy asked for
    more than the transformer carries, and the reward differs by exactly that penalty (none
    behind a guard that fits requests into the headroom)."""
    params = load_site("caltech", **SEED_SITE)
    policy = load_policy(trained_run(kind))
    runtime = ThroughScheduler(Scheduler(exported(kind), params))
    fits = kind == "per_port_fit"
    assert runtime.scheduler.guard is not None and runtime.scheduler.guard.fit_headroom == fits
    assert (runtime.scheduler.view is not None) == (kind == "per_port_view")
    table = evaluate({"trained": policy, "runtime": runtime}, params, num_episodes=2, seed=3)
    assert table.loc["trained", "energy_delivered_kwh"] > 10.0 and runtime.fell_back == 0
    cut = table.loc["trained", "overload_requested_kwh"]
    assert (cut == pytest.approx(0.0, abs=1e-6)) if fits else cut > 1.0
    assert table.loc["runtime", "overload_requested_kwh"] == pytest.approx(0.0, abs=1e-9)
    weight = params.reward.coefficients()[TERM_INDEX["overload_requested_kwh"]]
    expected_reward = table.loc["trained", "reward_eur"] - weight * cut
    assert table.loc["runtime", "reward_eur"] == pytest.approx(expected_reward, rel=1e-6)
    physical = table.drop(columns=["wall_s", "score", "overload_requested_kwh", "reward_eur"])
    np.testing.assert_allclose(physical.loc["runtime"].to_numpy(float),
                               physical.loc["trained"].to_numpy(float), rtol=1e-6, atol=1e-6)


def test_setpoints_keep_every_limit_and_follow_the_decided_fractions():
    params = load_site("caltech", **SEED_SITE)
    scheduler = Scheduler(exported("per_port"), params)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(8), 1))
    for _ in range(10):
        state, _, _ = step(params, state, np.ones((1, params.num_ports)))
    decision = scheduler.decide(site_state_from_env(params, state, 0))
    assert decision.setpoint_kw.shape == (54,) and decision.observation.shape == (491,)
    assert np.all(decision.setpoint_kw <= state.max_charge_kw[0] + 1e-9)
    assert np.all(decision.setpoint_kw >= -state.max_discharge_kw[0] - 1e-9)
    flows = node_flows(params, decision.setpoint_kw[None], state.node_exo_kw[:, state.t])
    assert np.all(flows <= params.node_import_limit_kw + 1e-6) and decision.violation_kw == 0.0
    plugged = {params.port_names[p] for p in np.flatnonzero(state.port_ev[0] >= 0)}
    assert {port for port, session in zip(decision.port_names, decision.session_ids, strict=True)
            if session is not None} == plugged
    assert set(decision.by_session()) == {f"ev{k}" for k in state.port_ev[0] if k >= 0}


@pytest.fixture
def artifact_copy(tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(exported("per_port"), folder)
    return folder


def test_an_altered_policy_file_is_refused(artifact_copy):
    onnx = artifact_copy / "policy.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        Scheduler(artifact_copy, "caltech")


def test_another_format_version_is_refused(artifact_copy):
    path = artifact_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 2"):
        Scheduler(artifact_copy, "caltech")


def test_another_site_is_refused_naming_what_differs():
    with pytest.raises(ArtifactError, match="site hash differs.*port_names"):
        Scheduler(exported("per_port"), "jpl")
    caltech = load_site("caltech")
    limits = caltech.node_import_limit_kw.copy()
    limits[1] = 120.0
    with pytest.raises(ArtifactError, match="differing: node_import_limit_kw, observation_scale"):
        Scheduler(exported("per_port"), caltech.replace(node_import_limit_kw=limits))


def _live_state(params, seed=1, steps=12):
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(seed), 1))
    for _ in range(steps):
        state, _, _ = step(params, state, np.full((1, params.num_ports), 0.5))
    return site_state_from_env(params, state, 0)


def test_a_state_lacking_a_needed_field_is_refused_by_name():
    import dataclasses

    params = load_site("caltech", **SEED_SITE)
    scheduler = Scheduler(exported("per_port"), params)
    live = _live_state(params)
    first = live.sessions[0]
    rest = live.sessions[1:]
    unknown_soc = dataclasses.replace(live, sessions=(dataclasses.replace(first, soc=None), *rest))
    with pytest.raises(SiteStateError, match=f"session {first.session_id!r} on port {first.port!r}: soc"):
        scheduler.decide(unknown_soc)
    no_departure = dataclasses.replace(live, sessions=(dataclasses.replace(first, departure=None),))
    with pytest.raises(SiteStateError, match="departure"):
        scheduler.decide(no_departure)
    with pytest.raises(SiteStateError, match="price_buy_eur_kwh is unknown"):
        scheduler.decide(dataclasses.replace(live, price_buy_eur_kwh=None))
    with pytest.raises(SiteStateError, match="carbon_kg_kwh.*at least 9 values"):
        scheduler.decide(dataclasses.replace(live, carbon_kg_kwh=[0.3] * 4))
    with pytest.raises(SiteStateError, match="not a port of site"):
        scheduler.decide(dataclasses.replace(live, sessions=(dataclasses.replace(first, port="nowhere"),)))
    with pytest.raises(SiteStateError, match="soc is 1.5"):
        scheduler.decide(dataclasses.replace(live, sessions=(dataclasses.replace(first, soc=1.5),)))
    with pytest.raises(SiteStateError, match="unknown node"):
        scheduler.decide(dataclasses.replace(live, node_load_kw={"basement": 3.0}))
    longer = dataclasses.replace(live, carbon_kg_kwh=[*live.carbon_kg_kwh, 0.1, 0.2])  # more is accepted
    np.testing.assert_array_equal(scheduler.decide(longer).setpoint_kw, scheduler.decide(live).setpoint_kw)


def test_a_session_on_a_port_out_of_order_gets_nothing():
    import dataclasses

    params = load_site("caltech", **SEED_SITE)
    scheduler = Scheduler(exported("per_port"), params)
    live = _live_state(params)
    port = live.sessions[0].port
    decision = scheduler.decide(dataclasses.replace(live, unavailable_ports=(port,)))
    assert decision.setpoint_kw[params.port_names.index(port)] == 0.0


def test_a_non_finite_policy_output_falls_back_to_the_declared_baseline(tmp_path):
    import hashlib

    import torch

    from agents.export import random_observations
    from agents.export.onnx_graph import ScaledActor, write_onnx
    from agents.networks import deterministic_actor

    run = tmp_path / "run"
    shutil.copytree(trained_run("per_port"), run)
    weights = torch.load(run / "policy" / "weights.pt", weights_only=True)
    weights["mlp_extractor.action_head.bias"][:] = float("nan")
    torch.save(weights, run / "policy" / "weights.pt")
    with pytest.raises(ValueError, match="differs from the torch actor by nan"):
        export_policy(run, tmp_path / "refused")  # the export refuses it; a scheduler may still meet one
    params = load_site("caltech", **SEED_SITE)
    artifact = tmp_path / "nan"
    shutil.copytree(exported("per_port"), artifact)
    policy = load_policy(run)
    policy.begin(params, None)
    obs = random_observations(params, 8, np.random.default_rng(0))
    actor = ScaledActor(deterministic_actor(policy.policy))
    write_onnx(actor, obs, params.num_ports, artifact / "policy.onnx")
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["policy"]["sha256"] = hashlib.sha256((artifact / "policy.onnx").read_bytes()).hexdigest()
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    live = _live_state(params)
    decision = Scheduler(artifact, params).decide(live)
    assert decision.fell_back and "EarliestDeadlineFirst" in decision.reason
    inputs, _ = observation_inputs(params, live, required_fields(params))
    obs = observe_live(params, **inputs).obs
    floor = Scheduler(artifact, params).guard.apply(obs, EarliestDeadlineFirst(params).predict(obs)[0])
    np.testing.assert_array_equal(decision.action, floor[0])
    assert np.isfinite(decision.setpoint_kw).all() and decision.setpoint_kw.sum() > 0


def test_a_baseline_artifact_runs_and_mpc_is_refused(tmp_path):
    params = load_site("caltech", **SEED_SITE)
    export_baseline({"_target_": "agents.baselines.PriceAware", "margin_hours": 2.0}, tmp_path / "pa", params)
    live = _live_state(params)
    decision = Scheduler(tmp_path / "pa", params).decide(live)
    inputs, _ = observation_inputs(params, live, required_fields(params))
    expected = PriceAware(params, margin_hours=2.0).predict(observe_live(params, **inputs).obs)[0][0]
    np.testing.assert_array_equal(decision.action, expected)
    assert not decision.fell_back
    export_baseline({"_target_": "agents.mpc.ModelPredictiveControl"}, tmp_path / "mpc", params)
    with pytest.raises(ArtifactError, match="ModelPredictiveControl"):
        Scheduler(tmp_path / "mpc", params)


BLOCKED_RUN = """
import importlib.abc, json, pickle, sys

BLOCKED = ("torch", "stable_baselines3", "sb3_contrib", "hydra", "omegaconf", "cloudpickle")


def no_unpickling(*args, **kwargs):
    raise RuntimeError("unpickling is forbidden in the runtime")


pickle.load = pickle.loads = pickle.Unpickler = no_unpickling  # numpy imports pickle; nothing may unpickle

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
import numpy as np
from agents.scheduler import Scheduler
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.generators import generator_for
from envs.site import load_site

params = load_site("caltech", horizon_steps=24, start_hour=7)
scheduler = Scheduler(sys.argv[1], params)
state = reset(params, generator_for(params).sample(params, np.random.default_rng(2), 1))
out = []
for _ in range(6):
    decision = scheduler.decide(site_state_from_env(params, state, 0))
    out.append(decision.setpoint_kw.tolist())
    state, _, _ = step(params, state, np.full((1, params.num_ports), 0.7))
leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
print(json.dumps({"setpoints": out, "leaked": leaked}))
"""


def test_the_runtime_loads_and_runs_an_artifact_without_torch_or_sb3():
    artifact = exported("per_port")
    result = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(artifact)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    params = load_site("caltech", **SEED_SITE)
    scheduler = Scheduler(artifact, params)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(2), 1))
    for setpoints in report["setpoints"]:
        decision = scheduler.decide(site_state_from_env(params, state, 0))
        np.testing.assert_array_equal(setpoints, decision.setpoint_kw)
        state, _, _ = step(params, state, np.full((1, params.num_ports), 0.7))
    assert np.sum(report["setpoints"]) > 0


def test_the_blocker_does_block():
    probe = BLOCKED_RUN.split("import numpy as np")[0] + "import torch\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_session_fields_are_plain_values():
    session = PluggedSession(port="evse-0", session_id="s1")
    assert session.soc is None and session.energy_delivered_kwh == 0.0
    with pytest.raises(SiteStateError, match="now must be a datetime"):
        Scheduler(exported("per_port"), "caltech").decide(SiteState(now="noon"))


CORRUPTIONS = (None, float("nan"), float("inf"), -1.0, 1.5, "0.5", "many", [0.5], True, np.float32(0.25),
               10**400)
SESSION_FIELDS = ("soc", "battery_kwh", "energy_requested_kwh", "energy_delivered_kwh", "departure",
                  "max_charge_kw", "max_discharge_kw", "v2g_consent", "min_soc", "plugged_in", "port")


def _outcome(params, live, required):
    try:
        inputs, sessions = observation_inputs(params, live, required)
    except (SiteStateError, TypeError, OverflowError) as error:
        return type(error), str(error)
    return {name: value for name, value in inputs.items() if isinstance(value, np.ndarray)}, sessions


@pytest.mark.parametrize("name", ["v2g_workplace", "dc_depot"])
@pytest.mark.parametrize("level", ["full", "iso15118", "ocpp"])
def test_reading_the_sessions_at_once_equals_reading_them_one_by_one(name, level, monkeypatch):
    """The one-pass reading of the sessions gives what the session-by-session reading gives, and
    where a field is bad the same error, naming the same session and field."""
    import dataclasses
    import datetime as dt

    from test_scheduler_safety import random_live_state

    from agents.scheduler import live as live_module

    params = load_site(name, observability=level)
    required = required_fields(params)
    base = _live_state(params)
    rng = np.random.default_rng(5)
    at_once = live_module._read_sessions
    errors = 0
    for index in range(150):
        live = random_live_state(params, base, rng)
        sessions = [dataclasses.replace(session, plugged_in=live.now - dt.timedelta(hours=rng.uniform(0, 9)))
                    for session in live.sessions]
        if sessions and index % 3:
            at = int(rng.integers(len(sessions)))
            field = SESSION_FIELDS[index % len(SESSION_FIELDS)]
            value = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
            if field in ("departure", "plugged_in") and index % 2:
                value = live.now + dt.timedelta(hours=float(rng.uniform(-3, 3)))
            sessions[at] = dataclasses.replace(sessions[at], **{field: value})
        if index % 7 == 0 and sessions:
            sessions.append(dataclasses.replace(sessions[0], session_id="twin"))
        live = dataclasses.replace(live, sessions=tuple(sessions))
        fast = _outcome(params, live, required)
        monkeypatch.setattr(live_module, "_read_sessions", lambda *args: None)
        slow = _outcome(params, live, required)
        monkeypatch.setattr(live_module, "_read_sessions", at_once)
        errors += isinstance(slow[0], type)
        if isinstance(slow[0], type):
            assert fast == slow
        else:
            assert fast[1] == slow[1] and fast[0].keys() == slow[0].keys()
            for key, array in slow[0].items():
                np.testing.assert_array_equal(fast[0][key], array, err_msg=key)
    assert 20 < errors < 130
