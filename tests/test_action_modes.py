"""The site's action_mode: signed, unit and priority actions through the core and every shell."""

import copy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import (
    DT_HOURS,
    ETA_C,
    ETA_D,
    TINY_SITE,
    assert_same,
    ev,
    make_episode,
    port_group,
    snapshot,
    term,
)
from omegaconf import OmegaConf
from test_batching import NUM_ENVS, assert_close, busy_site, env_view, rollout
from test_configs import compose_config

import envs
from envs.action_layer import fill_by_priority, fill_in_order
from envs.core import reset, step
from envs.errors import SiteError
from envs.projection import node_flows
from envs.site import load_site
from envs.vector_env import SmartChargingVectorEnv

MODES = ("signed", "unit", "priority")


def site(nodes, ports, **changes):
    spec = copy.deepcopy(TINY_SITE)
    spec.update(nodes=nodes, ports=ports, **changes)
    return load_site(spec)


def one_way(mode, limit_kw=20.0, count=3):
    return site([{"name": "grid", "limit_kw": limit_kw}], [port_group("grid", count, max_discharge_kw=0)],
                action_mode=mode)


def port_kw(params, before, after):
    """Grid-side kW of each port over one step, from the SoC change of its battery."""
    kwh = (after.soc - before.soc) * after.ev_on_port[0]
    return np.where(kwh >= 0, kwh / (ETA_C * DT_HOURS), kwh * ETA_D / DT_HOURS)


def actions_for(params, rng, steps, num_envs, low=-1.1, high=1.1):
    width = 2 * params.num_ports if params.action_mode == "priority" else params.num_ports
    if params.action_mode == "unit":
        low, high = -0.1, 1.1
    return rng.uniform(low, high, (steps, num_envs, width))


def test_action_mode_is_a_validated_site_field():
    assert load_site("caltech").action_mode == "signed"
    assert load_site("caltech", action_mode="unit").action_mode == "unit"
    assert load_site(load_site("caltech"), action_mode="priority").action_mode == "priority"
    with pytest.raises(SiteError, match=r"site 'caltech': action_mode must be one of signed, unit, priority, "
                                        r"got 'greedy'"):
        load_site("caltech", action_mode="greedy")
    with pytest.raises(SiteError, match="action_mode must be one of signed, unit, priority, got 3"):
        load_site("caltech", action_mode=3)
    with pytest.raises(SiteError, match="action_mode must be one of"):
        load_site("caltech").replace(action_mode="Unit")


def test_hydra_site_override_sets_the_mode():
    cfg = compose_config("+site.overrides.action_mode=unit")
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    assert params.action_mode == "unit"


def test_signed_step_by_hand():
    params = one_way("signed")
    episode = make_episode(params, [ev(max_charge_kw=11.0), ev(max_charge_kw=11.0), ev(max_charge_kw=11.0)])
    state = reset(params, episode)
    after, terms, info = step(params, state, np.array([[1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[20 / 3] * 3])
    np.testing.assert_allclose(term(terms, "overload_requested_kwh"), [(33.0 - 20.0) * DT_HOURS])


def test_unit_step_by_hand_on_a_one_way_site():
    params = one_way("unit", limit_kw=100.0)
    episode = make_episode(params, [ev(max_charge_kw=7.0), ev(max_charge_kw=7.0), ev(max_charge_kw=7.0)])
    state = reset(params, episode)
    after, terms, info = step(params, state, np.array([[0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[0.0, 3.5, 7.0]])
    np.testing.assert_allclose(info["site_power_kw"], [10.5])
    _, _, info = step(params, state, np.array([[-0.5, 0.5, 1.5]]))
    assert info["action_clipped"].tolist() == [2]


def test_unit_step_by_hand_on_a_bidirectional_site():
    params = site(TINY_SITE["nodes"], [port_group("grid", 3)], action_mode="unit")
    car = ev(max_charge_kw=7.0, max_discharge_kw=7.0, consent=True)
    state = reset(params, make_episode(params, [car, car, car]))
    after, _, _ = step(params, state, np.array([[0.25, 0.5, 1.0]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[-3.5, 0.0, 7.0]], atol=1e-12)


def test_priority_step_by_hand_shares_ties():
    params = one_way("priority")
    episode = make_episode(params, [ev(max_charge_kw=11.0), ev(max_charge_kw=11.0), ev(max_charge_kw=11.0)],
                           load={"grid": 5.0})
    state = reset(params, episode)
    # port 1 first (priority 0.9), then ports 0 and 2 (0.5) share what is left of 20 - 5 kW
    after, terms, info = step(params, state, np.array([[1.0, 0.5, 1.0, 0.9, 1.0, 0.5]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[2.0, 11.0, 2.0]])
    np.testing.assert_allclose(info["site_power_kw"], [20.0])
    assert term(terms, "overload_requested_kwh").tolist() == [0.0]
    assert term(terms, "grid_violation_kwh").tolist() == [0.0]
    # what a port does not ask for goes to the next one
    after, _, _ = step(params, state, np.array([[1.0, -1.0, 0.2, 0.9, 1.0, 0.0]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[1.8, 2.2, 11.0]])


def test_priority_fill_by_hand_through_a_tree():
    params = site([{"name": "grid", "limit_kw": 30}, {"name": "a", "parent": "grid", "limit_kw": 12},
                   {"name": "b", "parent": "grid", "limit_kw": 30}],
                  [port_group("a", 2, max_discharge_kw=0), port_group("b", 1, max_discharge_kw=0)],
                  action_mode="priority")
    assert params.port_names == ("a_p0", "a_p1", "b_p0")
    request = np.array([[11.0, 11.0, 11.0]])
    exo = np.zeros((1, 3))
    # a_p0 first, b_p0 next, a_p1 last: node a (12 kW) leaves it 1 kW although the grid has 8 more
    grant = fill_by_priority(params, request, np.zeros((1, 3)), np.array([[0.9, -0.5, 0.1]]), exo)
    np.testing.assert_allclose(grant, [[11.0, 1.0, 11.0]])
    # b_p0 first, then a_p0 and a_p1 share node a
    grant = fill_by_priority(params, request, np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]), exo)
    np.testing.assert_allclose(grant, [[6.0, 6.0, 11.0]])


def test_priority_discharge_fills_the_export_room():
    params = site([{"name": "grid", "limit_kw": 100, "export_limit_kw": 10}], [port_group("grid", 2)],
                  action_mode="priority")
    car = ev(max_charge_kw=7.0, max_discharge_kw=7.0, consent=True)
    state = reset(params, make_episode(params, [car, car]))
    after, terms, info = step(params, state, np.array([[-1.0, 0.0, -1.0, 0.5]]))
    np.testing.assert_allclose(port_kw(params, state, after), [[-3.0, -7.0]])
    np.testing.assert_allclose(info["site_power_kw"], [-10.0])
    assert term(terms, "overload_requested_kwh").tolist() == [0.0]
    signed = params.replace(action_mode="signed")
    _, terms, _ = step(signed, reset(signed, make_episode(signed, [car, car])), np.array([[-1.0, -1.0]]))
    np.testing.assert_allclose(term(terms, "overload_requested_kwh"), [4.0 * DT_HOURS])


def test_fill_in_order_keeps_port_order_for_ties_unless_shared():
    params = one_way("priority", limit_kw=10.0)
    request, room = np.array([[6.0, 6.0, 6.0]]), np.array([[10.0]])
    key = np.zeros((1, 3))
    np.testing.assert_allclose(fill_in_order(params, key, request, room), [[6.0, 4.0, 0.0]])
    np.testing.assert_allclose(fill_in_order(params, key, request, room, share_ties=True), [[10 / 3] * 3])


def tight_site(name):
    """busy_site for presets with the parametric generator; jpl (three transformers, fitted
    sessions) with limits cut to a fifth."""
    if name != "jpl":
        return busy_site(name)
    params = load_site(name, horizon_steps=40, start_hour=6)
    params = params.replace(node_import_limit_kw=params.node_import_limit_kw / 5,
                            node_export_limit_kw=params.node_export_limit_kw / 5)
    return params, envs.generator_for(params)


def ancestors(params):
    """(P, N) bool: node n is on port p's path to the grid."""
    ports = np.arange(params.num_ports)[:, None]
    return (ports >= params.node_port_lo) & (ports < params.node_port_hi)


@pytest.mark.parametrize("name", ["caltech", "v2g_workplace", "jpl"])
def test_priority_rollouts_keep_node_limits_and_leave_no_wanted_headroom(name):
    params, generator = tight_site(name)
    params = params.replace(action_mode="priority")
    episode = generator.sample(params, np.random.default_rng(21), NUM_ENVS)
    rng = np.random.default_rng(22)
    state, above, tol = reset(params, episode), ancestors(params), 1e-6
    cut = 0
    for action in actions_for(params, rng, params.horizon_steps, NUM_ENVS):
        fraction, priority = np.clip(action[:, 0::2], -1, 1), np.clip(action[:, 1::2], -1, 1)
        charge = np.maximum(fraction, 0) * state.max_charge_kw
        discharge = np.minimum(fraction, 0) * state.max_discharge_kw
        exo = state.node_exo_kw[:, state.t]
        grant = fill_by_priority(params, charge, discharge, priority, exo)
        assert ((grant >= discharge - tol) & (grant <= charge + tol)).all()
        flows = node_flows(params, grant, exo)
        exo_fits = (exo <= params.node_import_limit_kw) & (exo >= -params.node_export_limit_kw)
        assert (flows[exo_fits.all(axis=1)] <= params.node_import_limit_kw + tol).all()
        assert (flows[exo_fits.all(axis=1)] >= -params.node_export_limit_kw - tol).all()
        full_import = flows >= params.node_import_limit_kw - tol
        short = charge - np.maximum(grant, 0.0) > tol
        blocked = (full_import[:, None, :] & above[None]).any(axis=2)
        assert blocked[short].all(), "a charging port got less than it asked while no node above it was full"
        full_export = node_flows(params, np.minimum(grant, 0.0), exo) <= -params.node_export_limit_kw + tol
        short_discharge = np.minimum(grant, 0.0) - discharge > tol
        blocked = (full_export[:, None, :] & above[None]).any(axis=2)
        assert blocked[short_discharge].all(), "a discharging port got less than it asked, no node full above"
        cut += short.sum() + short_discharge.sum()
        state, terms, info = step(params, state, action)
        assert (term(terms, "overload_requested_kwh") == 0.0).all()
        assert np.isfinite(terms).all()
        assert (term(terms, "grid_violation_kwh")[exo_fits.all(axis=1)] <= tol).all()
    assert cut > 0, "the rollout must make node limits bind"


def assert_same_rollouts(first, second):
    """Two rollouts give the same observations, totals and terms at every step."""
    for (a_state, a_obs, a_terms, _), (b_state, b_obs, b_terms, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a_obs, b_obs)
        np.testing.assert_array_equal(a_state.totals, b_state.totals)
        if a_terms is not None:
            np.testing.assert_array_equal(a_terms, b_terms)


@pytest.mark.parametrize("name", ["caltech", "v2g_workplace"])
def test_unit_is_signed_with_the_mapped_action(name):
    params, generator = busy_site(name)
    unit, signed = params.replace(action_mode="unit"), params.replace(action_mode="signed")
    episode = generator.sample(params, np.random.default_rng(31), NUM_ENVS)
    actions = np.random.default_rng(32).uniform(0, 1, (params.horizon_steps, NUM_ENVS, params.num_ports))
    mapped = 2 * actions - 1 if params.bidirectional else actions
    assert_same_rollouts(rollout(unit, episode, actions), rollout(signed, episode, mapped))


@pytest.mark.parametrize("name", ["caltech", "v2g_workplace"])
def test_priority_is_signed_where_no_limit_binds(name):
    params = load_site(name, horizon_steps=24, start_hour=6)
    params = params.replace(node_import_limit_kw=params.node_import_limit_kw * 100,
                            node_export_limit_kw=params.node_export_limit_kw * 100)
    priority, signed = params.replace(action_mode="priority"), params.replace(action_mode="signed")
    episode = envs.generator_for(params).sample(params, np.random.default_rng(41), NUM_ENVS)
    rng = np.random.default_rng(42)
    fraction = rng.uniform(-1, 1, (params.horizon_steps, NUM_ENVS, params.num_ports))
    actions = np.stack([fraction, rng.uniform(-1, 1, fraction.shape)], axis=3)
    actions = actions.reshape(*fraction.shape[:2], -1)
    assert_same_rollouts(rollout(priority, episode, actions), rollout(signed, episode, fraction))


@pytest.mark.parametrize("mode", ["unit", "priority"])
def test_batch_equals_independent_runs(mode):
    params, generator = busy_site("v2g_workplace")
    params = params.replace(action_mode=mode)
    episode = generator.sample(params, np.random.default_rng(51), NUM_ENVS)
    actions = actions_for(params, np.random.default_rng(52), params.horizon_steps, NUM_ENVS)
    batch = rollout(params, episode, actions)
    for i in range(NUM_ENVS):
        single = rollout(params, episode.take(np.array([i])), actions[:, i:i + 1])
        for t, ((b_state, b_obs, b_terms, _), (s_state, s_obs, s_terms, _)) in enumerate(
                zip(batch, single, strict=True)):
            assert_close(s_obs, b_obs[i:i + 1], f"obs, env {i}, step {t}")
            if t:
                assert_close(s_terms, b_terms[i:i + 1], f"terms, env {i}, step {t}")
            for key, value in env_view(b_state, i).items():
                assert_close(env_view(s_state, 0)[key], value, f"state.{key}, env {i}, step {t}")


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_rollout(mode):
    params, generator = busy_site("v2g_workplace")
    params = params.replace(action_mode=mode)
    ends = []
    for _ in range(2):
        episode = generator.sample(params, np.random.default_rng(61), NUM_ENVS)
        ends.append(snapshot(rollout(params, episode, actions_for(
            params, np.random.default_rng(62), params.horizon_steps, NUM_ENVS))[-1][0]))
    assert_same(ends[1], ends[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["caltech", "v2g_workplace"])
def test_shell_action_spaces_follow_the_mode(mode, name):
    env = gym.make(envs.ENV_ID, site=name, horizon_steps=4, action_mode=mode)
    vec = SmartChargingVectorEnv(3, name, horizon_steps=4, action_mode=mode)
    p = env.unwrapped.params.num_ports
    shape, low = {"signed": ((p,), -1.0), "unit": ((p,), 0.0), "priority": ((2 * p,), -1.0)}[mode]
    for space in (env.action_space, vec.single_action_space):
        assert space.shape == shape and space.dtype == np.float32
        assert (space.low == low).all() and (space.high == 1.0).all()
    assert vec.action_space.shape == (3, *shape)
    env.reset(seed=0)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=rf"expected \({shape[0]},\)"):
        env.step(np.zeros(shape[0] + 1))
    with pytest.raises(ValueError, match=rf"expected \(3, {shape[0]}\)"):
        vec.step(np.zeros((3, shape[0] + 1)))
    for _ in range(4):
        env.step(env.action_space.sample())
        vec.step(vec.action_space.sample())


def test_priority_names_the_port_and_number_of_a_nan():
    params = one_way("priority")
    state = reset(params, make_episode(params, [ev()]))
    action = np.zeros((1, 6))
    action[0, 3] = np.nan
    with pytest.raises(ValueError, match=r"action for env 0, port 1 \(grid_p1\) priority is nan"):
        step(params, state, action)
    with pytest.raises(ValueError, match=r"expected \(1, 6\) \(envs, 2 per port: power, priority of site"):
        step(params, state, np.zeros((1, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_env_checkers(mode):
    from stable_baselines3.common.env_checker import check_env

    from envs.sb3 import SmartChargingVecEnv

    gym_check_env(gym.make(envs.ENV_ID, site="v2g_workplace", horizon_steps=6, action_mode=mode).unwrapped,
                  skip_render_check=True)
    check_env(gym.make(envs.ENV_ID, site="v2g_workplace", horizon_steps=6, action_mode=mode).unwrapped)
    vec = SmartChargingVecEnv(2, "caltech", horizon_steps=3, action_mode=mode)
    vec.reset()
    for _ in range(3):
        obs, rewards, dones, infos = vec.step(np.stack([vec.action_space.sample() for _ in range(2)]))
    assert dones.all() and "terminal_observation" in infos[0]
