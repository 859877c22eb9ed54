"""The deadline guard's outputs are bit-identical to its reference: ``AsLateAsPossible.predict`` as the
floor, then ``envs.action_layer.fill_in_order`` fitting the charging into the headroom, over random
rollouts of caltech, jpl and the V2G workplace, batched and single, with random, saturated, zero and
mixed actions."""

import numpy as np
import pytest

from agents.baselines import AsLateAsPossible
from agents.guards import DeadlineGuard, _LaxityFill
from envs.core import reset, step
from envs.generators import generator_for
from envs.observation import observe
from envs.site import load_site


def reference(params, margin_hours, fit_headroom, obs, actions):
    """The guard as first written: ALAP's own prediction, then its fill of the charging requests."""
    rules = AsLateAsPossible(params, margin_hours=margin_hours)
    floor, _ = rules.predict(obs)
    actions = np.asarray(actions, dtype=np.float32)
    actions = np.where(floor > 0.0, np.maximum(actions, floor), actions)
    if not fit_headroom:
        return actions
    batch = np.atleast_2d(obs).astype(np.float64)
    max_charge = rules.field(batch, "max_charge_kw")
    request = np.maximum(actions.reshape(max_charge.shape), 0.0) * max_charge
    grant = rules.fill_in_order(rules.laxity(batch, max_charge), request, rules.headroom_kw(batch))
    charge = rules.fractions(grant, max_charge).astype(np.float32).reshape(actions.shape)
    return np.where(actions > 0.0, charge, actions)


def random_actions(rng, shape, kind):
    if kind == "zero":
        return np.zeros(shape, dtype=np.float32)
    if kind == "full":
        return np.ones(shape, dtype=np.float32)
    actions = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    if kind == "mixed":
        actions[rng.random(shape) < 0.3] = 0.0
        actions[rng.random(shape) < 0.2] = 1.0
    return actions


@pytest.mark.parametrize("site", ["caltech", "jpl", "v2g_workplace"])
def test_the_guard_equals_its_reference_over_random_rollouts(site, monkeypatch):
    filled = []
    fill = _LaxityFill._fill
    monkeypatch.setattr(_LaxityFill, "_fill", lambda self, request: filled.append(1) or fill(self, request))
    params = load_site(site)
    rng = np.random.default_rng(11)
    envs = 4
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(3), envs))
    guards = [(hours, fit, DeadlineGuard(params, hours, fit))
              for hours in (0.0, 1.0, 2.0) for fit in (False, True)]
    raised = fitted = 0
    while state.t < params.horizon_steps:
        obs = observe(params, state)
        kind = ("uniform", "zero", "full", "mixed")[state.t % 4]
        actions = random_actions(rng, obs.shape[:1] + (params.num_ports,), kind)
        for hours, fit, guard in guards:
            out = guard.apply(obs, actions)
            expected = reference(params, hours, fit, obs, actions)
            assert out.dtype == expected.dtype and out.shape == expected.shape
            np.testing.assert_array_equal(out, expected)
            assert np.array_equal(np.signbit(out), np.signbit(expected))
            raised += int((out > actions).sum())
            fitted += int((out < actions).sum())
            single = guard.apply(obs[0], actions[0])
            np.testing.assert_array_equal(single, reference(params, hours, fit, obs[0], actions[0]))
        state, _, _ = step(params, state, rng.uniform(-1.0, 1.0, (envs, params.num_ports)))
    assert raised > 0 and fitted > 0  # both the floor and the fit changed actions
    assert 0 < len(filled) < 12 * params.horizon_steps  # the fill ran, and requests that fit skipped it


def test_a_wrong_observation_shape_is_refused_as_before():
    guard = DeadlineGuard(load_site("caltech"), 1.0, True)
    with pytest.raises(ValueError, match="observation has shape"):
        guard.apply(np.zeros(5, dtype=np.float32), np.zeros(54, dtype=np.float32))


def test_a_guarded_policy_is_its_policy_behind_the_guard():
    from agents.baselines import Uncontrolled
    from agents.evaluate import episodes_for, run_policies
    from agents.guards import GuardedPolicy
    from envs.errors import ConfigError

    params = load_site("caltech", horizon_steps=48, start_hour=6)
    episode = generator_for(params).sample(params, np.random.default_rng(3), 2)
    state = reset(params, episode)
    inner = AsLateAsPossible(params)
    guarded = GuardedPolicy(inner, margin_hours=1.0, fit_headroom=False)
    with pytest.raises(ConfigError, match="begin"):
        guarded.predict(observe(params, state))
    guarded.begin(params, episode)
    guard = DeadlineGuard(params, 1.0)
    for _ in range(30):
        obs = observe(params, state)
        actions = np.random.default_rng(state.t).uniform(-1, 1, (2, params.num_ports)).astype(np.float32)
        noisy = GuardedPolicy(_Fixed(actions), 1.0, fit_headroom=False)
        noisy.begin(params, episode)
        np.testing.assert_array_equal(noisy.predict(obs)[0], guard.apply(obs, actions))
        state = step(params, state, guarded.predict(obs)[0])[0]
    result = run_policies({"uncontrolled": Uncontrolled(params),
                           "behind": GuardedPolicy(Uncontrolled(params), 1.0, fit_headroom=False)},
                          params, episodes_for(params, None, 2, 5))
    assert not result.failures
    kpis = result.per_episode
    np.testing.assert_array_equal(kpis.loc["behind", "reward_eur"], kpis.loc["uncontrolled", "reward_eur"])


class _Fixed:
    def __init__(self, actions):
        self.actions = actions

    def predict(self, observation, deterministic=True):
        return self.actions, None
