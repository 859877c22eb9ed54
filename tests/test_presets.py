"""Every site preset loads, samples and runs a whole episode within its node limits."""

import numpy as np
import pytest

from agents.baselines import Uncontrolled
from envs.core import reset, step
from envs.dynamics import node_flows, project_to_limits
from envs.observation import observe
from envs.parametric import generator_for
from envs.reward import TERM_INDEX
from envs.site import builtin_sites, load_site

TOLERANCE_KW = 1e-6


def test_new_presets_are_listed():
    assert {"dc_depot", "residential"} <= set(builtin_sites())


@pytest.mark.parametrize("name", builtin_sites())
def test_preset_runs_an_episode_within_node_limits(name):
    params = load_site(name)
    episode = generator_for(params).sample(params, np.random.default_rng(1), 3)
    episode.check(params)
    state, policy = reset(params, episode), Uncontrolled(params)
    while state.t < params.horizon_steps:
        t = state.t
        action, _ = policy.predict(observe(params, state))
        projected, site_kw, violation_kw = project_to_limits(params, action * state.max_charge_kw,
                                                             state.node_exo_kw[:, t])
        flows = node_flows(params, projected, state.node_exo_kw[:, t])
        assert (flows <= params.node_import_limit_kw + TOLERANCE_KW).all(), (name, t)
        assert (flows >= -params.node_export_limit_kw - TOLERANCE_KW).all(), (name, t)
        state, terms, info = step(params, state, action)
        np.testing.assert_allclose(info["site_power_kw"], site_kw)
        assert np.isfinite(terms).all()
    assert (state.totals[:, TERM_INDEX["grid_violation_kwh"]] == 0).all(), name
    assert state.totals[:, TERM_INDEX["degradation_kwh"]].sum() > 0, name  # some EV charged


@pytest.mark.parametrize("name", ["dc_depot", "residential"])
def test_new_presets_shape(name):
    params = load_site(name)
    assert params.start_minute == 12 * 60 and params.horizon_steps == params.steps_per_day
    rates = generator_for(params)._arrival_profile(np.arange(24.0))
    assert rates[18:24].sum() > rates[6:12].sum()  # evening and night arrivals
    if name == "dc_depot":
        assert params.num_ports == 8 and (params.port_max_charge_kw == 150).all()
        assert params.node_import_limit_kw[0] == 600
    else:
        assert params.num_ports == 12 and (params.port_max_charge_kw == 11).all()
        assert params.node_import_limit_kw[0] == 60
