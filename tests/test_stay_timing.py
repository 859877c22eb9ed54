"""Exact stay timing: the first and last step of a stay count only for the part the EV is there."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import DT_HOURS as DT
from helpers import ETA_C, ev, fine_step_energy_kwh, make_episode, tiny_site
from test_optimal import CHARGER_TREE, assert_replay_exact

from envs.core import reset, step
from envs.data.replay import ReplayGenerator
from envs.data.sessions import read_acn_csv
from envs.generators import generator_for
from envs.reward import TERM_INDEX
from envs.site import SiteError, load_site

FIXTURES = Path(__file__).parent / "fixtures"


def with_fractions(episode, first, last):
    shape = episode.ev_valid.shape
    return dataclasses.replace(episode, ev_first_step_fraction=np.broadcast_to(first, shape).astype(float),
                               ev_last_step_fraction=np.broadcast_to(last, shape).astype(float))


def rollout_power(params, episode, action):
    """Grid-side kW of port 0 at each step under a constant action, and the final state."""
    state, powers = reset(params, episode), []
    while state.t < params.horizon_steps:
        state, _, info = step(params, state, np.full((1, params.num_ports), action))
        powers.append(info["site_power_kw"][0])
    return np.array(powers), state


def test_the_first_and_last_step_carry_the_minutes_the_ev_is_there():
    params = tiny_site()
    episode = with_fractions(make_episode(params, [ev(arrival=1, departure=4, requested_kwh=30)]), 0.4, 0.5)
    power, state = rollout_power(params, episode, 1.0)
    np.testing.assert_allclose(power, [0, 0.4 * 7, 7, 0.5 * 7, 0, 0, 0, 0], rtol=1e-12)
    delivered_kwh = (0.4 + 1 + 0.5) * 7 * ETA_C * DT
    assert state.totals[0, TERM_INDEX["unmet_kwh"]] == pytest.approx(30 - delivered_kwh, rel=1e-12)


def test_a_stay_within_one_step_carries_its_own_length():
    params = tiny_site()
    episode = with_fractions(make_episode(params, [ev(arrival=2, departure=3, requested_kwh=30)]), 0.7, 0.6)
    power, _ = rollout_power(params, episode, 1.0)
    np.testing.assert_allclose(power, [0, 0, 0.3 * 7, 0, 0, 0, 0, 0], rtol=1e-12)


def test_discharge_counts_the_minutes_too():
    params = tiny_site()
    v2g = ev(arrival=0, departure=3, requested_kwh=0.0, max_discharge_kw=6.0, consent=True, min_soc=0.1)
    power, _ = rollout_power(params, with_fractions(make_episode(params, [v2g]), 0.25, 0.5), -1.0)
    np.testing.assert_allclose(power[:3], [-0.25 * 6, -6, -0.5 * 6], rtol=1e-12)


def test_a_partial_step_past_the_knee_follows_the_taper_for_its_minutes():
    params = tiny_site()
    episode = with_fractions(make_episode(params, [ev(soc=0.85, battery_kwh=20, max_charge_kw=11)]), 0.6, 1.0)
    power, _ = rollout_power(params, episode, 1.0)
    minutes_kwh = fine_step_energy_kwh(params.replace(dt_hours=0.6 * DT), 0.85, 20, 11, 11, ETA_C)
    assert power[0] * ETA_C * DT == pytest.approx(minutes_kwh, rel=1e-7)


def test_an_ev_that_queued_plugs_in_for_a_whole_step():
    params = tiny_site(queue={"capacity": 2, "patience_minutes": 60})
    episode = make_episode(params, [ev(arrival=0, departure=2), ev(arrival=1, departure=6, requested_kwh=30)])
    power, _ = rollout_power(params, with_fractions(episode, 0.5, 1.0), 1.0)
    # EV 0: half of step 0, then step 1; EV 1 arrives at step 1, queues, plugs in at step 2.
    np.testing.assert_allclose(power[:4], [3.5, 7, 7, 7], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("site", ["caltech", "v2g_workplace", "charger_tree"])
def test_the_optimum_plans_the_same_minutes_the_env_gives(site, seed):
    params = load_site(CHARGER_TREE if site == "charger_tree" else site, horizon_steps=48, start_hour=6)
    episode = generator_for(params).sample(params, np.random.default_rng(seed), 2)
    rng = np.random.default_rng(seed + 10)
    episode = with_fractions(episode, rng.uniform(0.05, 1.0, episode.ev_valid.shape),
                             rng.uniform(0.0, 1.0, episode.ev_valid.shape))
    policy, state = assert_replay_exact(params, episode, time_limit_s=1.0)
    assert any(window.entry_fraction is not None and (window.entry_fraction < 1).any()
               for window in policy.windows)
    assert len(state.schedule.partial_env) > 0


def test_replayed_sessions_keep_their_minutes_on_exact_sites():
    sessions = read_acn_csv(FIXTURES / "sessions_acn.csv.gz")
    spec = {"name": "replay", "dt_minutes": 15, "nodes": [{"name": "grid", "limit_kw": 100}],
            "ports": [{"name": "evse", "node": "grid", "count": 4, "max_charge_kw": 7}],
            "scenario": {"fleet": [{"battery_kwh": 60, "max_charge_kw": 11, "share": 1}]}}
    exact = load_site({**spec, "stay_timing": "exact"})
    episode = ReplayGenerator(sessions, days=["2019-05-06"], shuffle=False).sample(
        exact, np.random.default_rng(0), 1)
    valid = episode.ev_valid[0]
    # s1 (carried over, leaves on a boundary), s2 07:50:10-16:20, s3 08:00-12:07, s4 08:10-09:00,
    # s5 08:20-18:45:30, s6 23:50-(tomorrow)
    np.testing.assert_allclose(episode.ev_first_step_fraction[0][valid],
                               [1, (15 - 5 - 10 / 60) / 15, 1, 5 / 15, 10 / 15, 10 / 15], rtol=1e-12)
    np.testing.assert_allclose(episode.ev_last_step_fraction[0][valid],
                               [1, 5 / 15, 7 / 15, 1, 0.5 / 15, 1], rtol=1e-12)
    rounded = ReplayGenerator(sessions, days=["2019-05-06"], shuffle=False).sample(
        load_site(spec), np.random.default_rng(0), 1)
    assert rounded.ev_first_step_fraction is None and rounded.ev_last_step_fraction is None
    np.testing.assert_array_equal(rounded.ev_arrival_step, episode.ev_arrival_step)


def test_stay_timing_is_rounded_or_exact():
    assert tiny_site().stay_timing == "rounded"
    with pytest.raises(SiteError, match="stay_timing must be rounded or exact"):
        tiny_site(stay_timing="minutes")


def test_fractions_outside_zero_one_are_refused():
    params = tiny_site()
    episode = with_fractions(make_episode(params, [ev()]), 1.5, 1.0)
    with pytest.raises(ValueError, match="ev_first_step_fraction must lie in"):
        reset(params, episode)


def test_rounded_timing_counts_whole_steps():
    params = tiny_site()
    episode = make_episode(params, [ev(arrival=1, departure=4, requested_kwh=30)])
    np.testing.assert_allclose(rollout_power(params, episode, 1.0)[0], [0, 7, 7, 7, 0, 0, 0, 0], rtol=1e-12)
