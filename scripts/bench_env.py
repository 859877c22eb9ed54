"""Throughput of the environment shells under random actions, one fresh process per case.

    python scripts/bench_env.py                 # caltech at 1, 64 and 1024 envs; city at 1 env
    python scripts/bench_env.py --quick         # short runs
    python scripts/bench_env.py --sites v2g_workplace --num-envs 1 256
    python scripts/bench_env.py --cpu-time      # CPU seconds of the process, for a busy machine

One env runs through ``gymnasium.make``, batches through ``gymnasium.make_vec`` (the native
vector env, next-step autoreset). Actions are drawn before timing; every timed episode includes
its reset. Each case prints one JSON line; a table and the import time follow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CASES = [("caltech", 1), ("caltech", 64), ("caltech", 1024), ("city", 1)]
ACTION_POOL = 8


def run_case(site: str, num_envs: int, seconds: float, cpu_time: bool = False) -> dict:
    import gymnasium as gym
    import numpy as np

    import envs

    if num_envs == 1:
        env = gym.make(envs.ENV_ID, site=site)
    else:
        env = gym.make_vec(envs.ENV_ID, num_envs=num_envs, site=site)
    params = env.unwrapped.params
    horizon = params.horizon_steps
    actions = np.random.default_rng(0).uniform(-1, 1, (ACTION_POOL, *env.action_space.shape))
    actions = actions.astype(np.float32)

    clock = time.process_time if cpu_time else time.perf_counter
    reset_times = []
    for seed in range(5 if num_envs > 64 else 20):
        start = clock()
        env.reset(seed=seed)
        reset_times.append(clock() - start)

    def episode(first: bool):
        if num_envs == 1 or first:
            env.reset()
        else:
            env.step(actions[0])  # the autoreset step: draws the next batch, ignores the action
        for t in range(horizon):
            env.step(actions[t % ACTION_POOL])

    episode(first=True)
    episodes, start = 0, clock()
    while episodes == 0 or clock() - start < seconds:
        episode(first=False)
        episodes += 1
    elapsed = clock() - start
    env_steps_per_s = episodes * horizon * num_envs / elapsed
    return {
        "site": site,
        "num_envs": num_envs,
        "ports": params.num_ports,
        "env_steps_per_s": round(env_steps_per_s),
        "port_steps_per_s": round(env_steps_per_s * params.num_ports),
        "reset_ms": round(statistics.median(reset_times) * 1e3, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "episodes": episodes,
        "seconds": round(elapsed, 2),
    }


def import_seconds(repeats: int = 3) -> float:
    code = "import time; t = time.perf_counter(); import envs; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(repeats)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 0.3 s per case instead of 3 s")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per case")
    parser.add_argument("--sites", nargs="+", default=None, help="sites to run (default: caltech, city)")
    parser.add_argument("--num-envs", nargs="+", type=int, default=None, help="batch sizes per site")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU seconds instead of the wall clock")
    parser.add_argument("--case", nargs=2, metavar=("SITE", "NUM_ENVS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 3.0)
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), seconds, args.cpu_time)))
        return

    from envs.site import builtin_sites

    if args.sites is None and args.num_envs is None:
        cases = [(site, n) for site, n in DEFAULT_CASES if site in builtin_sites()]
    else:
        cases = [(site, n) for site in args.sites or ["caltech"] for n in args.num_envs or [1, 64, 1024]]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, {seconds:g} {'CPU' if args.cpu_time else 'wall'} s per case",
          flush=True)
    results = []
    for site, num_envs in cases:
        command = [sys.executable, __file__, "--case", site, str(num_envs), "--seconds", str(seconds),
                   *(["--cpu-time"] if args.cpu_time else [])]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"# case {site} x {num_envs} failed:\n{out.stderr}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)

    header = f"{'site':<14}{'num_envs':>9}{'ports':>7}{'env steps/s':>14}{'port steps/s':>15}" \
             f"{'reset ms':>10}{'peak RSS MB':>13}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(f"{r['site']:<14}{r['num_envs']:>9}{r['ports']:>7}{r['env_steps_per_s']:>14,}"
              f"{r['port_steps_per_s']:>15,}{r['reset_ms']:>10.2f}{r['peak_rss_mb']:>13.1f}")
    summary = {"import_envs_s": round(import_seconds(), 3)}
    single = [r for r in results if r["num_envs"] == 1 and r["ports"] == 54]
    if single:
        summary["single_env_reset_ms_54_ports"] = single[0]["reset_ms"]
    print("\n" + json.dumps(summary))


if __name__ == "__main__":
    main()
