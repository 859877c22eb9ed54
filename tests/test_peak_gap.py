"""experiments/learning/peak_gap.py: a policy's site import capped at a daily peak, the guard still served."""

import importlib.util
from pathlib import Path

import numpy as np

from agents.baselines import AsLateAsPossible, Uncontrolled
from agents.evaluate import episodes_for, rollout
from agents.guards import DeadlineGuard
from envs.core import reset, step
from envs.observation import observe
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_site("v2g_workplace", horizon_steps=40, start_hour=8)


def _script():
    path = ROOT / "experiments" / "learning" / "peak_gap.py"
    spec = importlib.util.spec_from_file_location("peak_gap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cap_above_every_import_changes_nothing_and_a_low_one_yields_only_to_the_guard():
    days = episodes_for(PARAMS, None, 3, 11)
    free = rollout(Uncontrolled(PARAMS), PARAMS, days)
    loose = _script().DailyPeakCap(Uncontrolled(PARAMS), np.full(3, 1e6), 1.0)
    unchanged = rollout(loose, PARAMS, days)["peak_import_kw"]
    np.testing.assert_allclose(unchanged, free["peak_import_kw"], rtol=1e-5)  # float32 actions

    caps = free["peak_import_kw"] - 30.0
    capped = _script().DailyPeakCap(Uncontrolled(PARAMS), caps, 1.0)
    capped.begin(PARAMS, days)
    guard, field = DeadlineGuard(PARAMS, 1.0, fit_headroom=True), AsLateAsPossible(PARAMS).field
    state = reset(PARAMS, days)
    while state.t < PARAMS.horizon_steps:
        obs = observe(PARAMS, state)
        forced_kw = (np.maximum(guard.apply(obs, np.zeros((3, PARAMS.num_ports), np.float32)), 0.0)
                     * field(obs, "max_charge_kw")).sum(axis=1)
        inflexible_kw = state.node_exo_kw[:, state.t, 0]
        state, _, info = step(PARAMS, state, capped.predict(obs)[0])
        assert np.all(info["site_power_kw"] <= np.maximum(caps, inflexible_kw + forced_kw) + 1e-3)
    lowered = free["peak_import_kw"] - state.peak_import_kw
    assert np.all(lowered > -1e-3) and np.sum(lowered > 10.0) >= 2  # the third day's peak is the building's


def test_a_ceiling_at_the_peak_so_far_is_passed_only_where_the_guard_forces_it():
    days = episodes_for(PARAMS, None, 3, 11)
    ceiling = _script().PeakSoFarCeiling(Uncontrolled(PARAMS), 1.0, allowance_kw=0.0)
    ceiling.begin(PARAMS, days)
    guard, field = DeadlineGuard(PARAMS, 1.0, fit_headroom=True), AsLateAsPossible(PARAMS).field
    state, passed = reset(PARAMS, days), 0
    while state.t < PARAMS.horizon_steps:
        obs = observe(PARAMS, state)
        forced_kw = (np.maximum(guard.apply(obs, np.zeros((3, PARAMS.num_ports), np.float32)), 0.0)
                     * field(obs, "max_charge_kw")).sum(axis=1)
        inflexible_kw, peak_kw = state.node_exo_kw[:, state.t, 0], state.peak_import_kw.copy()
        state, _, info = step(PARAMS, state, ceiling.predict(obs)[0])
        assert np.all(info["site_power_kw"] <= np.maximum(peak_kw, inflexible_kw + forced_kw) + 1e-3)
        passed += int(np.sum(info["site_power_kw"] > peak_kw + 1e-3))
    assert passed > 0  # the building and the guard still raise the peak from 0
