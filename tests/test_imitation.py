"""Demonstrations from a teacher, behaviour cloning, and the deadline guard."""

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from agents.baselines import AsLateAsPossible, EarliestDeadlineFirst
from agents.guarded_env import GuardedVecEnv
from agents.guards import DeadlineGuard
from agents.imitation import clone, collect_demonstrations
from envs.core import reset
from envs.generators import generator_for
from envs.observation import layout_size, observation_layout, observe
from envs.reward import TERM_INDEX
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site

PARAMS = load_site("caltech", horizon_steps=24, start_hour=7)


def episodes(count, seed=0):
    return generator_for(PARAMS).sample(PARAMS, np.random.default_rng(seed), count)


def test_demonstrations_record_every_step_and_discounted_returns():
    coefficients = PARAMS.reward.coefficients()
    teacher = EarliestDeadlineFirst(PARAMS)
    demos = collect_demonstrations(teacher, PARAMS, episodes(3), coefficients, gamma=1.0)
    assert demos.observations.shape == (24 * 3, layout_size(PARAMS))
    assert demos.actions.shape == (24 * 3, PARAMS.num_ports)
    first_step = demos.returns.reshape(24, 3)[0]
    np.testing.assert_allclose(first_step, demos.teacher_reward)
    state = reset(PARAMS, episodes(3))
    expected, _ = EarliestDeadlineFirst(PARAMS).predict(observe(PARAMS, state))
    np.testing.assert_allclose(demos.actions[:3], expected)


def test_cloning_fits_the_teacher_better_than_the_fresh_policy():
    torch.manual_seed(0)
    teacher = EarliestDeadlineFirst(PARAMS)
    demos = collect_demonstrations(teacher, PARAMS, episodes(4), PARAMS.reward.coefficients())
    env = SmartChargingVecEnv(2, site=PARAMS, step_info=False)
    policy = PPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [64]}).policy
    obs = demos.observations / 10.0

    def error():
        with torch.no_grad():
            mean = policy.get_distribution(torch.as_tensor(obs)).distribution.mean.clamp(-1, 1)
        return float(((mean.numpy() - demos.actions) ** 2).mean())

    before = error()
    losses = clone(policy, obs, demos.actions, demos.returns / 100.0, epochs=15, batch_size=32, seed=0)
    assert losses[-1] < losses[0] and error() < 0.5 * before


def test_site_total_weight_adds_the_summed_error_to_the_loss():
    from agents.imitation import _bounded_error, _site_total_error

    teacher = EarliestDeadlineFirst(PARAMS)
    demos = collect_demonstrations(teacher, PARAMS, episodes(2), PARAMS.reward.coefficients())
    env = SmartChargingVecEnv(2, site=PARAMS, step_info=False)
    obs = demos.observations / 10.0

    def fresh():
        return PPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [16]}).policy

    with torch.no_grad():
        mean = fresh().get_distribution(torch.as_tensor(obs)).distribution.mean
    summed = float(_site_total_error(_bounded_error(mean, torch.as_tensor(demos.actions))))
    plain = clone(fresh(), obs, demos.actions, epochs=1, batch_size=len(obs))
    weighted = clone(fresh(), obs, demos.actions, epochs=1, batch_size=len(obs), site_total_weight=2.0)
    assert summed > 0 and weighted[0] - plain[0] == pytest.approx(2.0 * summed, rel=1e-5)


def test_clipped_error_ignores_a_mean_beyond_a_bound_the_target_sits_at():
    from agents.imitation import _bounded_error

    mean = torch.tensor([[1.5, -2.0, 0.5]])
    assert _bounded_error(mean, torch.tensor([[1.0, -1.0, 0.5]])).tolist() == [[0.0, 0.0, 0.0]]
    assert _bounded_error(mean, torch.tensor([[0.5, -1.0, 0.5]])).tolist() == [[1.0, 0.0, 0.0]]


def test_site_total_error_counts_errors_that_agree_in_sign_more():
    from agents.imitation import _site_total_error

    cancelling = torch.tensor([[0.1, 0.1, -0.2], [0.3, -0.3, 0.0]])
    agreeing = torch.tensor([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])
    assert float(_site_total_error(cancelling)) == pytest.approx(0.0, abs=1e-7)
    assert float(_site_total_error(agreeing)) == pytest.approx((0.3 ** 2 / 3) / 2)


def test_guard_raises_only_ports_whose_deadline_needs_power_now():
    state = reset(PARAMS, episodes(8, seed=2))
    guard = DeadlineGuard(PARAMS)
    for _ in range(20):
        from envs.core import step

        state, _, _ = step(PARAMS, state, np.zeros((8, PARAMS.num_ports)))
    obs = observe(PARAMS, state)
    floor, _ = AsLateAsPossible(PARAMS).predict(obs)
    assert (floor > 0).any(), "the scenario should have EVs that can no longer wait"
    actions = np.full(floor.shape, -0.5, dtype=np.float32)
    guarded = guard.apply(obs, actions)
    np.testing.assert_array_equal(guarded[floor > 0], floor[floor > 0])
    np.testing.assert_array_equal(guarded[floor <= 0], -0.5)
    assert np.all(guard.apply(obs, np.ones_like(actions)) == 1.0)


def test_a_guard_margin_raises_more_ports_earlier():
    state = reset(PARAMS, episodes(8, seed=2))
    from envs.core import step

    for _ in range(12):
        state, _, _ = step(PARAMS, state, np.zeros((8, PARAMS.num_ports)))
    obs = observe(PARAMS, state)
    zeros = np.zeros((8, PARAMS.num_ports), dtype=np.float32)
    late, early = DeadlineGuard(PARAMS).apply(obs, zeros), DeadlineGuard(PARAMS, 2.0).apply(obs, zeros)
    assert np.count_nonzero(early) > np.count_nonzero(late)
    assert early.sum() > late.sum()


def test_guarded_env_steps_the_guarded_action():
    plain = SmartChargingVecEnv(4, site=PARAMS, step_info=False)
    guarded = GuardedVecEnv(SmartChargingVecEnv(4, site=PARAMS, step_info=False), DeadlineGuard(PARAMS))
    for env in (plain, guarded):
        env.seed(0)
    obs = plain.reset()
    guarded.reset()
    zeros = np.zeros((4, PARAMS.num_ports), dtype=np.float32)
    for _ in range(16):
        expected = DeadlineGuard(PARAMS).apply(obs, zeros)
        obs, reward_plain, _, _ = plain.step(expected)
        _, reward_guarded, _, _ = guarded.step(zeros)
        np.testing.assert_allclose(reward_guarded, reward_plain)


def test_tie_break_raises_buy_prices_along_the_episode_only():
    from agents.imitation import tie_broken

    batch = episodes(2)
    assert tie_broken(batch, 0.0) is batch
    rising = tie_broken(batch, 1e-4)
    np.testing.assert_allclose(rising.price_buy_eur_kwh - batch.price_buy_eur_kwh,
                               np.broadcast_to(1e-4 * np.arange(batch.price_buy_eur_kwh.shape[1]), (2, 33)))
    np.testing.assert_array_equal(rising.price_sell_eur_kwh, batch.price_sell_eur_kwh)
    np.testing.assert_array_equal(rising.ev_arrival_step, batch.ev_arrival_step)


def test_guard_fitting_headroom_leaves_nothing_for_the_env_to_cut():
    from envs.core import step

    batch = episodes(6, seed=4)
    results = {}
    for fit in (False, True):
        state, guard, cut = reset(PARAMS, batch), DeadlineGuard(PARAMS, 1.0, fit), 0.0
        while state.t < PARAMS.horizon_steps:
            actions = guard.apply(observe(PARAMS, state), np.ones((6, PARAMS.num_ports), dtype=np.float32))
            state, terms, _ = step(PARAMS, state, actions)
            cut += terms[:, TERM_INDEX["overload_requested_kwh"]].sum()
        results[fit] = (cut, state.totals[:, TERM_INDEX["unmet_kwh"]].sum())
    assert results[False][0] > 1.0, "full power on a busy site asks beyond the transformer"
    assert results[True][0] == pytest.approx(0.0, abs=1e-6)
    assert results[True][1] <= results[False][1] + 1e-6


def test_guard_refuses_action_modes_whose_actions_mean_something_else():
    from envs.errors import ConfigError

    assert DeadlineGuard(load_site("caltech", action_mode="unit")).params.action_mode == "unit"
    with pytest.raises(ConfigError, match="priority"):
        DeadlineGuard(load_site("caltech", action_mode="priority"))
    with pytest.raises(ConfigError, match="unit"):
        DeadlineGuard(load_site("v2g_workplace", action_mode="unit"))


def test_with_an_actor_the_episodes_follow_it_and_the_teacher_labels_its_states():
    coefficients = PARAMS.reward.coefficients()

    class Idle:
        def predict(self, obs, deterministic=True):
            return np.zeros((len(obs), PARAMS.num_ports)), None

    edf = EarliestDeadlineFirst(PARAMS)
    led = collect_demonstrations(edf, PARAMS, episodes(2), coefficients, gamma=1.0, actor=Idle())
    alone = collect_demonstrations(edf, PARAMS, episodes(2), coefficients, gamma=1.0)
    remaining = observation_layout(PARAMS)["remaining_kwh"]
    assert led.observations[:, remaining].sum() > alone.observations[:, remaining].sum()  # nobody charged
    assert led.teacher_reward.sum() < alone.teacher_reward.sum()  # the idle actor's rewards
    relabelled, _ = EarliestDeadlineFirst(PARAMS).predict(led.observations[-2:])
    np.testing.assert_allclose(led.actions[-2:], relabelled)  # EDF's labels of the idle actor's states
    assert (led.actions > 0).any()


def test_dagger_rounds_add_the_clone_s_states_and_refuse_a_plan_playing_teacher(tmp_path):
    from agents.train import train
    from envs.errors import ConfigError
    from tests.test_train import TINY, train_config

    dagger = ["imitation=mpc", "imitation.episodes=2", "imitation.epochs=2", "imitation.dagger_rounds=1",
              "imitation.dagger_episodes=2", "imitation.teacher.horizon_steps=4", "total_timesteps=0",
              "env.deadline_guard_hours=1.0"]
    metrics = train(train_config(*TINY, *dagger), tmp_path / "run")
    scalars = (tmp_path / "run" / "tensorboard").rglob("progress.csv")
    header, row = next(scalars).read_text().splitlines()[:2]
    samples = dict(zip(header.split(","), row.split(","), strict=True))["imitation/samples"]
    assert float(samples) == 4 * 24  # two demonstration and two DAgger episodes of 24 steps
    assert metrics["timesteps"] == 0
    with pytest.raises(ConfigError, match="dagger_rounds"):
        train(train_config(*TINY, "imitation=optimum", "imitation.episodes=2", "imitation.dagger_rounds=1",
                           "total_timesteps=0"), tmp_path / "refused")
    for key, value in (("dagger_rounds", -1), ("dagger_episodes", 0), ("episodes", 2.5)):
        with pytest.raises(ConfigError, match=f"imitation.{key}"):
            train(train_config(*TINY, *dagger, f"imitation.{key}={value}"), tmp_path / f"bad_{key}")


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("site_total_weight", "-1", "at least 0"), ("value_weight", "heavy", "a number"),
    ("tie_break_eur_kwh_per_step", "-0.001", "at least 0"), ("learning_rate", "0", "above 0"),
    ("final_learning_rate", "-1e-4", "at least 0"), ("log_std", "nan", "a number"),
    ("site_total_weight", "true", "a number")])
def test_imitation_numbers_are_refused_by_name_before_any_demonstration(tmp_path, key, value, problem):
    from agents.train import train
    from envs.errors import ConfigError
    from tests.test_train import TINY, train_config

    cfg = train_config(*TINY, "imitation=mpc", "imitation.episodes=2", "imitation.epochs=1",
                       "total_timesteps=0", f"imitation.{key}={value}")
    with pytest.raises(ConfigError, match=f"imitation.{key} must be {problem}"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "policy").exists()
