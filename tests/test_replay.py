"""Replay of real sessions: a replayed day holds exactly the file's sessions, and the env counts them."""

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.core import reset, step
from envs.data.replay import ReplayGenerator, replay_days
from envs.data.sessions import read_acn_csv, read_sessions_csv
from envs.parametric import EvModel, ParametricGenerator
from envs.plugging import ABANDONED, DEPARTED, PLUGGED, QUEUED, TURNED_AWAY
from envs.site import load_site

FIXTURES = Path(__file__).parent / "fixtures"
ACN_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "acn"
TZ = "America/Los_Angeles"


def site(ports=4, capacity=10, patience_minutes=60, **fields):
    spec = {"name": "replay", "dt_minutes": 15, "nodes": [{"name": "grid", "limit_kw": 100}],
            "ports": [{"name": "evse", "node": "grid", "count": ports, "max_charge_kw": 7}],
            "queue": {"capacity": capacity, "patience_minutes": patience_minutes},
            "scenario": {"fleet": [{"battery_kwh": 60, "max_charge_kw": 11, "share": 1}]}}
    spec.update(fields)
    return load_site(spec)


@pytest.fixture
def sessions():
    return read_acn_csv(FIXTURES / "sessions_acn.csv.gz")


def evs(episode, env=0):
    valid = episode.ev_valid[env]
    return {name: getattr(episode, f"ev_{name}")[env][valid].tolist()
            for name in ("arrival_step", "departure_step", "announced_departure_step", "requested_kwh")}


def test_replayed_day_holds_exactly_the_sessions_of_the_file(sessions):
    params = site()
    episode = ReplayGenerator(sessions, days=["2019-05-06"], shuffle=False).sample(
        params, np.random.default_rng(0), 1)
    episode.check(params)
    # s1 (overnight, carried over at half its stay), s2, s3 (unclaimed), s4, s5, s6 (leaves tomorrow)
    assert evs(episode) == {
        "arrival_step": [0, 31, 32, 32, 33, 95],
        "departure_step": [24, 66, 49, 36, 76, 128],
        "announced_departure_step": [28, 68, 49, 36, 74, 126],
        "requested_kwh": [10.0, 30.0, 6.5, 5.0, 12.5, 40.0],
    }
    assert episode.weekday.tolist() == [0]
    without = ReplayGenerator(sessions, days=["2019-05-06"], carry_over=False).sample(
        params, np.random.default_rng(0), 1)
    assert evs(without)["arrival_step"] == [31, 32, 32, 33, 95]


def test_env_counts_the_replayed_arrivals_and_accounts_for_overflow(sessions):
    params = site(ports=2, capacity=1, patience_minutes=30)
    episode = ReplayGenerator(sessions, days=["2019-05-06"], shuffle=False).sample(
        params, np.random.default_rng(0), 1)
    schedule = reset(params, episode).schedule
    arrived = schedule.arrived.sum()
    plugged = np.isin(schedule.ev_status, (PLUGGED, DEPARTED)).sum()
    assert arrived == episode.ev_valid.sum() == 6
    assert (schedule.turned_away.sum(), schedule.abandoned.sum(), plugged) == (1, 1, 4)
    assert schedule.turned_away.sum() + schedule.abandoned.sum() + plugged == arrived
    assert (schedule.ev_status == TURNED_AWAY).sum() == 1 and (schedule.ev_status == ABANDONED).sum() == 1
    assert (schedule.ev_status == QUEUED).sum() == 0


def test_replay_days_lists_days_whose_window_fits(sessions):
    days = [datetime.date(2019, 5, d) for d in (4, 5, 6, 7)]
    assert replay_days(sessions, site()) == days
    assert replay_days(sessions, site(), min_sessions=2) == [datetime.date(2019, 5, 6)]
    assert replay_days(sessions, site(horizon_steps=192)) == days[:3]
    late = site(start_hour=20)  # windows from 20:00 to 20:00 the next day
    assert replay_days(sessions, late, min_sessions=0) == days[:3]
    with pytest.raises(ValueError, match="runs outside the sessions' dates 2019-05-04 .. 2019-05-07"):
        ReplayGenerator(sessions, days=["2019-05-07"]).sample(late, np.random.default_rng(0), 1)


def test_days_are_drawn_with_the_rng_or_taken_in_order(sessions):
    params = site()
    generator = ReplayGenerator(sessions)
    first = generator.sample(params, np.random.default_rng(5), 4)
    again = generator.sample(params, np.random.default_rng(5), 4)
    assert np.array_equal(first.ev_arrival_step, again.ev_arrival_step)
    assert np.array_equal(first.price_buy_eur_kwh, again.price_buy_eur_kwh)
    assert sorted(first.weekday.tolist()) == [0, 1, 5, 6]  # four distinct days: Sat, Sun, Mon, Tue
    ordered = ReplayGenerator(sessions, days=["2019-05-06", "2019-05-04"], shuffle=False)
    episode = ordered.sample(params, np.random.default_rng(1), 3)
    assert episode.weekday.tolist() == [0, 5, 0]
    assert episode.ev_valid.sum(axis=1).tolist() == [6, 1, 6]


def test_base_series_follow_the_replayed_weekday(sessions):
    params = site()
    base = ParametricGenerator(price_noise=0.0, price_weekend_factor=0.5)
    episode = ReplayGenerator(sessions, days=["2019-05-04", "2019-05-06"], shuffle=False, base=base).sample(
        params, np.random.default_rng(0), 2)
    assert episode.weekday.tolist() == [5, 0]
    np.testing.assert_allclose(episode.price_buy_eur_kwh[0, :96], 0.5 * episode.price_buy_eur_kwh[1, :96])


@dataclasses.dataclass(frozen=True)
class WrappedBase:
    """A generator that delegates its series to a parametric ``base`` and has a fleet of its own."""

    base: ParametricGenerator
    fleet_battery_kwh: tuple = (33.0,)
    fleet_max_charge_kw: tuple = (3.3,)
    fleet_max_discharge_kw: tuple = (0.0,)
    fleet_share: tuple = (1.0,)

    def sample(self, params, rng, num_envs):
        return self.base.sample(params, rng, num_envs)


def test_a_wrapping_base_gets_the_weekday_and_lends_its_fleet(sessions):
    base = WrappedBase(ParametricGenerator(price_noise=0.0, price_weekend_factor=0.5))
    generator = ReplayGenerator(sessions, days=["2019-05-04", "2019-05-06"], shuffle=False, base=base)
    episode = generator.sample(site(), np.random.default_rng(0), 2)
    np.testing.assert_allclose(episode.price_buy_eur_kwh[0, :96], 0.5 * episode.price_buy_eur_kwh[1, :96])
    assert set(episode.ev_battery_kwh[episode.ev_valid].tolist()) == {33.0}
    assert set(episode.ev_max_charge_kw[episode.ev_valid].tolist()) == {3.3}


def test_car_data_from_the_table_or_from_a_fleet_that_holds_the_request():
    times = pd.date_range("2021-06-01 08:00", periods=5, freq="10min", tz="Europe/Oslo")
    sessions = pd.DataFrame({
        "arrival": times, "departure": times + pd.Timedelta(hours=9),
        "announced_departure": times + pd.Timedelta(hours=8),
        "requested_kwh": [70.0, 100.0, 10.0, 30.0, 45.0],
        "battery_kwh": [np.nan, np.nan, np.nan, 50.0, 40.0],
        "max_charge_kw": [np.nan, np.nan, np.nan, 22.0, np.nan],
    })
    fleet = [EvModel(40.0, 7.4, 0.0, 0.999), EvModel(75.0, 11.0, 11.0, 0.001)]
    generator = ReplayGenerator(sessions, fleet=fleet, shuffle=False, cap_request_to_stay=False)
    episode = generator.sample(site(), np.random.default_rng(0), 1)
    episode.check(site())
    battery, requested = episode.ev_battery_kwh[0], episode.ev_requested_kwh[0]
    assert battery.tolist() == [75.0, 75.0, 40.0, 50.0, 40.0]
    assert requested.tolist() == [70.0, 75.0, 10.0, 30.0, 40.0]  # capped by the battery
    assert episode.ev_max_charge_kw[0].tolist() == [11.0, 11.0, 7.4, 22.0, 7.4]
    assert np.all(episode.ev_soc_arrival[0] <= 1 - requested / battery + 1e-12)
    assert episode.ev_soc_arrival[0, 1] == 0.0


def test_requests_are_capped_at_what_the_stay_delivers_and_the_table_keeps_them():
    arrival = pd.to_datetime(["2021-06-01 08:00", "2021-06-01 09:00", "2021-06-01 10:00", "2021-05-31 22:00",
                              "2021-06-01 12:00"]).tz_localize("Europe/Oslo")
    stay_h = np.array([9.0, 0.5, 2.0, 4.0, 0.0])
    sessions = pd.DataFrame({
        "arrival": arrival, "departure": arrival + pd.to_timedelta(stay_h, unit="h"),
        "announced_departure": arrival + pd.to_timedelta(stay_h, unit="h"),
        "requested_kwh": [70.0, 20.0, 10.0, 24.0, 5.0], "delivered_kwh": [50.0, 4.0, 9.0, 20.0, 0.0],
        "max_charge_kw": [11.0, 11.0, 3.7, 11.0, 11.0],
    })
    params = site()  # 7 kW ports
    efficiency = float(params.port_charge_efficiency.max())
    generator = ReplayGenerator(sessions, days=["2021-06-01"], shuffle=False)
    episode = generator.sample(params, np.random.default_rng(0), 1)
    valid = episode.ev_valid[0]
    # the overnight session is inside the window for 2 of its 4 hours: half its request, capped to 2 h
    np.testing.assert_allclose(episode.ev_requested_kwh[0][valid],
                               [min(12.0, 2 * 7 * efficiency), min(70.0, 9 * 7 * efficiency),
                                0.5 * 7 * efficiency, min(10.0, 2 * 3.7 * efficiency), 0.0])
    assert sessions["requested_kwh"].tolist() == [70.0, 20.0, 10.0, 24.0, 5.0]
    uncapped = ReplayGenerator(sessions, days=["2021-06-01"], shuffle=False, cap_request_to_stay=False)
    raw = uncapped.sample(params, np.random.default_rng(0), 1)
    np.testing.assert_allclose(raw.ev_requested_kwh[0][valid], [12.0, 60.0, 20.0, 10.0, 5.0])  # battery 60
    report = generator.report(params)
    assert report.site == "replay" and report.zero_stays == 1
    assert report.capped == 4  # 70 > 59.85, 20 > 3.3, 10 > 7.03, 5 > 0; the 24 kWh in 4 h fit
    assert report.capped_kwh == pytest.approx((70 - 9 * 7 * efficiency) + (20 - 0.5 * 7 * efficiency)
                                              + (10 - 2 * 3.7 * efficiency) + 5.0, abs=1e-3)
    assert report.above_port_power == 1  # 4 kWh in half an hour on a 7 kW port
    assert "4 requests above what the stay delivers" in report.summary()


def test_wall_clock_steps_in_the_sessions_zone():
    table = read_sessions_csv(FIXTURES / "sessions_residential.csv", {
        "arrival": "start", "departure": "end", "delivered_kwh": "energy_wh", "session_id": "id"},
        sep=";", decimal=",", thousands=".", dayfirst=True, tz="Europe/Berlin", energy_scale=0.001)
    params = site()
    generator = ReplayGenerator(table, days=[pd.Timestamp("2019-10-27")])
    episode = generator.sample(params, np.random.default_rng(0), 1)
    assert evs(episode)["arrival_step"] == [10] and evs(episode)["departure_step"] == [36]
    assert episode.weekday.tolist() == [6]


def test_replayed_episode_runs_in_the_core(sessions):
    params = site(ports=3)
    episode = ReplayGenerator(sessions).sample(params, np.random.default_rng(2), 8)
    state = reset(params, episode)
    while state.t < params.horizon_steps:
        state, terms, info = step(params, state, np.ones((8, params.num_ports)))
    assert np.all(np.isfinite(state.totals))


def test_bad_session_tables_are_rejected(sessions):
    with pytest.raises(ValueError, match="lacks column 'requested_kwh'"):
        ReplayGenerator(sessions.drop(columns="requested_kwh"))
    naive = sessions.assign(arrival=sessions["arrival"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="'arrival' must hold tz-aware datetimes"):
        ReplayGenerator(naive)
    with pytest.raises(ValueError, match="at least one date"):
        ReplayGenerator(sessions, days=[])


@pytest.mark.skipif(not ACN_DATA.is_dir(), reason="shared ACN data not present")
def test_real_day_replays_its_sessions():
    sessions = read_acn_csv(ACN_DATA / "caltech_2019-09-01_2019-12-31.csv.gz")
    params = load_site("caltech")
    days = replay_days(sessions, params)
    assert len(days) > 100
    day = pd.Timestamp("2019-10-15", tz=TZ)
    arriving = sessions["arrival"].between(day, day + pd.Timedelta(days=1), inclusive="left")
    carried = (sessions["arrival"] < day) & (sessions["departure"] > day)
    episode = ReplayGenerator(sessions, days=[day.date()], shuffle=False).sample(
        params, np.random.default_rng(0), 1)
    schedule = reset(params, episode).schedule
    assert schedule.arrived.sum() == episode.ev_valid.sum() == arriving.sum() + carried.sum()
    plugged = np.isin(schedule.ev_status, (PLUGGED, DEPARTED)).sum()
    left = schedule.turned_away.sum() + schedule.abandoned.sum() + (schedule.ev_status == QUEUED).sum()
    assert plugged + left == schedule.arrived.sum()
    requested = sessions.loc[arriving, "requested_kwh"].to_numpy()
    raw = ReplayGenerator(sessions, days=[day.date()], shuffle=False, cap_request_to_stay=False).sample(
        params, np.random.default_rng(0), 1)
    own = slice(carried.sum(), episode.ev_valid.sum())
    np.testing.assert_allclose(np.sort(raw.ev_requested_kwh[0, own]), np.sort(np.minimum(requested, 75.0)))
    wall = sessions.loc[arriving, ["arrival", "departure"]].apply(lambda t: t.dt.tz_localize(None))
    stay_h = ((wall["departure"] - wall["arrival"]).dt.total_seconds() / 3600).to_numpy()
    power = np.minimum(episode.ev_max_charge_kw[0, own], params.port_max_charge_kw.max())
    deliverable = stay_h * power * params.port_charge_efficiency.max()
    np.testing.assert_allclose(episode.ev_requested_kwh[0, own],
                               np.minimum(np.minimum(requested, episode.ev_battery_kwh[0, own]), deliverable))
    assert (requested > deliverable).sum() >= 5  # real requests the stay cannot deliver


# --- replay from a site's scenario block (generator: replay) ---------------------------------

def replay_site(**scenario):
    block = {"generator": "replay", "sessions": {"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES)},
             "fleet": [{"battery_kwh": 60, "max_charge_kw": 11, "share": 1}], **scenario}
    return site(scenario=block)


def test_scenario_block_replays_the_file_like_the_constructor(sessions):
    import gymnasium

    import envs
    from envs.generators import generator_for

    params = replay_site(days=["2019-05-06"], shuffle=False)
    generator = generator_for(params)
    assert isinstance(generator, ReplayGenerator)
    episode = generator.sample(params, np.random.default_rng(0), 1)
    direct = ReplayGenerator(sessions, days=["2019-05-06"], shuffle=False).sample(
        params, np.random.default_rng(0), 1)
    assert evs(episode) == evs(direct)
    env = gymnasium.make(envs.ENV_ID, site=params)
    env.reset(seed=0)
    assert env.unwrapped.state.episode.ev_valid.sum() == len(evs(direct)["arrival_step"])


def test_date_range_keeps_the_replayable_days_inside_it(sessions):
    from envs.generators import generator_for

    params = replay_site(date_range=["2019-05-06", "2019-05-07"])
    days = generator_for(params).days_for(params)
    assert [str(day) for day in days] == [str(day) for day in replay_days(sessions, params)
                                          if datetime.date(2019, 5, 6) <= day <= datetime.date(2019, 5, 7)]
    assert len(days) == 2


@pytest.mark.parametrize(("scenario", "field"), [
    ({"sessions": None}, "scenario.sessions must be a mapping"),
    ({"sessions": {"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES), "sep": ";"}},
     "scenario.sessions.sep"),
    ({"sessions": {"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES), "format": "xml"}},
     "scenario.sessions.format"),
    ({"days": ["2019-05-06"], "date_range": ["2019-05-06", "2019-05-07"]}, "scenario.date_range and days"),
    ({"date_range": ["2020-01-01", "2020-01-31"]}, "scenario.date_range leaves no replayable day"),
    ({"days": ["2021-01-01"]}, "scenario.days day 2021-01-01 of site 'replay' runs outside"),
    ({"sessions_per_dy": 3}, "scenario.sessions_per_dy is not a known field"),
    ({"sessions": {"path": "no_such.csv", "data_dir": str(FIXTURES)}},
     "scenario.sessions.path names no session file"),
    ({"sessions": {"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES), "reader": {"sep": ";"}}},
     "scenario.sessions.reader does not fit the acn_csv reader"),
    ({"sessions": {"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES), "format": "csv"}},
     "scenario.sessions.reader does not fit the csv reader"),
    ({"days": ["2019-13-45"]}, "scenario.days must be a list of dates"),
    ({"days": "2019-05-06"}, "scenario.days must be a list of dates"),
    ({"days": []}, "scenario.days must list at least one date"),
    ({"special_days": ["someday"]}, "scenario.special_days must be a list of dates"),
    ({"min_sessions": "3"}, "scenario.min_sessions must be a whole number"),
    ({"shuffle": "no"}, "scenario.shuffle must be true or false"),
])
def test_bad_replay_block_names_the_field(scenario, field):
    from envs.generators import generator_for
    from envs.site import SiteError

    params = replay_site(**scenario)
    with pytest.raises(SiteError, match=field.replace(".", r"\.")):
        generator_for(params).sample(params, np.random.default_rng(0), 1)


def test_replay_block_expands_the_home_directory(tmp_path, monkeypatch):
    import shutil

    from envs.generators import generator_for

    shutil.copy(FIXTURES / "sessions_acn.csv.gz", tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    params = replay_site(sessions={"path": "~/sessions_acn.csv.gz"}, days=["2019-05-06"])
    assert generator_for(params).sample(params, np.random.default_rng(0), 1).ev_valid.sum() == 6


def test_series_over_a_replay_are_cut_from_the_replayed_days(tmp_path):
    from envs.generators import generator_for
    from envs.site import SiteError

    hours = pd.date_range("2019-05-01", "2019-05-31 23:00", freq="h")
    pd.DataFrame({"time": hours.strftime("%Y-%m-%d %H:%M"), "price": hours.day + hours.hour / 100}).to_csv(
        tmp_path / "prices.csv", index=False)
    price = {"path": "prices.csv", "column": "price", "file_tz": TZ}
    series = {"data_dir": str(tmp_path), "price_buy": price}
    params = replay_site(days=["2019-05-06", "2019-05-07"], shuffle=False, series=series)
    generator = generator_for(params)
    assert generator.tz == TZ
    episode, days = generator.sample_with_dates(params, np.random.default_rng(0), 2)
    assert [str(day) for day in days] == ["2019-05-06", "2019-05-07"]
    step_hour = np.arange(params.horizon_steps) // 4
    np.testing.assert_allclose(episode.price_buy_eur_kwh[:, :params.horizon_steps],
                               np.array([[6.0], [7.0]]) + step_hour / 100)
    late = replay_site(days=["2019-05-06"], series={**series, "dates": ["2019-05-10", "2019-05-20"]})
    with pytest.raises(SiteError, match=r"series\.dates leave out the replayed day 2019-05-06"):
        generator_for(late).sample(late, np.random.default_rng(0), 1)


def test_replay_block_filters_stations_writes_and_logs_the_report(tmp_path, caplog):
    import json
    import logging

    from envs.generators import generator_for

    path = tmp_path / "report" / "caltech.json"
    params = replay_site(sessions={"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES),
                                   "stations": ["CA-1", "CA-2"], "report": str(path)})
    with caplog.at_level(logging.INFO, logger="envs.data.replay_config"):
        generator = generator_for(params)
    assert set(generator.sessions["station_id"]) == {"CA-1", "CA-2"}
    written = json.loads(path.read_text())
    assert written["site"] == "replay" and written["dropped"]["other station"] == written["rows_read"] - len(
        generator.sessions)
    assert "sessions read" in caplog.text and "requests above what the stay delivers" in caplog.text
    from envs.site import SiteError

    with pytest.raises(SiteError, match=r"scenario\.sessions\.stations must be a list"):
        generator_for(replay_site(sessions={"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES),
                                            "stations": "CA-1"}))
    with pytest.raises(SiteError, match=r"scenario\.sessions leaves no session to replay"):
        generator_for(replay_site(sessions={"path": "sessions_acn.csv.gz", "data_dir": str(FIXTURES),
                                            "stations": ["nowhere"]}))
