"""PPO training throughput: the per-port policy against SB3's MlpPolicy, on one site.

    python scripts/bench_training.py                      # caltech, 64 envs, 4 rollouts of 6,144 steps
    python scripts/bench_training.py --steps 12288 --site jpl --policies per_port
    python scripts/bench_training.py --threads 2          # torch on two threads per process
    python scripts/bench_training.py --policies per_port --batch-size 4096 --epochs 5   # a cheaper update
    python scripts/bench_training.py --policies per_port per_port_occupied   # likelihood over plugged ports
    python scripts/bench_training.py --policies per_port per_port_wide --epochs 5   # the wider network
    python scripts/bench_training.py --policies per_port_wide per_port_wide_ranked --epochs 5   # price ranks

PPO uses the settings of ``configs/agent/ppo.yaml`` (n_steps 96, batch 1024, 10 epochs; the MLP
is 2 x 256). Each policy learns in a fresh process with torch on one thread. The time splits
into the env's ``step_wait`` (and resets), PPO's update (``train``) and the rest of the rollout
(policy forward, buffer). Prints one JSON line per policy, then the ratio of their steps/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PPO_SETTINGS = {"n_steps": 96, "batch_size": 1024, "n_epochs": 10, "learning_rate": 3e-4}
PER_PORT_OPTIONS = {  # policy case: options of the per-port network beyond its defaults
    "per_port": {},
    "per_port_occupied": {"occupied_likelihood": True},
    "per_port_wide": {"embed_dim": 64, "hidden_dim": 128, "head_layers": 2, "occupied_likelihood": True},
    "per_port_wide_ranked": {"embed_dim": 64, "hidden_dim": 128, "head_layers": 2,
                             "occupied_likelihood": True, "price_ranks": True},
}


def _timed(owner, name: str, totals: dict) -> None:
    method = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def run_case(policy: str, site: str, num_envs: int, steps: int, seed: int, threads: int = 1,
             batch_size: int = 1024, epochs: int = 10) -> dict:
    import torch
    from stable_baselines3 import PPO

    from agents.networks import PerPortPolicy
    from envs.sb3 import SmartChargingVecEnv

    torch.set_num_threads(threads)
    env = SmartChargingVecEnv(num_envs=num_envs, site=site, step_info=False)
    settings = {**PPO_SETTINGS, "batch_size": batch_size, "n_epochs": epochs}
    if policy in PER_PORT_OPTIONS:
        model = PPO(PerPortPolicy, env, seed=seed, **settings,
                    policy_kwargs={"site": env.params, "log_std_init": -0.5, **PER_PORT_OPTIONS[policy]})
    else:
        model = PPO("MlpPolicy", env, seed=seed, **settings,
                    policy_kwargs={"net_arch": [256, 256], "log_std_init": -0.5})
    totals: dict[str, float] = {}
    for name in ("step_wait", "reset"):
        _timed(env, name, totals)
    _timed(model, "train", totals)
    start = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - start
    env_seconds = totals.get("step_wait", 0.0) + totals.get("reset", 0.0)
    return {
        "policy": policy, "site": site, "num_envs": num_envs, "steps": model.num_timesteps,
        "seconds": round(seconds, 2), "steps_per_s": round(model.num_timesteps / seconds),
        "env_share": round(env_seconds / seconds, 3),
        "update_share": round(totals.get("train", 0.0) / seconds, 3),
        "rollout_policy_share": round(1 - (env_seconds + totals.get("train", 0.0)) / seconds, 3),
        "parameters": sum(p.numel() for p in model.policy.parameters()),
        "torch_threads": torch.get_num_threads(), "batch_size": batch_size, "n_epochs": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4 * 96 * 64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=["per_port", "mlp"],
                        choices=[*PER_PORT_OPTIONS, "mlp"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--batch-size", type=int, default=PPO_SETTINGS["batch_size"])
    parser.add_argument("--epochs", type=int, default=PPO_SETTINGS["n_epochs"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.site, args.num_envs, args.steps, args.seed, args.threads,
                                  args.batch_size, args.epochs)))
        return
    results = {}
    for policy in args.policies:
        command = [sys.executable, __file__, "--case", policy, "--site", args.site,
                   "--num-envs", str(args.num_envs), "--steps", str(args.steps), "--seed", str(args.seed),
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                   "--epochs", str(args.epochs)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        line = output.strip().splitlines()[-1]
        results[policy] = json.loads(line)
        print(line, flush=True)
    if {"per_port", "mlp"} <= set(results):
        ratio = results["per_port"]["steps_per_s"] / results["mlp"]["steps_per_s"]
        print(f"per-port / MLP steps/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
