"""Malformed inputs, one per line: each raises the project's named error, fast and in bounded memory.

A case is ``(id, run, error, words)``: ``run(tmp_path)`` feeds one bad input to a public entry
point; it must raise ``error`` (the exact class or a subclass; never a bare ``KeyError``,
``TypeError``, ``RecursionError``, ``MemoryError``...) whose message contains every one of
``words`` and is short (the input is never copied whole into it). Every case runs under a
500 MB address-space limit on top of what the process already holds, and within 2 seconds.
"""

import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import envs
from agents.evaluate import episodes_for, run_from_config
from envs import SmartChargingEnv, SmartChargingVectorEnv, generator_for
from envs.core import reset, step
from envs.data.errors import DataError
from envs.data.prices import read_day_ahead_csv, read_tariff
from envs.data.series import read_building_csv, read_series_csv
from envs.data.sessions import read_acn_csv, read_acn_json, read_sessions, read_sessions_csv
from envs.errors import ConfigError, SiteError
from envs.limits import check_count
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
MEMORY_BYTES = 500 << 20
SECONDS = 2.0
MESSAGE_CHARS = 1000

BASE = {"name": "broken",
        "nodes": [{"name": "grid", "limit_kw": 100}, {"name": "t", "parent": "grid", "limit_kw": 50}],
        "ports": [{"node": "t", "max_charge_kw": 7}]}
BASE_YAML = ("name: broken\nnodes:\n  - {name: grid, limit_kw: 100}\n"
             "  - {name: t, parent: grid, limit_kw: 50}\nports:\n  - {node: t, max_charge_kw: 7}\n")
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(  # 10**9 values once expanded
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
PRICES = "Country,Datetime (UTC),Price (EUR/MWhe)\n"
HOURS = "".join(f"NL,2019-01-01 {h:02d}:00:00,{h}\n" for h in range(4))
TARIFF = {"effective_start": "1-1", "effective_end": "12-31", "dow_mask": "ALL", "times": [0, 8],
          "tariffs": [1, 2]}


def write(tmp, name, content):
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def site(**changes):
    return lambda tmp: load_site({**BASE, **changes})


def site_yaml(content):
    return lambda tmp: load_site(write(tmp, "site.yaml", content))


def scenario(**fields):
    def run(tmp):
        params = load_site({**BASE, "scenario": fields})
        generator_for(params).sample(params, np.random.default_rng(0), 1)
    return run


def port(**fields):
    return site(ports=[{"node": "t", "max_charge_kw": 7, **fields}])


def day_ahead(content, **options):
    return lambda tmp: read_day_ahead_csv(write(tmp, "prices.csv", content), **options)


def local_prices(*rows):
    text = "Country,Datetime (Local),Price (EUR/MWhe)\n" + "".join(f"NL,{row}\n" for row in rows)
    return day_ahead(text, time_column="Datetime (Local)", tz="Europe/Amsterdam")


def tariff(content):
    text = content if isinstance(content, str | bytes) else json.dumps({"schedule": [{**TARIFF, **content}]})
    return lambda tmp: read_tariff(write(tmp, "tariff.json", text))


def series(content, **options):
    return lambda tmp: read_series_csv(write(tmp, "series.csv", content), **options)


def single_action(action):
    def run(tmp):
        env = SmartChargingEnv(BASE)
        env.reset(seed=0)
        env.step(action)
    return run


def vector_action(action):
    def run(tmp):
        env = SmartChargingVectorEnv(1, BASE)
        env.reset(seed=0)
        env.step(action)
    return run


def sb3_action(action):
    def run(tmp):
        env = SmartChargingVecEnv(1, BASE)
        env.reset()
        env.step(action)
    return run


def core_action(action):
    def run(tmp):
        params = load_site(BASE)
        step(params, reset(params, generator_for(params).sample(params, np.random.default_rng(0), 1)), action)
    return run


SESSION_COLUMNS = {"arrival": "a", "departure": "d", "requested_kwh": "e"}
SESSIONS_CSV = "a,d,e\n2020-01-01 08:00,2020-01-01 10:00,5\n"
SERIES_DATES = ["2019-03-25", "2019-03-31"]
ACN_JSON = {"path": str(FIXTURES / "sessions_acn.json"), "format": "acn_json"}


def sessions_csv(**options):
    return lambda tmp: read_sessions_csv(write(tmp, "s.csv", SESSIONS_CSV), SESSION_COLUMNS, **options)


def replay(**sessions):
    """A replay of the ACN JSON fixture on its day, its ``sessions:`` block changed by ``sessions``."""
    def run(tmp):
        block = {key: value(tmp) if callable(value) else value for key, value in sessions.items()}
        generator_for(load_site({**BASE, "scenario": {"generator": "replay", "days": ["2018-04-25"],
                                                       "sessions": {**ACN_JSON, **block}}}))
    return run


def replay_csv(**reader):
    return replay(path=lambda tmp: str(write(tmp, "s.csv", SESSIONS_CSV)), format="csv",
                  reader={"columns": SESSION_COLUMNS, **reader})


def series_block(**block):
    """A generator built over a ``series:`` block (built only: the checks run at construction)."""
    return lambda tmp: generator_for(load_site({**BASE, "scenario": {"series": block}}))


def pv_file(values, **entry):
    def run(tmp):
        rows = "".join(f"2020-01-01T{hour:02d}:00,{value}\n" for hour, value in enumerate(values))
        path = write(tmp, "pv.csv", "time,kw\n" + rows)
        series_block(pv=[{"node": "t", "path": str(path), "column": "kw", **entry}])(tmp)
    return run


def forecasts(block):
    return scenario(forecasts=block)


def evaluate_config(**keys):
    """``run_from_config`` on a small evaluation config (no policies), ``keys`` changed."""
    config = {"site": {"preset": "caltech", "overrides": {"horizon_steps": 8}}, "policies": {},
              "num_episodes": 2, "seed": 0, "num_envs": None, "plots": None, **keys}
    return lambda tmp: run_from_config(OmegaConf.create(config))

CASES = [
    # --- site YAML: sizes, aliases, encoding, structure -----------------------------------------
    ("yaml alias bomb", site_yaml(BOMB), SiteError, ["aliases expanded", "limit", "ENVS_MAX_YAML_NODES"]),
    ("yaml alias bomb in a field", site_yaml(BASE_YAML + BOMB.replace("a:", "x:", 1) + "description: *i\n"),
     SiteError, ["yaml_nodes"]),
    ("yaml recursive alias", site_yaml(BASE_YAML + "description: &r [*r]\n"), SiteError, ["recursive alias"]),
    ("yaml duplicate key", site_yaml(BASE_YAML + "name: other\n"), SiteError, ["line 7", "'name'", "line 1"]),
    ("yaml duplicate nested key", site_yaml(BASE_YAML.replace("limit_kw: 50", "limit_kw: 50, limit_kw: 9")),
     SiteError, ["line 4", "'limit_kw'", "repeats"]),
    ("yaml not utf-8", site_yaml(b"name: caf\xe9\n"), SiteError, ["site.yaml, line 1", "UTF-8"]),
    ("yaml directory", lambda tmp: load_site(tmp), SiteError, ["is a directory"]),
    ("yaml directory named .yaml", lambda tmp: load_site((tmp / "d.yaml").mkdir() or tmp / "d.yaml"),
     SiteError, ["d.yaml", "is a directory"]),
    ("yaml missing file", lambda tmp: load_site(tmp / "nowhere.yaml"),
     SiteError, ["nowhere.yaml", "does not exist"]),
    ("yaml nested too deeply", site_yaml("a: " + "[" * 500 + "]" * 500 + "\n"),
     SiteError, ["nested too deeply"]),
    ("yaml file too large", site_yaml(BASE_YAML + "description: '" + "x" * 1_000_000 + "'\n"), SiteError,
     ["file size", "1,000,000", "ENVS_MAX_YAML_BYTES"]),
    ("yaml syntax", site_yaml("nodes: [\n"), SiteError, ["invalid YAML", "line"]),
    ("yaml 5000-digit number", site_yaml(BASE_YAML + "horizon_steps: " + "9" * 5000 + "\n"), SiteError,
     ["site.yaml", "invalid YAML", "digits"]),
    ("yaml top level list", site_yaml("- grid\n"), SiteError, ["top level must be a mapping"]),
    ("yaml unknown preset", lambda tmp: load_site("no_such_site"), SiteError, ["no_such_site", "caltech"]),
    # --- site fields: types, ranges, sizes --------------------------------------------------------
    ("site 1e8 ports", port(count=1e8),
     SiteError, ["ports[0].count", "100,000,000", "10,000", "ENVS_MAX_PORTS"]),
    ("site ports as a text count", port(count="many"), SiteError, ["ports[0].count", "must be a number"]),
    ("site 400-digit count", site_yaml(BASE_YAML.replace("7}", "7, count: " + "9" * 400 + "}")),
     SiteError, ["ports[0].count", "must be a number", "..."]),
    ("site horizon 1e9", site(horizon_steps=1e9),
     SiteError, ["horizon_steps", "100,000", "LIMITS['horizon_steps']"]),
    ("site forecast 1e9", site(forecast_steps=1e9), SiteError, ["forecast_steps", "ENVS_MAX_FORECAST_STEPS"]),
    ("site episode too large", site(horizon_steps=90_000, ports=[{"node": "t", "max_charge_kw": 7,
                                                                   "count": 9000}]),
     SiteError, ["episode's size", "episode_cells"]),
    ("site limit_kw 1e39", site(nodes=[{"name": "grid", "limit_kw": 1e39}, BASE["nodes"][1]]), SiteError,
     ["nodes[0].limit_kw", "1e+39", "power_kw"]),
    ("site max_charge_kw inf", port(max_charge_kw=float("inf")),
     SiteError, ["ports[0].max_charge_kw", "finite"]),
    ("site export limit nan", site(nodes=[{"name": "grid", "limit_kw": 9, "export_limit_kw": float("nan")},
                                          BASE["nodes"][1]]),
     SiteError, ["nodes[0].export_limit_kw", "finite"]),
    ("site battery not a mapping", site(battery=5), SiteError, ["battery must be a mapping", "got 5"]),
    ("site queue not a mapping", site(queue=[1]), SiteError, ["queue must be a mapping"]),
    ("site reward not a mapping", site(reward=[1]), SiteError, ["reward must be a mapping"]),
    ("site reward unknown weight", site(reward={"bogus": 1}),
     SiteError, ["reward.bogus", "not a known weight"]),
    ("site scenario not a mapping", site(scenario=[1]), SiteError, ["scenario must be a mapping"]),
    ("site name a list", site(name=[1, 2]), SiteError, ["name must be a text"]),
    ("site node name a mapping", site(nodes=[{"name": {"a": 1}, "limit_kw": 5}]),
     SiteError, ["nodes[0].name"]),
    ("site port node missing", site(ports=[{"max_charge_kw": 7}]), SiteError, ["ports[0].node"]),
    ("site huge unknown key", site(**{"x" * 10_000_000: 1}), SiteError, ["is not a known field", "..."]),
    ("site huge text value", site(dt_minutes="9" * 10_000_000 + "x"), SiteError, ["dt_minutes", "..."]),
    ("site taper knee below 0", site(battery={"taper_knee_soc": -0.5}),
     SiteError, ["battery.taper_knee_soc", ">= 0"]),
    ("site taper knee at 1", site(battery={"taper_knee_soc": 1.0}),
     SiteError, ["battery.taper_knee_soc", "< 1"]),
    ("site taper floor above 1", site(battery={"taper_floor": 2}),
     SiteError, ["battery.taper_floor", "<= 1"]),
    ("site queue capacity 2.5", site(queue={"capacity": 2.5}), SiteError, ["queue.capacity", "integer"]),
    # --- scenario fields ------------------------------------------------------------------------------
    ("scenario min_soc -1", scenario(min_soc=-1), SiteError, ["scenario.min_soc", "[0, 1]"]),
    ("scenario min_soc 1.5", scenario(min_soc=1.5), SiteError, ["scenario.min_soc", "[0, 1]"]),
    ("fitted min_soc -1", lambda tmp: generator_for(load_site("caltech_fitted", scenario={"min_soc": -1})),
     SiteError, ["site 'caltech_fitted': scenario.min_soc", "[0, 1]"]),
    ("replay soc range above 1", lambda tmp: generator_for(load_site("caltech", scenario={
        "generator": "replay", "days": 2,
        "sessions": {"path": str(FIXTURES / "sessions_acn.json"), "format": "acn_json"},
        "soc_arrival_range": [0.5, 1.5]})), SiteError, ["scenario.soc_arrival_range", "<= 1"]),
    ("scenario min_soc text", scenario(min_soc="low"), SiteError, ["scenario.min_soc", "must be a number"]),
    ("scenario soc range of 3", scenario(soc_arrival_range=[0.1, 0.2, 0.3]), SiteError,
     ["scenario.soc_arrival_range", "[low, high]"]),
    ("scenario soc range text", scenario(soc_arrival_range="ab"), SiteError,
     ["scenario.soc_arrival_range", "list of numbers"]),
    ("scenario soc range reversed", scenario(soc_arrival_range=[0.8, 0.2]),
     SiteError, ["soc_arrival_range", "<="]),
    ("scenario soc range below 0", scenario(soc_arrival_range=[-0.1, 0.5]), SiteError, ["soc_arrival_range"]),
    ("scenario v2g share 2", scenario(v2g_consent_share=2),
     SiteError, ["scenario.v2g_consent_share", "[0, 1]"]),
    ("scenario peak width 0", scenario(peak_widths_hours=[0, 2]),
     SiteError, ["scenario.peak_widths_hours", ">= 0.25"]),
    ("scenario peak weights 0", scenario(peak_weights=[0, 0]),
     SiteError, ["scenario.peak_weights", "positive sum"]),
    ("scenario peak hours text", scenario(peak_hours="8"),
     SiteError, ["scenario.peak_hours", "list of numbers"]),
    ("scenario load without node", scenario(loads=[{"base_kw": 5}]),
     SiteError, ["scenario.loads[0].node", "required"]),
    ("scenario load on unknown node", scenario(loads=[{"node": "x", "base_kw": 5}]),
     SiteError, ["unknown node 'x'"]),
    ("scenario load negative", scenario(loads=[{"node": "t", "base_kw": -5}]),
     SiteError, ["loads[0].base_kw", ">= 0"]),
    ("scenario load unknown field", scenario(loads=[{"node": "t", "colour": 1}]),
     SiteError, ["loads[0].colour"]),
    ("scenario loads not a list", scenario(loads={"node": "t"}),
     SiteError, ["scenario.loads", "list of mappings"]),
    ("scenario pv without peak", scenario(pv=[{"node": "t"}]),
     SiteError, ["scenario.pv[0].peak_kw", "required"]),
    ("scenario pv negative", scenario(pv=[{"node": "t", "peak_kw": -5}]),
     SiteError, ["scenario.pv[0].peak_kw", ">= 0"]),
    ("scenario pv 1e39 kW", scenario(pv=[{"node": "t", "peak_kw": 1e39}]),
     SiteError, ["pv[0].peak_kw", "power_kw"]),
    ("scenario fleet text", scenario(fleet="abc"), SiteError, ["scenario.fleet", "list of mappings"]),
    ("scenario fleet wrong type", scenario(fleet=[{"battery_kwh": "x", "max_charge_kw": 7}]), SiteError,
     ["scenario.fleet[0].battery_kwh", "must be a number"]),
    ("scenario fleet missing battery", scenario(fleet=[{"max_charge_kw": 7}]), SiteError,
     ["scenario.fleet[0].battery_kwh", "required"]),
    ("scenario fleet empty", scenario(fleet=[]), SiteError, ["scenario.fleet", "at least one"]),
    ("scenario sessions 1e12", scenario(sessions_per_day=1e12), SiteError,
     ["scenario.sessions_per_day", "100,000", "ENVS_MAX_SESSIONS_PER_DAY"]),
    ("scenario sessions text", scenario(sessions_per_day="many"),
     SiteError, ["scenario.sessions_per_day", "number"]),
    ("scenario sessions nan", scenario(sessions_per_day=float("nan")),
     SiteError, ["sessions_per_day", "finite"]),
    ("scenario price inf", scenario(price_hourly_eur_kwh=[float("inf")] * 24), SiteError,
     ["scenario.price_hourly_eur_kwh[0]", "finite"]),
    ("scenario 23 prices", scenario(price_hourly_eur_kwh=[0.1] * 23),
     SiteError, ["price_hourly_eur_kwh", "24"]),
    ("scenario carbon text", scenario(carbon_hourly_kg_kwh="low"),
     SiteError, ["scenario.carbon_hourly_kg_kwh"]),
    ("scenario weekday text", scenario(weekday="mon"), SiteError, ["scenario.weekday", "0..6"]),
    ("scenario weekday 7", scenario(weekday=[1, 7]), SiteError, ["scenario.weekday", "0..6"]),
    ("scenario dwell sigma 100", scenario(dwell_sigma=100), SiteError, ["scenario.dwell_sigma", "<= 5"]),
    ("scenario tariff nan", scenario(tariff_eur_kwh=float("nan")),
     SiteError, ["scenario.tariff_eur_kwh", "finite"]),
    ("scenario dwell 1e30 hours", scenario(dwell_mean_hours=1e30), SiteError,
     ["scenario.dwell_mean_hours", "within +-1,000,000"]),
    ("scenario battery 1e300 kWh", scenario(fleet=[{"battery_kwh": 1e300, "max_charge_kw": 7}]), SiteError,
     ["scenario.fleet[0].battery_kwh", "within"]),
    ("scenario weekend factor 1e6", scenario(sessions_per_day=1000, weekend_factor=1e6), SiteError,
     ["scenario.sessions_per_day", "busiest day", "ENVS_MAX_SESSIONS_PER_DAY"]),
    ("scenario load width 1e-300", scenario(loads=[{"node": "t", "peak_kw": 9, "width_hours": 1e-300}]),
     SiteError, ["scenario.loads[0].width_hours", ">= 0.25"]),
    ("site reward weight 1e300", site(reward={"unmet_eur_per_kwh": 1e300}), SiteError,
     ["reward.unmet_eur_per_kwh", "<= 1000000"]),
    ("scenario huge unknown key", scenario(**{"k" * 1_000_000: 1}), SiteError, ["not a known field", "..."]),
    # --- tariff JSON -----------------------------------------------------------------------------------
    ("tariff nan times", tariff({"times": [0, float("nan")]}),
     DataError, ["tariff.json", "schedule[0].times", "finite"]),
    ("tariff times as text", tariff({"times": "0 8", "tariffs": "12"}),
     DataError, ["schedule[0].times", "a list"]),
    ("tariff inf price", tariff({"tariffs": [1, float("inf")]}),
     DataError, ["schedule[0].tariffs", "finite"]),
    ("tariff bool demand charge", tariff({"demand_charge": True}), DataError, ["schedule[0].demand_charge"]),
    ("tariff deeply nested", tariff("[" * 100_000 + "]" * 100_000),
     DataError, ["tariff.json", "nested too deeply"]),
    ("tariff 400-digit charge", tariff('{"schedule": [' + json.dumps(TARIFF)[:-1] + ', "demand_charge": '
                                       + "9" * 400 + '}]}'), DataError, ["schedule[0].demand_charge", "..."]),
    ("tariff 5000-digit number", tariff('{"schedule": [], "x": ' + "9" * 5000 + "}"), DataError,
     ["tariff.json", "invalid JSON", "digits"]),
    ("sessions 5000-digit number",
     lambda tmp: read_acn_json(write(tmp, "s.json", '{"_items": [' + "9" * 5000 + "]}")), DataError,
     ["s.json, line 1", "malformed JSON", "digits"]),
    ("tariff missing", lambda tmp: read_tariff(tmp / "none.json"),
     DataError, ["none.json", "does not exist"]),
    ("tariff directory", lambda tmp: read_tariff(tmp), DataError, ["is a directory"]),
    ("tariff not utf-8", tariff(b'{"name": "caf\xe9"}'), DataError, ["tariff.json, line 1", "utf-8"]),
    ("tariff invalid json", tariff('{"schedule": [\n'), DataError, ["tariff.json, line", "invalid JSON"]),
    ("tariff with 10**4 schedules", tariff(json.dumps({"schedule": [TARIFF] * 10**4})), DataError,
     ["'schedule'", "10,000", "ENVS_MAX_TARIFF_SCHEDULES"]),
    # --- day-ahead price CSV ---------------------------------------------------------------------------
    ("prices inf", day_ahead(PRICES + HOURS + "NL,2019-01-01 04:00:00,inf\n"), DataError,
     ["prices.csv, line 6", "'Price (EUR/MWhe)'", "finite"]),
    ("prices 200-year gap", day_ahead(PRICES + HOURS + "NL,2219-01-01 00:00:00,3\n"), DataError,
     ["no data from", "series_gap_days", "ENVS_MAX_SERIES_GAP_DAYS"]),
    ("prices second grid over 200 years", day_ahead(PRICES + "NL,2019-01-01 00:00:00,1\n"
                                                    "NL,2019-01-01 00:00:01,2\n"
                                                    "NL,2219-01-01 00:00:00,3\nNL,2219-01-01 00:00:01,3\n"),
     DataError, ["step count", "series_steps", "ENVS_MAX_SERIES_STEPS"]),
    ("prices junk row", day_ahead(PRICES + HOURS + "NL,junk,7\n"),
     DataError, ["line 6", "'Datetime (UTC)'", "junk"]),
    ("prices conflicting repeat", day_ahead(PRICES + HOURS + "NL,2019-01-01 01:00:00,99\n"), DataError,
     ["line 6", "repeats the hour of line 3"]),
    ("prices short row", day_ahead(PRICES + HOURS + "NL,2019-01-01 04:00:00\n"),
     DataError, ["line 6", "2 fields"]),
    ("prices not utf-8", day_ahead((PRICES + HOURS).encode() + b"NL,2019-01-01 04:00:00,\xff\n"), DataError,
     ["prices.csv, line 6", "utf-8"]),
    ("prices corrupt gzip", day_ahead(b"\x1f\x8bnot gzip"), DataError, ["gzip"]),
    ("prices directory", lambda tmp: read_day_ahead_csv(tmp), DataError, ["is a directory"]),
    ("prices missing", lambda tmp: read_day_ahead_csv(tmp / "none.csv"),
     DataError, ["none.csv", "does not exist"]),
    ("prices empty", day_ahead(""), DataError, ["prices.csv", "empty"]),
    ("prices unknown time zone", day_ahead(PRICES + HOURS, tz="Mars/Olympus"), ConfigError,
     ["tz 'Mars/Olympus'", "time zone"]),
    ("prices time skipped by DST", local_prices("2019-03-31 01:00:00,1", "2019-03-31 02:00:00,2"), DataError,
     ["line 3", "does not exist in Europe/Amsterdam"]),
    ("prices ambiguous DST time", local_prices("2019-10-27 01:00:00,1", "2019-10-27 02:00:00,2",
                                               "2019-10-27 03:00:00,3"), DataError, ["line 3", "ambiguous"]),
    # --- other series CSV ------------------------------------------------------------------------------
    ("series missing", lambda tmp: read_series_csv(tmp / "none.csv"),
     DataError, ["none.csv", "does not exist"]),
    ("series directory", lambda tmp: read_series_csv(tmp), DataError, ["is a directory"]),
    ("series not utf-8", series(b"time,x\n2020-01-01T00:00,\xff\n"),
     DataError, ["series.csv, line 2", "utf-8"]),
    ("series unknown time zone",
     series("time,x\n2020-01-01T00:00,1\n2020-01-01T01:00,1\n", tz="Nowhere/City"),
     ConfigError, ["tz 'Nowhere/City'"]),
    ("series inf", series("time,x\n2020-01-01T00:00,inf\n2020-01-01T01:00,1\n"), DataError,
     ["series.csv, line 2", "field 'x'", "finite"]),
    ("series 200-year gap", series("time,x\n2020-01-01T00:00,1\n2020-01-01T01:00,1\n2220-01-01T00:00,1\n"),
     DataError, ["series_gap_days"]),
    ("series no such column", series("time,x\n2020-01-01T00:00,1\n", columns=["y"]),
     DataError, ["no column 'y'"]),
    ("series without times, bad freq", series("x\n1\n2\n", time_column=None, start="2020-01-01", freq="soon"),
     ConfigError, ["freq", "'soon'"]),
    ("series without times, bad start", series("x\n1\n2\n", time_column=None, start="someday", freq="1h"),
     ConfigError, ["start", "'someday'"]),
    ("series zero freq", series("time,x\n2020-01-01T00:00,1\n2020-01-01T01:00,1\n", freq="0s"), ConfigError,
     ["freq", "positive duration"]),
    ("building year text", lambda tmp: read_building_csv(tmp / "none.csv", year="2016"), ConfigError,
     ["year"]),
    ("building missing", lambda tmp: read_building_csv(tmp / "none.csv"), DataError, ["does not exist"]),
    ("building unknown time zone", lambda tmp: read_building_csv(tmp / "none.csv", tz="Atlantis"),
     ConfigError,
     ["tz 'Atlantis'"]),
    # --- session files and series blocks ---------------------------------------------------------------
    ("sessions missing", lambda tmp: read_acn_json(tmp / "none.json"), DataError,
     ["none.json", "does not exist"]),
    ("sessions directory", lambda tmp: read_acn_csv(tmp), DataError, ["is a directory"]),
    ("sessions deeply nested", lambda tmp: read_acn_json(write(tmp, "s.json", '{"_items": [' + "[" * 10**5)),
     DataError, ["s.json, line 1", "nested too deeply"]),
    ("sessions header of 10**5 columns", lambda tmp: read_sessions_csv(write(tmp, "s.csv", ",".join(
        f"c{i}" for i in range(10**5)) + "\n"), SESSION_COLUMNS), DataError,
     ["s.csv, line 1", "'c0', 'c1'", "..."]),
    ("site demand_forecast a long list", site(demand_forecast=list(range(10**6))), SiteError,
     ["demand_forecast", "true or false", "..."]),
    ("sessions unknown encoding", lambda tmp: read_sessions_csv(write(tmp, "s.csv", "a\n"), SESSION_COLUMNS,
                                                                 encoding="klingon"),
     ConfigError, ["'klingon'"]),
    ("series block directory", scenario(series={"price_buy": {"path": "."}}), DataError, ["is a directory"]),
    ("series block not utf-8", lambda tmp: scenario(series={"price_buy": {"path": str(write(
        tmp, "p.csv", b"time,\xff\n"))}})(tmp), DataError, ["p.csv, line 1", "utf-8"]),
    ("sessions energy_scale -1", sessions_csv(energy_scale=-1), ConfigError, ["energy_scale", "> 0", "-1"]),
    ("sessions energy_scale nan", sessions_csv(energy_scale=float("nan")), ConfigError,
     ["energy_scale", "finite"]),
    ("sessions energy_scale text", sessions_csv(energy_scale="x"), ConfigError, ["energy_scale", "'x'"]),
    ("sessions unknown time zone",
     lambda tmp: read_acn_json(FIXTURES / "sessions_acn.json", tz="Mars/Olympus"), ConfigError,
     ["tz 'Mars/Olympus'", "time zone"]),
    ("sessions csv unknown time zone", sessions_csv(tz="Nowhere/City"), ConfigError, ["tz 'Nowhere/City'"]),
    ("sessions time zone a number", lambda tmp: read_acn_csv(FIXTURES / "sessions_acn.csv.gz", tz=5),
     ConfigError, ["tz", "got 5"]),
    ("sessions columns a text", lambda tmp: read_sessions_csv(write(tmp, "s.csv", SESSIONS_CSV), "abc"),
     ConfigError, ["columns", "'abc'"]),
    ("sessions sep of two characters", sessions_csv(sep=";;"), ConfigError, ["sep", "one character"]),
    ("sessions decimal a number", sessions_csv(decimal=5), ConfigError, ["decimal", "got 5"]),
    ("sessions date_format a number", sessions_csv(date_format=5), ConfigError, ["date_format"]),
    ("sessions skip_invalid text", sessions_csv(skip_invalid="yes"), ConfigError,
     ["skip_invalid", "true or false"]),
    ("sessions unknown format", lambda tmp: read_sessions(tmp / "s.csv", "xml"), ConfigError,
     ["format", "acn_csv", "'xml'"]),
    ("sessions decimal same as sep", sessions_csv(decimal=","), ConfigError,
     ["sep ','", "decimal ','", "must differ"]),
    ("sessions bad date_format directive", sessions_csv(date_format="%Q"), ConfigError,
     ["date_format '%Q'", "strftime"]),
    ("sessions encoding a number", sessions_csv(encoding=5), ConfigError, ["encoding", "got 5"]),
    ("sessions path list of numbers", lambda tmp: read_sessions([5], "csv", columns=SESSION_COLUMNS),
     ConfigError, ["path", "got 5"]),
    ("sessions empty list of files", lambda tmp: read_sessions([], "csv", columns=SESSION_COLUMNS),
     ConfigError, ["path", "empty list"]),
    ("sessions stations a number", lambda tmp: read_sessions(write(tmp, "s.csv", SESSIONS_CSV), "csv",
                                                             columns=SESSION_COLUMNS, stations=5),
     ConfigError, ["stations", "got 5"]),
    ("replay reader unknown time zone", replay(reader={"tz": "Mars/X"}), SiteError,
     ["scenario.sessions.reader", "tz 'Mars/X'"]),
    ("replay reader energy_scale -1", replay_csv(energy_scale=-1), SiteError,
     ["scenario.sessions.reader", "energy_scale", "> 0"]),
    ("replay reader columns a text", replay_csv(columns="a,d,e"), SiteError,
     ["scenario.sessions.reader", "columns"]),
    ("replay report a directory", replay(report=lambda tmp: str(tmp)), SiteError,
     ["scenario.sessions.report", "cannot be written"]),
    ("replay path a number", replay(path=5), SiteError,
     ["scenario.sessions.path", "must be a path", "got 5"]),
    ("replay data_dir a list", replay(data_dir=[1]), SiteError,
     ["scenario.sessions.data_dir", "must be a path"]),
    ("series block a list", scenario(series=[1]), SiteError,
     ["scenario.series must be a mapping", "got [1]"]),
    ("series block a text", scenario(series="prices.csv"), SiteError, ["scenario.series must be a mapping"]),
    ("series eur_kwh text", series_block(tariff={"eur_kwh": "x"}, dates=SERIES_DATES), SiteError,
     ["scenario.series.tariff.eur_kwh", "must be a number", "'x'"]),
    ("series eur_kwh nan", series_block(tariff={"eur_kwh": float("nan")}, dates=SERIES_DATES), SiteError,
     ["scenario.series.tariff.eur_kwh", "finite"]),
    ("series factor inf", series_block(price_sell={"factor": float("inf")}, dates=SERIES_DATES), SiteError,
     ["scenario.series.price_sell.factor", "finite"]),
    ("series scale true", series_block(tariff={"eur_kwh": 1, "scale": True}, dates=SERIES_DATES), SiteError,
     ["scenario.series.tariff.scale", "must be a number"]),
    ("series negative pv", pv_file([0, 1, -2, 1]), SiteError,
     ["scenario.series.pv[0]", "negative PV power of -2 kW", "2020-01-01 02:00"]),
    ("series pv negative by scale", pv_file([0, 1, 2, 1], scale=-1), SiteError,
     ["scenario.series.pv[0]", "negative PV power"]),
    ("series negative pv constant", series_block(pv=[{"node": "t", "eur_kwh": -5}], dates=SERIES_DATES),
     SiteError, ["scenario.series.pv[0].eur_kwh", "negative PV power"]),
    ("series column a list", series_block(price_buy={"path": str(FIXTURES / "series_moer.csv"),
                                                     "column": ["moer"]}), SiteError,
     ["scenario.series.price_buy.column", "must be a text"]),
    ("series holidays a text", series_block(tariff={"path": str(FIXTURES / "series_tariff.json"),
                                                    "holidays": "xmas"}, dates=SERIES_DATES), SiteError,
     ["scenario.series.tariff.holidays", "list of dates"]),
    ("series file_tz a number", series_block(price_buy={"path": str(FIXTURES / "series_moer.csv"),
                                                        "column": "moer", "file_tz": 5}), SiteError,
     ["scenario.series.price_buy.file_tz", "got 5"]),
    ("series tz a number", series_block(tz=5, tariff={"eur_kwh": 1}, dates=SERIES_DATES), SiteError,
     ["scenario.series.tz", "not a time zone name"]),
    ("series match_weekday text", series_block(match_weekday="no", tariff={"eur_kwh": 1}, dates=SERIES_DATES),
     SiteError, ["scenario.series.match_weekday", "true or false"]),
    ("series forecast lead inf", series_block(price_buy={"path": str(FIXTURES / "series_moer.csv"),
                                                         "column": "moer", "forecast_columns": "f",
                                                         "forecast_lead_minutes": float("inf")}), SiteError,
     ["scenario.series.price_buy.forecast_lead_minutes", "finite"]),
    ("forecasts a list", forecasts([{"price_buy_eur_kwh": "noisy"}]), SiteError,
     ["scenario.forecasts must be a mapping"]),
    ("forecasts entry a text", forecasts({"price_buy_eur_kwh": "noisy"}), SiteError,
     ["scenario.forecasts.price_buy_eur_kwh", "mapping with a mode"]),
    ("forecasts unknown series", forecasts({"price": {"mode": "noisy"}}), SiteError,
     ["scenario.forecasts.price", "price_buy_eur_kwh"]),
    ("forecasts unknown mode", forecasts({"price_buy_eur_kwh": {"mode": "psychic"}}), SiteError,
     ["scenario.forecasts.price_buy_eur_kwh.mode", "'psychic'"]),
    ("forecasts noisy std text", forecasts({"price_buy_eur_kwh": {"mode": "noisy", "std_at_horizon": "x"}}),
     SiteError, ["scenario.forecasts.price_buy_eur_kwh.std_at_horizon", "must be a number"]),
    ("forecasts noisy std -1", forecasts({"site_load_kw": {"mode": "noisy", "std_at_horizon": -1}}),
     SiteError, ["scenario.forecasts.site_load_kw.std_at_horizon", ">= 0"]),
    ("forecasts unknown option", forecasts({"price_buy_eur_kwh": {"mode": "noisy", "colour": 1}}), SiteError,
     ["scenario.forecasts.price_buy_eur_kwh.colour", "not an option of mode noisy"]),
    ("forecasts persistence of 0 steps a day",
     forecasts({"carbon_kg_kwh": {"mode": "persistence", "steps_per_day": 0}}), SiteError,
     ["scenario.forecasts.carbon_kg_kwh.steps_per_day", ">= 1"]),
    ("forecasts nonnegative text", forecasts({"site_pv_kw": {"mode": "noisy", "nonnegative": "no"}}),
     SiteError, ["scenario.forecasts.site_pv_kw.nonnegative", "true or false"]),
    ("tariff day mask a list", tariff({"dow_mask": ["ALL"]}), DataError, ["schedule[0].dow_mask", "['ALL']"]),
    ("tariff price 1e300", tariff({"tariffs": [1, 1e300]}), DataError, ["schedule[0].tariffs", "1,000,000"]),
    ("tariff demand charge 1e300", tariff({"demand_charge": 1e300}), DataError,
     ["schedule[0].demand_charge", "1,000,000"]),
    # --- actions at every entry point ------------------------------------------------------------------
    ("gym action text", single_action(["0.5"]),
     ValueError, ["action has dtype <U3", "expected a float array"]),
    ("gym action complex", single_action(np.ones(1, complex)), ValueError, ["dtype complex128"]),
    ("gym action datetime", single_action(np.zeros(1, "datetime64[D]")), ValueError, ["dtype datetime64[D]"]),
    ("gym action object", single_action([None]), ValueError, ["dtype object"]),
    ("gym action ragged", single_action([[1.0], [1.0, 2.0]]), ValueError, ["not an array of numbers"]),
    ("gym action shape", single_action(np.ones(3)), ValueError, ["shape (3,)", "expected (1,)"]),
    ("vector action text", vector_action([["0.5"]]), ValueError, ["action has dtype <U3"]),
    ("vector action complex", vector_action(np.ones((1, 1), complex)), ValueError, ["dtype complex128"]),
    ("vector action datetime", vector_action(np.zeros((1, 1), "datetime64[s]")),
     ValueError, ["datetime64[s]"]),
    ("sb3 action text", sb3_action([["0.5"]]), ValueError, ["action has dtype <U3"]),
    ("sb3 action complex", sb3_action(np.ones((1, 1), complex)), ValueError, ["dtype complex128"]),
    ("sb3 action datetime", sb3_action(np.zeros((1, 1), "datetime64[D]")), ValueError, ["datetime64[D]"]),
    ("core action text", core_action([["0.5"]]),
     ValueError, ["action has dtype <U3", "expected a float array"]),
    # --- counts from scripts (Hydra overrides) -----------------------------------------------------------
    ("num_episodes 2.7", lambda tmp: check_count("num_episodes", 2.7, "episodes"), ConfigError,
     ["num_episodes", "whole number", "2.7"]),
    ("num_episodes text", lambda tmp: check_count("num_episodes", "seven", "episodes"), ConfigError,
     ["num_episodes", "whole number", "'seven'"]),
    ("num_episodes 1e9", lambda tmp: check_count("num_episodes", 1e9, "episodes"), ConfigError,
     ["num_episodes", "100,000", "ENVS_MAX_EPISODES"]),
    ("num_episodes 10**400", lambda tmp: check_count("num_episodes", 10**400, "episodes"), ConfigError,
     ["num_episodes", "above the limit"]),
    ("num_episodes 0", lambda tmp: check_count("num_episodes", 0, "episodes"), ConfigError, [">= 1"]),
    ("seed text", lambda tmp: check_count("seed", "x1", None, low=0), ConfigError, ["seed", "'x1'"]),
    ("vector num_envs 1e9", lambda tmp: SmartChargingVectorEnv(10**9, BASE), ConfigError,
     ["num_envs", "ENVS_MAX_ENVS"]),
    ("vector num_envs text", lambda tmp: SmartChargingVectorEnv("eight", BASE), ConfigError, ["num_envs"]),
    ("sb3 num_envs 0", lambda tmp: SmartChargingVecEnv(0, BASE), ConfigError, ["num_envs", ">= 1"]),
    ("site of a number", lambda tmp: load_site(42), SiteError, ["a preset name, a YAML path", "got 42"]),
    ("site of None", lambda tmp: SmartChargingEnv(None), SiteError, ["got None"]),
    ("num_episodes bool", lambda tmp: check_count("num_episodes", True, "episodes"),
     ConfigError, ["whole number"]),
    ("evaluate num_episodes 2.7", evaluate_config(num_episodes=2.7), ConfigError,
     ["num_episodes", "whole number", "2.7"]),
    ("evaluate num_episodes -1", evaluate_config(num_episodes=-1), ConfigError, ["num_episodes", ">= 1"]),
    ("evaluate num_episodes text", evaluate_config(num_episodes="x"), ConfigError, ["num_episodes", "'x'"]),
    ("evaluate num_episodes 1e9", evaluate_config(num_episodes=1e9), ConfigError,
     ["num_episodes", "100,000", "ENVS_MAX_EPISODES"]),
    ("evaluate seed 0.5", evaluate_config(seed=0.5), ConfigError, ["seed", "whole number"]),
    ("evaluate seed -1", evaluate_config(seed=-1), ConfigError, ["seed", ">= 0"]),
    ("evaluate num_envs 2.5", evaluate_config(num_envs=2.5), ConfigError, ["num_envs", "whole number"]),
    ("evaluate num_envs 0", evaluate_config(num_envs=0), ConfigError, ["num_envs", ">= 1"]),
    ("episodes_for num_episodes 2.7", lambda tmp: episodes_for(load_site(BASE), num_episodes=2.7),
     ConfigError, ["num_episodes", "2.7"]),
]


@contextlib.contextmanager
def bounded_memory(extra_bytes: int):
    """Address space limited to what the process holds now plus ``extra_bytes``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as handle:
        held = int(handle.read().split()[0]) * resource.getpagesize()
    cap = held + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize(("run", "error", "words"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_malformed_input_raises_a_named_error(tmp_path, run, error, words):
    start = time.perf_counter()
    with bounded_memory(MEMORY_BYTES), pytest.raises(Exception) as caught:
        run(tmp_path)
    seconds = time.perf_counter() - start
    assert isinstance(caught.value, error), f"raised {type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(message) <= MESSAGE_CHARS, f"the message holds {len(message)} characters"
    assert seconds < SECONDS, f"took {seconds:.2f} s"


def test_the_table_holds_distinct_cases():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100


def test_the_errors_are_exported_from_envs():
    assert envs.ConfigError is ConfigError and envs.DataError is DataError and envs.SiteError is SiteError
    assert {"ConfigError", "DataError", "SiteError"} <= set(envs.__all__)


def test_a_bad_hydra_override_is_a_named_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "num_episodes=2.7", "policies=baselines",
         "+site.overrides.horizon_steps=8", "plots=null", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "ConfigError: num_episodes must be a whole number, got 2.7" in result.stderr, result.stderr[-2000:]


def test_the_memory_bound_stops_a_larger_allocation():
    with bounded_memory(MEMORY_BYTES), pytest.raises(MemoryError):
        np.ones((MEMORY_BYTES + (100 << 20)) // 8)
