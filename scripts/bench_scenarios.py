"""Speed of the scenario generators: sampling a batch of day-episodes, median over repeats.

    python scripts/bench_scenarios.py                       # every preset, 1024 days, 7 repeats
    python scripts/bench_scenarios.py --sites caltech_fitted jpl --num-envs 256

Cases (each prints one JSON line; a table follows):
  preset   ``generator_for(params).sample`` of a built-in site, with and without the
           demand forecast in the observation (``demand_forecast: true``).
  replay   ``ReplayGenerator.sample`` of the ACN Caltech 2019 sessions (when ``--acn`` holds
           them); the first call, which also fits the demand regression, is reported apart.
Target: 1024 day-episodes in <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from envs.generators import generator_for
from envs.site import builtin_sites, load_site

ACN_FILES = ("caltech_2019-05-01_2019-08-31.csv.gz", "caltech_2019-09-01_2019-12-31.csv.gz")


def _median_ms(sample, repeats: int) -> float:
    seconds = []
    for seed in range(repeats):
        start = time.perf_counter()
        sample(np.random.default_rng(seed))
        seconds.append(time.perf_counter() - start)
    return 1e3 * statistics.median(seconds)


def preset_case(site: str, num_envs: int, repeats: int, demand_forecast: bool) -> dict:
    params = load_site(site, demand_forecast=demand_forecast)
    generator = generator_for(params)
    generator.sample(params, np.random.default_rng(0), 8)
    ms = _median_ms(lambda rng: generator.sample(params, rng, num_envs), repeats)
    return {"case": "preset", "site": site, "demand_forecast": demand_forecast, "num_envs": num_envs,
            "ports": params.num_ports, "median_ms": round(ms, 2)}


def replay_case(acn: Path, num_envs: int, repeats: int) -> dict | None:
    paths = [acn / name for name in ACN_FILES]
    if not all(path.exists() for path in paths):
        return None
    import pandas as pd

    from envs.data.replay import ReplayGenerator
    from envs.data.sessions import read_acn_csv

    sessions = pd.concat([read_acn_csv(path) for path in paths], ignore_index=True)
    params = load_site("caltech", demand_forecast=True)
    generator = ReplayGenerator(sessions)
    start = time.perf_counter()
    generator.sample(params, np.random.default_rng(0), num_envs)
    first_ms = 1e3 * (time.perf_counter() - start)
    ms = _median_ms(lambda rng: generator.sample(params, rng, num_envs), repeats)
    return {"case": "replay", "site": "caltech (ACN 2019 sessions)", "demand_forecast": True,
            "num_envs": num_envs, "sessions": len(sessions), "first_call_ms": round(first_ms, 2),
            "median_ms": round(ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", nargs="*", default=builtin_sites())
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--acn", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/acn")
    args = parser.parse_args()
    print(json.dumps({"python": platform.python_version(), "numpy": np.__version__,
                      "machine": platform.machine()}))
    rows = []
    for site in args.sites:
        for demand in (False, True):
            rows.append(preset_case(site, args.num_envs, args.repeats, demand))
            print(json.dumps(rows[-1]), flush=True)
    replay = replay_case(args.acn, args.num_envs, args.repeats)
    if replay is not None:
        rows.append(replay)
        print(json.dumps(replay), flush=True)
    print(f"\n| case | site | ports | demand forecast | {args.num_envs} days: median ms |")
    print("|---|---|---:|---|---:|")
    for row in rows:
        demand = "yes" if row["demand_forecast"] else "no"
        ports = row.get("ports", 54)
        print(f"| {row['case']} | {row['site']} | {ports} | {demand} | {row['median_ms']:.1f} |")


if __name__ == "__main__":
    main()
