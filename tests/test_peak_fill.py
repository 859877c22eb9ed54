"""The peak fill (agents.peak_fill): hand-computed fills, where it does nothing, the guard and
manifest that carry it, and over random rollouts it never raises the site's peak."""

import numpy as np
import pytest

from agents.export.writer import build_manifest
from agents.guards import DeadlineGuard
from agents.peak_fill import PeakFill
from envs.core import reset, step
from envs.errors import ConfigError
from envs.generators import generator_for
from envs.observation import PEAK_FIELD, layout_size, observation_layout, observe
from envs.site import load_site

PARAMS = load_site("v2g_workplace")
LAYOUT = observation_layout(PARAMS)
ROOT_LIMIT_KW = float(PARAMS.node_import_limit_kw[0])


def observation(peak_kw=51.0, exo_kw=40.0, prices=(0.1, 0.2, 0.3)):
    """Ports 0-3 offer 10 kW each way; the inflexible load and PV draw ``exo_kw`` at the root."""
    obs = np.zeros(layout_size(PARAMS), dtype=np.float32)
    obs[LAYOUT["max_charge_kw"]][:4] = 10.0
    obs[LAYOUT["max_discharge_kw"]][:4] = 10.0
    obs[LAYOUT["node_headroom_kw"]] = PARAMS.node_import_limit_kw
    obs[LAYOUT["node_headroom_kw"].start] = ROOT_LIMIT_KW - exo_kw
    forecast = LAYOUT["price_buy_eur_kwh"]
    obs[forecast] = prices[-1]
    obs[forecast.start:forecast.start + len(prices)] = prices
    obs[LAYOUT[PEAK_FIELD].start] = peak_kw
    return obs


ASKED = np.zeros(PARAMS.num_ports, dtype=np.float32)
ASKED[:3] = (0.5, 0.5, -0.5)  # 5 + 5 kW charging, 5 kW discharging, port 3 idle: 45 kW import


def test_charging_ports_fill_the_room_below_the_peak_in_proportion_to_their_room():
    filled = PeakFill(PARAMS, 0.5).apply(observation(), ASKED)
    expected = ASKED.copy()
    expected[:2] = 0.8  # 6 kW below the 51 kW peak, shared over 5 + 5 kW of room
    np.testing.assert_allclose(filled, expected, atol=1e-6)


def test_the_fill_stops_at_full_power():
    filled = PeakFill(PARAMS, 0.5).apply(observation(peak_kw=100.0), ASKED)
    np.testing.assert_allclose(filled[:4], [1.0, 1.0, -0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("case", ["dear now", "at the peak", "no peak yet"])
def test_the_fill_leaves_actions_alone_when_import_is_dear_or_not_below_the_peak(case):
    obs = {"dear now": observation(prices=(0.3, 0.1, 0.2)), "at the peak": observation(peak_kw=44.0),
           "no peak yet": observation(peak_kw=0.0)}[case]
    np.testing.assert_array_equal(PeakFill(PARAMS, 0.5).apply(obs, ASKED), ASKED)


@pytest.mark.parametrize("quantile", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_the_price_is_cheap_at_or_below_the_quantile_numpy_computes(quantile):
    rng = np.random.default_rng(int(quantile * 10))
    width = LAYOUT["price_buy_eur_kwh"].stop - LAYOUT["price_buy_eur_kwh"].start
    for _ in range(50):
        prices = np.round(rng.uniform(0.05, 0.4, width), 2)
        filled = PeakFill(PARAMS, quantile).apply(observation(prices=tuple(prices)), ASKED)
        seen = prices.astype(np.float32).astype(np.float64)  # as the observation holds them
        cheap = seen[0] <= np.quantile(seen, quantile)
        assert (filled[0] > ASKED[0]) == cheap


def test_a_site_without_a_demand_charge_is_left_alone():
    caltech = load_site("caltech")
    day = generator_for(caltech).sample(caltech, np.random.default_rng(0), 1)
    obs = observe(caltech, reset(caltech, day))
    asked = np.full((1, caltech.num_ports), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(PeakFill(caltech, 0.5).apply(obs, asked), asked)


def test_batches_and_single_observations_fill_alike():
    fill, obs = PeakFill(PARAMS, 0.5), observation()
    batch = np.stack([obs, observation(prices=(0.3, 0.1, 0.2))])
    filled = fill.apply(batch, np.stack([ASKED, ASKED]))
    np.testing.assert_array_equal(filled[0], fill.apply(obs, ASKED))
    np.testing.assert_array_equal(filled[1], ASKED)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="peak_fill_quantile"):
        PeakFill(PARAMS, 1.5)
    with pytest.raises(ConfigError, match="env.deadline_guard_hours"):
        DeadlineGuard.from_config(PARAMS, {"peak_fill_quantile": 0.5})
    with pytest.raises(ConfigError, match="guard_fits_headroom"):
        DeadlineGuard.from_config(PARAMS, {"deadline_guard_hours": 1.0, "peak_fill_quantile": 0.5})
    assert DeadlineGuard.from_config(PARAMS, {}) is None


def test_the_guard_manifest_and_policy_config_carry_the_fill():
    config = {"deadline_guard_hours": 1.0, "guard_fits_headroom": True, "peak_fill_quantile": 0.25}
    assert DeadlineGuard.from_config(PARAMS, config).peak_fill.price_quantile == 0.25
    manifest = build_manifest(PARAMS, None, {"class": "EarliestDeadlineFirst", "arguments": {}}, 1.0, True,
                              peak_fill_quantile=0.25)
    assert manifest["peak_fill_quantile"] == 0.25
    guard = DeadlineGuard.from_config(PARAMS, manifest, "manifest")
    assert guard.peak_fill.price_quantile == 0.25 and guard.fit_headroom
    unguarded = build_manifest(PARAMS, None, {"class": "EarliestDeadlineFirst", "arguments": {}}, None, False,
                               peak_fill_quantile=0.25)
    assert unguarded["peak_fill_quantile"] is None


def test_over_random_rollouts_the_fill_only_raises_charging_and_never_the_peak():
    params = load_site("v2g_workplace", horizon_steps=48, start_hour=6)
    episode = generator_for(params).sample(params, np.random.default_rng(3), 3)
    plain = DeadlineGuard(params, 1.0, fit_headroom=True)
    filling = DeadlineGuard(params, 1.0, fit_headroom=True, peak_fill_quantile=0.75)
    rng, state, raised = np.random.default_rng(4), reset(params, episode), 0
    while state.t < params.horizon_steps:
        obs = observe(params, state)
        asked = rng.uniform(-0.3, 0.6, (3, params.num_ports)).astype(np.float32)
        guarded, filled = plain.apply(obs, asked), filling.apply(obs, asked)
        assert (filled >= guarded).all() and (filled[guarded <= 0] == guarded[guarded <= 0]).all()
        assert (filled <= 1.0).all()
        after_plain, _, _ = step(params, state, guarded)
        state, _, _ = step(params, state, filled)
        assert (state.peak_import_kw <= after_plain.peak_import_kw + 1e-3).all()
        raised += int((state.delivered_kwh.sum(axis=1) > after_plain.delivered_kwh.sum(axis=1) + 1e-6).sum())
    assert raised > 0


def test_a_run_trains_and_saves_its_policy_behind_the_fill(tmp_path):
    from agents import load_policy
    from agents.guarded_env import GuardedVecEnv
    from agents.train import build_env, site_params, train
    from tests.test_train import TINY, train_config

    overrides = [*TINY, "site=v2g_workplace", "agent=ppo_perport", "env=physical", "total_timesteps=96",
                 "eval_freq=0", "checkpoint_freq=0", "env.guard_fits_headroom=true",
                 "env.deadline_guard_hours=1.0", "env.peak_fill_quantile=0.5"]
    cfg = train_config(*overrides)
    venv = build_env(cfg, site_params(cfg))
    while not isinstance(venv, GuardedVecEnv):
        venv = venv.venv
    assert venv.guard.peak_fill.price_quantile == 0.5
    train(cfg, tmp_path / "run")
    policy = load_policy(tmp_path / "run")
    assert policy.config["peak_fill_quantile"] == 0.5
    params = load_site("v2g_workplace", horizon_steps=24, start_hour=7)
    policy.begin(params, generator_for(params).sample(params, np.random.default_rng(0), 1))
    assert policy.guard.peak_fill.price_quantile == 0.5
    with pytest.raises(ConfigError, match="env.deadline_guard_hours"):
        train(train_config(*overrides[:-2], "env.peak_fill_quantile=0.5"), tmp_path / "bad")


def test_an_episode_through_the_scheduler_fills_as_the_trained_policy_does():
    from test_export import SEED_SITE, exported, trained_run
    from test_scheduler import ThroughScheduler

    from agents import load_policy
    from agents.evaluate import evaluate
    from agents.scheduler import Scheduler

    params = load_site("v2g_workplace", **SEED_SITE)
    filling = load_policy(trained_run("per_port_fill"))
    plain = load_policy(trained_run("per_port_fill"))
    plain.config["peak_fill_quantile"] = None
    runtime = ThroughScheduler(Scheduler(exported("per_port_fill"), params))
    assert runtime.scheduler.guard.peak_fill.price_quantile == 0.5
    table = evaluate({"trained": filling, "runtime": runtime, "plain": plain}, params, num_episodes=2, seed=3)
    assert runtime.fell_back == 0
    physical = table.drop(columns=["wall_s", "score", "reward_eur"]).to_numpy(float)
    np.testing.assert_allclose(physical[1], physical[0], rtol=1e-6, atol=1e-6)
    assert table.loc["trained", "reward_eur"] == pytest.approx(table.loc["runtime", "reward_eur"], rel=1e-6)
    assert table.loc["trained", "energy_delivered_kwh"] > table.loc["plain", "energy_delivered_kwh"] + 0.1
