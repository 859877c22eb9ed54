"""Speed of the offline optimum and of MPC (HiGHS), medians over seeds.

    python scripts/bench_optimal.py              # caltech offline + MPC, v2g_workplace offline
    python scripts/bench_optimal.py --seeds 3 --skip-v2g

Cases (each prints one JSON line; a table follows):
  offline      one episode of a site solved with perfect foresight, model build included
               (windows from the plug schedule, matrix, HiGHS); caltech on weekdays.
  mpc_full     MPC decisions on caltech with all 54 ports taken by EVs that stay past the
               24-step window: the largest model MPC builds there (54 x 24 EV steps).
  mpc_day      every MPC decision of ordinary caltech weekdays, and the seconds per day.
  --departure-scenarios 0 9 runs both MPC cases planning on the announced departure and on nine
  departure scenarios (MPC's departure_quantiles), one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from agents.mpc import ModelPredictiveControl
from agents.optimal import offline_windows, plan_window
from envs.core import reset, step
from envs.generators import generator_for
from envs.observation import observe
from envs.site import load_site

FULL_GARAGE = {"sessions_per_day": 300, "peak_hours": [1.0], "peak_widths_hours": [0.5],
               "peak_weights": [1.0], "dwell_mean_hours": 14, "dwell_sigma": 0.1, "energy_mean_kwh": 30,
               "departure_error_minutes": 0}


def offline_case(site: str, seeds: int, time_limit_s: float, **overrides) -> dict:
    params = load_site(site, **overrides)
    seconds, entries, gaps, integer = [], [], [], []
    for seed in range(seeds):
        episode = generator_for(params).sample(params, np.random.default_rng(seed), 1)
        start = time.perf_counter()
        window = offline_windows(params, reset(params, episode))[0]
        plan = plan_window(params, window, time_limit_s=time_limit_s)
        seconds.append(time.perf_counter() - start)
        entries.append(len(window.entry_step))
        gaps.append((plan.bound_eur - plan.objective_eur) / max(abs(plan.bound_eur), 1e-9))
        integer.append(plan.integer_columns)
    return {"case": "offline", "site": site, "ports": params.num_ports, "horizon_steps": params.horizon_steps,
            "seeds": seeds, "median_s": round(statistics.median(seconds), 4), "max_s": round(max(seconds), 4),
            "median_ev_steps": int(statistics.median(entries)), "max_rel_gap": float(f"{max(gaps):.2g}"),
            "integer_columns": int(max(integer))}


def mpc_decisions(params, seed: int, horizon_steps: int, steps: int | None = None, scenarios: int = 0):
    episode = generator_for(params).sample(params, np.random.default_rng(seed), 1)
    levels = [(i + 0.5) / scenarios for i in range(scenarios)] if scenarios else None
    policy = ModelPredictiveControl(params, horizon_steps=horizon_steps, departure_quantiles=levels)
    policy.begin(params, episode)
    state, plugged = reset(params, episode), []
    start = time.perf_counter()
    while state.t < (steps or params.horizon_steps):
        plugged.append(int((state.port_ev >= 0).sum()))
        action, _ = policy.predict(observe(params, state))
        state, _, _ = step(params, state, action)
    return np.array(policy.decision_s), np.array(plugged), time.perf_counter() - start


def mpc_full_case(seeds: int, horizon_steps: int, scenarios: int = 0) -> dict:
    params = load_site("caltech", scenario=FULL_GARAGE)
    times = []
    for seed in range(seeds):
        decision_s, plugged, _ = mpc_decisions(params, seed, horizon_steps, steps=36, scenarios=scenarios)
        times.extend(decision_s[plugged == params.num_ports][1:])  # the first decision starts cold
    ms = np.array(times) * 1e3
    return {"case": "mpc_full", "site": "caltech", "ports": params.num_ports, "horizon_steps": horizon_steps,
            "decisions": len(ms), "median_ms": round(float(np.median(ms)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2), "max_ms": round(float(ms.max()), 2)}


def mpc_day_case(seeds: int, horizon_steps: int, scenarios: int = 0) -> dict:
    params = load_site("caltech", scenario={"weekday": 2})
    times, days = [], []
    for seed in range(seeds):
        decision_s, _, day_s = mpc_decisions(params, seed, horizon_steps, scenarios=scenarios)
        times.extend(decision_s)
        days.append(day_s)
    ms = np.array(times) * 1e3
    return {"case": "mpc_day", "site": "caltech", "ports": params.num_ports, "horizon_steps": horizon_steps,
            "decisions": len(ms), "median_ms": round(float(np.median(ms)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2), "max_ms": round(float(ms.max()), 2),
            "median_day_s": round(statistics.median(days), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="episodes per case")
    parser.add_argument("--horizon-steps", type=int, default=24, help="MPC window")
    parser.add_argument("--v2g-time-limit", type=float, default=10.0, help="HiGHS seconds per V2G episode")
    parser.add_argument("--skip-v2g", action="store_true", help="skip the v2g_workplace offline case")
    parser.add_argument("--departure-scenarios", type=int, nargs="+", default=[0],
                        help="MPC cases per number of departure scenarios (0: the announced departure)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, {args.seeds} seeds", flush=True)
    runs = [lambda: offline_case("caltech", args.seeds, 10.0, scenario={"weekday": [0, 1, 2, 3, 4]})]
    for k in args.departure_scenarios:
        runs += [lambda k=k: {**mpc_full_case(args.seeds, args.horizon_steps, k), "scenarios": k},
                 lambda k=k: {**mpc_day_case(args.seeds, args.horizon_steps, k), "scenarios": k}]
    if not args.skip_v2g:
        runs.append(lambda: offline_case("v2g_workplace", min(args.seeds, 3), args.v2g_time_limit,
                                         scenario={"weekday": [0, 1, 2]}))
    results = []
    for run in runs:
        results.append(run())
        print(json.dumps(results[-1]), flush=True)

    header = f"{'case':<10}{'site':<15}{'ports':>6}{'window':>8}{'median':>11}{'p90/max':>18}  notes"
    print("\n" + header + "\n" + "-" * (len(header) + 24))
    for r in results:
        if r["case"] == "offline":
            window, median, spread = r["horizon_steps"], f"{r['median_s']:.3f} s", f"max {r['max_s']:.3f} s"
            notes = f"{r['median_ev_steps']} EV steps; gap <= {r['max_rel_gap']:g}"
        else:
            window, median = r["horizon_steps"], f"{r['median_ms']:.1f} ms"
            spread = f"{r['p90_ms']:.1f} / {r['max_ms']:.1f} ms"
            size = f"{r['median_day_s']:.2f} s per day" if "median_day_s" in r else "54 EVs x 24 steps"
            notes = f"{r['decisions']} decisions; {size}" + (
                f"; {r['scenarios']} departure scenarios" if r["scenarios"] else "")
        print(f"{r['case']:<10}{r['site']:<15}{r['ports']:>6}{window:>8}{median:>11}{spread:>18}  {notes}")


if __name__ == "__main__":
    main()
