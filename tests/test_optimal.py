"""The LP mirror of the physics: hand-solved plans, the replay proof on several sites, and MPC.

THE PROOF: every offline plan, replayed through the env (actions = planned kW / the state's
available kW), earns exactly the reward the LP promised, to 1e-6 relative.
"""

import numpy as np
import pytest
from helpers import DT_HOURS as DT
from helpers import ETA_C, ETA_D, actions_of, ev, fine_step_energy_kwh, make_episode, port_group, tiny_site

from agents.mpc import ModelPredictiveControl
from agents.optimal import OfflineOptimal, OptimizationError, Window, plan_window, power_to_action
from envs.core import reset, step
from envs.generators import generator_for
from envs.observation import observe
from envs.reward import TERM_INDEX
from envs.site import load_site

REL = 1e-6


def rollout(params, episode, policy):
    """Run ``policy`` (begin + predict) through the env; the final state."""
    policy.begin(params, episode)
    state = reset(params, episode)
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state))
        state, _, _ = step(params, state, action)
    return state


def replay(params, episode, **options):
    """Solve the offline plans and replay them with the state's float64 maxima.

    Returns (policy, reward per env, final state, worst excess of a planned kW over what the
    port offered, relative to that offer).
    """
    policy = OfflineOptimal(params, **options)
    policy.begin(params, episode)
    state, worst = reset(params, episode), 0.0
    while state.t < params.horizon_steps:
        t = state.t
        for planned, offered in ((policy.charge_kw[:, t], state.max_charge_kw),
                                 (policy.discharge_kw[:, t], state.max_discharge_kw)):
            worst = max(worst, float(np.max((planned - offered) / np.maximum(offered, 1.0))))
        action = power_to_action(policy.charge_kw[:, t], policy.discharge_kw[:, t], state.max_charge_kw,
                                 state.max_discharge_kw, margin=0.0)
        state, _, _ = step(params, state, action)
    return policy, state.totals @ params.reward.coefficients(), state, worst


def assert_replay_exact(params, episode, **options):
    policy, reward, state, worst = replay(params, episode, **options)
    np.testing.assert_allclose(reward, policy.objective_eur, rtol=REL, atol=1e-9)
    assert worst < 1e-7, "a planned power exceeds what the port offered"
    assert (policy.bound_eur >= policy.objective_eur - 1e-9).all()
    for plan in policy.plans:
        assert not ((plan.charge_kw > 0) & (plan.discharge_kw > 0)).any()
    assert state.totals[:, TERM_INDEX["overload_requested_kwh"]].max() < 1e-6
    return policy, state


# --- hand-solved plans ------------------------------------------------------------------------


def series(params, value, **at):
    out = np.full(params.horizon_steps + params.forecast_steps + 1, value, dtype=np.float64)
    for key, v in at.items():
        out[int(key[1:])] = v
    return out


def test_one_ev_charges_in_the_cheap_slots():
    params = tiny_site()
    wanted = 2 * 7.0 * ETA_C * DT
    episode = make_episode(params, [ev(departure=6, requested_kwh=wanted)],
                           price_buy=series(params, 0.3, t2=0.1, t3=0.1))
    policy, _ = assert_replay_exact(params, episode)
    np.testing.assert_allclose(policy.charge_kw[0, :, 0], [0, 0, 7, 7, 0, 0, 0, 0], atol=1e-9)
    expected = 0.3 * wanted - 0.1 * 7.0 * DT * 2 - 0.02 * wanted
    assert policy.objective_eur[0] == pytest.approx(expected, rel=1e-9)
    assert policy.plans[0].integer_columns == 0 and policy.bound_eur[0] == policy.objective_eur[0]


def test_v2g_arbitrage_sells_dear_and_buys_back_cheap():
    params = tiny_site()
    v2g = ev(departure=8, requested_kwh=0.0, max_discharge_kw=6.0, consent=True, min_soc=0.3)
    episode = make_episode(params, [v2g], tariff=0.0,
                           price_buy=series(params, 0.3, t1=0.6, t4=0.05, t5=0.05, t6=0.05),
                           price_sell=series(params, 0.04, t1=0.5))
    policy, state = assert_replay_exact(params, episode)
    battery_kwh = 6.0 * DT / ETA_D
    np.testing.assert_allclose(policy.discharge_kw[0, :, 0], [0, 6, 0, 0, 0, 0, 0, 0], atol=1e-9)
    charge = policy.charge_kw[0, :, 0]
    assert charge[[0, 1, 2, 3, 7]].max() < 1e-9
    assert charge.sum() * ETA_C * DT == pytest.approx(battery_kwh, rel=1e-9)
    expected = 0.5 * 6.0 * DT - 0.05 * battery_kwh / ETA_C - 0.02 * 2 * battery_kwh
    assert policy.objective_eur[0] == pytest.approx(expected, rel=1e-9)
    assert state.totals[0, TERM_INDEX["unmet_kwh"]] < 1e-9
    assert policy.plans[0].integer_columns == 0


def transformer_site(transformer_kw, **fields):
    return tiny_site(nodes=[{"name": "grid", "limit_kw": 100},
                            {"name": "transformer", "parent": "grid", "limit_kw": transformer_kw}],
                     ports=[port_group("transformer", count=2)], **fields)


def test_a_node_limit_splits_the_cheap_power():
    params = transformer_site(10)
    wanted = 2 * 7.0 * ETA_C * DT
    episode = make_episode(params, [ev(departure=6, requested_kwh=wanted)] * 2,
                           price_buy=series(params, 0.3, t0=0.1, t1=0.1))
    policy, _ = assert_replay_exact(params, episode)
    flow = policy.charge_kw[0].sum(axis=1)
    assert flow.max() <= 10 + 1e-9
    np.testing.assert_allclose(flow[:2], [10, 10], atol=1e-9)
    expected = 0.3 * 2 * wanted - 0.1 * 10 * DT * 2 - 0.3 * 8 * DT - 0.02 * 2 * wanted
    assert policy.objective_eur[0] == pytest.approx(expected, rel=1e-9)


def test_inflexible_load_beyond_a_limit_is_violation_and_blocks_charging():
    params = transformer_site(10)
    load = series(params, 2.0, t2=14.0, t3=14.0)
    episode = make_episode(params, [ev(requested_kwh=20)], load={"transformer": load})
    policy, state = assert_replay_exact(params, episode)
    assert policy.charge_kw[0, 2:4].max() == 0
    assert state.totals[0, TERM_INDEX["grid_violation_kwh"]] == pytest.approx(2 * 4.0 * DT)


def test_export_dearer_than_import_uses_an_import_export_mode():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 100, "export_limit_kw": 20}])
    episode = make_episode(params, [ev(requested_kwh=20)], pv={"grid": 5.0},
                           price_buy=0.2, price_sell=series(params, 0.1, t3=0.4))
    policy, _ = assert_replay_exact(params, episode)
    assert policy.plans[0].integer_columns >= 1
    assert policy.charge_kw[0, 3, 0] == 0  # export all PV at the dear step


def test_a_negative_min_soc_never_plans_below_an_empty_battery():
    params = tiny_site()
    v2g = ev(soc=0.2, requested_kwh=0.0, max_discharge_kw=11.0, consent=True, min_soc=-5.0)
    episode = make_episode(params, [v2g], tariff=0.0, price_buy=1.0, price_sell=0.9)
    policy, state = assert_replay_exact(params, episode)
    discharged_kwh = policy.discharge_kw[0, :, 0].sum() * DT / ETA_D
    assert discharged_kwh == pytest.approx(0.2 * 40, rel=1e-9)
    assert state.soc[0, 0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("weight", "charged"), [(0.0, False), (0.5, True)])
def test_the_optimum_charges_evs_staying_past_the_horizon_only_if_their_lack_is_weighted(weight, charged):
    params = tiny_site(reward={"unmet_at_horizon_eur_per_kwh": weight})
    episode = make_episode(params, [ev(requested_kwh=2.0)], tariff=0.0, price_buy=0.3)
    policy, state = assert_replay_exact(params, episode)
    assert (policy.charge_kw.sum() > 0) == charged
    lack_kwh = state.totals[0, TERM_INDEX["unmet_at_horizon_kwh"]]
    assert lack_kwh == pytest.approx(0.0 if charged else 2.0, abs=1e-9)


@pytest.mark.parametrize(("soc", "port_kw"), [(0.6, 11.0), (0.75, 7.0), (0.9, 22.0)])
def test_the_plan_follows_the_integrated_taper(soc, port_kw):
    params = tiny_site(ports=[port_group("grid", max_charge_kw=port_kw)], horizon_steps=3)
    episode = make_episode(params, [ev(soc=soc, battery_kwh=20, max_charge_kw=11, requested_kwh=50)],
                           tariff=1.0)
    policy, state = assert_replay_exact(params, episode)
    planned_kwh = policy.charge_kw[0, :, 0].sum() * ETA_C * DT
    full_kwh = fine_step_energy_kwh(params, soc, 20, 11, port_kw, ETA_C, steps=params.horizon_steps)
    assert full_kwh * (1 - 2e-3) <= planned_kwh <= full_kwh * (1 + 1e-7)
    assert state.delivered_kwh[0, 0] == pytest.approx(planned_kwh, rel=1e-9)


def test_unexpected_solver_outcome_raises():
    params = tiny_site()
    n = params.horizon_steps
    window = Window(exo_kw=np.zeros((n, 1)), price_buy_eur_kwh=np.full(n, 0.2),
                    price_sell_eur_kwh=np.full(n, 0.1), tariff_eur_kwh=np.full(n, 0.3),
                    carbon_kg_kwh=np.zeros(n), setpoint_kw=np.zeros(n), peak_import_kw=0.0,
                    entry_step=np.arange(2), entry_port=np.zeros(2, dtype=int),
                    entry_ev=np.zeros(2, dtype=int),
                    ev_soc=np.array([0.5]), ev_battery_kwh=np.array([40.0]), ev_max_charge_kw=np.array([7.0]),
                    ev_max_discharge_kw=np.array([0.0]), ev_min_soc=np.array([0.2]),
                    ev_room_kwh=np.array([-1.0]), ev_unmet_base_kwh=np.array([1.0]),
                    ev_counted=np.array([True]))
    with pytest.raises(OptimizationError, match="Infeasible"):
        plan_window(params, window)


# --- THE PROOF on real sites ------------------------------------------------------------------

CHARGER_TREE = {
    "name": "charger_tree",
    "dt_minutes": 15,
    "nodes": [{"name": "grid", "limit_kw": 60, "export_limit_kw": 15},
              {"name": "panel", "parent": "grid", "limit_kw": 40, "export_limit_kw": 10},
              {"name": "office", "parent": "grid", "limit_kw": 50}],
    "ports": [{"name": "twin", "node": "panel", "count": 4, "ports_per_charger": 2, "charger_limit_kw": 12,
               "max_charge_kw": 11, "max_discharge_kw": 7, "charge_efficiency": 0.93},
              {"name": "ac", "node": "office", "count": 3, "max_charge_kw": 7.4}],
    "queue": {"capacity": 3, "patience_minutes": 45},
    "reward": {"demand_charge_eur_per_kw": 0.1, "carbon_eur_per_kg": 0.05, "setpoint_eur_per_kwh": 0.02},
    "scenario": {"sessions_per_day": 30, "tariff_eur_kwh": 0.05, "setpoint_kw": 10.0,
                 "v2g_consent_share": 0.8,
                 "fleet": [{"battery_kwh": 50, "max_charge_kw": 11, "max_discharge_kw": 7, "share": 0.7},
                           {"battery_kwh": 30, "max_charge_kw": 7, "share": 0.3}],
                 "loads": [{"node": "office", "base_kw": 10, "peak_kw": 45, "peak_hour": 12}],
                 "pv": [{"node": "panel", "peak_kw": 30}]},
}

CASES = {
    "caltech": ("caltech", {}, {}),
    "caltech_outages": ("caltech", {"scenario": {"failure_rate_per_day": 4.0, "repair_hours": 2.0}}, {}),
    "caltech_overloaded": ("caltech", {"scenario": {"loads": [{"node": "transformer", "base_kw": 60,
                                                               "peak_kw": 170, "peak_hour": 12}]}}, {}),
    "v2g_workplace": ("v2g_workplace", {"horizon_steps": 64, "start_hour": 6}, {"time_limit_s": 1.0}),
    "v2g_workplace_no_tariff": ("v2g_workplace", {"scenario": {"tariff_eur_kwh": 0.0}}, {}),
    "charger_tree": (CHARGER_TREE, {}, {"time_limit_s": 1.0}),
    "caltech_unmet_at_horizon": ("caltech", {"horizon_steps": 60,
                                             "reward": {"unmet_at_horizon_eur_per_kwh": 0.4}}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_replaying_the_offline_plan_earns_its_objective(case, seed):
    site, overrides, options = CASES[case]
    params = load_site(site, **overrides)
    episode = generator_for(params).sample(params, np.random.default_rng(seed), 2)
    policy, state = assert_replay_exact(params, episode, **options)
    if case == "caltech_outages":
        assert state.schedule.displaced.sum() > 0
    if case == "caltech_overloaded":
        assert state.totals[:, TERM_INDEX["grid_violation_kwh"]].max() > 0
    if case == "caltech_unmet_at_horizon":
        assert all(window.ev_at_horizon.any() for window in policy.windows)
    if case in ("caltech", "v2g_workplace_no_tariff"):
        assert all(plan.integer_columns == 0 for plan in policy.plans)
        np.testing.assert_array_equal(policy.bound_eur, policy.objective_eur)


def test_a_mip_out_of_time_falls_back_to_charging_only():
    # Negative prices pay for burning energy in charge/discharge losses, so the relaxation
    # mixes both on a port and the model needs integer modes.
    params = load_site("v2g_workplace", scenario={"weekday": 1, "price_hourly_eur_kwh": [-0.2] * 24})
    episode = generator_for(params).sample(params, np.random.default_rng(0), 1)
    policy, state = assert_replay_exact(params, episode, time_limit_s=0.001)
    assert policy.plans[0].status.endswith("(charge only)")
    assert policy.discharge_kw.max() == 0


def test_outages_that_make_evs_give_up_are_counted():
    params = load_site("caltech", queue={"patience_minutes": 15},
                       scenario={"failure_rate_per_day": 12.0, "repair_hours": 3.0, "sessions_per_day": 150,
                                 "weekday": 1})
    episode = generator_for(params).sample(params, np.random.default_rng(3), 1)
    _, state = assert_replay_exact(params, episode)
    assert len(state.schedule.gave_up_ev) > 0


def test_the_policy_replays_through_observations():
    params = load_site("caltech")
    episode = generator_for(params).sample(params, np.random.default_rng(4), 2)
    policy = OfflineOptimal(params)
    state = rollout(params, episode, policy)
    reward = state.totals @ params.reward.coefficients()
    np.testing.assert_allclose(reward, policy.objective_eur, rtol=REL)
    assert state.totals[:, TERM_INDEX["overload_requested_kwh"]].max() == 0.0
    assert (policy.solve_s > 0).all()
    with pytest.raises(ValueError, match="step 96"):
        policy.predict(observe(params, state))


def test_the_offline_optimum_beats_every_baseline():
    from agents.baselines import EarliestDeadlineFirst, PriceThreshold

    params = load_site("caltech")
    episode = generator_for(params).sample(params, np.random.default_rng(5), 2)
    optimum = OfflineOptimal(params)
    optimum.begin(params, episode)
    for cls in (EarliestDeadlineFirst, PriceThreshold):
        state, policy = reset(params, episode), cls(params)
        while state.t < params.horizon_steps:
            state, _, _ = step(params, state, policy.predict(observe(params, state))[0])
        assert (state.totals @ params.reward.coefficients() <= optimum.objective_eur + 1e-9).all()


# --- MPC --------------------------------------------------------------------------------------


def test_mpc_matches_the_optimum_when_nothing_is_unknown():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 100},
                              {"name": "transformer", "parent": "grid", "limit_kw": 12}],
                       ports=[port_group("transformer", count=3)],
                       reward={"demand_charge_eur_per_kw": 0.05})
    evs = [ev(departure=5, requested_kwh=4.0), ev(departure=8, soc=0.7, requested_kwh=8.0, max_charge_kw=10),
           ev(max_discharge_kw=6.0, consent=True, min_soc=0.3, requested_kwh=1.0)]
    episode = make_episode(params, evs, tariff=0.0, price_buy=series(params, 0.3, t2=0.1, t3=0.1, t6=0.5),
                           price_sell=series(params, 0.05, t6=0.45))
    optimum = OfflineOptimal(params)
    optimum.begin(params, episode)
    mpc = ModelPredictiveControl(params, horizon_steps=params.horizon_steps, departure_margin_hours=0.0)
    state = rollout(params, episode, mpc)
    reward = state.totals @ params.reward.coefficients()
    np.testing.assert_allclose(reward, optimum.objective_eur, rtol=1e-5)


def test_mpc_never_looks_ahead():
    params = tiny_site(ports=[port_group("grid", count=2)])
    prices = series(params, 0.3, t3=0.1, t6=0.05)
    known = make_episode(params, [ev(departure=7, announced=6)], price_buy=prices)
    surprises = make_episode(params, [ev(departure=8, announced=6), ev(arrival=4, departure=8)],
                             price_buy=prices)
    mpc = ModelPredictiveControl(params, horizon_steps=4, departure_margin_hours=0.0)
    first, _ = actions_of(params, known, mpc)
    second, _ = actions_of(params, surprises, mpc)
    np.testing.assert_array_equal(first[:4], second[:4])
    assert np.abs(first[4:] - second[4:]).max() > 0


@pytest.mark.parametrize("site", ["caltech", "v2g_workplace"])
def test_mpc_respects_limits_and_stays_below_the_optimum(site):
    params = load_site(site)
    episode = generator_for(params).sample(params, np.random.default_rng(6), 2)
    mpc = ModelPredictiveControl(params, horizon_steps=16)
    _, state = actions_of(params, episode, mpc)
    assert state.totals[:, TERM_INDEX["overload_requested_kwh"]].max() == 0.0
    assert state.totals[:, TERM_INDEX["grid_violation_kwh"]].max() == 0.0
    assert len(mpc.decision_s) == params.horizon_steps * 2
    if site == "caltech":
        optimum = OfflineOptimal(params)
        optimum.begin(params, episode)
        assert (state.totals @ params.reward.coefficients() <= optimum.bound_eur + 1e-6).all()


@pytest.mark.parametrize("levels", [None, (0.25, 0.75)])
def test_mpc_batch_equals_single_envs(levels):
    params = load_site("caltech", horizon_steps=40, start_hour=6)
    episode = generator_for(params).sample(params, np.random.default_rng(7), 2)
    batch, _ = actions_of(params, episode, ModelPredictiveControl(params, horizon_steps=12,
                                                                  departure_quantiles=levels))
    for b in range(2):
        alone = ModelPredictiveControl(params, horizon_steps=12, departure_quantiles=levels)
        single, _ = actions_of(params, episode.take(slice(b, b + 1)), alone)
        np.testing.assert_allclose(batch[:, b], single[:, 0], atol=1e-6)


def test_policies_need_begin():
    params = tiny_site()
    obs = observe(params, reset(params, make_episode(params, [ev()])))
    for policy in (OfflineOptimal(params), ModelPredictiveControl(params)):
        with pytest.raises(RuntimeError, match="begin"):
            policy.predict(obs)


def _later_arrival_day():
    params = tiny_site(ports=[port_group("grid", count=2)],
                       reward={"demand_charge_eur_per_kw": 0.5, "unmet_eur_per_kwh": 5.0})
    evs = [ev(departure=8, requested_kwh=3.0), ev(arrival=4, departure=6, requested_kwh=3.0)]
    return params, make_episode(params, evs, tariff=0.0, price_buy=series(params, 0.3, t0=0.1, t1=0.1))


def test_mpc_knowing_the_arrivals_matches_the_optimum_where_the_plain_one_cannot():
    params, episode = _later_arrival_day()
    optimum = OfflineOptimal(params)
    optimum.begin(params, episode)
    rewards = {}
    for future_arrivals in (False, True):
        mpc = ModelPredictiveControl(params, horizon_steps=params.horizon_steps, departure_margin_hours=0.0,
                                     future_arrivals=future_arrivals)
        rewards[future_arrivals] = rollout(params, episode, mpc).totals @ params.reward.coefficients()
    np.testing.assert_allclose(rewards[True], optimum.objective_eur, rtol=1e-5)
    assert (rewards[False] < optimum.objective_eur - 0.01).all()


def test_the_arrivals_window_holds_the_evs_plugging_in_during_it_on_their_ports():
    params, episode = _later_arrival_day()
    state = reset(params, episode)
    for horizon, arrivals in ((6, 1), (4, 0)):
        mpc = ModelPredictiveControl(params, horizon_steps=horizon, departure_margin_hours=0.0,
                                     future_arrivals=True)
        mpc.begin(params, episode)
        mpc._apply_plug_events(0)
        window = mpc.window(0, observe(params, state)[0])
        assert len(window.ev_id) == 1 + arrivals
        if arrivals:
            later = window.entry_ev == 1
            np.testing.assert_array_equal(window.entry_step[later], [4, 5])
            assert window.ev_room_kwh[1] == pytest.approx(3.0)
            assert set(window.entry_port[later]) == {episode_port(state, ev_index=1)}


def episode_port(state, ev_index):
    schedule = state.schedule
    return int(schedule.plug_port[schedule.plug_ev == ev_index][0])


def test_future_arrivals_plan_on_announced_departures():
    with pytest.raises(ValueError, match="future_arrivals"):
        ModelPredictiveControl(tiny_site(), future_arrivals=True, departure_quantiles=(0.5,))
