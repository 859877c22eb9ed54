"""The declared observation layout, the fixed physical scale and the peak-so-far field."""

import numpy as np
import pytest
from helpers import ev, make_episode, tiny_site

from envs import SmartChargingVectorEnv
from envs.core import reset, step
from envs.observation import (
    NODE_FIELDS,
    PORT_FIELDS,
    declared_layout,
    observation_bounds,
    observation_scale,
    observe,
)
from envs.site import load_site

SITES = ("caltech", "jpl", "v2g_workplace", "dc_depot", "nl_home")


@pytest.mark.parametrize("name", SITES + ("city",))
def test_port_node_and_site_columns_cover_the_observation_once(name):
    params = load_site(name, demand_forecast=name == "jpl")
    layout = declared_layout(params)
    assert layout.port_columns.shape == (params.num_ports, len(PORT_FIELDS))
    assert layout.node_columns.shape == (params.num_nodes, len(NODE_FIELDS))
    columns = np.concatenate([layout.port_columns.ravel(), layout.node_columns.ravel(), layout.site_columns])
    np.testing.assert_array_equal(np.sort(columns), np.arange(layout.size))
    for f, field in enumerate(PORT_FIELDS):
        np.testing.assert_array_equal(layout.port_columns[:, f],
                                      np.arange(params.num_ports) + layout.slices[field].start)
    assert "peak_import_kw" in layout.site_fields
    assert ("expected_arrivals" in layout.site_fields) == (name == "jpl")
    assert "node_headroom_kw" not in layout.site_fields
    with pytest.raises(ValueError):
        layout.port_columns[0, 0] = 1


def _rollout(params, num_envs=4, seed=0):
    env, rng = SmartChargingVectorEnv(num_envs, params), np.random.default_rng(seed + 1)
    obs, _ = env.reset(seed=seed)
    observations, peaks = [obs], [env.state.peak_import_kw.copy()]
    for _ in range(params.horizon_steps - 1):
        obs, *_ = env.step(rng.uniform(-0.2, 1.0, (num_envs, params.num_ports)))
        observations.append(obs)
        peaks.append(env.state.peak_import_kw.copy())
    return np.stack(observations), np.stack(peaks)


@pytest.mark.parametrize("name", SITES)
def test_scaled_observations_are_of_order_one(name):
    params = load_site(name)
    scale = observation_scale(params)
    assert scale.dtype == np.float32 and np.all(scale > 0) and np.all(np.isfinite(scale))
    observations, _ = _rollout(params)
    scaled = np.abs(observations / scale)
    layout = declared_layout(params)
    for field, columns in layout.slices.items():
        largest = scaled[..., columns].max()
        assert largest <= 4.0, f"{name}: {field} reaches {largest:.3g} of its scale"
    per_port = scaled[..., layout.port_columns]
    assert per_port.max() >= 0.5, "the ports should be used"


def test_scale_by_hand():
    params = load_site("jpl")
    layout, scale = declared_layout(params).slices, observation_scale(params)
    np.testing.assert_allclose(scale[layout["max_charge_kw"]], params.port_max_charge_kw)
    np.testing.assert_allclose(scale[layout["remaining_kwh"]],
                               params.port_max_charge_kw * params.port_charge_efficiency * 12.0, rtol=1e-6)
    np.testing.assert_allclose(scale[layout["node_headroom_kw"]], params.node_import_limit_kw)
    assert scale[layout["peak_import_kw"]] == params.node_import_limit_kw[0]
    assert scale[layout["queue_length"]] == params.queue_capacity
    np.testing.assert_allclose(scale[layout["price_buy_eur_kwh"]], 0.35)
    assert np.all(scale[layout["time_of_day"]] == 1) and np.all(scale[layout["weekday"]] == 1)
    nl = load_site("nl_workplace")
    assert observation_scale(nl)[declared_layout(nl).slices["price_sell_eur_kwh"]][0] == np.float32(0.25)


def test_peak_import_so_far_is_observed():
    params = load_site("caltech", horizon_steps=48)
    observations, peaks = _rollout(params)
    column = declared_layout(params).slices["peak_import_kw"]
    observed = observations[..., column.start]
    np.testing.assert_allclose(observed, peaks, rtol=1e-6)
    assert np.all(observed[0] == 0) and observed[-1].min() > 0
    assert np.all(np.diff(observed, axis=0) >= 0)
    low, high = observation_bounds(params)
    assert low[column] == 0 and high[column] == np.inf


def test_peak_by_hand():
    params = tiny_site()
    episode = make_episode(params, [ev(arrival=0, departure=6, battery_kwh=40.0, requested_kwh=30.0)],
                           load={"grid": 5.0})
    state = reset(params, episode)
    column = declared_layout(params).slices["peak_import_kw"].start
    site_kw = []
    for fraction in (0.5, 1.0, 0.0):
        state, _, info = step(params, state, np.array([[fraction]]))
        site_kw.append(info["site_power_kw"][0])
        assert observe(params, state)[0, column] == np.float32(max(site_kw))
    assert site_kw[1] > site_kw[0] > site_kw[2] > 0
