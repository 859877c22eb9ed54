"""The training reward: the idle site's reward left out, a fixed scale, evaluation untouched."""

import numpy as np
import pytest

from agents.imitation import collect_demonstrations
from agents.training_reward import TrainingRewardVecEnv
from envs.core import GRID_TERMS, idle_site_terms, reset, step
from envs.generators import generator_for
from envs.reward import TERM_INDEX, TERMS
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site

SITE = dict(site="v2g_workplace", horizon_steps=24)  # building load, PV and a demand charge


def rollout(actions_for, controllable_only=True, scale=1.0, seed=3):
    raw = SmartChargingVecEnv(4, **SITE)
    raw.seed(seed)
    env = TrainingRewardVecEnv(raw, controllable_only, scale)
    env.reset()
    shaped, terms = [], []
    for t in range(raw.params.horizon_steps):
        _, reward, _, infos = env.step(actions_for(t, raw.params.num_ports))
        shaped.append(reward)
        terms.append([[info[name] for name in TERMS] for info in infos])
    return np.array(shaped, dtype=np.float64), np.array(terms), raw.params.reward.coefficients()


def test_idle_actions_leave_only_the_terms_ports_make():
    shaped, terms, coefficients = rollout(lambda t, p: np.zeros((4, p), dtype=np.float32))
    port_terms = [TERM_INDEX[name] for name in TERMS if name not in GRID_TERMS]
    expected = terms[:, :, port_terms] @ coefficients[port_terms]
    np.testing.assert_allclose(shaped, expected, atol=1e-4)
    assert np.abs(terms[:, :, TERM_INDEX["energy_cost_eur"]]).sum() > 1.0  # the building did cost


def test_what_is_left_out_does_not_depend_on_the_actions():
    rng = np.random.default_rng(0)
    random_actions = rng.uniform(-1, 1, (24, 4, 20)).astype(np.float32)
    left_out = []
    for actions_for in (lambda t, p: np.ones((4, p), dtype=np.float32), lambda t, p: random_actions[t]):
        shaped, terms, coefficients = rollout(actions_for)
        left_out.append(terms @ coefficients - shaped)
    np.testing.assert_allclose(left_out[0], left_out[1], atol=1e-3)
    assert np.abs(left_out[0]).max() > 0.1


def test_the_scale_multiplies():
    actions = lambda t, p: np.full((4, p), 0.5, dtype=np.float32)  # noqa: E731
    plain, terms, coefficients = rollout(actions, controllable_only=False, scale=1.0)
    scaled, _, _ = rollout(actions, controllable_only=False, scale=0.1)
    np.testing.assert_allclose(plain, terms @ coefficients, atol=1e-4)
    np.testing.assert_allclose(scaled, 0.1 * plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reward_scale"):
        TrainingRewardVecEnv(SmartChargingVecEnv(1, **SITE), True, 0.0)


def test_the_idle_peak_restarts_with_each_episode():
    raw = SmartChargingVecEnv(2, **SITE)
    env = TrainingRewardVecEnv(raw)
    env.reset()
    for _ in range(raw.params.horizon_steps):
        env.step(np.zeros((2, raw.params.num_ports), dtype=np.float32))
    assert (env.idle_peak_kw == 0).all()


def test_idle_site_terms_match_a_step_with_every_port_idle():
    params = load_site(**SITE)
    episodes = generator_for(params).sample(params, np.random.default_rng(5), 3)
    state, idle_peak = reset(params, episodes), np.zeros(3)
    for _ in range(params.horizon_steps):
        idle, idle_peak = idle_site_terms(params, state, idle_peak)
        state, terms, _ = step(params, state, np.zeros((3, params.num_ports)))
        grid = [TERM_INDEX[name] for name in GRID_TERMS]
        np.testing.assert_allclose(idle[:, grid], terms[:, grid], atol=1e-9)
    np.testing.assert_allclose(idle_peak, state.peak_import_kw)


def test_demonstration_returns_follow_the_training_reward():
    params = load_site(**SITE)
    episodes = generator_for(params).sample(params, np.random.default_rng(1), 2)

    class Full:
        def predict(self, obs, deterministic=True):
            return np.ones((len(obs), params.num_ports)), None

    coefficients = params.reward.coefficients()
    full = collect_demonstrations(Full(), params, episodes, coefficients, gamma=1.0)
    shaped = collect_demonstrations(Full(), params, episodes, coefficients, gamma=1.0,
                                    controllable_reward=True, reward_scale=0.5)
    state, idle_peak, idle_total = reset(params, episodes), np.zeros(2), np.zeros(2)
    while state.t < params.horizon_steps:
        idle, idle_peak = idle_site_terms(params, state, idle_peak)
        idle_total += idle @ coefficients
        state, _, _ = step(params, state, np.ones((2, params.num_ports)))
    np.testing.assert_allclose(full.returns[:2], full.teacher_reward, rtol=1e-9)
    np.testing.assert_allclose(shaped.returns[:2], 0.5 * (full.teacher_reward - idle_total), rtol=1e-9)


def test_a_run_with_imitation_trains_on_the_controllable_reward(tmp_path):
    from agents.train import build_env, site_params, train
    from tests.test_train import TINY, train_config

    overrides = [*TINY, "site=v2g_workplace", "env.controllable_reward=true", "env.reward_scale=0.1",
                 "imitation=mpc", "imitation.episodes=2"]
    cfg = train_config(*overrides)
    chain, env = [], build_env(cfg, site_params(cfg))
    while env is not None:
        chain.append(type(env).__name__)
        env = getattr(env, "venv", None)
    assert "TrainingRewardVecEnv" in chain
    metrics = train(cfg, tmp_path / "run")
    assert metrics["timesteps"] >= cfg["total_timesteps"]
    assert np.isfinite(metrics["validation"]["kpis"]["reward_eur"])
