"""Every site preset loads, samples and runs a whole episode within its node limits."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.baselines import Uncontrolled
from envs.core import reset, step
from envs.data.fit import FittedGenerator
from envs.data.replay import ReplayGenerator
from envs.data.sessions import read_acn_csv
from envs.dynamics import node_flows, project_to_limits
from envs.generators import generator_for
from envs.observation import observe
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


FIXTURES = Path(__file__).parent / "fixtures"
ACN_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "acn"


@pytest.mark.parametrize("name", builtin_sites())
def test_replay_override_works_on_every_preset(name):
    """The README's ``generator: replay`` override over any preset, fitted ones included."""
    block = {"generator": "replay", "sessions": {"path": str(FIXTURES / "sessions_acn.csv.gz")},
             "days": ["2019-05-06"], "shuffle": False}
    params = load_site(name, scenario=block)
    generator = generator_for(params)
    assert isinstance(generator, ReplayGenerator)
    episode = generator.sample(params, np.random.default_rng(0), 2)
    episode.check(params)
    sessions = read_acn_csv(FIXTURES / "sessions_acn.csv.gz")
    start = pd.Timestamp("2019-05-06", tz="America/Los_Angeles") + pd.Timedelta(minutes=params.start_minute)
    end = start + pd.Timedelta(hours=params.horizon_steps * params.dt_hours)
    arrival, departure = sessions["arrival"], sessions["departure"]
    inside, carried = (arrival >= start) & (arrival < end), (arrival < start) & (departure > start)
    expected = int(inside.sum() + carried.sum())
    assert episode.ev_valid.sum(axis=1).tolist() == [expected, expected]
    base = generator_for(load_site(name))
    if isinstance(base, FittedGenerator):  # the preset's own fleet, not the parametric default
        assert set(episode.ev_battery_kwh[episode.ev_valid]) <= set(base.fleet_battery_kwh.tolist())
    reset(params, episode)


@pytest.mark.skipif(not ACN_DATA.exists(), reason="needs the shared ACN data")
@pytest.mark.parametrize("name", ["caltech_fitted", "jpl", "nl_workplace", "nl_public", "nl_home"])
def test_readme_replay_of_a_real_file_on_the_fitted_presets(name):
    block = {"generator": "replay", "sessions": {"path": "caltech_2019-09-01_2019-12-31.csv.gz",
                                                 "data_dir": str(ACN_DATA)},
             "date_range": ["2019-11-01", "2019-12-31"], "shuffle": False}
    params = load_site(name, scenario=block)
    generator = generator_for(params)
    days = generator.days_for(params)
    assert str(days[0]) >= "2019-11-01" and str(days[-1]) <= "2019-12-31" and len(days) > 40
    episode = generator.sample(params, np.random.default_rng(0), 2)
    episode.check(params)
    assert episode.ev_valid.sum() > 0 and generator.report(params).capped > 0
