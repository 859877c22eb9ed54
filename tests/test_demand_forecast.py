"""The optional demand forecast: its windows, its observation block and every generator's estimate."""

import dataclasses

import gymnasium
import numpy as np
import pandas as pd
import pytest
from helpers import make_episode, tiny_site

import envs
from envs.core import reset, step
from envs.data.forecasts import fit_daily_demand
from envs.data.replay import ReplayGenerator
from envs.episode import DEMAND_BLOCK, FORECAST_BLOCK, demand_windows
from envs.generators import generator_for
from envs.observation import layout_size, observation_bounds, observation_layout, observe
from envs.parametric import ParametricGenerator
from envs.site import SiteError, load_site


def test_demand_windows_by_hand():
    windows = demand_windows(np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([[10.0, 20.0, 30.0, 40.0]]), 2)
    assert windows.shape == (1, 5, 2, 2) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[0, :, 0], [[2, 3], [3, 4], [4, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(windows[0, :, 1], 10 * windows[0, :, 0])
    assert demand_windows(np.ones((3, 4)), 5.0, 0).shape == (3, 5, 2, 0)


def test_layout_gains_the_demand_block_only_when_asked():
    plain, asked = tiny_site(), tiny_site(demand_forecast=True)
    h = asked.forecast_steps
    layout = observation_layout(asked)
    assert layout_size(asked) == layout_size(plain) + 2 * h
    assert list(layout)[-3:] == [*DEMAND_BLOCK, "peak_import_kw"]
    assert layout["expected_arrivals"].start == layout[FORECAST_BLOCK[-1]].stop
    assert layout["expected_energy_kwh"].stop - layout["expected_energy_kwh"].start == h
    low, _ = observation_bounds(asked)
    assert np.all(low[layout["expected_arrivals"].start:] == 0.0)
    assert not set(DEMAND_BLOCK) & set(observation_layout(plain))


def test_site_field_is_validated():
    with pytest.raises(SiteError, match="demand_forecast must be true or false"):
        tiny_site(demand_forecast="yes")


def test_observation_shows_the_episode_windows_at_each_step():
    params = tiny_site(demand_forecast=True)
    episode = make_episode(tiny_site(), [])
    with pytest.raises(ValueError, match="demand_forecast: true"):
        reset(params, episode)
    rates = np.arange(1.0, params.horizon_steps + 1)[None, :]
    windows = demand_windows(rates, 7.0 * rates, params.forecast_steps)
    episode = dataclasses.replace(episode, demand_forecast=windows)
    state = reset(params, episode)
    layout = observation_layout(params)
    for t in range(params.horizon_steps):
        obs = observe(params, state)
        expected = [rates[0, s] if s < params.horizon_steps else 0.0 for s in range(t + 1, t + 3)]
        np.testing.assert_array_equal(obs[0, layout["expected_arrivals"]], expected)
        np.testing.assert_array_equal(obs[0, layout["expected_energy_kwh"]], 7.0 * np.array(expected))
        state, _, _ = step(params, state, np.zeros((1, params.num_ports)))
    bad = dataclasses.replace(episode, demand_forecast=-episode.demand_forecast - 1)
    with pytest.raises(ValueError, match="demand_forecast must be >= 0"):
        bad.check(params)


def test_parametric_forecast_is_its_poisson_means():
    params = load_site("caltech", demand_forecast=True)
    gen = ParametricGenerator(weekday=[0, 5], energy_sigma=0.5)
    episode = gen.sample(params, np.random.default_rng(0), 2)
    rates = gen.arrival_rates(params, np.array([0, 5]))
    h = params.forecast_steps
    np.testing.assert_allclose(episode.demand_forecast[:, 0, 0], rates[:, 1:h + 1], rtol=1e-6)
    np.testing.assert_allclose(episode.demand_forecast[:, 10, 1],
                               rates[:, 11:h + 11] * gen.mean_request_kwh(), rtol=1e-5)
    rng = np.random.default_rng(1)
    n = 400_000
    draw = rng.lognormal(np.log(gen.energy_mean_kwh) - 0.125, 0.5, n)
    room = (1 - rng.uniform(*gen.soc_arrival_range, n)) * np.where(rng.random(n) < 0.6, 60.0, 40.0)
    assert gen.mean_request_kwh() == pytest.approx(np.minimum(draw, room).mean(), rel=0.005)
    assert ParametricGenerator(energy_sigma=0.0).mean_request_kwh() == pytest.approx(12.0)


@pytest.mark.parametrize("name", ["caltech_fitted", "nl_public"])
def test_fitted_forecast_matches_what_it_samples(name):
    params = load_site(name, demand_forecast=True)
    gen = generator_for(params)
    episode = gen.sample(params, np.random.default_rng(0), 2048)
    episode.check(params)
    rates = gen.arrival_rates(params, episode.weekday)
    h = params.forecast_steps
    np.testing.assert_allclose(episode.demand_forecast[:, 0, 0], rates[:, 1:h + 1], rtol=1e-6)
    requested = np.where(episode.ev_valid, episode.ev_requested_kwh, 0.0).sum()
    expected = (rates * gen.mean_request_kwh(params, episode.weekday)).sum()
    assert episode.ev_valid.sum() == pytest.approx(rates.sum(), rel=0.02)
    assert requested == pytest.approx(expected, rel=0.03)


def test_fitted_forecast_stays_valid_when_the_stay_cap_takes_nearly_everything():
    # Stays of 6 min (one 15-min step) on 1 kW ports cap every request at 0.2375 kWh; with a copula the
    # estimated cut of the cap once exceeded the mean request and made the forecast negative.
    params = load_site({"name": "tight", "demand_forecast": True, "nodes": [{"name": "grid", "limit_kw": 50}],
                        "ports": [{"node": "grid", "count": 4, "max_charge_kw": 1.0}],
                        "scenario": {"generator": "fitted", "arrivals_weekday": [1.0] * 24,
                                     "cap_request_to_stay": True, "dwell_quantiles_hours": [[0.1, 0.1]],
                                     "energy_quantiles_kwh": [[0.0, 100.0]],
                                     "dwell_energy_copula": [[3, 1], [1, 3]],
                                     "fleet": [{"battery_kwh": 200, "max_charge_kw": 7}]}})
    generator = generator_for(params)
    assert (generator.mean_request_kwh(params, [0, 6]) >= 0).all()
    reset(params, generator.sample(params, np.random.default_rng(0), 2))


def _sessions(per_day: dict[str, int], hour: int = 8, kwh: float = 10.0) -> pd.DataFrame:
    arrival = pd.DatetimeIndex([pd.Timestamp(f"{day} {hour:02d}:05") for day, n in per_day.items()
                                for _ in range(n)]).tz_localize("America/Los_Angeles")
    return pd.DataFrame({"arrival": arrival, "departure": arrival + pd.Timedelta(hours=4),
                         "announced_departure": arrival + pd.Timedelta(hours=4), "requested_kwh": kwh})


def test_replay_forecast_learns_from_past_days_only():
    params = load_site("caltech", demand_forecast=True, forecast_steps=4)
    # Monday 2, Tuesday 4, Wednesday 9 arrivals at 08:05; Saturday 1 at 08:05.
    sessions = _sessions({"2019-05-06": 2, "2019-05-07": 4, "2019-05-08": 9, "2019-05-11": 1})
    days = ["2019-05-06", "2019-05-07", "2019-05-08", "2019-05-11"]
    episode = ReplayGenerator(sessions, days=days, shuffle=False).sample(params, np.random.default_rng(0), 4)
    slot = 8 * 4  # 08:00 - 08:15
    seen_at = slot - 1  # the step before, whose first lead is the 08:00 step
    arrivals = episode.demand_forecast[:, seen_at, 0, 0]
    np.testing.assert_allclose(arrivals, [0.0, 2.0, 3.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(episode.demand_forecast[:, seen_at, 1, 0], 10 * arrivals, atol=1e-3)
    total = arrivals.sum() * params.forecast_steps
    assert episode.demand_forecast[:, :, 0].sum() == pytest.approx(total, abs=1e-3)
    changed = _sessions({"2019-05-06": 2, "2019-05-07": 4, "2019-05-08": 30, "2019-05-11": 1})
    again = ReplayGenerator(changed, days=days, shuffle=False).sample(params, np.random.default_rng(0), 4)
    np.testing.assert_array_equal(again.demand_forecast[:3], episode.demand_forecast[:3])


def test_regression_special_days_and_full_fit():
    days = pd.date_range("2019-01-07", periods=28, freq="D")
    local = [day + pd.Timedelta(hours=9) for day in days for _ in range(1 if day.weekday() >= 5 else 3)]
    special = days[9]  # a Wednesday with 5 more arrivals
    local += [special + pd.Timedelta(hours=9)] * 5
    model = fit_daily_demand(np.array(local, dtype="datetime64[m]"), np.full(len(local), 4.0), 60, [special],
                             ridge=1e-6)
    counts, energy = model.predict_days(np.array(["2019-02-04", "2019-02-09", str(special.date())],
                                                 dtype="datetime64[D]"))
    np.testing.assert_allclose(counts[:, 9], [3.0, 1.0, 8.0], rtol=1e-5)
    np.testing.assert_allclose(energy, 4 * counts, rtol=1e-6)
    before, _ = model.predict_days(np.array([str(special.date())], dtype="datetime64[D]"), as_of=special)
    assert before[0, 9] == pytest.approx(3.0, rel=1e-5)  # no special day seen yet: a plain Wednesday


def test_gymnasium_env_with_demand_forecast_passes_the_checker():
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(envs.ENV_ID, site=load_site("caltech_fitted", demand_forecast=True))
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    layout = observation_layout(env.unwrapped.params)
    assert obs[layout["expected_arrivals"]].sum() >= 0 and obs.shape == env.observation_space.shape


@pytest.mark.parametrize("name", ["caltech", "caltech_fitted"])
def test_the_forecast_changes_neither_episodes_nor_baselines(name):
    from agents.baselines import EarliestDeadlineFirst, PriceAware
    from agents.evaluate import evaluate

    plain, asked = load_site(name), load_site(name, demand_forecast=True)
    one = generator_for(plain).sample(plain, np.random.default_rng(3), 4)
    other = generator_for(asked).sample(asked, np.random.default_rng(3), 4)
    np.testing.assert_array_equal(one.ev_requested_kwh, other.ev_requested_kwh)
    tables = [evaluate({"edf": EarliestDeadlineFirst(params), "price": PriceAware(params)}, params, 3, seed=1)
              for params in (plain, asked)]
    columns = [c for c in tables[0].columns if c != "wall_s"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])


def test_a_long_run_of_empty_days_is_a_gap_in_the_data_not_zero_demand():
    days = np.concatenate([np.arange(np.datetime64("2019-05-06"), np.datetime64("2019-06-03")),
                           np.arange(np.datetime64("2019-08-05"), np.datetime64("2019-08-19"))])
    weekdays = days[(days.astype(np.int64) + 3) % 7 < 5]
    arrivals = np.repeat(weekdays.astype("datetime64[m]") + np.timedelta64(8 * 60, "m"), 3)
    model = fit_daily_demand(arrivals, np.full(len(arrivals), 10.0), 60, ridge=1e-6)
    counts, _ = model.predict_days(np.array(["2019-08-19"], dtype="datetime64[D]"))
    assert counts[0, 8] == pytest.approx(3.0, rel=1e-5)
    assert counts[0, 8] == pytest.approx(model.predict_days(np.array(["2019-08-19"], dtype="datetime64[D]"),
                                                            as_of="2019-08-19")[0][0, 8], rel=1e-5)
    blind = fit_daily_demand(arrivals, np.full(len(arrivals), 10.0), 60, ridge=1e-6, gap_days=None)
    assert blind.predict_days(np.array(["2019-08-19"], dtype="datetime64[D]"))[0][0, 8] < 1.5
    from envs.data.forecasts import _gap_days

    empty = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    assert _gap_days(empty, 3).tolist() == [False] * 4 + [True] * 3 + [False] + [True] * 3
    assert not _gap_days(empty, None).any() and not _gap_days(empty, 4).any()
