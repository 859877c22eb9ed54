"""Announced departures weighed by the site's history: the quantile tables and MPC's departure scenarios."""

import numpy as np
import pytest
from helpers import ETA_C, actions_of, ev, make_episode, port_group, tiny_site

import agents.mpc
from agents.mpc import ModelPredictiveControl
from agents.optimal import OfflineOptimal
from envs.core import reset, step
from envs.departures import MIN_SESSIONS, DepartureModel, departure_model_for
from envs.errors import ConfigError
from envs.generators import generator_for
from envs.observation import observe
from envs.reward import TERM_INDEX
from envs.site import load_site

LEVELS = (0.25, 0.5, 0.75)


def test_quantiles_are_those_of_the_sessions_still_plugged_in():
    # 40 sessions announcing 2 h (8 steps) that stayed 4, 5, ..., 13 steps, four of each
    stay = np.repeat(np.arange(4, 14), 4)
    model = DepartureModel.from_sessions(0.25, stay, np.full(40, 8), LEVELS)
    np.testing.assert_allclose(model.error_steps[2, 0], np.quantile(stay - 8, LEVELS))
    # after 9 steps only the stays of 10..13 steps are left: 16 sessions, fewer than MIN_SESSIONS,
    # so the row reads the pooled sessions (here the same ones)
    assert 16 < MIN_SESSIONS
    survivors = np.repeat(np.arange(10, 14), 4)
    np.testing.assert_allclose(model.error_steps[2, 9], np.quantile(survivors - 8, LEVELS))
    # steps still to stay: announced - elapsed + error quantile, at least one
    left = model.steps_left(np.array([8, 8, 8]), np.array([0, 9, 20]))
    np.testing.assert_array_equal(left[0], np.rint(8 + np.quantile(stay - 8, LEVELS)))
    np.testing.assert_array_equal(left[1], np.rint(-1 + np.quantile(np.arange(10, 14) - 8, LEVELS)))
    assert (left >= 1).all()


def test_rows_are_announced_stays_in_whole_hours_and_sparse_rows_read_the_pool():
    # 30 exact 2 h announcements, and 5 sessions announcing 1 h that leave after 30 minutes
    stay = np.r_[np.full(MIN_SESSIONS, 8), np.full(5, 2)]
    announced = np.r_[np.full(MIN_SESSIONS, 8), np.full(5, 4)]
    model = DepartureModel.from_sessions(0.25, stay, announced, (0.5,))
    assert model.error_steps[2, 0, 0] == 0.0
    pooled = np.quantile(stay - announced, 0.5)
    assert model.error_steps[1, 0, 0] == pooled
    assert model.sessions == 35


@pytest.mark.parametrize("levels", [(), (0.5, 0.5), (0.0, 0.5), (0.5, 1.0), (0.7, 0.3),
                                    tuple((i + 0.5) / 100 for i in range(100))])
def test_bad_levels_are_refused_by_name(levels):
    with pytest.raises(ConfigError, match="departure_quantiles"):
        DepartureModel.from_sessions(0.25, [4, 5], [4, 4], levels)


def test_the_site_model_is_drawn_once_and_exact_announcements_give_no_error():
    params = load_site("caltech", scenario={"departure_error_minutes": 0.0})
    model = departure_model_for(params, LEVELS)
    assert departure_model_for(params, LEVELS) is model
    assert model.sessions > 1000
    assert np.abs(model.error_steps).max() == 0.0


def test_exact_announcements_plan_as_the_announced_departure():
    params = load_site("caltech", horizon_steps=40, start_hour=6, scenario={"departure_error_minutes": 0.0})
    episode = generator_for(params).sample(params, np.random.default_rng(3), 2)
    plain = ModelPredictiveControl(params, horizon_steps=12, departure_margin_hours=0.0)
    weighed = ModelPredictiveControl(params, horizon_steps=12, departure_margin_hours=0.0,
                                     departure_quantiles=LEVELS)
    promised = {plain: [], weighed: []}
    for policy in promised:
        solve = policy._solve

        def recorded(b, model, solve=solve, plans=promised[policy]):
            plan = solve(b, model)
            plans.append(plan.objective_eur + model.offset)
            return plan

        policy._solve = recorded
        policy.begin(params, episode)
    state = reset(params, episode)
    while state.t < params.horizon_steps:  # both plan the states the first one drives to
        obs = observe(params, state)
        weighed.predict(obs)
        state, _, _ = step(params, state, plain.predict(obs)[0])
    assert len(promised[plain]) > 40
    np.testing.assert_allclose(promised[weighed], promised[plain], rtol=1e-7, atol=1e-7)


def test_an_ev_that_may_leave_early_charges_before_the_cheap_hours(monkeypatch):
    params = tiny_site(ports=[port_group("grid", count=1, max_discharge_kw=0.0)])
    price = np.full(params.horizon_steps + params.forecast_steps + 1, 0.3)
    price[4:] = 0.1  # cheap from step 4 on
    episode = make_episode(params, [ev(departure=8, requested_kwh=3.0)], price_buy=price, tariff=0.0)
    # half of such drivers leave after 2 steps, half when they said
    history = DepartureModel(0.25, np.array([0.25, 0.75]), np.tile([[[-6.0, 0.0]]], (24, 9, 1)), 100)
    monkeypatch.setattr(agents.mpc, "departure_model_for", lambda params, levels: history)
    trusting, _ = actions_of(params, episode, ModelPredictiveControl(params, 8, departure_margin_hours=0.0))
    doubting, _ = actions_of(params, episode, ModelPredictiveControl(params, 8, departure_margin_hours=0.0,
                                                                    departure_quantiles=(0.25, 0.75)))
    assert np.abs(trusting[:4]).max() == 0.0  # it waits for the cheap steps
    # an unmet kWh costs 0.5 EUR with probability 1/2, more than the 0.2 EUR the wait saves: it
    # takes the whole request in the first two steps, before the early leavers go
    np.testing.assert_allclose(doubting[:2].sum() * 7.0 * 0.25 * ETA_C, 3.0, rtol=1e-6)


def test_departure_scenarios_keep_every_limit_and_stay_below_the_optimum():
    params = load_site("jpl", horizon_steps=48, start_hour=6)
    episode = generator_for(params).sample(params, np.random.default_rng(4), 2)
    mpc = ModelPredictiveControl(params, horizon_steps=16, departure_quantiles=(0.1, 0.5, 0.9))
    _, state = actions_of(params, episode, mpc)
    assert state.totals[:, TERM_INDEX["overload_requested_kwh"]].max() == 0.0
    assert mpc.solver_fallbacks.sum() == 0
    optimum = OfflineOptimal(params)
    optimum.begin(params, episode)
    assert (state.totals @ params.reward.coefficients() <= optimum.bound_eur + 1e-6).all()


def test_departure_scenarios_need_the_announcement():
    params = load_site("caltech", observability="ocpp")
    episode = generator_for(params).sample(params, np.random.default_rng(0), 1)
    with pytest.raises(ConfigError, match="observability 'ocpp'"):
        ModelPredictiveControl(params, departure_quantiles=(0.5,)).begin(params, episode)
