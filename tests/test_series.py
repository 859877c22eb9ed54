"""Real-series readers, the wall-clock step grid, forecasts and the series overlay."""

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_site

import envs.limits
from envs.core import reset, step
from envs.data.errors import DataError
from envs.data.forecasts import (
    IssuedForecasts,
    episode_forecasts,
    fit_demand_regression,
    forecast_windows,
    noisy_forecast,
    persistence_forecast,
)
from envs.data.overlay import SeriesOverlay, with_series
from envs.data.prices import (
    Tariff,
    episode_demand_charge,
    export_prices,
    read_day_ahead_csv,
    read_tariff,
)
from envs.data.series import (
    read_building_csv,
    read_series_csv,
    resample,
    site_step_times,
    step_times,
)
from envs.generators import generator_for
from envs.observation import FORECAST_BLOCK, observation_layout, observe
from envs.parametric import ParametricGenerator
from envs.site import SiteError, load_site

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


def ts(*values):
    return pd.DatetimeIndex(list(values))


def read_fixture_day_ahead():
    with pytest.warns(UserWarning, match="2 duplicated timestamps .0 with different values.*2 missing steps"):
        return read_day_ahead_csv(FIXTURES / "series_day_ahead.csv")


# --- tariffs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tariff():
    return read_tariff(FIXTURES / "series_tariff.json")


@pytest.mark.parametrize("when, price", [
    ("2019-07-01 08:15", 0.10),  # Monday, before the half-hour boundary
    ("2019-07-01 08:30", 0.20),
    ("2019-07-01 15:59", 0.20),
    ("2019-07-01 16:00", 0.50),
    ("2019-07-01 20:45", 0.50),
    ("2019-07-01 21:00", 0.10),
    ("2019-07-06 16:00", 0.30),  # Saturday
    ("2019-07-07 08:30", 0.10),  # Sunday
    ("2019-09-30 16:00", 0.50),  # last summer day
    ("2019-10-01 16:00", 0.25),  # first winter day
    ("2019-10-05 08:00", 0.08),  # winter is ALL days
    ("2019-12-31 23:45", 0.12),  # winter wraps over New Year
    ("2020-01-01 08:00", 0.08),
    ("2020-05-31 16:00", 0.25),
    ("2020-06-01 16:00", 0.50),  # Monday, summer again
])
def test_tariff_prices_on_hand_checked_times(tariff, when, price):
    assert tariff.prices(ts(when))[0] == pytest.approx(price)


def test_tariff_holidays_shapes_demand_charge_and_time_zones(tariff):
    july4 = ts("2019-07-04 16:00")  # a Thursday
    assert tariff.prices(july4)[0] == 0.50
    assert tariff.prices(july4, holidays=["2019-07-04"])[0] == 0.30
    grid = np.array(["2019-07-01T16:00", "2019-10-01T16:00"], dtype="datetime64[ns]").reshape(2, 1)
    assert tariff.prices(grid).shape == (2, 1)
    np.testing.assert_allclose(tariff.demand_charge_per_kw_month(grid)[:, 0], [15.0, 9.0])
    aware = pd.DatetimeIndex(["2019-07-01 23:00"], tz="UTC").tz_convert("America/Los_Angeles")
    assert tariff.prices(aware)[0] == 0.50  # 16:00 on the local clock


def test_episode_demand_charge_prorates_the_month():
    one_day = pd.date_range("2019-06-10", periods=96, freq="15min").to_numpy()[None]
    assert episode_demand_charge(np.full((1, 96), 15.0), one_day, 0.25)[0] == pytest.approx(15.0 / 30)
    across = pd.date_range("2019-01-31", periods=48, freq="h")
    charge = np.full(48, 31.0)
    assert episode_demand_charge(charge, across, 1.0) == pytest.approx(1.0 + 31.0 / 28)


def test_tariff_errors_and_ties(tmp_path, tariff):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schedule": [{"effective_start": "01-01", "effective_end": "12-31", "dow_mask": "DAILY",'
                   ' "times": [0], "tariffs": [0.1]}]}')
    with pytest.raises(DataError, match=r"bad\.json, field 'schedule\[0\]\.dow_mask'"):
        read_tariff(bad)
    bad.write_text('{"schedule": [{"effective_start": "06-01", "effective_end": "09-30", "dow_mask": "ALL",'
                   ' "times": [0, 8], "tariffs": [0.1, 0.2]}]}')
    with pytest.raises(DataError, match="no schedule covers 01-01"):
        read_tariff(bad)
    bad.write_text('{"schedule": [{"effective_start": "01-01", "effective_end": "12-31", "dow_mask": "ALL",'
                   ' "times": [0, 30], "tariffs": [0.1, 0.2]}]}')
    with pytest.raises(DataError, match=r"'schedule\[0\]\.times': must start at 0"):
        read_tariff(bad)
    bad.write_text('{"schedule": [')
    with pytest.raises(DataError, match="line 1: invalid JSON"):
        read_tariff(bad)
    twice = tariff.schedules[2]
    with pytest.warns(UserWarning, match="first listed wins"):
        other = dataclasses.replace(twice, id="Other", prices=(1.0,) * 4)
        tied = Tariff("tied", (twice, other, *tariff.schedules[:2]))
    assert tied.prices(ts("2019-12-02 16:00"))[0] == 0.25


@needs_shared
def test_real_tariffs():
    sce = read_tariff(SHARED / "tariffs" / "sce_tou_ev_8_june_2019.json")
    times = ts("2019-07-01 16:00", "2019-07-01 15:00", "2019-07-06 16:00", "2019-12-02 08:00",
               "2019-12-02 16:00")
    np.testing.assert_allclose(sce.prices(times), [0.49619, 0.12597, 0.25563, 0.07724, 0.297])
    with pytest.warns(UserWarning, match="Winter-Weekday"):
        pge = read_tariff(SHARED / "tariffs" / "pge_a10_tou_aug_2019.json")
    np.testing.assert_allclose(pge.prices(ts("2019-07-01 08:29", "2019-07-01 08:30", "2019-07-01 12:00")),
                               [0.14903, 0.1771, 0.23223])
    np.testing.assert_allclose(pge.demand_charge_per_kw_month(ts("2019-07-01", "2019-12-01")), [19.99, 11.66])
    for path in sorted((SHARED / "tariffs").glob("*.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prices = read_tariff(path).prices(pd.date_range("2019-01-01", "2019-12-31 23:00", freq="h"))
        assert np.isfinite(prices).all() and (prices > 0).all(), path.name


def test_export_prices():
    buy = np.array([[0.2, 0.4]])
    np.testing.assert_allclose(export_prices(buy, factor=0.5), [[0.1, 0.2]])
    np.testing.assert_allclose(export_prices(buy, eur_kwh=0.07), [[0.07, 0.07]])
    np.testing.assert_allclose(export_prices(buy, series=np.array([[0.01, 0.02]])), [[0.01, 0.02]])
    with pytest.raises(ValueError, match="exactly one"):
        export_prices(buy, factor=0.5, eur_kwh=0.1)


# --- day-ahead and other series readers -------------------------------------------------------

def test_day_ahead_reader_repairs_duplicates_and_gaps_and_reads_both_formats():
    prices = read_fixture_day_ahead()
    assert prices.attrs["duplicates"] == 2 and prices.attrs["conflicting_duplicates"] == 0
    assert prices.attrs["rows"] == 264
    assert prices.attrs["skipped"] == {"count": 0, "lines": [], "messages": []}
    assert prices.attrs["gaps"] == 2 and prices.attrs["unit"] == "EUR/kWh"
    index = prices.index
    assert str(index.tz) == "UTC" and len(index) == 11 * 24 and (np.diff(index.asi8) == 3600 * 10**9).all()
    assert index[0] == pd.Timestamp("2019-03-25", tz="UTC")
    assert index[-1] == pd.Timestamp("2019-04-04 23:00", tz="UTC")
    np.testing.assert_allclose(prices.to_numpy(), (100 * index.day.to_numpy() + index.hour.to_numpy()) / 1000)
    assert prices["2019-03-30 12:00"] == pytest.approx(3.012)  # repeated with the same price, kept once
    assert prices["2019-04-01 05:00"] == pytest.approx(0.105)  # filled linearly


@pytest.mark.parametrize("row, field, line", [
    ("Netherlands,2019-13-01 00:00:00,x,1.0", "Datetime (UTC)", 3),
    ("Netherlands,32/01/2019 00:00,x,1.0", "Datetime (UTC)", 3),
    ("Netherlands,2019-01-01 01:00:00,x,cheap", "Price (EUR/MWhe)", 3),
])
def test_day_ahead_errors_name_file_line_and_field(tmp_path, row, field, line):
    path = tmp_path / "prices.csv"
    path.write_text("Country,Datetime (UTC),Datetime (Local),Price (EUR/MWhe)\n"
                    "Netherlands,2019-01-01 00:00:00,x,1.0\n" + row + "\n")
    with pytest.raises(DataError, match=re.escape(f"prices.csv, line {line}, field '{field}'")):
        read_day_ahead_csv(path)


def test_day_ahead_structural_errors(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("Country,Datetime (UTC),Price (EUR/MWhe)\nNetherlands,2019-01-01 00:00:00\n")
    with pytest.raises(DataError, match=r"prices\.csv, line 2: 2 fields"):
        read_day_ahead_csv(path)
    path.write_text("Country,When,Price\n")
    with pytest.raises(DataError, match="line 1: no column 'Datetime \\(UTC\\)'"):
        read_day_ahead_csv(path)


def day_ahead_file(tmp_path, *rows, local=False):
    path = tmp_path / "prices.csv"
    column = "Datetime (Local)" if local else "Datetime (UTC)"
    path.write_text(f"Country,{column},Price (EUR/MWhe)\n" + "".join(f"Netherlands,{r}\n" for r in rows))
    return path


HOURS = [f"2019-01-01 {h:02d}:00:00,{h}" for h in range(6)]


def test_day_ahead_skip_invalid_leaves_out_bad_rows_and_reports_them(tmp_path):
    path = day_ahead_file(tmp_path, *HOURS[:2], "junk,7", HOURS[2], "2019-01-01 03:00:00,inf", *HOURS[4:],
                          "2019-01-01 04:00:00,99")
    with pytest.raises(DataError, match=r"line 4, field 'Datetime \(UTC\)'.*\(2 more invalid rows; "
                                        r"skip_invalid=True leaves them out"):
        read_day_ahead_csv(path)
    with pytest.warns(UserWarning, match=r"skipped 3 invalid rows \(lines 4, 6, 9\)"):
        prices = read_day_ahead_csv(path, skip_invalid=True)
    skipped = prices.attrs["skipped"]
    assert skipped["count"] == 3 and skipped["lines"] == [4, 6, 9] and prices.attrs["rows"] == 8
    assert "'inf' as a finite number" in skipped["messages"][1]
    assert "repeats the hour of line 7 with a different price" in skipped["messages"][2]
    assert prices["2019-01-01 04:00"] == pytest.approx(0.004)  # the first row of the hour, not the conflict
    assert prices["2019-01-01 03:00"] == pytest.approx(0.003)  # the skipped hour is a gap, filled linearly
    assert prices.attrs["gaps"] == 1
    assert prices.attrs["report"] == {
        "file": str(path), "rows_read": 8, "rows_kept": 5, "gaps_filled": 1, "empty_cells_filled": 0,
        "dropped": {"invalid 'Datetime (UTC)'": 1, "invalid 'Price (EUR/MWhe)'": 2}}


def test_day_ahead_file_that_repeats_a_year_is_read_once(tmp_path):
    hours = pd.date_range("2019-01-01", periods=48, freq="h")
    rows = [f"{t:%Y-%m-%d %H:%M:%S},{t.hour}" for t in hours]
    path = day_ahead_file(tmp_path, *rows, *[f"{t:%d/%m/%Y %H:%M},{t.hour}" for t in hours])
    with pytest.warns(UserWarning, match="48 duplicated timestamps"):
        prices = read_day_ahead_csv(path)
    assert len(prices) == 48 and prices.attrs["duplicates"] == 48 and prices.attrs["rows"] == 96
    report = prices.attrs["report"]
    assert report["dropped"] == {"repeated hour": 48} and report["rows_kept"] == 48


def test_day_ahead_local_times_across_daylight_saving(tmp_path):
    fall = [f"2019-10-27 0{h}:00:00,{p}" for h, p in ((0, 1), (1, 2), (2, 3), (2, 4), (3, 5))]
    prices = read_day_ahead_csv(day_ahead_file(tmp_path, *fall, local=True), "Datetime (Local)",
                                tz="Europe/Amsterdam")
    assert len(prices) == 5 and prices.index[0] == pd.Timestamp("2019-10-26 22:00", tz="UTC")
    np.testing.assert_allclose(prices.to_numpy(), [1e-3, 2e-3, 3e-3, 4e-3, 5e-3])  # 02:00 twice, in order
    spring = ["2019-03-31 01:00:00,1", "2019-03-31 02:00:00,2", "2019-03-31 03:00:00,3"]
    with pytest.raises(DataError, match=r"line 3.*2019-03-31 02:00:00 does not exist in Europe/Amsterdam"):
        read_day_ahead_csv(day_ahead_file(tmp_path, *spring, local=True), "Datetime (Local)",
                           tz="Europe/Amsterdam")
    once = ["2019-10-27 01:00:00,1", "2019-10-27 02:00:00,2", "2019-10-27 03:00:00,3"]
    with pytest.raises(DataError, match=r"line 3.*2019-10-27 02:00:00 is ambiguous in Europe/Amsterdam"):
        read_day_ahead_csv(day_ahead_file(tmp_path, *once, local=True), "Datetime (Local)",
                           tz="Europe/Amsterdam")


def test_series_gaps_and_spans_above_the_limits_fail_before_allocating(tmp_path, monkeypatch):
    wide = day_ahead_file(tmp_path, *HOURS[:2], "2019-07-20 01:00:00,3")
    with pytest.raises(DataError, match=r"no data from 2019-01-01 01:00:00\+00:00 to "
                                        r"2019-07-20 01:00:00\+00:00: "
                                        r"the gap to fill, in days, is 200, above the limit of 92; "
                                        r"raise it with envs.limits.LIMITS\['series_gap_days'\]"):
        read_day_ahead_csv(wide)
    monkeypatch.setenv("ENVS_MAX_SERIES_GAP_DAYS", "366")
    with pytest.warns(UserWarning, match="4799 missing steps"):
        assert len(read_day_ahead_csv(wide)) == 200 * 24 + 2
    monkeypatch.setattr("envs.limits.LIMITS", {**envs.limits.LIMITS, "series_steps": 4000})
    with pytest.raises(DataError, match=r"01:00:00 grid is 4,802, above the limit of 4,000; raise it with "
                                        r"envs.limits.LIMITS\['series_steps'\] = N or the environment "
                                        r"variable "
                                        r"ENVS_MAX_SERIES_STEPS=N"):
        read_day_ahead_csv(wide)


@needs_shared
def test_real_day_ahead_file():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prices = read_day_ahead_csv(SHARED / "prices" / "nl_day_ahead_2015-2020.csv", country="Netherlands")
    assert prices.index[0] == pd.Timestamp("2015-01-01", tz="UTC")
    assert prices.index[-1] == pd.Timestamp("2020-12-31 23:00", tz="UTC")
    assert len(prices) == 2192 * 24 and 0.02 < prices.mean() < 0.06


def test_building_reader():
    frame = read_building_csv(FIXTURES / "series_building.csv")
    assert frame.index[0] == pd.Timestamp("2016-08-01 07:00", tz="UTC")  # hour 24 of 31 July, UTC-8
    assert len(frame) == 241 and frame.attrs["gaps"] == 0
    assert frame["non_shiftable_load"].iloc[0] == 9.0
    assert frame["non_shiftable_load"]["2016-08-02 08:00"] == pytest.approx(2.01)  # 2 Aug, hour ending 01:00


def test_building_reader_errors(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("month,hour,non_shiftable_load,solar_generation\n7,24,1,0\n8,1,1,0\n9,2,1,0\n")
    with pytest.raises(DataError, match=r"b\.csv, line 4, field 'month'"):
        read_building_csv(path)
    path.write_text("month,hour,non_shiftable_load,solar_generation\n8,1,1,0\n8,25,1,0\n")
    with pytest.raises(DataError, match=r"line 3, field 'hour'"):
        read_building_csv(path)


def test_series_csv_joins_overlapping_files_and_repairs(tmp_path):
    text = (FIXTURES / "series_moer.csv").read_text().splitlines()
    (tmp_path / "m1.csv").write_text("\n".join(text[:400]) + "\n")
    (tmp_path / "m2.csv").write_text("\n".join([text[0]] + text[300:]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_series_csv(tmp_path / "m*.csv", columns=["moer"])
    assert frame.attrs["overlap_rows"] == 100 and len(frame) == 864
    (tmp_path / "m3.csv").write_text("\n".join(text[:5] + [text[3], text[7]]) + "\n")
    with pytest.warns(UserWarning, match="1 duplicated timestamps.*2 missing steps"):
        frame = read_series_csv(tmp_path / "m3.csv", columns=["moer"])
    assert frame.attrs == {**frame.attrs, "duplicates": 1, "gaps": 2}
    (tmp_path / "m4.csv").write_text("\n".join(text[:3] + ["2019-11-02 00:10:00+00:00,n/a,1,1"]) + "\n")
    with pytest.raises(DataError, match=r"m4\.csv, line 4, field 'moer'"):
        read_series_csv(tmp_path / "m4.csv", columns=["moer"])


# --- the step grid and resampling -------------------------------------------------------------

def test_dst_days_have_exactly_one_day_of_steps():
    spring, fall = step_times(["2019-03-31", "2019-10-27"], 0, 15, 96, "Europe/Amsterdam")
    assert spring.shape == fall.shape == (2, 96)
    utc = pd.DatetimeIndex(fall[0])
    assert utc[0] == pd.Timestamp("2019-03-30 23:00")  # local midnight in winter time
    assert utc[8] == utc[4] and utc[12] == pd.Timestamp("2019-03-31 01:00")  # 02:00 holds 01:00; 03:00 CEST
    utc = pd.DatetimeIndex(fall[1])
    assert utc[0] == pd.Timestamp("2019-10-26 22:00")
    assert utc[8] == pd.Timestamp("2019-10-27 00:00") and utc[12] == pd.Timestamp("2019-10-27 02:00")
    params = tiny_site(horizon_steps=96, forecast_steps=4)
    local, utc = site_step_times(params, ["2019-03-31", "2019-10-27"], "Europe/Amsterdam")
    assert local.shape == utc.shape == (2, 101)
    assert (pd.DatetimeIndex(local[:, 96]) == pd.DatetimeIndex(["2019-04-01", "2019-10-28"])).all()
    prices = read_fixture_day_ahead()
    values = resample(prices, utc[:1], 15)
    assert values.shape == (1, 101)
    assert values[0, 8] == values[0, 4] == prices["2019-03-31 00:00"]  # 02:00 local reads 01:00 CET


def test_resample_hold_and_interpolate():
    index = pd.date_range("2019-01-01", periods=4, freq="h", tz="UTC")
    series = pd.Series([0.0, 4.0, 8.0, 4.0], index=index)
    starts = pd.date_range("2019-01-01", periods=12, freq="15min").to_numpy()
    np.testing.assert_allclose(resample(series, starts, 15), np.repeat([0.0, 4.0, 8.0], 4))
    np.testing.assert_allclose(resample(series, starts[:2], 15, "interpolate"), [0.0, 0.0])
    np.testing.assert_allclose(resample(series, starts[2:6], 15, "interpolate"), [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(resample(series, starts[[0, 4]], 120), [2.0, 6.0])
    np.testing.assert_allclose(resample(series, starts[[2]], 60), [2.0])
    with pytest.raises(ValueError, match="outside the series"):
        resample(series, np.array(["2019-01-01T03:30"], dtype="datetime64[ns]"), 60)


# --- forecasts -------------------------------------------------------------------------------

def test_perfect_and_persistence_forecasts():
    truth = np.arange(2 * 14, dtype=float).reshape(2, 14)  # T=8, H=3, L=14 >= 12
    perfect = forecast_windows(truth, 8, 3)
    assert perfect.shape == (2, 9, 4)
    np.testing.assert_array_equal(perfect[1, 5], truth[1, 5:9])
    daily = persistence_forecast(truth, 8, 3, steps_per_day=4)
    for t in range(9):
        for h in range(4):
            expected = truth[:, t] if h == 0 or t + h - 4 < 0 else truth[:, t + h - 4]
            np.testing.assert_array_equal(daily[:, t, h], expected)
    history = -np.ones((2, 4))
    with_history = persistence_forecast(truth, 8, 3, steps_per_day=4, history=history)
    assert with_history[0, 1, 2] == -1 and with_history[0, 5, 2] == truth[0, 3]
    held = forecast_windows(truth, 8, 3, "persistence")
    np.testing.assert_array_equal(held, np.repeat(truth[:, :9, None], 4, axis=2))
    long = persistence_forecast(np.arange(20.0)[None], 5, 6, steps_per_day=4)
    assert long[0, 4, 5] == 1.0  # step 9: step 5 is after t = 4, so two days back


def test_noisy_forecast_is_seeded_and_grows_with_lead():
    truth = np.full((400, 40), 10.0)
    one = noisy_forecast(truth, 30, 8, rng=np.random.default_rng(3), std_at_horizon=0.2)
    two = noisy_forecast(truth, 30, 8, rng=np.random.default_rng(3), std_at_horizon=0.2)
    other = noisy_forecast(truth, 30, 8, rng=np.random.default_rng(4), std_at_horizon=0.2)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)
    np.testing.assert_array_equal(one[..., 0], truth[:, :31])
    spread = (one - 10.0).std(axis=(0, 1))
    assert np.all(np.diff(spread) > 0)
    np.testing.assert_allclose(spread[-1], 2.0, rtol=0.05)
    np.testing.assert_allclose(spread[4], 2.0 * np.sqrt(4 / 8), rtol=0.05)
    assert (noisy_forecast(np.zeros((3, 40)) + 0.1, 30, 8, rng=np.random.default_rng(0), std_at_horizon=5,
                           nonnegative=True) >= 0).all()
    with pytest.raises(ValueError, match="rng"):
        noisy_forecast(truth, 30, 8)


def test_episode_forecasts_perfect_match_the_observation():
    params = load_site("v2g_workplace")
    episode = generator_for(params).sample(params, np.random.default_rng(0), 3)
    windows = episode_forecasts(params, episode)
    assert windows.shape == (3, params.horizon_steps + 1, len(FORECAST_BLOCK), params.forecast_steps + 1)
    state = reset(params, episode)
    layout = observation_layout(params)
    block = slice(layout[FORECAST_BLOCK[0]].start, layout[FORECAST_BLOCK[-1]].stop)
    for t in range(3):
        np.testing.assert_array_equal(observe(params, state)[:, block], windows[:, t].reshape(3, -1))
        state, _, _ = step(params, state, np.zeros((3, params.num_ports)))
    noisy = episode_forecasts(params, episode, {"site_pv_kw": {"mode": "noisy", "std_at_horizon": 0.5},
                                                "price_buy_eur_kwh": {"mode": "persistence"}},
                              rng=np.random.default_rng(1))
    pv = FORECAST_BLOCK.index("site_pv_kw")
    assert (noisy[:, :, pv] >= 0).all() and not np.array_equal(noisy[:, :, pv], windows[:, :, pv])
    np.testing.assert_array_equal(noisy[:, :, 0, 0], windows[:, :, 0, 0])
    with pytest.raises(ValueError, match="unknown series"):
        episode_forecasts(params, episode, {"price": {}})


# --- demand forecasts ------------------------------------------------------------------------

def test_fit_demand_regression_recovers_day_types_and_special_days():
    rng = np.random.default_rng(0)
    days = pd.date_range("2019-01-07", periods=56, freq="D", tz="America/Los_Angeles")  # 8 weeks
    special = [days[9].date()]  # a Wednesday
    arrivals = []
    for day in days:
        n = 2 if day.weekday() >= 5 else 6
        n += 10 if day.date() in special else 0
        arrivals += [day + pd.Timedelta(hours=8, minutes=int(m)) for m in rng.integers(0, 15, n)]
    sessions = pd.DataFrame({"arrival": arrivals, "requested_kwh": 10.0})
    model = fit_demand_regression(sessions, dt_minutes=15, special_days=special, ridge=1e-6)
    counts, energy = model.predict_days(np.array(["2019-03-04", "2019-03-09", str(special[0])],
                                                 dtype="datetime64[D]"))
    assert counts.shape == (3, 96)
    np.testing.assert_allclose(counts.sum(axis=1), [6.0, 2.0, 16.0], rtol=1e-6)
    assert counts[0, 32] == pytest.approx(6.0, rel=1e-6) and energy[0, 32] == pytest.approx(60.0, rel=1e-6)
    params = tiny_site(horizon_steps=96, forecast_steps=4)
    rates, kwh = model.episode_rates(params, ["2019-03-04"])
    np.testing.assert_allclose(rates[0], counts[0])
    with pytest.raises(ValueError, match="tz-aware"):
        naive = pd.DataFrame({"arrival": pd.to_datetime(["2019-01-01"]), "requested_kwh": [1.0]})
        fit_demand_regression(naive)


# --- overlay ---------------------------------------------------------------------------------

def overlay_site():
    return tiny_site(dt_minutes=60, horizon_steps=24, forecast_steps=2,
                     nodes=[{"name": "grid", "limit_kw": 100},
                            {"name": "house", "parent": "grid", "limit_kw": 50}],
                     scenario={"loads": [{"node": "grid", "base_kw": 5, "peak_kw": 5}]})


SPEC = {
    "tz": "Europe/Amsterdam",
    "data_dir": str(FIXTURES),
    "price_buy": {"path": "series_day_ahead.csv", "offset": 0.05},
    "tariff": {"eur_kwh": 0.4},
    "loads": [{"node": "house", "path": "series_building.csv", "column": "non_shiftable_load", "scale": 2,
               "file_tz": "UTC"}],
    "pv": [{"node": "house", "path": "series_building.csv", "column": "solar_generation", "scale": 0.01,
            "file_tz": "UTC", "method": "interpolate"}],
    "shared_calendar": False,
}


def test_overlay_episodes_carry_the_real_windows():
    params = overlay_site()
    with pytest.warns(UserWarning, match="duplicated"):
        gen = SeriesOverlay(ParametricGenerator.from_config(params.scenario), SPEC, site_name=params.name)
    prices = read_fixture_day_ahead()
    building = read_building_csv(FIXTURES / "series_building.csv", tz="UTC")
    episode, dates = gen.sample_with_dates(params, np.random.default_rng(0), 16)
    episode.check(params)
    weekday = (dates.astype(np.int64) + 3) % 7
    np.testing.assert_array_equal(weekday, episode.weekday)
    assert (dates >= np.datetime64("2019-03-26")).all() and (dates <= np.datetime64("2019-04-03")).all()
    local, utc = site_step_times(params, dates, "Europe/Amsterdam")
    expected = prices.reindex(pd.DatetimeIndex(utc.ravel(), tz="UTC")).to_numpy().reshape(16, -1)
    np.testing.assert_allclose(episode.price_buy_eur_kwh, expected + 0.05)
    ratio = episode.price_sell_eur_kwh / episode.price_buy_eur_kwh
    np.testing.assert_allclose(ratio, 0.8)  # the parametric generator's export_price_factor, kept
    assert (episode.tariff_eur_kwh == 0.4).all()
    house = params.node_index("house")
    calendar = gen.calendar(params, np.random.default_rng(5), np.asarray(episode.weekday))
    assert set(calendar) == {"price_buy", "tariff", "loads[0]", "pv[0]"}
    load = episode.node_load_kw[:, :, house] / 2
    assert np.isin(np.round(load, 2), np.round(building["non_shiftable_load"].to_numpy(), 2)).all()
    assert (episode.node_load_kw[:, :, 0] > 0).all()  # the base load on another node stays
    assert (episode.node_pv_kw[:, :, house] >= 0).all() and episode.node_pv_kw[:, :, house].max() > 5
    state = reset(params, episode)
    state, terms, _ = step(params, state, np.ones((16, params.num_ports)))
    assert np.isfinite(terms).all()


def test_overlay_shared_calendar_and_weekday_matching():
    params = overlay_site()
    spec = {"tz": "Europe/Amsterdam", "price_buy": {"path": str(FIXTURES / "series_day_ahead.csv")},
            "price_sell": {"eur_kwh": 0.01}}
    base = ParametricGenerator(weekday=[4, 5, 6, 0])  # 29 Mar 2019 was a Friday
    with pytest.warns(UserWarning):
        gen = SeriesOverlay(base, spec)
    episode, dates = gen.sample_with_dates(params, np.random.default_rng(0), 4)
    np.testing.assert_array_equal(dates, np.array(["2019-03-29", "2019-03-30", "2019-03-31", "2019-04-01"],
                                                   dtype="datetime64[D]"))
    assert (episode.price_sell_eur_kwh == 0.01).all()
    spring = episode.price_buy_eur_kwh[2]
    assert spring[2] == spring[1] and spring[3] != spring[2]  # 02:00 local does not exist: holds 01:00
    with pytest.warns(UserWarning):
        same = SeriesOverlay(base, spec).sample(params, np.random.default_rng(0), 4)
    np.testing.assert_array_equal(same.price_buy_eur_kwh, episode.price_buy_eur_kwh)
    with pytest.warns(UserWarning):
        late = SeriesOverlay(ParametricGenerator(weekday=4), {**spec, "dates": ["2019-04-01", "2019-04-30"]})
    with pytest.raises(SiteError, match="no start date .* weekday 4"):
        late.sample(params, np.random.default_rng(0), 2)


def test_with_series_and_spec_errors():
    params = overlay_site()
    gen = generator_for(load_site("caltech"))
    assert with_series(gen, {"sessions_per_day": 3}, params) is gen
    assert with_series(gen, None, params) is gen
    year = ["2019-01-01", "2019-12-31"]
    wrapped = with_series(gen, {"series": {"tariff": {"eur_kwh": 0.3}, "dates": year}}, params)
    assert isinstance(wrapped, SeriesOverlay) and wrapped.base is gen
    with pytest.raises(SiteError, match=r"scenario\.series\.loads\[0\]\.node names unknown node 'attic'"):
        with_series(gen, {"series": {"dates": ["2019-01-01", "2019-01-31"],
                                     "loads": [{"node": "attic", "eur_kwh": 1.0}]}}, params)
    with pytest.raises(SiteError, match=r"scenario\.series\.price\b"):
        SeriesOverlay(gen, {"price": {}})
    with pytest.raises(SiteError, match=r"series\.price_buy\.method"):
        SeriesOverlay(gen, {"price_buy": {"eur_kwh": 1, "method": "cubic"}, "dates": year})
    with pytest.raises(SiteError, match=r"series\.dates is required"):
        SeriesOverlay(gen, {"tariff": {"eur_kwh": 0.3}})
    with pytest.raises(DataError, match="does not exist"):
        SeriesOverlay(gen, {"price_buy": {"path": "no/such/file.csv"}})


@needs_shared
def test_overlay_on_real_data():
    params = load_site("v2g_workplace")
    spec = {"tz": "America/Los_Angeles", "shared_calendar": False, "data_dir": str(SHARED),
            "price_buy": {"path": "tariffs/sce_tou_ev_8_june_2019.json"},
            "carbon": {"path": "moer/*.csv.gz", "column": "moer"},
            "loads": [{"node": "building", "path": "buildings/Building_1.csv", "column": "non_shiftable_load",
                       "scale": 20}],
            "pv": [{"node": "building", "path": "buildings/Building_1.csv", "column": "solar_generation",
                    "scale": 0.09}]}
    gen = with_series(generator_for(params), {"series": spec}, params)
    episode, dates = gen.sample_with_dates(params, np.random.default_rng(0), 8)
    episode.check(params)
    assert (dates >= np.datetime64("2019-04-30")).all() and (dates < np.datetime64("2020-01-01")).all()
    sce_prices = {0.12597, 0.49619, 0.25563, 0.13568, 0.07724, 0.297}
    assert set(np.round(episode.price_buy_eur_kwh.ravel(), 5)) <= sce_prices
    assert 0 <= episode.carbon_kg_kwh.min() and episode.carbon_kg_kwh.max() < 2
    assert episode.node_pv_kw.max() > 30


def test_issued_forecasts_reach_the_observation_and_leave_rewards_alone():
    import dataclasses

    from envs import core
    from envs.data.forecasts import episode_forecasts
    from envs.generators import generator_for
    from envs.observation import observation_layout, observe
    from envs.site import load_site

    params = load_site("v2g_workplace", horizon_steps=12)
    truth = generator_for(params).sample(params, np.random.default_rng(0), 3)
    spec = {"price_buy_eur_kwh": {"mode": "noisy", "std_at_horizon": 0.05}}
    noisy = dataclasses.replace(truth, forecast_windows=episode_forecasts(params, truth, spec,
                                                                         np.random.default_rng(1)))
    layout = observation_layout(params)
    states = [core.reset(params, truth), core.reset(params, noisy)]
    actions = np.random.default_rng(2).uniform(-1, 1, (params.horizon_steps, 3, params.num_ports))
    for t in range(params.horizon_steps):
        exact, issued = (observe(params, s) for s in states)
        prices = layout["price_buy_eur_kwh"]
        np.testing.assert_allclose(issued[:, prices][:, 0], exact[:, prices][:, 0], rtol=1e-6)
        assert not np.allclose(issued[:, prices][:, 1:], exact[:, prices][:, 1:])
        other = np.r_[0:prices.start, prices.stop:exact.shape[1]]
        np.testing.assert_array_equal(issued[:, other], exact[:, other])
        results = [core.step(params, s, actions[t]) for s in states]
        np.testing.assert_array_equal(results[0][1], results[1][1])
        states = [r[0] for r in results]


def test_a_series_block_in_the_site_wraps_its_generator():
    from envs.generators import generator_for

    params = overlay_site().replace(scenario={**overlay_site().scenario,
                                              "series": {**SPEC, "data_dir": str(FIXTURES)}})
    with pytest.warns(UserWarning, match="duplicated"):
        generator = generator_for(params)
    assert isinstance(generator, SeriesOverlay)
    episode = generator.sample(params, np.random.default_rng(0), 2)
    np.testing.assert_array_equal(episode.tariff_eur_kwh, 0.4)


def test_a_forecasts_block_in_the_site_issues_noisy_forecasts():
    from envs.data.forecasts import IssuedForecasts
    from envs.generators import generator_for
    from envs.site import load_site

    noisy = {"price_buy_eur_kwh": {"mode": "noisy", "std_at_horizon": 0.05}}
    params = load_site("caltech", horizon_steps=12, scenario={"forecasts": noisy})
    generator = generator_for(params)
    assert isinstance(generator, IssuedForecasts)
    episode = generator.sample(params, np.random.default_rng(0), 2)
    issued = episode.forecast_windows[:, :, 0]
    np.testing.assert_allclose(issued[:, :, 0], episode.price_buy_eur_kwh[:, :13], rtol=1e-6)
    assert not np.allclose(issued[:, :, 1:], episode.price_buy_eur_kwh[:, 1:14, None])
    np.testing.assert_allclose(episode.forecast_windows[:, :, 1, 1], episode.price_sell_eur_kwh[:, 1:14],
                               rtol=1e-6)


# --- forecasts issued by a data file ---------------------------------------------------------

def test_file_forecast_windows_by_hand():
    from envs.data.forecasts import file_forecast_windows

    rows = np.datetime64("2020-01-01T00:00", "ns") + np.arange(6) * np.timedelta64(5, "m")
    table = 100.0 * np.arange(6)[:, None] + np.arange(7)[None, :]  # row r: value 100r, f_k = 100r + k
    issue = np.array([[rows[3], rows[3] + np.timedelta64(2, "m")]])
    windows = file_forecast_windows(table, rows, issue, np.array([[-1.0, -2.0]]), 15, 5, 2)
    np.testing.assert_allclose(windows[0, 0], [-1.0, 304.0, 306.0])  # leads 3..5, then f6 holds
    np.testing.assert_allclose(windows[0, 1], [-2.0, (303 * 0.6 + 304 + 305 + 306 * 0.4) / 3, 306.0])
    minute = np.timedelta64(1, "m")
    with pytest.raises(ValueError, match="before the file's first row"):
        file_forecast_windows(table, rows, rows[:1, None] - minute, np.zeros((1, 1)), 15, 5, 1)
    with pytest.raises(ValueError, match="after the file's last row"):
        file_forecast_windows(table, rows, rows[-1:, None] + 5 * minute, np.zeros((1, 1)), 15, 5, 1)


def test_overlay_shows_the_files_own_carbon_forecasts():
    params = tiny_site(dt_minutes=5, horizon_steps=288, forecast_steps=3)
    spec = {"data_dir": str(FIXTURES), "match_weekday": False, "price_buy": {"eur_kwh": 0.3},
            "carbon": {"path": "series_moer.csv", "column": "moer", "forecast_columns": "f", "scale": 2.0}}
    gen = with_series(generator_for(params), {"series": spec}, params)
    episode, dates = gen.sample_with_dates(params, np.random.default_rng(1), 3)
    episode.check(params)
    frame = read_series_csv(FIXTURES / "series_moer.csv", columns=["moer", "f1", "f2"])
    _, utc = site_step_times(params, dates)
    issued = frame.reindex(pd.DatetimeIndex(utc[:, :params.horizon_steps + 1].ravel(), tz="UTC"))
    issued = 2.0 * issued.to_numpy().reshape(3, params.horizon_steps + 1, 3)
    carbon = episode.forecast_windows[:, :, FORECAST_BLOCK.index("carbon_kg_kwh")]
    np.testing.assert_allclose(carbon[..., 0], episode.carbon_kg_kwh[:, :params.horizon_steps + 1], rtol=1e-6)
    np.testing.assert_allclose(carbon[..., 0], issued[..., 0], rtol=1e-6)
    np.testing.assert_allclose(carbon[..., 1:], issued[..., [1, 2, 2]], rtol=1e-6)  # f1, f2, then f2 holds
    price = episode.forecast_windows[:, :, FORECAST_BLOCK.index("price_buy_eur_kwh")]
    np.testing.assert_allclose(price, 0.3)
    noisy = IssuedForecasts(gen, {"price_buy_eur_kwh": {"mode": "noisy"}})
    again = noisy.sample(params, np.random.default_rng(1), 3)
    np.testing.assert_array_equal(again.forecast_windows[:, :, FORECAST_BLOCK.index("carbon_kg_kwh")], carbon)


@pytest.mark.parametrize("day", ["2019-11-03", "2019-03-10"])
def test_file_forecasts_follow_the_wall_clock_grid_across_daylight_saving(tmp_path, day):
    # A file whose forecasts are perfect (f_k of row r is the value of row r + k) must issue the truth
    # windows, also when the 02:00 step is an hour off the UTC grid (fall back) or repeats 01:00 (spring).
    rows = pd.date_range(pd.Timestamp(day) - pd.Timedelta(days=1), periods=3 * 96, freq="15min", tz="UTC")
    value = np.arange(len(rows) + 16) / 1000.0
    frame = pd.DataFrame({"time": rows.strftime("%Y-%m-%d %H:%M:%S+00:00"), "moer": value[:len(rows)]})
    for k in range(1, 17):
        frame[f"f{k}"] = value[k:len(rows) + k]
    frame.to_csv(tmp_path / "perfect.csv", index=False)
    params = tiny_site(dt_minutes=30, forecast_steps=4)
    spec = {"tz": "America/Los_Angeles", "dates": [day, day], "match_weekday": False,
            "carbon": {"path": str(tmp_path / "perfect.csv"), "column": "moer", "forecast_columns": "f",
                       "scale": 2.0}}
    generator = with_series(generator_for(params), {"series": spec}, params)
    episode = generator.sample(params, np.random.default_rng(0), 1)
    truth = episode.carbon_kg_kwh[0]
    windows = episode.forecast_windows[0, :, FORECAST_BLOCK.index("carbon_kg_kwh")]
    lead = np.arange(params.horizon_steps + 1)[:, None] + np.arange(params.forecast_steps + 1)[None, :]
    np.testing.assert_allclose(windows, truth[lead], rtol=1e-6)


@pytest.mark.parametrize(("entry", "field"), [
    ({"path": "series_moer.csv", "column": "moer", "forecast_columns": "g"}, "carbon.forecast_columns"),
    ({"path": "series_moer.csv", "column": "moer", "forecast_columns": "f", "forecast_lead_minutes": 0},
     "carbon.forecast_lead_minutes"),
    ({"path": "series_moer.csv", "column": "moer", "forecast_lead_minutes": 5},
     "carbon.forecast_lead_minutes"),
])
def test_bad_forecast_columns_name_the_field(entry, field):
    with pytest.raises(SiteError, match=re.escape(f"series.{field}")):
        SeriesOverlay(ParametricGenerator(), {"data_dir": str(FIXTURES), "carbon": entry})
    tariff = {"path": "series_tariff.json", "forecast_columns": "f"}
    with pytest.raises(SiteError, match=r"series\.tariff\.forecast_columns"):
        SeriesOverlay(ParametricGenerator(), {"data_dir": str(FIXTURES), "tariff": tariff,
                                              "dates": ["2020-01-01", "2020-01-02"]})


@needs_shared
def test_real_carbon_forecasts_beat_nothing_and_keep_their_truth():
    params = load_site("caltech")
    spec = {"tz": "America/Los_Angeles", "data_dir": str(SHARED),
            "carbon": {"path": "moer/*.csv.gz", "column": "moer", "forecast_columns": "f"}}
    gen = with_series(generator_for(params), {"series": spec}, params)
    episode = gen.sample(params, np.random.default_rng(0), 16)
    episode.check(params)
    carbon = episode.forecast_windows[:, :, FORECAST_BLOCK.index("carbon_kg_kwh")]
    truth = episode.carbon_kg_kwh
    steps = params.horizon_steps + 1
    np.testing.assert_allclose(carbon[..., 0], truth[:, :steps], rtol=1e-6)
    error = np.abs(carbon[..., 1] - truth[:, 1:steps + 1]).mean()
    assert 0 < error < np.abs(truth[:, 1:steps + 1] - truth[:, :steps].mean()).mean()


def test_naive_csv_times_become_utc_aware_in_the_file_zone(tmp_path):
    (tmp_path / "s.csv").write_text("time,x\n2019-05-01 00:00,1\n2019-05-01 01:00,2\n")
    frame = read_series_csv(tmp_path / "s.csv", columns=["x"], tz="America/Los_Angeles")
    assert str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp("2019-05-01 07:00", tz="UTC")
    assert read_series_csv(tmp_path / "s.csv", columns=["x"]).index[0] == pd.Timestamp("2019-05-01", tz="UTC")
