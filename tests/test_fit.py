"""The fitted generator: fitting reproduces session distributions, sampling, presets, validation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from envs.core import reset, step
from envs.data.elaad import elaad_fidelity, elaad_scenario, read_elaad
from envs.data.fit import FittedGenerator, inverse_cdf
from envs.data.fit_presets import fit_site_preset, fleet_from_ev_specs
from envs.data.fitting import (
    calibrate_capped_energy,
    fidelity,
    fit_sessions,
    generated_sessions,
    pooled_quantiles,
)
from envs.data.sessions import read_sessions
from envs.generators import generator_for
from envs.parametric import ParametricGenerator
from envs.site import SiteError, load_site

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
DATA = ROOT.parent / "shared" / "data"
FITTED_PRESETS = ("caltech_fitted", "jpl", "nl_workplace", "nl_public", "nl_home")
WEEKEND_ERROR = "departure_error_quantiles_hours_weekend"
SITE = {"name": "garage", "nodes": [{"name": "grid", "limit_kw": 200}],
        "ports": [{"node": "grid", "count": 20, "max_charge_kw": 7.4}]}


def synthetic_sessions(days=140, weekday_rate=40.0, weekend_rate=10.0, seed=0, start="2021-04-05",
                       tz="Europe/Amsterdam", weekend_error_hours=1.0) -> pd.DataFrame:
    """Canonical sessions from known laws: weekday arrivals a 70/30 mixture of N(8.5 h, 1 h) and
    N(13 h, 2 h), weekend ones uniform in 9..20 h; lognormal stays shortening through the day; energies
    a gamma-distributed kW times the stay, capped at 6.6 kW; announced departure off by N(0, 30 min),
    plus ``weekend_error_hours`` for weekend arrivals."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=days, freq="D")
    weekend = dates.day_of_week >= 5
    counts = rng.poisson(np.where(weekend, weekend_rate, weekday_rate))
    day = np.repeat(np.arange(days), counts)
    is_weekend = weekend[day]
    n = len(day)
    morning = rng.random(n) < 0.7
    hour = np.where(morning, rng.normal(8.5, 1.0, n), rng.normal(13.0, 2.0, n)) % 24
    hour = np.where(is_weekend, rng.uniform(9, 20, n), hour)
    dwell = np.exp(rng.normal(np.log(np.clip(9 - 0.5 * (hour - 8), 1, 10)), 0.4))
    energy = np.minimum(6.6 * dwell, 1.5 * dwell * rng.gamma(4.0, 0.5, n))
    arrival = (dates[day].tz_localize(None) + pd.to_timedelta(hour, unit="h")).tz_localize(tz).floor("s")
    departure = arrival + pd.to_timedelta(dwell, unit="h")
    error = rng.normal(0, 0.5, n) + weekend_error_hours * is_weekend
    announced = departure + pd.to_timedelta(error, unit="h")
    return pd.DataFrame({
        "arrival": arrival, "departure": departure.floor("s"),
        "announced_departure": np.maximum(announced, arrival).floor("s"),
        "requested_kwh": energy, "delivered_kwh": energy, "station_id": "",
        "session_id": np.arange(n).astype(str),
    }).sort_values("arrival", ignore_index=True)


def fitted_site(scenario: dict, **site) -> dict:
    return {**SITE, **site, "scenario": scenario}


@pytest.fixture(scope="module")
def synthetic():
    sessions = synthetic_sessions()
    fitted = fit_sessions(sessions, 15, num_quantiles=41)
    params = load_site(fitted_site(fitted))
    return sessions, fitted, params, fidelity(sessions, generator_for(params), params, 2800)


@pytest.mark.parametrize("group", ["overall", "weekday", "weekend"])
def test_fit_reproduces_synthetic_sessions(synthetic, group):
    figures = synthetic[3][group]
    for name in ("arrival_ks", "dwell_ks", "energy_ks", "departure_error_ks"):
        assert figures[name] <= 0.05, (name, figures)
    assert abs(figures["sessions_per_day_rel_error"]) <= 0.05, figures
    assert abs(figures["model_dwell_energy_spearman"] - figures["dwell_energy_spearman"]) < 0.1, figures


def test_fit_recovers_the_known_rates_and_tables(synthetic):
    sessions, fitted, params, figures = synthetic
    assert figures["sessions"] == len(sessions) and figures["days"] == 140
    assert sum(fitted["arrivals_weekday"]) == pytest.approx(40, rel=0.05)
    assert sum(fitted["arrivals_weekend"]) == pytest.approx(10, rel=0.1)
    assert np.mean(fitted["day_of_week_factors"][:5]) == pytest.approx(1.0, abs=1e-3)
    dwell = np.array(fitted["dwell_quantiles_hours"])
    assert dwell.shape == (24, 41) and (np.diff(dwell, axis=1) >= 0).all()
    assert dwell[8, 20] == pytest.approx(np.clip(9 - 0.5 * 0.5, 1, 10), rel=0.1)  # median of 8-9 h arrivals
    assert np.array(fitted["departure_error_quantiles_hours"])[:, 20] == pytest.approx(0, abs=0.15)
    weekend_error = np.array(fitted[WEEKEND_ERROR])  # 400 weekend sessions, announced 1 h later
    assert weekend_error.shape == (5, 41) and weekend_error[:, 20] == pytest.approx(1.0, abs=0.2)
    copula = np.array(fitted["dwell_energy_copula"])
    assert copula.shape == (20, 20) and np.allclose(copula.sum(axis=0), 0.05, atol=1e-4)
    assert copula[:5, :5].sum() > 1.5 / 16, "short stays go with small energies"
    assert np.array(fitted["dwell_energy_copula_weekend"]).shape == (6, 6)  # 400 weekend sessions
    generator = generator_for(params)
    assert isinstance(generator, FittedGenerator)


def test_fit_falls_back_to_one_departure_error_table_with_few_weekend_sessions():
    sessions = synthetic_sessions(weekend_rate=1.0)  # about 40 weekend sessions
    fitted, again = (fit_sessions(sessions, 15, num_quantiles=41) for _ in range(2))
    assert fitted == again
    assert WEEKEND_ERROR not in fitted and "dwell_quantiles_hours_weekend" not in fitted
    assert len(fitted["departure_error_quantiles_hours"]) == len(fitted["departure_error_dwell_hours"]) + 1
    split = fit_sessions(sessions, 15, num_quantiles=41, min_block_sessions=20)
    assert np.array(split[WEEKEND_ERROR])[:, 20] == pytest.approx(1.0, abs=0.35)


def test_pooled_quantiles_pool_the_nearest_groups():
    values = np.array([0.0, 1.0, 2.0, 10.0, 20.0, 21.0, 22.0, 23.0])
    group = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    table = pooled_quantiles(values, group, 4, 3, np.array([0.0, 1.0]))
    np.testing.assert_array_equal(table, [[0, 2], [0, 23], [20, 23], [20, 23]])
    circular = pooled_quantiles(values, group, 4, 3, np.array([0.0, 1.0]), circular=True)
    np.testing.assert_array_equal(circular[3], [0, 23])  # group 3 neighbours 2 and 0


@pytest.fixture(scope="module", params=["caltech", "jpl"])
def acn(request):
    files = [DATA / "acn" / f"{request.param}_2019-{span}.csv.gz" for span in ("05-01_2019-08-31",
                                                                              "09-01_2019-12-31")]
    if not all(path.is_file() for path in files):
        pytest.skip("the ACN session files are not present")
    sessions = read_sessions([str(path) for path in files], "acn_csv")
    fitted = fit_sessions(sessions, 15, num_quantiles=41, energy_column="delivered_kwh")
    params = load_site(fitted_site(fitted))
    return fidelity(sessions, generator_for(params), params, 2800, energy_column="delivered_kwh")


@pytest.mark.parametrize("group", ["overall", "weekday", "weekend"])
def test_fit_reproduces_the_acn_sessions(acn, group):
    figures = acn[group]
    for name in ("arrival_ks", "dwell_ks", "energy_ks"):
        assert figures[name] <= 0.05, (name, figures)
    assert abs(figures["sessions_per_day_rel_error"]) <= 0.05, figures


def test_sampling_is_deterministic_and_seed_dependent(synthetic):
    params = synthetic[2].replace(horizon_steps=200, start_minute=6 * 60)
    generator = generator_for(params)
    first, again = (generator.sample(params, np.random.default_rng(5), 8) for _ in range(2))
    other = generator.sample(params, np.random.default_rng(6), 8)
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(again, field.name)
        assert (a is None and b is None) or np.array_equal(a, b), field.name
    assert not np.array_equal(first.ev_valid, other.ev_valid) or not np.array_equal(
        first.ev_arrival_step, other.ev_arrival_step)
    first.check(params)


def test_sampled_evs_are_consistent(synthetic):
    params = synthetic[2]
    scenario = {**params.scenario, "soc_arrival_range": [0.3, 0.9],
                "fleet": [{"battery_kwh": 20, "max_charge_kw": 7.4, "share": 0.5},
                          {"battery_kwh": 50, "max_charge_kw": 11, "max_dc_charge_kw": 50, "share": 0.5}]}
    params = params.replace(scenario=scenario)
    episode = generator_for(params).sample(params, np.random.default_rng(1), 64)
    valid = episode.ev_valid
    battery, soc = episode.ev_battery_kwh[valid], episode.ev_soc_arrival[valid]
    request = episode.ev_requested_kwh[valid]
    assert set(np.unique(battery)) == {20.0, 50.0}
    assert (request <= battery + 1e-9).all() and (request <= (1 - soc) * battery + 1e-9).all()
    assert (soc >= 0).all() and (soc <= 0.9).all()
    assert (battery[request > 20] == 50).all(), "requests above the small battery come from the large one"
    assert set(np.unique(episode.ev_max_charge_kw[valid])) == {7.4, 11.0}
    dc = load_site(params.replace(scenario={**scenario, "port_current": "dc"}))
    episode = generator_for(dc).sample(dc, np.random.default_rng(1), 4)
    assert set(np.unique(episode.ev_max_charge_kw[episode.ev_valid])) == {7.4, 50.0}
    valid = episode.ev_valid
    assert (episode.ev_announced_departure_step[valid] > episode.ev_arrival_step[valid]).all()


def test_rates_follow_the_calendar_and_rebin_to_the_step():
    rates = [0.0] * 12 + [1.0] * 12
    scenario = {"generator": "fitted", "arrivals_weekday": rates, "arrivals_weekend": [0.0] * 24,
                "day_of_week_factors": [2, 1, 1, 1, 1, 1, 1], "dwell_quantiles_hours": [[1, 2]],
                "energy_quantiles_kwh": [[1, 2]], "weekday": [4]}
    params = load_site(fitted_site(scenario, dt_minutes=30, horizon_steps=48 * 4))
    generator = generator_for(params)
    weekday, weekend = generator.step_rates(30)
    assert weekday.shape == (48,) and weekday.sum() == pytest.approx(12) and weekend.sum() == 0
    np.testing.assert_allclose(weekday[24:], 0.5)
    episode = generator.sample(params, np.random.default_rng(0), 400)
    day = episode.ev_arrival_step[episode.ev_valid] // 48  # Friday, Saturday, Sunday, Monday
    counts = np.bincount(day, minlength=4) / 400
    assert counts[1] == counts[2] == 0
    assert counts[0] == pytest.approx(12, rel=0.05) and counts[3] == pytest.approx(24, rel=0.05)
    assert (episode.ev_arrival_step[episode.ev_valid] % 48 >= 24).all()


def test_inverse_cdf():
    table = np.array([[0.0, 1.0, 3.0], [10.0, 10.0, 20.0]])
    values = inverse_cdf(table, np.array([0, 0, 1, 1]), np.array([0.25, 0.75, 0.5, 1.0]))
    np.testing.assert_allclose(values, [0.5, 2.0, 10.0, 20.0])


def test_copula_couples_dwell_and_energy_levels():
    scenario = {**VALID, "dwell_quantiles_hours": [[0, 1]], "energy_quantiles_kwh": [[0, 1]],
                "fleet": [{"battery_kwh": 100, "max_charge_kw": 11}], "soc_arrival_range": [0, 0],
                "dwell_energy_copula": [[1, 0], [0, 1]], "dwell_energy_copula_weekend": [[0, 1], [1, 0]]}
    params = load_site(fitted_site(scenario, dt_minutes=1))
    episode = generator_for(params).sample(params, np.random.default_rng(0), 14)
    valid = episode.ev_valid
    long_stay = (episode.ev_departure_step - episode.ev_arrival_step)[valid] > 30
    large = episode.ev_requested_kwh[valid] > 0.5
    weekend = np.broadcast_to(episode.weekday[:, None] >= 5, valid.shape)[valid]
    assert (long_stay == large)[~weekend].mean() > 0.97 and (long_stay != large)[weekend].mean() > 0.97


def test_weekend_arrivals_draw_the_weekend_departure_error():
    # Announced minus real departure: exactly 0 h on weekdays and +2 h (8 steps of 15 min) on weekends,
    # whatever the stay bin; episodes of three days from Friday.
    scenario = {**VALID, "departure_error_dwell_hours": [3.0],
                "departure_error_quantiles_hours": [[0, 0]] * 2, WEEKEND_ERROR: [[2, 2]] * 2, "weekday": [4]}
    params = load_site(fitted_site(scenario, horizon_steps=3 * 96))
    episode = generator_for(params).sample(params, np.random.default_rng(0), 16)
    valid = episode.ev_valid
    error = (episode.ev_announced_departure_step - episode.ev_departure_step)[valid]
    weekend = episode.ev_arrival_step[valid] // 96 >= 1  # Saturday or Sunday
    assert 0.3 < weekend.mean() < 0.8
    np.testing.assert_array_equal(error, np.where(weekend, 8, 0))


def test_the_weekend_departure_error_leaves_the_random_stream_unchanged():
    # One-day episodes from midnight, a week of them: the weekday of an episode is that of its arrivals.
    scenario = {**VALID, "departure_error_dwell_hours": [3.0], "weekday": list(range(7)),
                "departure_error_quantiles_hours": [[-1, 0, 1], [-2, -1, 0.5]]}
    episodes = {}
    for name, weekend_table in (("without", None), ("same", scenario["departure_error_quantiles_hours"]),
                                ("later", [[0, 1, 2], [-1, 0, 1.5]])):
        changes = {} if weekend_table is None else {WEEKEND_ERROR: weekend_table}
        params = load_site(fitted_site({**scenario, **changes}))
        episodes[name] = generator_for(params).sample(params, np.random.default_rng(3), 14)
    without, same, later = episodes["without"], episodes["same"], episodes["later"]
    weekend = np.broadcast_to(without.weekday[:, None] >= 5, without.ev_valid.shape) & without.ev_valid
    assert weekend.any()
    for field in dataclasses.fields(without):
        a, b, c = (getattr(e, field.name) for e in (without, same, later))
        assert (a is None and b is None) or np.array_equal(a, b), field.name
        if field.name != "ev_announced_departure_step":
            assert (a is None and c is None) or np.array_equal(a, c), field.name
    shift = later.ev_announced_departure_step - without.ev_announced_departure_step
    assert (shift[weekend] > 0).mean() > 0.5 and (shift[~weekend] == 0).all()


def test_cap_request_to_stay_by_hand():
    # Stays of exactly 2 h (8 steps of 15 min), requests uniform in 0..40 kWh. The fastest port gives
    # 10 kW and the best efficiency is 0.95 (another port's), so the cap is 2 h * 8 kW * 0.95 = 15.2 kWh
    # for the 8 kW car and 2 h * 10 kW * 0.95 = 19 kWh for the 22 kW one.
    ports = [{"name": "fast", "node": "grid", "count": 2, "max_charge_kw": 10, "charge_efficiency": 0.9},
             {"name": "slow", "node": "grid", "count": 2, "max_charge_kw": 4, "charge_efficiency": 0.95}]
    fleet = [{"battery_kwh": 100, "max_charge_kw": 8}, {"battery_kwh": 100, "max_charge_kw": 22}]
    scenario = {**VALID, "dwell_quantiles_hours": [[2, 2]], "energy_quantiles_kwh": [[0, 40]],
                "soc_arrival_range": [0, 0], "fleet": fleet}
    episodes = []
    for cap in (False, True):
        params = load_site(fitted_site({**scenario, "cap_request_to_stay": cap}, ports=ports))
        episodes.append(generator_for(params).sample(params, np.random.default_rng(0), 8))
    drawn, capped = episodes
    valid = drawn.ev_valid
    assert (capped.ev_valid == valid).all() and (capped.ev_max_charge_kw == drawn.ev_max_charge_kw).all()
    assert ((drawn.ev_departure_step - drawn.ev_arrival_step)[valid] == 8).all()
    cap = np.where(drawn.ev_max_charge_kw == 8, 15.2, 19.0)[valid]
    request, before = capped.ev_requested_kwh[valid], drawn.ev_requested_kwh[valid]
    over = before > cap
    assert 0.3 < over.mean() < 0.7 and set(np.unique(cap)) == {15.2, 19.0}
    np.testing.assert_allclose(request[over], cap[over], rtol=1e-12)
    np.testing.assert_array_equal(request[~over], before[~over])
    np.testing.assert_array_equal(capped.ev_soc_arrival, drawn.ev_soc_arrival)


@pytest.fixture(scope="module")
def slow_ports(synthetic):
    # 4.4 kW ports: the cap binds on a good share of the synthetic sessions' energies.
    ports = [{"node": "grid", "count": 20, "max_charge_kw": 4.4}]
    params = load_site(fitted_site({**synthetic[1], "cap_request_to_stay": True}, ports=ports))
    return params, generator_for(params)


def test_calibration_restores_the_fitted_energy_quantiles_under_the_cap(slow_ports):
    params, capped = slow_ports
    calibrated = dataclasses.replace(capped, energy_quantiles_kwh=calibrate_capped_energy(capped, params))
    target = np.minimum(capped.energy_quantiles_kwh, capped.fleet_battery_kwh[-1])
    levels = np.linspace(0, 1, target.shape[-1])[1:-1]

    def quantile_error(generator):  # mean over the busy blocks of the mean |quantile - target| in kWh
        evs = generated_sessions(generator, params, 2800, seed=1)
        block = evs["slot"] * round(params.dt_hours * 60) * target.shape[1] // (24 * 60)
        errors = []
        for weekend, row in np.ndindex(target.shape[:2]):
            energy = evs["energy_kwh"][(block == row) & (evs["weekend"] == weekend)]
            if len(energy) >= 400:
                errors.append(np.abs(np.quantile(energy, levels) - target[weekend, row, 1:-1]).mean())
        assert len(errors) >= 10
        return np.mean(errors)

    uncapped = quantile_error(dataclasses.replace(capped, cap_request_to_stay=False))  # sampling noise
    before, after = quantile_error(capped), quantile_error(calibrated)
    assert before > 2.5 * uncapped, (before, uncapped)
    assert after < 0.5 * before and after < 1.5 * uncapped, (after, before, uncapped)


def test_calibration_is_deterministic_and_keeps_valid_tables(slow_ports):
    params, capped = slow_ports
    first, again = (calibrate_capped_energy(capped, params, rounds=3, draws=512) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert first.shape == capped.energy_quantiles_kwh.shape and np.isfinite(first).all()
    assert (first >= 0).all() and (np.diff(first, axis=-1) >= 0).all()
    assert (first <= capped.energy_quantiles_kwh[..., -1:]).all(), "within the fitted range"
    assert (first[..., 1:-1] >= capped.energy_quantiles_kwh[..., 1:-1] - 1e-9).mean() > 0.95, "raised"


@pytest.mark.parametrize(("name", "site"), [("caltech_fitted", {"scenario": {"cap_request_to_stay": False}}),
                                            ("jpl", {}), ("nl_home", {"dt_minutes": 30})])
def test_forecast_expects_the_capped_requests(name, site):
    params = load_site(name, demand_forecast=True, **site)
    generator = generator_for(params)
    episode = generator.sample(params, np.random.default_rng(0), 8192 if name == "nl_home" else 2048)
    rates = generator.arrival_rates(params, episode.weekday)
    expected = rates * generator.mean_request_kwh(params, episode.weekday)
    np.testing.assert_allclose(episode.demand_forecast[:, 0, 1], expected[:, 1:params.forecast_steps + 1],
                               rtol=1e-5)
    requested = np.where(episode.ev_valid, episode.ev_requested_kwh, 0.0).sum()
    assert requested == pytest.approx(expected.sum(), rel=0.03)
    uncapped = dataclasses.replace(generator, cap_request_to_stay=False)
    uncapped = uncapped.mean_request_kwh(params, episode.weekday)
    if generator.cap_request_to_stay:
        assert expected.sum() < 0.99 * (rates * uncapped).sum()
    else:
        np.testing.assert_array_equal(expected, rates * uncapped)


@pytest.mark.parametrize("name", FITTED_PRESETS)
def test_fitted_presets_load_sample_and_step(name):
    params = load_site(name, scenario={"weekday": list(range(7))})
    generator = generator_for(params)
    assert isinstance(generator, FittedGenerator)
    episode = generator.sample(params, np.random.default_rng(0), 7)
    episode.check(params)
    state = reset(params, episode)
    for _ in range(4):
        state, terms, _ = step(params, state, np.ones((7, params.num_ports)))
        assert np.isfinite(terms).all()
    assert state.t == 4


def test_generator_dispatch():
    params = load_site(SITE)
    assert isinstance(generator_for(params), ParametricGenerator)
    assert isinstance(generator_for(load_site(fitted_site({"generator": "parametric"}))), ParametricGenerator)
    fitted = {"generator": "fitted", "arrivals_weekday": [1.0] * 24, "dwell_quantiles_hours": [[1, 5]],
              "energy_quantiles_kwh": [[2, 9]]}
    assert isinstance(generator_for(load_site(fitted_site(fitted))), FittedGenerator)
    with pytest.raises(SiteError, match=r"scenario\.generator must be 'parametric'.* 'fitted'"):
        generator_for(load_site(fitted_site({"generator": "replayed"})))


VALID = {"generator": "fitted", "arrivals_weekday": [0.5] * 96, "dwell_quantiles_hours": [[1, 5]] * 24,
         "energy_quantiles_kwh": [[2, 9]] * 24}


@pytest.mark.parametrize(("changes", "field"), [
    ({"arrivals_weekday": None}, "arrivals_weekday is required"),
    ({"arrivals_weekday": [1.0] * 7}, "arrivals_weekday must list one rate per slot"),
    ({"arrivals_weekend": [1.0] * 48}, "arrivals_weekend must list one rate per slot"),
    ({"arrivals_weekday": [-1.0] * 96}, "arrivals_weekday must be >= 0"),
    ({"arrivals_weekday": ["many"] * 96}, "arrivals_weekday must be a list of numbers"),
    ({"dwell_quantiles_hours": [[5, 1]] * 24}, "dwell_quantiles_hours must be nondecreasing"),
    ({"dwell_quantiles_hours": [[1, 2], [1, 2, 3]]}, "dwell_quantiles_hours must be a list of numbers"),
    ({"dwell_quantiles_hours": [[1, 2]] * 7}, "dwell_quantiles_hours must have one row per block"),
    ({"energy_quantiles_kwh": [[-2, 9]] * 24}, "energy_quantiles_kwh must be >= 0"),
    ({"energy_quantiles_kwh_weekend": [[2, 9]] * 12}, "energy_quantiles_kwh_weekend must have one row"),
    ({"energy_quantiles_kwh": [1, 2]}, "energy_quantiles_kwh must be a non-empty list of equal-length"),
    ({"day_of_week_factors": [1] * 6}, "day_of_week_factors must list 7 values"),
    ({"arrival_scale": -1}, "arrival_scale must be a number"),
    ({"dwell_energy_copula": [[1, 0, 0], [0, 1, 0]]}, "dwell_energy_copula must be a square table"),
    ({"dwell_energy_copula_weekend": [[1, 0], [0, 0]]}, "dwell_energy_copula_weekend must be a square"),
    ({"departure_error_quantiles_hours": [[0, 1], [0, 1]]}, "departure_error_quantiles_hours must have"),
    ({"departure_error_quantiles_hours": [[0, 1], [0, 1]], "departure_error_dwell_hours": [3, 3]},
     "departure_error_quantiles_hours must have"),
    ({"departure_error_quantiles_hours": [[0, 1]] * 3, "departure_error_dwell_hours": [3, 2]},
     "departure_error_dwell_hours must be increasing"),
    ({WEEKEND_ERROR: [[0, 1], [0, 1]]}, WEEKEND_ERROR + " must have >= 2 quantiles per row and one row more"),
    ({"departure_error_quantiles_hours": [[0, 1]] * 2, "departure_error_dwell_hours": [3],
      WEEKEND_ERROR: [[0, 1, 2]] * 2}, WEEKEND_ERROR + r" must have .* weekday\), got shape \(2, 3\)"),
    ({WEEKEND_ERROR: [[1, 0]]}, WEEKEND_ERROR + " must be nondecreasing"),
    ({WEEKEND_ERROR: "late"}, WEEKEND_ERROR + " must be a list of numbers"),
    ({"port_current": "three-phase"}, "port_current must be 'ac' or 'dc'"),
    ({"fleet": [{"battery_kwh": 50, "max_charge_kw": 7, "color": "red"}]},
     r"fleet\[0\]\.color is not a known"),
    ({"fleet": [{"battery_kwh": 0, "max_charge_kw": 7}]}, r"fleet\[0\]\.battery_kwh must be > 0"),
    ({"fleet": []}, "fleet must be a non-empty list"),
    ({"sessions_per_day": 30}, "sessions_per_day is not used by the fitted generator"),
    ({"dwell_median_hours": 3}, "dwell_median_hours is not a known field"),
    ({"soc_arrival_range": [0.8, 0.2]}, "soc_arrival_range must satisfy"),
    ({"cap_request_to_stay": "yes"}, "cap_request_to_stay must be true or false, got 'yes'"),
])
def test_bad_fitted_fields_name_the_field(changes, field):
    scenario = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    params = load_site(fitted_site(scenario))
    with pytest.raises(SiteError, match=rf"site 'garage': scenario\.{field}"):
        generator_for(params)


def test_fleet_from_ev_specs_merges_identical_models():
    fleet = fleet_from_ev_specs(json.loads((FIXTURES / "fit_ev_specs.json").read_text()))
    assert [m["battery_kwh"] for m in fleet] == [60.0, 40.0]
    assert [m["share"] for m in fleet] == [0.7, 0.3]
    assert fleet[1]["max_dc_discharge_kw"] == 7.0 and fleet[1]["max_charge_kw"] == 7.4


@pytest.mark.parametrize("folder", [FIXTURES / "fit_elaad", DATA / "elaad"], ids=["fixture", "elaad"])
@pytest.mark.parametrize("kind", ["private", "public", "workplace"])
def test_elaad_statistics_become_a_faithful_generator(folder, kind):
    if not folder.is_dir():
        pytest.skip("the ElaadNL files are not present")
    stats = read_elaad(folder, kind)
    assert stats.arrival_share_weekday.sum() == pytest.approx(1.0)
    assert (stats.arrival_share_weekend is None) == (kind == "workplace")
    assert stats.quantile_levels[0] == 0 and stats.quantile_levels[-1] == 1
    assert (np.diff(stats.connection_hours) >= 0).all() and stats.mean_energy_kwh.shape == (48,)
    if kind == "workplace":
        with pytest.raises(ValueError, match="give weekend_ratio"):
            elaad_scenario(stats, 10.0)
    fitted = elaad_scenario(stats, 10.0, weekend_ratio=0.2 if kind == "workplace" else None)
    params = load_site(fitted_site(fitted))
    figures = elaad_fidelity(stats, generator_for(params), params, 1400)
    overall = figures["overall"]
    for name in ("arrival_ks", "dwell_ks", "energy_ks"):
        assert overall[name] <= 0.05, (name, overall)
    for group in ("overall", "weekday", "weekend"):
        assert abs(figures[group]["sessions_per_day_rel_error"]) <= 0.05
    assert overall["slot_mean_energy_rel_error_scaled"] < 0.1


def test_fit_site_preset_from_elaad_fixture(tmp_path):
    output = tmp_path / "street.yaml"
    figures = fit_site_preset({
        "sessions": {"path": str(FIXTURES / "fit_elaad"), "format": "elaad", "kind": "public",
                     "sessions_per_weekday": 6},
        "fit": {"block_minutes": 60, "num_quantiles": 21}, "site_from": "caltech", "keep_scenario": True,
        "site": {"description": "a test street"}, "scenario": {"v2g_consent_share": 0.0},
        "comment": "Test street.", "output": str(output), "fidelity_days": 700,
    })
    text = output.read_text()
    assert text.startswith("# Test street.\n# fit_scenario: scenario from the ElaadNL statistics (fit_elaad/")
    params = load_site(output)
    assert params.name == "street" and params.num_ports == 54
    assert "sessions_per_day" not in params.scenario and len(params.scenario["fleet"]) == 3
    assert isinstance(generator_for(params), FittedGenerator)
    assert json.loads(output.with_suffix(".fidelity.json").read_text()) == figures


def test_refitting_a_preset_in_place_changes_nothing(tmp_path):
    output = tmp_path / "depot.yaml"
    reader = {"columns": {"arrival": "start", "departure": "end", "announced_departure": "planned_end",
                          "requested_kwh": "kwh", "session_id": "id"},
              "sep": ";", "decimal": ",", "date_format": "%d.%m.%Y %H:%M", "tz": "Europe/Amsterdam"}
    config = {"sessions": {"path": str(FIXTURES / "fit_sessions.csv"), "format": "csv", "reader": reader},
              "fit": {"min_block_sessions": 20}, "site_from": "v2g_workplace", "output": str(output),
              "scenario": {"cap_request_to_stay": True}, "fidelity_days": 70}
    quality = fit_site_preset(config)["data_quality"]
    assert (quality["rows_read"], quality["sessions_kept"], quality["dropped"]) == (258, 258, {})
    first = output.read_text()
    assert "# fit_scenario: energy tables calibrated" in first
    fit_site_preset({**config, "site_from": str(output), "scenario": {}})
    assert output.read_text() == first
    assert load_site(output).scenario["cap_request_to_stay"] is True
    assert WEEKEND_ERROR in yaml.safe_load(first)["scenario"]  # 31 weekend sessions
    fit_site_preset({**config, "site_from": str(output), "fit": {"min_block_sessions": 50}})
    assert WEEKEND_ERROR not in load_site(output).scenario, "the weekend error table of site_from is dropped"


def test_fit_scenario_script_writes_a_preset_and_its_fidelity(tmp_path):
    output = tmp_path / "depot.yaml"
    reader = ("{columns: {arrival: start, departure: end, announced_departure: planned_end, "
              "requested_kwh: kwh, session_id: id}, sep: ';', decimal: ',', date_format: '%d.%m.%Y %H:%M', "
              "tz: Europe/Amsterdam}")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fit_scenario.py"),
         f"sessions.path={FIXTURES / 'fit_sessions.csv'}",
         "sessions.format=csv", f"++sessions.reader={reader}", "site_from=v2g_workplace", f"output={output}",
         "fit.min_block_sessions=20", "fidelity_days=700", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    header = output.read_text().splitlines()[:6]
    assert any("fit_sessions.csv" in line for line in header)
    assert any("arriving 2021-04-05 .. 2021-05-02" in line for line in header)
    params = load_site(output)
    assert params.name == "depot" and params.scenario["loads"] and params.scenario["v2g_consent_share"] == 0.7
    assert isinstance(generator_for(params), FittedGenerator)
    figures = json.loads(output.with_suffix(".fidelity.json").read_text())
    assert figures["overall"]["arrival_ks"] is not None
    assert json.loads(result.stdout) == figures
    assert yaml.safe_load(output.read_text())["scenario"]["generator"] == "fitted"


def test_fitted_presets_do_not_load_pandas_or_scipy():
    code = ("import sys; from envs.site import load_site; from envs.generators import generator_for; "
            "generator_for(load_site('caltech_fitted')); "
            "print(sorted(m for m in ('pandas', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_holdout_fits_on_the_train_period_and_measures_the_test_period():
    from envs.data.fitting import ks_distance, session_arrays
    from envs.data.holdout import format_tables, holdout_fidelity
    from envs.data.sessions import read_sessions

    reader = {"columns": {"arrival": "start", "departure": "end", "announced_departure": "planned_end",
                          "requested_kwh": "kwh", "session_id": "id"},
              "sep": ";", "decimal": ",", "date_format": "%d.%m.%Y %H:%M", "tz": "Europe/Amsterdam"}
    train, test = ["2021-04-05", "2021-04-18"], ["2021-04-19", "2021-05-02"]
    cfg = {"data_dir": str(FIXTURES), "format": "csv", "reader": reader, "fidelity_days": 70, "seed": 0,
           "fit": {"min_block_sessions": 20}, "splits": [
               {"name": "depot", "preset": "v2g_workplace", "files": ["fit_sessions.csv"], "train": train,
                "test": test}]}
    (result,) = holdout_fidelity(cfg)
    sessions = read_sessions(FIXTURES / "fit_sessions.csv", "csv", **reader)
    assert result["in_sample"]["last_day"] == train[1] and result["out_of_sample"]["first_day"] == test[0]
    assert result["in_sample"]["sessions"] + result["out_of_sample"]["sessions"] == len(sessions)
    first, second = (session_arrays(sessions, None, "requested_kwh", *window) for window in (train, test))
    assert result["shift"]["dwell_ks"] == ks_distance(first["dwell_hours"], second["dwell_hours"])
    weekday = sessions["arrival"].dt.tz_localize(None).between(test[0], "2021-05-03", inclusive="left") & (
        sessions["arrival"].dt.day_of_week < 5)
    assert result["daily"]["weekday"]["test_mean"] == pytest.approx(weekday.sum() / 10)
    assert result["in_sample"]["sessions"] == len(first["dwell_hours"])
    assert result["ks_5pct"] == pytest.approx(1.358 * np.sqrt(1 / len(second["dwell_hours"]) + 1 / (
        result["out_of_sample"]["generated_days"] * result["daily"]["weekday"]["model_mean"] * 5 / 7
        + result["out_of_sample"]["generated_days"] * result["daily"]["weekend"]["model_mean"] * 2 / 7)))
    assert "| depot: test 2021-04-19 .. 2021-05-02 |" in format_tables([result])
