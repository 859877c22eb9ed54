"""Rule-based baselines: node limits, deadline order, the predictor protocol, and the evaluator."""

import numpy as np
import pytest
from helpers import ev, make_episode, port_group, tiny_site

from agents.baselines import EarliestDeadlineFirst, EqualShare, PriceThreshold, Uncontrolled
from agents.evaluate import KPI_COLUMNS, evaluate
from envs.core import reset, step
from envs.observation import layout_size, observe
from envs.parametric import generator_for
from envs.site import load_site

BASELINES = (Uncontrolled, EarliestDeadlineFirst, EqualShare, PriceThreshold)
LIMITED = (EarliestDeadlineFirst, EqualShare, PriceThreshold)

LOADED_SITES = {
    "caltech": {"scenario": {"sessions_per_day": 200}},
    "v2g_workplace": {"scenario": {"sessions_per_day": 80}},
    "city": {"horizon_steps": 48, "start_hour": 6, "scenario": {"sessions_per_day": 4000}},
}


@pytest.fixture(scope="module", params=sorted(LOADED_SITES))
def loaded(request):
    params = load_site(request.param, **LOADED_SITES[request.param])
    policies = {cls.__name__: cls(params) for cls in BASELINES}
    return params, evaluate(policies, params, num_episodes=3, seed=11)


def test_limited_baselines_need_no_scaling_on_a_loaded_site(loaded):
    _, table = loaded
    assert table.loc["Uncontrolled", "overload_requested_kwh"] > 1.0, "the site should be congested"
    for cls in LIMITED:
        assert table.loc[cls.__name__, "overload_requested_kwh"] == 0.0, cls.__name__
        assert table.loc[cls.__name__, "energy_delivered_kwh"] > 0.0, cls.__name__


def test_baselines_never_break_node_limits(loaded):
    _, table = loaded
    assert (table["grid_violation_kwh"] < 1e-9).all()  # the projection's round-off at most


def test_edf_fills_the_headroom_on_a_loaded_site(loaded):
    _, table = loaded
    edf, equal = table.loc["EarliestDeadlineFirst"], table.loc["EqualShare"]
    assert edf["unmet_kwh"] <= equal["unmet_kwh"] + 1e-6
    assert edf["energy_delivered_kwh"] >= 0.99 * table.loc["Uncontrolled", "energy_delivered_kwh"]


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
    with pytest.raises(ValueError, match="observation has shape"):
        policy.predict(np.zeros(layout_size(params) + 1, dtype=np.float32))


def test_evaluate_returns_kpis_and_repeats_for_a_seed():
    params = load_site("caltech", horizon_steps=32, start_hour=6)
    policies = {"edf": EarliestDeadlineFirst(params), "uncontrolled": Uncontrolled(params)}
    first = evaluate(policies, params, num_episodes=3, seed=5)
    assert list(first.columns) == list(KPI_COLUMNS)
    assert list(first.index) == ["edf", "uncontrolled"]
    assert np.isfinite(first.to_numpy()).all()
    again = evaluate(policies, params, num_episodes=3, seed=5, num_envs=2)
    columns = [c for c in KPI_COLUMNS if c != "wall_s"]
    np.testing.assert_allclose(again[columns].to_numpy(), first[columns].to_numpy(), rtol=1e-12, atol=1e-9)
    other = evaluate(policies, params, num_episodes=3, seed=6)
    assert not np.allclose(other[columns].to_numpy(), first[columns].to_numpy())
