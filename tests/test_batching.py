"""A batch is N independent envs; the step is a pure function of (params, state, action)."""

import dataclasses

import numpy as np
import pytest
from helpers import assert_same, snapshot, term

from envs.core import reset, step
from envs.generators import generator_for
from envs.observation import observe
from envs.site import load_site

NUM_ENVS = 4
BATCH_AXIS_1 = {"ev_on_port"}  # (fields, B, ...)
FLAT_EVENTS = {"plug_table"}  # (fields, E) over the schedule's plug events of the whole batch
SCHEDULE_EVENTS = ("plug_", "unplug_", "gave_up_", "partial_")  # flat event lists over the whole batch


def busy_site(name):
    """A preset with a short horizon, tight node limits, a crowded queue, port outages and the
    demand forecast in its observation."""
    params = load_site(name, horizon_steps=40, start_hour=6, queue={"capacity": 2, "patience_minutes": 30},
                       demand_forecast=True)
    params = params.replace(node_import_limit_kw=params.node_import_limit_kw / 5,
                            node_export_limit_kw=params.node_export_limit_kw / 5)
    generator = dataclasses.replace(generator_for(params), failure_rate_per_day=6.0, repair_hours=1.0,
                                    sessions_per_day=generator_for(params).sessions_per_day * 2)
    return params, generator


def random_actions(params, seed, num_envs=NUM_ENVS):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.1, 1.1, (params.horizon_steps, num_envs, params.num_ports))


def rollout(params, episode, actions):
    state = reset(params, episode)
    trace = [(state, observe(params, state), None, None)]
    for action in actions:
        state, terms, info = step(params, state, action)
        trace.append((state, observe(params, state), terms, info))
    return trace


def env_view(state, i):
    """The per-env arrays of env ``i`` of a batch state (batch axis kept, of length 1)."""
    view = {}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if isinstance(value, np.ndarray) and field.name not in FLAT_EVENTS:
            view[field.name] = value[:, i:i + 1] if field.name in BATCH_AXIS_1 else value[i:i + 1]
    for field in dataclasses.fields(state.schedule):
        if not field.name.startswith(SCHEDULE_EVENTS):
            view[f"schedule.{field.name}"] = getattr(state.schedule, field.name)[i:i + 1]
    return view


def assert_close(actual, expected, name):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("site", ["caltech", "v2g_workplace"])
def test_batch_equals_independent_runs(site):
    params, generator = busy_site(site)
    episode = generator.sample(params, np.random.default_rng(11), NUM_ENVS)
    assert episode.port_down is not None and episode.port_down.any()
    actions = random_actions(params, 12)
    batch = rollout(params, episode, actions)
    turned_away = sum(info["turned_away"].sum() for _, _, _, info in batch[1:])
    overload = sum(term(terms, "overload_requested_kwh").sum() for _, _, terms, _ in batch[1:])
    assert turned_away > 0 and overload > 0, "the batch must exercise the queue and the limits"
    for i in range(NUM_ENVS):
        single = rollout(params, episode.take(np.array([i])), actions[:, i:i + 1])
        for t, ((b_state, b_obs, b_terms, b_info), (s_state, s_obs, s_terms, s_info)) in enumerate(
                zip(batch, single, strict=True)):
            where = f"env {i}, step {t}"
            assert s_state.t == b_state.t == t
            assert_close(s_obs, b_obs[i:i + 1], f"obs, {where}")
            if t:
                assert_close(s_terms, b_terms[i:i + 1], f"terms, {where}")
                for key in b_info:
                    assert_close(s_info[key], b_info[key][i:i + 1], f"info {key}, {where}")
            single_view, batch_view = env_view(s_state, 0), env_view(b_state, i)
            assert single_view.keys() == batch_view.keys()
            for key, value in batch_view.items():
                assert_close(single_view[key], value, f"state.{key}, {where}")


def test_take_keeps_the_order_asked():
    params, generator = busy_site("v2g_workplace")
    episode = generator.sample(params, np.random.default_rng(3), NUM_ENVS)
    order = np.array([2, 0, 3])
    taken = episode.take(order)
    assert taken.num_envs == 3 and taken.max_evs == episode.max_evs
    for field in dataclasses.fields(episode):
        if getattr(episode, field.name) is None:
            assert getattr(taken, field.name) is None
            continue
        np.testing.assert_array_equal(getattr(taken, field.name), getattr(episode, field.name)[order])


def test_same_seed_same_episode_and_rollout():
    params, generator = busy_site("v2g_workplace")
    first = generator.sample(params, np.random.default_rng(5), NUM_ENVS)
    second = generator.sample(params, np.random.default_rng(5), NUM_ENVS)
    assert_same(snapshot(second), snapshot(first))
    actions = random_actions(params, 6)
    end_first, end_second = rollout(params, first, actions)[-1], rollout(params, second, actions)[-1]
    np.testing.assert_array_equal(end_second[0].totals, end_first[0].totals)
    np.testing.assert_array_equal(end_second[1], end_first[1])


def test_different_seeds_differ():
    params, generator = busy_site("v2g_workplace")
    first = generator.sample(params, np.random.default_rng(5), NUM_ENVS)
    second = generator.sample(params, np.random.default_rng(6), NUM_ENVS)
    assert not np.array_equal(first.price_buy_eur_kwh, second.price_buy_eur_kwh)
    assert not np.array_equal(first.node_load_kw, second.node_load_kw)
    assert not (first.ev_arrival_step.shape == second.ev_arrival_step.shape
                and np.array_equal(first.ev_arrival_step, second.ev_arrival_step))
    actions = random_actions(params, 6)
    assert not np.array_equal(rollout(params, first, actions)[-1][0].totals,
                              rollout(params, second, actions)[-1][0].totals)


def test_envs_of_one_batch_differ():
    params, generator = busy_site("caltech")
    episode = generator.sample(params, np.random.default_rng(8), NUM_ENVS)
    assert len({tuple(row) for row in episode.price_buy_eur_kwh}) == NUM_ENVS
    assert len({int(n) for n in episode.ev_valid.sum(axis=1)}) > 1


@pytest.mark.parametrize("make_action", [
    lambda rng, shape: rng.uniform(-1, 1, shape),
    lambda rng, shape: rng.uniform(-3, 3, shape),
    lambda rng, shape: rng.uniform(-1, 1, shape).astype(np.float32),
    lambda rng, shape: np.ones(shape, dtype=np.int64),
], ids=["in_range", "out_of_range", "float32", "int"])
def test_step_mutates_neither_its_state_nor_the_action(make_action):
    params, generator = busy_site("v2g_workplace")
    episode = generator.sample(params, np.random.default_rng(9), NUM_ENVS)
    rng = np.random.default_rng(10)
    state = reset(params, episode)
    for _ in range(params.horizon_steps):
        action = make_action(rng, (NUM_ENVS, params.num_ports))
        action_before, state_before = action.copy(), snapshot(state)
        new_state, terms, _ = step(params, state, action)
        assert_same(snapshot(state), state_before)
        np.testing.assert_array_equal(action, action_before)
        assert action.dtype == action_before.dtype
        again, terms_again, _ = step(params, state, action)
        np.testing.assert_array_equal(terms_again, terms)
        assert_same(snapshot(again), snapshot(new_state))
        state = new_state


def test_step_result_shares_no_written_array_with_its_input():
    params, generator = busy_site("v2g_workplace")
    episode = generator.sample(params, np.random.default_rng(9), NUM_ENVS)
    state = reset(params, episode)
    rng = np.random.default_rng(4)
    for _ in range(params.horizon_steps):
        kept = snapshot(state)
        state_after, _, _ = step(params, state, rng.uniform(-1, 1, (NUM_ENVS, params.num_ports)))
        # stepping on from the new state must leave the old one as it was
        if state_after.t < params.horizon_steps:
            step(params, state_after, rng.uniform(-1, 1, (NUM_ENVS, params.num_ports)))
        assert_same(snapshot(state), kept)
        state = state_after


def test_reset_is_deterministic_and_leaves_the_episode_alone():
    params, generator = busy_site("caltech")
    episode = generator.sample(params, np.random.default_rng(2), NUM_ENVS)
    episode_before = snapshot(episode)
    first, second = reset(params, episode), reset(params, episode)
    assert_same(snapshot(second), snapshot(first))
    np.testing.assert_array_equal(observe(params, second), observe(params, first))
    assert_same(snapshot(episode), episode_before)
    assert first.occupied.any()
