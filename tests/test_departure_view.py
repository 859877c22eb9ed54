"""The departure view: hand-computed quantiles of the remaining stay, what the view changes in an
observation, refusals by name, and the same view in training, the saved policy, cloning and export."""

import json

import numpy as np
import pytest
from test_export import SEED_SITE, exported, trained_run

from agents import load_policy
from agents.departure_view import DepartureView
from agents.export import random_observations
from envs.departures import RemainingStay, remaining_stay_for
from envs.errors import ConfigError
from envs.observation import observation_layout
from envs.site import load_site


def test_remaining_stay_by_hand():
    # session A stays 2 steps and announced 2; session B stays 3 and announced 5. Step by step
    # (announced left -> real left): A 2->2, 1->1; B 5->3, 4->2, 3->1. Each announcement is seen
    # once, below MIN_SESSIONS everywhere, so every one is kept; ends extend flat.
    stay = RemainingStay.from_sessions(0.25, [2, 3], [2, 5], 0.5, span=8)
    expected = {-8: 1, -1: 1, 0: 1, 1: 1, 2: 2, 3: 1, 4: 2, 5: 3, 6: 3, 8: 3}
    for announced, left in expected.items():
        assert stay.steps[announced + 8] == left
    np.testing.assert_allclose(stay.hours([1.0, 0.75, -0.5, 9.0]), [0.5, 0.25, 0.25, 0.75])


def test_remaining_stay_takes_the_level_among_the_steps_seen_with_an_announcement():
    # 20 EVs announce 1 step and stay 1, 20 announce 1 and stay 3: at 1 announced step left the
    # real steps left are 1 (20 times) and 3 (20 times); 0 and -1 left are seen 20 times each,
    # below MIN_SESSIONS (30), so they read the row of 1.
    stays, announced = [1] * 20 + [3] * 20, [1] * 40
    low = RemainingStay.from_sessions(0.25, stays, announced, 0.2, span=4)
    high = RemainingStay.from_sessions(0.25, stays, announced, 0.8, span=4)
    np.testing.assert_array_equal(low.steps, np.full(9, 1.0))
    np.testing.assert_array_equal(high.steps, np.full(9, 3.0))
    with pytest.raises(ConfigError, match="departure_level"):
        RemainingStay.from_sessions(0.25, stays, announced, 1.0, span=4)


def test_drivers_who_keep_their_announcements_are_read_as_announced():
    stays = np.repeat(np.arange(1, 40), 30)  # every announcement seen at least MIN_SESSIONS times
    stay = RemainingStay.from_sessions(0.25, stays, stays, 0.3, span=60)
    np.testing.assert_array_equal(stay.steps[60 + 1:60 + 40], np.arange(1, 40))


def test_the_view_changes_only_the_plugged_ports_hours_to_departure():
    params = load_site("caltech", **SEED_SITE)
    view = DepartureView(params, 0.2)
    obs = random_observations(params, 64, np.random.default_rng(2))
    viewed = view.apply(obs)
    layout = observation_layout(params)
    hours, plugged = layout["hours_to_departure"], obs[:, layout["occupied"]] > 0.5
    others = np.ones(obs.shape[1], dtype=bool)
    others[hours] = False
    np.testing.assert_array_equal(viewed[:, others], obs[:, others])
    stay = remaining_stay_for(params, 0.2)
    np.testing.assert_allclose(viewed[:, hours][plugged], stay.hours(obs[:, hours][plugged]), rtol=1e-6)
    np.testing.assert_array_equal(viewed[:, hours][~plugged], obs[:, hours][~plugged])
    assert (viewed[:, hours][plugged] != obs[:, hours][plugged]).any()
    np.testing.assert_array_equal(view.apply(obs[5]), viewed[5])
    assert viewed.dtype == np.float32 and obs is not viewed


def test_a_site_whose_drivers_leave_early_reads_long_announcements_as_shorter_stays():
    jpl, caltech = (remaining_stay_for(load_site(name), 0.2) for name in ("jpl", "caltech"))
    assert jpl.hours(10.0) < caltech.hours(10.0) - 2.0


@pytest.mark.parametrize("level", [0, 1, -0.5, "soon", True])
def test_a_bad_level_or_a_site_without_announcements_is_refused_by_name(level):
    with pytest.raises(ConfigError, match="departure_level"):
        DepartureView(load_site("caltech"), level)
    with pytest.raises(ConfigError, match="ocpp"):
        DepartureView(load_site("caltech", observability="ocpp"), 0.2)


def test_the_saved_policy_acts_on_the_acting_site_s_view():
    run = trained_run("per_port_view")
    policy = load_policy(run)
    assert policy.config["departure_level"] == 0.2
    jpl = load_site("jpl")
    obs = random_observations(jpl, 256, np.random.default_rng(4))
    policy.begin(jpl, None)
    acted, _ = policy.predict(obs)
    plain = load_policy(run)
    plain.config["departure_level"] = None
    plain.begin(jpl, None)
    viewed = DepartureView(jpl, 0.2).apply(obs)
    np.testing.assert_allclose(acted, plain.predict(viewed)[0], atol=1e-6)
    assert np.abs(acted - plain.predict(obs)[0]).max() > 1e-3
    manifest = json.loads((exported("per_port_view") / "manifest.json").read_text())
    assert manifest["departure_level"] == 0.2


def test_cloning_learns_from_the_viewed_observations(tmp_path, monkeypatch):
    import agents.imitation as imitation
    from agents.train import train
    from tests.test_train import TINY, train_config

    seen = []
    original = imitation.clone
    monkeypatch.setattr(imitation, "clone", lambda policy, observations, *rest: (
        seen.append(np.array(observations)), original(policy, observations, *rest))[1])
    overrides = [*TINY, "agent=ppo_perport", "env=physical", "imitation=mpc", "imitation.episodes=2",
                 "imitation.epochs=1", "imitation.dagger_rounds=1", "imitation.dagger_episodes=2",
                 "imitation.teacher.horizon_steps=4", "total_timesteps=0", "env.departure_level=0.2",
                 "env.deadline_guard_hours=0.5"]
    train(train_config(*overrides), tmp_path / "run")
    params = load_site("caltech", **SEED_SITE)
    layout = observation_layout(params)
    stay = remaining_stay_for(params, 0.2)
    allowed = np.maximum(stay.steps, 1.0) * params.dt_hours
    assert len(seen) == 2 and len(seen[1]) == 2 * len(seen[0])
    for observations in seen:
        plugged = observations[:, layout["occupied"]] > 0.5
        hours = observations[:, layout["hours_to_departure"]][plugged]
        assert len(hours) > 10
        assert np.isin(hours.astype(np.float32), allowed.astype(np.float32)).all()
    assert json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())["departure_level"] == 0.2
    with pytest.raises(ConfigError, match="env.departure_level"):
        train(train_config(*overrides[:-2], "env.departure_level=1.5"), tmp_path / "bad")


def test_fine_tuning_reads_departures_as_the_loaded_policy_did(tmp_path):
    from agents.train import TrainConfigError, train
    from tests.test_export import RUNS
    from tests.test_train import train_config

    run = trained_run("per_port_view")
    overrides = [*RUNS["per_port_view"], f"init_policy={run}"]
    metrics = train(train_config(*overrides), tmp_path / "tuned")
    assert metrics["timesteps"] >= 96
    assert load_policy(tmp_path / "tuned").config["departure_level"] == 0.2
    with pytest.raises(TrainConfigError, match="departure_level"):
        train(train_config(*overrides, "env.departure_level=null"), tmp_path / "refused")


def test_a_guarded_planner_s_guard_reads_the_view():
    from agents.baselines import Uncontrolled
    from agents.guards import DeadlineGuard, GuardedPolicy

    params = load_site("jpl")
    obs = random_observations(params, 128, np.random.default_rng(6))
    inner = Uncontrolled(params)
    viewed = GuardedPolicy(inner, 1.0, departure_level=0.2)
    plain = GuardedPolicy(inner, 1.0)
    for policy in (viewed, plain):
        policy.begin(params, None)
    raw_actions = np.zeros((128, params.num_ports), dtype=np.float32)
    inner.predict = lambda observation, deterministic=True: (raw_actions, None)
    guard = DeadlineGuard(params, 1.0, True)
    expected = guard.apply(DepartureView(params, 0.2).apply(obs), raw_actions)
    np.testing.assert_array_equal(viewed.predict(obs)[0], expected)
    assert not np.array_equal(plain.predict(obs)[0], expected)
