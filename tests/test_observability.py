"""Observability levels: what each level hides, the estimates and flags that replace it, unchanged
physics and reward, baselines, MPC and a trained policy at every level, and the scheduler's refusals."""

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ev, make_episode

from agents import baselines, load_policy
from agents.evaluate import evaluate
from agents.export import export_baseline, export_policy
from agents.mpc import ModelPredictiveControl
from agents.scheduler import ArtifactError, Scheduler, SiteStateError
from agents.scheduler.artifact import required_fields
from agents.scheduler.live import observation_inputs
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.errors import SiteError
from envs.generators import generator_for
from envs.observability import FLAG_FIELDS, SessionEstimator, estimator_for, port_is_dc
from envs.observation import (
    NODE_FIELDS,
    PORT_FIELDS,
    declared_layout,
    observation_bounds,
    observation_scale,
    observe,
    observe_live,
)
from envs.site import OBSERVABILITY_LEVELS, load_site

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "experiments" / "learning" / "caltech" / "bc_ppo" / "seed_0"
MIXED_SITE = {  # one AC and one DC port, 15-minute steps, a day from 06:00
    "name": "mixed",
    "dt_minutes": 15,
    "horizon_steps": 16,
    "start_hour": 6,
    "forecast_steps": 2,
    "nodes": [{"name": "grid", "limit_kw": 200}],
    "ports": [{"name": "ac", "node": "grid", "max_charge_kw": 11},
              {"name": "dc", "node": "grid", "max_charge_kw": 50}],
}
MASKED = ("soc", "remaining_kwh", "hours_to_departure", *FLAG_FIELDS)


def mixed(level):
    return load_site(dict(MIXED_SITE, observability=level))


def test_a_bad_level_is_refused_by_name():
    for bad in ("iso", "OCPP", 1, None):
        with pytest.raises(SiteError, match="observability must be one of full, iso15118, ocpp"):
            load_site("caltech", observability=bad)
    with pytest.raises(SiteError, match="observability"):
        dataclasses.replace(load_site("caltech"), observability="partial")
    assert load_site("caltech").observability == "full"


def test_the_estimator_by_hand():
    """Stays 2, 4, 6 h and requests 4, 10, 16 kWh (too few per hour: every hour reads the pooled row)."""
    estimator = SessionEstimator.from_sessions(0.5, [8.2, 8.7, 17.0], [2.0, 4.0, 6.0], [4.0, 10.0, 16.0],
                                               [0.2, 0.4, 0.6], [40.0, 60.0, 80.0])
    soc, battery, remaining, hours = estimator.estimate(np.array([8.5, 8.5, 3.0, 8.5]),
                                                        np.array([0.0, 3.0, 7.0, 1.0]),
                                                        np.array([0.0, 5.0, 20.0, 12.0]))
    # 0.1 quantile of the stays still going: [2, 4, 6] -> 2 + 0.2 * (4 - 2); [4, 6] -> 4 + 0.1 * 2
    np.testing.assert_allclose(hours, [2.4, 4.2 - 3, 0.5, 2.4 - 1])  # none left after 7 h: one step
    np.testing.assert_allclose(remaining, [10.0, (10 + 16) / 2 - 5, 0.0, 16 - 12])
    np.testing.assert_allclose(soc, [0.4, 0.4 + 5 / 60, 0.4 + 20 / 60, 0.6])
    np.testing.assert_allclose(battery, 60.0)
    again = SessionEstimator.from_dict(json.loads(json.dumps(estimator.to_dict())))
    np.testing.assert_array_equal(again.estimate(8.5, 3.0, 5.0), estimator.estimate(8.5, 3.0, 5.0))


def test_the_estimator_conditions_on_the_arrival_hour():
    hours = np.r_[np.full(20, 8.0), np.full(20, 17.0), [3.0]]
    stays = np.r_[np.full(20, 2.0), np.full(20, 10.0), [6.0]]
    estimator = SessionEstimator.from_sessions(1.0, hours, stays, np.full(41, 5.0), np.full(41, 0.5),
                                               np.full(41, 50.0))
    _, _, _, left = estimator.estimate(np.array([8.0, 17.5, 3.0, 17.0]), np.array([0.0, 0.0, 0.0, 5.0]),
                                       0.0)
    np.testing.assert_allclose(left, [2.0, 10.0, 2.0, 5.0])  # hour 3 (one session) reads all 41 stays
    _, _, remaining, _ = estimator.estimate(17.0, 0.0, np.array([0.0, 4.0, 5.0]))
    np.testing.assert_allclose(remaining, [5.0, 1.0, 0.0])


def _hand_episode(params):
    """Env 0: EV on the AC port (plugs at 06:30), EV on the DC port (06:00)."""
    return make_episode(params, [
        ev(arrival=0, departure=12, announced=10, soc=0.3, battery_kwh=50.0, requested_kwh=12.0,
           max_charge_kw=11.0),
        ev(arrival=2, departure=14, announced=14, soc=0.6, battery_kwh=80.0, requested_kwh=30.0,
           max_charge_kw=50.0)], port_rank=np.array([[1, 0]]))


@pytest.mark.parametrize("level", OBSERVABILITY_LEVELS)
def test_masking_by_hand(level):
    params = mixed(level)
    state = reset(params, _hand_episode(params))
    action = np.array([[0.5, 0.4]])
    for _ in range(4):
        state, _, _ = step(params, state, action)
    layout = declared_layout(params).slices
    obs = observe(params, state)[0]
    assert list(port_is_dc(params)) == [False, True]
    ev_on = state.port_ev[0]
    assert list(ev_on) == [1, 0]  # the second EV took the AC port (port_rank), the first the DC port
    truth = {"soc": state.soc[0], "remaining_kwh": state.remaining_kwh[0],
             "hours_to_departure": params.dt_hours * (np.array([14, 10]) - 4)}
    arrival_hour = 6 + params.dt_hours * np.array([2, 0])
    elapsed = params.dt_hours * (4 - np.array([2, 0]))
    est_soc, _, est_remaining, est_hours = estimator_for(params).estimate(arrival_hour, elapsed,
                                                                          state.delivered_kwh[0])
    estimate = {"soc": est_soc, "remaining_kwh": est_remaining, "hours_to_departure": est_hours}
    hidden = {"full": ([], []), "iso15118": ([0], []), "ocpp": ([0, 1], [0, 1])}[level]
    for name in ("soc", "remaining_kwh", "hours_to_departure"):
        ports = hidden[0] if name == "soc" else hidden[1]
        expected = np.where(np.isin([0, 1], ports), estimate[name], truth[name])
        np.testing.assert_allclose(obs[layout[name]], expected, rtol=1e-6, err_msg=name)
        assert not np.allclose(estimate[name], truth[name]), name  # the check can tell them apart
    if level == "full":
        assert not any(name in layout for name in FLAG_FIELDS)
        return
    np.testing.assert_array_equal(obs[layout["soc_estimated"]], np.isin([0, 1], hidden[0]))
    for name in ("remaining_kwh_estimated", "hours_to_departure_estimated"):
        np.testing.assert_array_equal(obs[layout[name]], np.isin([0, 1], hidden[1]))
    np.testing.assert_allclose(obs[layout["max_charge_kw"]], state.max_charge_kw[0], rtol=1e-6)


@pytest.mark.parametrize("level", ["iso15118", "ocpp"])
def test_flags_are_declared_and_zero_on_empty_ports(level):
    params = load_site("caltech", observability=level)
    full = declared_layout(load_site("caltech"))
    layout = declared_layout(params)
    assert layout.flag_fields == FLAG_FIELDS and layout.flag_columns.shape == (params.num_ports, 3)
    assert layout.port_fields == PORT_FIELDS and layout.node_fields == NODE_FIELDS
    columns = np.concatenate([layout.port_columns.ravel(), layout.node_columns.ravel(), layout.site_columns,
                              layout.flag_columns.ravel()])
    np.testing.assert_array_equal(np.sort(columns), np.arange(layout.size))
    assert layout.size == full.size + 3 * params.num_ports
    for name, columns in full.slices.items():  # every full column keeps its place
        assert layout.slices[name] == columns
    np.testing.assert_array_equal(layout.site_columns, full.site_columns)
    low, high = observation_bounds(params)
    flags = layout.flag_columns.ravel()
    assert np.all(low[flags] == 0) and np.all(high[flags] == 1)
    assert np.all(observation_scale(params)[flags] == 1)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(0), 2))
    for _ in range(40):
        state, _, _ = step(params, state, np.ones((2, params.num_ports)))
    obs = observe(params, state)
    empty = ~state.occupied
    assert empty.any() and (~empty).any()
    for f in range(3):
        flag = obs[:, layout.flag_columns[:, f]]
        estimated = f == 0 or level == "ocpp"  # caltech's ports are AC: iso15118 hides the SoC only
        assert np.all(flag[empty] == 0) and np.all(flag[~empty] == estimated)


def _run(params, episode, actions):
    state = reset(params, episode)
    observations = []
    for action in actions:
        observations.append(observe(params, state))
        state, _, _ = step(params, state, action)
    return state, np.stack(observations)


def test_physics_and_reward_are_the_same_at_every_level():
    base = load_site("caltech", horizon_steps=48)
    episode = generator_for(base).sample(base, np.random.default_rng(3), 3)
    actions = np.random.default_rng(4).uniform(-0.2, 1.0, (48, 3, base.num_ports))
    full_state, full_obs = _run(base, episode, actions)
    width = full_obs.shape[-1]
    layout = declared_layout(base).slices
    unmasked = np.ones(width, dtype=bool)
    for name in ("soc", "remaining_kwh", "hours_to_departure"):
        unmasked[layout[name]] = False
    for level in ("iso15118", "ocpp"):
        state, obs = _run(base.replace(observability=level), episode, actions)
        np.testing.assert_array_equal(state.totals, full_state.totals)
        np.testing.assert_array_equal(state.soc, full_state.soc)
        np.testing.assert_array_equal(state.remaining_kwh, full_state.remaining_kwh)
        np.testing.assert_array_equal(obs[..., :width][..., unmasked], full_obs[..., unmasked])
        assert not np.array_equal(obs[..., :width], full_obs) or level == "iso15118"


def test_baselines_mpc_and_the_trained_policy_run_at_every_level():
    rules = {name: cls for name, cls in vars(baselines).items()
             if isinstance(cls, type) and issubclass(cls, baselines.RuleBasedPolicy)
             and cls is not baselines.RuleBasedPolicy}
    assert {"EarliestDeadlineFirst", "PriceAware", "AsLateAsPossible"} <= rules.keys()
    tables = {}
    for level in OBSERVABILITY_LEVELS:
        params = load_site("caltech", horizon_steps=48, start_hour=6, observability=level)
        policies = {name: cls(params) for name, cls in rules.items()}
        policies["mpc"] = ModelPredictiveControl(params, horizon_steps=8)
        policies["trained"] = load_policy(TRAINED)
        tables[level] = evaluate(policies, params, num_episodes=2, seed=1000)
        assert np.isfinite(tables[level]["reward_eur"]).all()
        assert (tables[level]["grid_violation_kwh"] == 0).all()
    uncontrolled = [tables[level].loc["Uncontrolled", "reward_eur"] for level in OBSERVABILITY_LEVELS]
    assert uncontrolled[0] == uncontrolled[1] == uncontrolled[2]  # reads no EV field
    for name in ("EarliestDeadlineFirst", "mpc", "trained"):
        assert tables["full"].loc[name, "reward_eur"] != tables["ocpp"].loc[name, "reward_eur"], name


def test_edf_acts_on_the_estimate():
    params = load_site("caltech", observability="ocpp")
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(1), 1))
    for _ in range(36):
        state, _, _ = step(params, state, np.zeros((1, params.num_ports)))
    obs = observe(params, state)
    truth = observe(params.replace(observability="full"), state)
    policy = baselines.EarliestDeadlineFirst(params)
    seen = policy.predict(obs)[0]
    swapped = obs.copy()
    swapped[:, :truth.shape[1]] = truth
    assert not np.array_equal(seen, policy.predict(swapped)[0])
    layout = declared_layout(params).slices
    alone = truth.copy()
    for name in ("soc", "remaining_kwh", "hours_to_departure"):
        alone[:, layout[name]] = obs[:, layout[name]]
    at_full = baselines.EarliestDeadlineFirst(load_site("caltech"))
    np.testing.assert_array_equal(seen, at_full.predict(alone)[0])


@pytest.mark.parametrize(("site", "level"), [("caltech", "ocpp"), ("dc_depot", "iso15118"),
                                             ("mixed", "iso15118")])
def test_the_live_observation_is_the_env_observation_on_what_the_site_sees(site, level):
    params = mixed(level) if site == "mixed" else load_site(site, horizon_steps=32, observability=level)
    episode = (_hand_episode(params) if site == "mixed"
               else generator_for(params).sample(params, np.random.default_rng(4), 2))
    state = reset(params, episode)
    layout = declared_layout(params)
    columns = np.concatenate([np.arange(layout.slices[n].start, layout.slices[n].stop) for n in MASKED])
    rng = np.random.default_rng(5)
    while state.t < params.horizon_steps:
        for env in range(episode.num_envs):
            inputs, _ = observation_inputs(params, site_state_from_env(params, state, env),
                                           required_fields(params))
            live = observe_live(params, **inputs)
            np.testing.assert_allclose(live.obs[0, columns], observe(params, state)[env, columns], rtol=1e-5,
                                       atol=1e-6)
        state, _, _ = step(params, state, rng.uniform(0, 1, (episode.num_envs, params.num_ports)))


def _artifact(tmp_path, params, name="edf"):
    out = tmp_path / name
    export_baseline({"class": "agents.baselines.EarliestDeadlineFirst"}, out, params)
    return out


def test_the_manifest_records_the_level(tmp_path):
    for level in OBSERVABILITY_LEVELS:
        params = mixed(level)
        manifest = json.loads((_artifact(tmp_path, params, level) / "manifest.json").read_text())
        record = manifest["observability"]
        assert record["level"] == level and record["dc_ports"] == ["dc0"]
        assert (record["estimator"] is None) == (level == "full")
        kinds = {field["name"]: field["kind"] for field in manifest["observation"]["fields"]}
        assert all(kinds.get(name) == ("port_flag" if level != "full" else None) for name in FLAG_FIELDS)
        session = manifest["required_fields"]["session"]
        assert ("soc" in session) == (level == "full") and ("plugged_in" in session) == (level != "full")
        assert ("departure" in session) == (level != "ocpp")
        assert manifest["required_fields"].get("session_on_dc_ports") == (
            ["soc", "battery_kwh"] if level == "iso15118" else None)
    with pytest.raises(ArtifactError, match="observability"):
        Scheduler(tmp_path / "ocpp", mixed("full"))
    with pytest.raises(ArtifactError, match="observability"):
        Scheduler(tmp_path / "full", mixed("ocpp"))


def _live(params, state):
    return site_state_from_env(params, state, 0)


def test_the_runtime_refuses_missing_fields_and_ignores_extra_ones(tmp_path):
    iso, ocpp = mixed("iso15118"), mixed("ocpp")
    state = reset(iso, _hand_episode(iso))
    for _ in range(3):
        state, _, _ = step(iso, state, np.full((1, 2), 0.5))
    live = _live(iso, state)
    ac, dc = sorted(live.sessions, key=lambda s: s.port)
    assert (ac.port, dc.port) == ("ac0", "dc0")
    runtime = Scheduler(_artifact(tmp_path, iso), iso)
    decided = runtime.decide(live).setpoint_kw
    assert decided.sum() > 0
    bare_ac = dataclasses.replace(ac, soc=None, battery_kwh=None)
    without_soc = dataclasses.replace(live, sessions=(bare_ac, dc))
    np.testing.assert_array_equal(runtime.decide(without_soc).setpoint_kw, decided)
    for field in ("soc", "battery_kwh"):
        with pytest.raises(SiteStateError, match=f"session 'ev0' on port 'dc0': {field} is unknown"):
            runtime.decide(dataclasses.replace(live, sessions=(ac, dataclasses.replace(dc, **{field: None}))))
    for field in ("departure", "energy_requested_kwh", "plugged_in"):
        with pytest.raises(SiteStateError, match=f"session 'ev1' on port 'ac0': {field} is unknown"):
            runtime.decide(dataclasses.replace(live, sessions=(dataclasses.replace(ac, **{field: None}), dc)))

    runtime = Scheduler(_artifact(tmp_path, ocpp, "ocpp"), ocpp)
    full_knowledge = runtime.decide(live)
    bare = tuple(dataclasses.replace(s, soc=None, battery_kwh=None, energy_requested_kwh=None, departure=None)
                 for s in live.sessions)
    np.testing.assert_array_equal(runtime.decide(dataclasses.replace(live, sessions=bare)).observation,
                                  full_knowledge.observation)
    wrong = tuple(dataclasses.replace(s, soc=0.99, energy_requested_kwh=1e3, departure=live.now)
                  for s in bare)
    np.testing.assert_array_equal(runtime.decide(dataclasses.replace(live, sessions=wrong)).observation,
                                  full_knowledge.observation)
    with pytest.raises(SiteStateError, match="session 'ev0' on port 'dc0': plugged_in is unknown"):
        runtime.decide(dataclasses.replace(live, sessions=(ac, dataclasses.replace(dc, plugged_in=None))))
    later = dataclasses.replace(dc, plugged_in=live.now + dt.timedelta(hours=1))
    with pytest.raises(SiteStateError, match="plugged_in is 1 h after now"):
        runtime.decide(dataclasses.replace(live, sessions=(ac, later)))
    with pytest.raises(SiteStateError, match="session 'ev0' on port 'dc0': soc is unknown"):
        Scheduler(_artifact(tmp_path, mixed("full"), "full"), mixed("full")).decide(
            dataclasses.replace(live, sessions=(ac, dataclasses.replace(dc, soc=None))))


def test_a_trained_policy_exported_at_a_level_runs_in_the_runtime(tmp_path):
    params = load_site("caltech", horizon_steps=24, start_hour=7, observability="ocpp")
    manifest = export_policy(TRAINED, tmp_path / "ocpp", params, check_observations=50)
    assert manifest["observability"]["level"] == "ocpp"
    runtime = Scheduler(tmp_path / "ocpp", params)
    policy = load_policy(TRAINED)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(2), 1))
    policy.begin(params, None)
    for _ in range(8):
        state, _, _ = step(params, state, np.full((1, params.num_ports), 0.3))
    decision = runtime.decide(_live(params, state))
    assert not decision.fell_back and np.isfinite(decision.setpoint_kw).all()
    layout = declared_layout(params).slices
    np.testing.assert_allclose(decision.observation[layout["hours_to_departure"]],
                               observe(params, state)[0, layout["hours_to_departure"]], rtol=1e-6)


def test_mpc_plans_on_what_the_site_sees():
    params = load_site("caltech", horizon_steps=48, start_hour=6, observability="ocpp")
    episode = generator_for(params).sample(params, np.random.default_rng(6), 1)
    state = reset(params, episode)
    policy = ModelPredictiveControl(params, horizon_steps=8, departure_margin_hours=0.0)
    policy.begin(params, episode)
    for _ in range(12):
        policy.predict(observe(params, state))
        state, _, _ = step(params, state, np.ones((1, params.num_ports)))
    policy._apply_plug_events(state.t)
    obs = observe(params, state)[0]
    layout = declared_layout(params).slices
    ports = np.flatnonzero(state.occupied[0])
    done = state.max_charge_kw[0, ports] == 0
    assert done.any() and (~done).any()
    window = policy.window(0, obs)
    np.testing.assert_array_equal(window.ev_room_kwh[done], 0.0)  # the car takes no power: nothing left
    assert np.all(window.ev_room_kwh[~done] > 0)
    np.testing.assert_allclose(window.ev_battery_kwh, estimator_for(params).battery_kwh)
    hours = obs[layout["hours_to_departure"]][ports]
    length = np.bincount(window.entry_ev, minlength=len(ports))
    np.testing.assert_array_equal(length, np.minimum(np.maximum(np.rint(hours / params.dt_hours), 1), 8))
    assert not np.array_equal(hours, params.dt_hours * (state.announced_departure_step[0, ports] - state.t))
