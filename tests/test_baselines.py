"""Rule-based baselines: node limits, orders and timing on crafted cases, the predictor protocol,
and the evaluator (KPIs, given episodes, policies that plan on the episode, normalized score)."""

import time

import numpy as np
import pandas as pd
import pytest
from helpers import ETA_C, ETA_D, ev, make_episode, port_group, tiny_site

from agents import kpis
from agents.baselines import (
    AsLateAsPossible,
    EarliestDeadlineFirst,
    EqualShare,
    LeastLaxityFirst,
    PriceAware,
    PriceThreshold,
    RoundRobin,
    Uncontrolled,
    V2GArbitrage,
)
from agents.evaluate import KPI_COLUMNS, evaluate
from envs.core import reset, step
from envs.generators import generator_for
from envs.observation import layout_size, observe
from envs.site import load_site

LIMITED = (EarliestDeadlineFirst, LeastLaxityFirst, EqualShare, RoundRobin, AsLateAsPossible,
           PriceThreshold, PriceAware, V2GArbitrage)
BASELINES = (Uncontrolled,) + LIMITED
FULL_STEP_KWH = 7.0 * ETA_C * 0.25  # an EV of the helpers' default 7 kW over one 15-minute step

V2G_TIGHT_NODES = [  # loaded, the panel's 20 kW export limit binds at V2GArbitrage's price peaks
    {"name": "grid", "limit_kw": 250, "export_limit_kw": 5},
    {"name": "transformer", "parent": "grid", "limit_kw": 250},
    {"name": "building", "parent": "transformer", "limit_kw": 200},
    {"name": "ev_panel", "parent": "transformer", "limit_kw": 60, "export_limit_kw": 20},
]
LOADED_SITES = {
    "caltech": ("caltech", {"scenario": {"sessions_per_day": 200}}),
    "v2g_workplace": ("v2g_workplace", {"scenario": {"sessions_per_day": 80}}),
    "v2g_export_limited": ("v2g_workplace", {"nodes": V2G_TIGHT_NODES, "scenario": {"sessions_per_day": 80}}),
    "city": ("city", {"horizon_steps": 48, "start_hour": 6, "scenario": {"sessions_per_day": 4000}}),
}


@pytest.fixture(scope="module", params=sorted(LOADED_SITES))
def loaded(request):
    preset, overrides = LOADED_SITES[request.param]
    params = load_site(preset, **overrides)
    policies = {cls.__name__: cls(params) for cls in BASELINES}
    return request.param, evaluate(policies, params, num_episodes=3, seed=11)


def test_limited_baselines_need_no_scaling_on_a_loaded_site(loaded):
    _, table = loaded
    assert table.loc["Uncontrolled", "overload_requested_kwh"] > 1.0, "the site should be congested"
    for cls in LIMITED:
        assert table.loc[cls.__name__, "overload_requested_kwh"] == 0.0, cls.__name__
        assert table.loc[cls.__name__, "energy_delivered_kwh"] > 0.0, cls.__name__


def test_baselines_never_break_node_limits(loaded):
    _, table = loaded
    assert (table["grid_violation_kwh"] < 1e-9).all()  # the projection's round-off at most


def test_v2g_arbitrage_discharges_within_export_limits(loaded):
    name, table = loaded
    if name.startswith("v2g"):
        assert table.loc["V2GArbitrage", "v2g_discharged_kwh"] > 1.0
    assert (table.drop(index="V2GArbitrage")["v2g_discharged_kwh"] == 0.0).all()


def test_edf_fills_the_headroom_on_a_loaded_site(loaded):
    _, table = loaded
    edf, equal = table.loc["EarliestDeadlineFirst"], table.loc["EqualShare"]
    assert edf["unmet_kwh"] <= equal["unmet_kwh"] + 1e-6
    assert edf["energy_delivered_kwh"] >= 0.99 * table.loc["Uncontrolled", "energy_delivered_kwh"]


def test_v2g_arbitrage_keeps_min_soc_in_a_rollout():
    params = load_site("v2g_workplace", horizon_steps=48, start_hour=6, scenario={"sessions_per_day": 80})
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(3), 4))
    policy, discharged = V2GArbitrage(params), 0.0
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state))
        new, _, info = step(params, state, action)
        same_ev = (new.port_ev == state.port_ev) & state.occupied
        floor = np.minimum(state.min_soc, state.soc) - 1e-9
        assert (new.soc[same_ev] >= floor[same_ev]).all()
        discharged += info["discharged_kwh"].sum()
        state = new
    assert discharged > 1.0


def test_edf_serves_earlier_deadlines_first():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 10}],
                       ports=[port_group("grid", count=3, name="p")])
    episode = make_episode(params, [ev(departure=7), ev(departure=3), ev(departure=5)])
    state = reset(params, episode)
    action, hidden = EarliestDeadlineFirst(params).predict(observe(params, state))
    assert hidden is None
    np.testing.assert_allclose(action, [[0.0, 1.0, 3.0 / 7.0]], atol=1e-4)
    _, _, info = step(params, state, action)
    assert info["site_power_kw"][0] == pytest.approx(10.0, abs=1e-3)
    assert info["site_power_kw"][0] <= 10.0


def test_llf_serves_the_least_slack_first_where_edf_does_not():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 10}],
                       ports=[port_group("grid", count=3, name="p")])
    # laxity (h): 2 - 0.5 * 1.575 / 1.575 = 1.5; 0.75 - 0.25 = 0.5; 1.25 - 1.0 = 0.25
    evs = [ev(departure=8, requested_kwh=0.5 * FULL_STEP_KWH * 4),
           ev(departure=3, requested_kwh=FULL_STEP_KWH), ev(departure=5, requested_kwh=4 * FULL_STEP_KWH)]
    obs = observe(params, reset(params, make_episode(params, evs)))
    llf, _ = LeastLaxityFirst(params).predict(obs)
    edf, _ = EarliestDeadlineFirst(params).predict(obs)
    np.testing.assert_allclose(llf, [[0.0, 3.0 / 7.0, 1.0]], atol=1e-4)
    np.testing.assert_allclose(edf, [[0.0, 1.0, 3.0 / 7.0]], atol=1e-4)


def test_edf_respects_every_node_of_the_tree():
    nodes = [{"name": "grid", "limit_kw": 12}, {"name": "a", "parent": "grid", "limit_kw": 5},
             {"name": "b", "parent": "grid", "limit_kw": 20}]
    params = tiny_site(nodes=nodes, ports=[port_group("a", count=2), port_group("b", count=2)])
    episode = make_episode(params, [ev(departure=d) for d in (2, 3, 4, 5)])
    state = reset(params, episode)
    action, _ = EarliestDeadlineFirst(params).predict(observe(params, state))
    np.testing.assert_allclose(action, [[5.0 / 7.0, 0.0, 1.0, 0.0]], atol=1e-4)
    share, _ = EqualShare(params).predict(observe(params, state))
    _, _, info = step(params, state, share)
    assert info["site_power_kw"][0] <= 12.0
    root_scale = 12.0 / (5.0 + 14.0)
    np.testing.assert_allclose(share, [[2.5 / 7 * root_scale] * 2 + [root_scale] * 2], atol=1e-4)


def rollout_actions(params, policy, episode):
    """Actions (T, P) and per-step info of env 0 over a whole episode, and the final totals."""
    state, actions, infos = reset(params, episode), [], []
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state))
        state, _, info = step(params, state, action)
        actions.append(action[0])
        infos.append({key: value[0] for key, value in info.items()})
    return np.array(actions), pd.DataFrame(infos), state.totals[0]


def test_as_late_as_possible_waits_then_charges_at_full_power():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 100}])
    episode = make_episode(params, [ev(departure=6, requested_kwh=2 * FULL_STEP_KWH)])
    actions, info, totals = rollout_actions(params, AsLateAsPossible(params), episode)
    np.testing.assert_allclose(actions[:4, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(actions[4:6, 0], 1.0, atol=1e-4)
    np.testing.assert_allclose(info["charged_kwh"][4:6], FULL_STEP_KWH, rtol=1e-5)
    assert totals[kpis.TERM_INDEX["unmet_kwh"]] < 1e-4


def test_round_robin_gives_full_power_in_turns():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 14}], ports=[port_group("grid", count=4)])
    episode = make_episode(params, [ev() for _ in range(4)])
    actions, _, _ = rollout_actions(params, RoundRobin(params), episode)
    served = actions > 0.999
    np.testing.assert_array_equal(served[:4], [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    assert (actions.sum(axis=1) <= 2.0 + 1e-6).all()


@pytest.mark.parametrize("margin_hours", [0.0, 1.0])
def test_price_aware_charges_in_the_cheap_slots_unless_the_deadline_requires_more(margin_hours):
    params = tiny_site(forecast_steps=8, ports=[port_group("grid", count=2)])
    prices = np.full(params.horizon_steps + params.forecast_steps + 1, 0.4)
    prices[2:4] = 0.1
    flexible = ev(departure=8, requested_kwh=2 * FULL_STEP_KWH)
    urgent = ev(departure=6, requested_kwh=6 * FULL_STEP_KWH)
    episode = make_episode(params, [flexible, urgent], price_buy=prices)
    actions, _, totals = rollout_actions(params, PriceAware(params, margin_hours), episode)
    state = reset(params, episode)
    charged = []
    for action in actions:
        before = state.delivered_kwh[0].copy()
        state, _, _ = step(params, state, action[None])
        charged.append(np.where(state.occupied[0], state.delivered_kwh[0] - before, 0.0))
    charged = np.array(charged)
    np.testing.assert_allclose(charged[:, 0], [0, 0, FULL_STEP_KWH, FULL_STEP_KWH, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(charged[:5, 1], FULL_STEP_KWH, rtol=1e-5)  # it leaves at step 6
    assert totals[kpis.TERM_INDEX["unmet_kwh"]] < 1e-4


def v2g_episode(params, n=1, **fields):
    buy = np.full(params.horizon_steps + params.forecast_steps + 1, 0.1)
    buy[0] = 0.5
    spec = dict(departure=8, requested_kwh=2.0, soc=0.6, max_discharge_kw=7.0, consent=True, min_soc=0.2)
    spec.update(fields)
    return make_episode(params, [ev(**spec) for _ in range(n)], price_buy=buy, price_sell=0.9 * buy)


def test_v2g_arbitrage_discharges_at_the_price_peak_and_meets_the_deadline():
    params = tiny_site(forecast_steps=8)
    actions, info, totals = rollout_actions(params, V2GArbitrage(params), v2g_episode(params))
    assert actions[0, 0] == pytest.approx(-1.0)
    assert info["discharged_kwh"][0] == pytest.approx(7.0 * 0.25 / ETA_D)
    assert (actions[1:, 0] >= 0).all() and info["charged_kwh"].sum() > 0
    assert totals[kpis.TERM_INDEX["unmet_kwh"]] < 1e-4
    assert totals[kpis.TERM_INDEX["export_revenue_eur"]] > 0
    _, _, price_aware = rollout_actions(params, PriceAware(params), v2g_episode(params))
    coefficients = params.reward.coefficients()
    assert totals @ coefficients > price_aware @ coefficients


def test_v2g_arbitrage_keeps_the_deadline_and_min_soc_when_slack_is_short():
    params = tiny_site(forecast_steps=8)
    tight = v2g_episode(params, departure=6, requested_kwh=4 * FULL_STEP_KWH)
    actions, _, totals = rollout_actions(params, V2GArbitrage(params), tight)
    assert (actions >= 0).all()
    low = v2g_episode(params, soc=0.25, requested_kwh=0.5)
    state = reset(params, low)
    action, _ = V2GArbitrage(params).predict(observe(params, state))
    assert action[0, 0] < 0
    state, _, _ = step(params, state, action)
    assert state.soc[0, 0] >= 0.2 - 1e-12


def test_v2g_arbitrage_respects_export_limits_of_every_node():
    nodes = [{"name": "grid", "limit_kw": 100, "export_limit_kw": 9},
             {"name": "a", "parent": "grid", "limit_kw": 50, "export_limit_kw": 5}]
    params = tiny_site(forecast_steps=8, nodes=nodes,
                       ports=[port_group("a", count=2), port_group("grid", count=2)])
    episode = v2g_episode(params, n=4)
    episode.ev_requested_kwh[0, 2:] = 1.0  # more slack: the ports on node a discharge first
    state = reset(params, episode)
    action, _ = V2GArbitrage(params).predict(observe(params, state))
    _, terms, info = step(params, state, action)
    assert info["site_power_kw"][0] == pytest.approx(-9.0, abs=1e-3)
    assert info["site_power_kw"][0] >= -9.0
    assert params.port_node.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(-action[0] * 7.0, [4.0, 0.0, 5.0, 0.0], atol=1e-3)
    assert terms[0, kpis.TERM_INDEX["overload_requested_kwh"]] == 0.0
    assert terms[0, kpis.TERM_INDEX["grid_violation_kwh"]] == 0.0


def test_price_threshold_waits_for_cheap_power_unless_the_deadline_is_near():
    params = tiny_site(ports=[port_group("grid", count=2, name="p")])
    prices = np.r_[0.4, np.full(params.horizon_steps + params.forecast_steps, 0.1)]
    urgent = ev(departure=2, requested_kwh=10.0)
    episode = make_episode(params, [ev(requested_kwh=2.0), urgent], price_buy=prices)
    action, _ = PriceThreshold(params, laxity_hours=1.0).predict(observe(params, reset(params, episode)))
    np.testing.assert_allclose(action, [[0.0, 1.0]], atol=1e-4)


@pytest.mark.parametrize("cls", BASELINES)
def test_predictor_protocol_single_and_batch(cls):
    params = load_site("v2g_workplace")
    episode = generator_for(params).sample(params, np.random.default_rng(0), 4)
    state = reset(params, episode)
    for _ in range(40):
        state, _, _ = step(params, state, np.ones((4, params.num_ports)))
    obs = observe(params, state)
    policy = cls(params)
    batch, hidden = policy.predict(obs, state=None, episode_start=np.zeros(4, bool), deterministic=True)
    assert hidden is None
    assert batch.shape == (4, params.num_ports) and batch.dtype == np.float32
    assert ((batch >= -1) & (batch <= 1)).all()
    single, _ = policy.predict(obs[2])
    assert single.shape == (params.num_ports,)
    np.testing.assert_array_equal(single, batch[2])
    again, _ = policy.predict(obs)
    np.testing.assert_array_equal(again, batch)
    with pytest.raises(ValueError, match="observation has shape"):
        policy.predict(np.zeros(layout_size(params) + 1, dtype=np.float32))


def test_evaluate_returns_kpis_and_repeats_for_a_seed():
    params = load_site("caltech", horizon_steps=32, start_hour=6)
    policies = {"edf": EarliestDeadlineFirst(params), "uncontrolled": Uncontrolled(params)}
    first = evaluate(policies, params, num_episodes=3, seed=5)
    assert list(first.columns) == list(KPI_COLUMNS)
    assert list(first.index) == ["edf", "uncontrolled"]
    assert first["score"].isna().all()
    assert np.isfinite(first.drop(columns="score").to_numpy()).all()
    assert (first["request_met_pct"] + first["unmet_pct"]).to_numpy() == pytest.approx(100.0)
    again = evaluate(policies, params, num_episodes=3, seed=5, num_envs=2)
    columns = [c for c in KPI_COLUMNS if c not in ("wall_s", "score")]
    np.testing.assert_allclose(again[columns].to_numpy(), first[columns].to_numpy(), rtol=1e-12, atol=1e-9)
    other = evaluate(policies, params, num_episodes=3, seed=6)
    assert not np.allclose(other[columns].to_numpy(), first[columns].to_numpy())


def test_evaluate_takes_given_episodes_or_a_generator():
    params = load_site("caltech", horizon_steps=32, start_hour=6)
    policies = {"edf": EarliestDeadlineFirst(params)}
    columns = [c for c in KPI_COLUMNS if c not in ("wall_s", "score")]
    seeded = evaluate(policies, params, num_episodes=3, seed=5)
    episode = generator_for(params).sample(params, np.random.default_rng(5), 3)
    given = evaluate(policies, params, episodes=episode)
    np.testing.assert_allclose(given[columns].to_numpy(), seeded[columns].to_numpy(), rtol=1e-12)
    busy = generator_for(load_site(params, scenario={**params.scenario, "sessions_per_day": 300}))
    from_generator = evaluate(policies, params, num_episodes=3, seed=5, episodes=busy)
    assert from_generator.loc["edf", "energy_requested_kwh"] > seeded.loc["edf", "energy_requested_kwh"]
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate(policies, params, num_episodes=2, episodes=episode)
    per_episode = evaluate(policies, params, episodes=episode, per_episode=True)
    assert list(per_episode.index) == [("edf", 0), ("edf", 1), ("edf", 2)]
    assert per_episode["reward_eur"].mean() == pytest.approx(seeded.loc["edf", "reward_eur"])


class OfflineOptimal(EarliestDeadlineFirst):
    """Stand-in for agents.optimal.OfflineOptimal: found by class name, planned by begin()."""

    def __init__(self, params):
        super().__init__(params)
        self.batches = []

    def begin(self, params, episode):
        self.batches.append(episode.num_envs)
        time.sleep(0.05)


def test_evaluate_calls_begin_times_it_and_normalizes_the_score():
    params = load_site("caltech", horizon_steps=32, start_hour=6, scenario={"sessions_per_day": 300})
    best = OfflineOptimal(params)
    policies = {"mine": Uncontrolled(params), "lp": best, "share": EqualShare(params)}
    table = evaluate(policies, params, num_episodes=3, seed=2, num_envs=2, min_gap_eur_per_port_day=0.0)
    assert best.batches == [2, 1]
    assert table.loc["lp", "wall_s"] >= 0.1 / 3
    assert table.loc["mine", "score"] == pytest.approx(0.0)
    assert table.loc["lp", "score"] == pytest.approx(1.0)
    per_episode = evaluate(policies, params, num_episodes=3, seed=2, per_episode=True,
                           min_gap_eur_per_port_day=0.0)
    reward = per_episode["reward_eur"].unstack("policy")
    gap = reward["lp"] - reward["mine"]
    assert (gap > 0).all()
    expected = (reward["share"] - reward["mine"]).sum() / gap.sum()  # a ratio of sums, not a mean of ratios
    assert table.loc["share", "score"] == pytest.approx(expected)
    np.testing.assert_allclose(per_episode.loc["share", "score"], (reward["share"] - reward["mine"]) / gap)


def test_markdown_table_and_written_tables(tmp_path):
    table = pd.DataFrame({"reward_eur": [1.5, np.nan], "name": ["a|b", "c"]},
                         index=pd.Index(["x", "y"], name="policy"))
    assert kpis.markdown_table(table).splitlines() == [
        "| policy | reward_eur | name |", "| --- | ---: | --- |", "| x | 1.50 | a\\|b |", "| y | n/a | c |"]
    paths = kpis.write_tables(table, tmp_path / "out")
    assert [p.name for p in paths] == ["kpis.csv", "kpis.md", "kpis.jsonl"]
    assert pd.read_json(paths[2], lines=True)["policy"].tolist() == ["x", "y"]
    with pytest.raises(ValueError, match="unknown table format"):
        kpis.write_tables(table, tmp_path, ["xlsx"])
