"""What the deadline guard's margin costs: policies scored as they are and behind the guard at each margin.

    python scripts/bench_guard.py --site v2g_workplace --margins 0.5 1 1.5
    python scripts/bench_guard.py --site caltech --trained experiments/learning/caltech/clone_mpc/seed_0

A policy behind the guard (``agents.guards.GuardedPolicy``, requests fitted into node headroom as
the training runs fit them) is the ceiling of a clone of that policy trained behind the same
guard. ``--policies`` names entries of ``configs/policies/with_optimum.yaml`` (default: MPC); a
``--trained`` run or policy folder is scored with its own guard and, with ``deadline_guard_hours``
replaced, at each margin. Scores are ratios of sums over the test days (seed 1000 by default)
against uncontrolled charging and the offline optimum, as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--margins", nargs="+", type=float, default=[0.5, 1.0, 1.5])
    parser.add_argument("--policies", nargs="*", default=["model_predictive_control"])
    parser.add_argument("--trained", nargs="*", type=Path, default=[])
    parser.add_argument("--test-episodes", type=int, default=28)
    parser.add_argument("--test-seed", type=int, default=1000)
    args = parser.parse_args()

    from agents import load_policy
    from agents.evaluate import episodes_for, run_policies
    from agents.guards import GuardedPolicy
    from envs.site import load_site

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"site={args.site}", "policies=with_optimum"])
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))

    def planned(name):
        return instantiate(cfg.policies[name], _partial_=True)(params=params)

    policies = {name: planned(name) for name in ("uncontrolled", "offline_optimal")}
    for name in args.policies:
        policies[name] = planned(name)
        for margin in args.margins:
            policies[f"{name} behind {margin:g} h"] = GuardedPolicy(planned(name), margin)
    for path in args.trained:
        label = "/".join(path.parts[-2:])
        policies[label] = load_policy(path)
        for margin in args.margins:
            policy = load_policy(path)
            policy.config["deadline_guard_hours"] = margin
            policies[f"{label} at {margin:g} h"] = policy
    result = run_policies(policies, params, episodes_for(params, None, args.test_episodes, args.test_seed))
    summary = result.summary()
    print(f"{args.site}, {args.test_episodes} test days (seed {args.test_seed}):")
    print("| policy | score | unmet % | overload requested kWh | reward EUR/day |\n|---|---|---:|---:|---:|")
    for name in policies:
        row = summary.loc[name]
        print(f"| {name} | {row['score']:.3f} [{row['score_low']:.3f}, {row['score_high']:.3f}] | "
              f"{row['unmet_pct']:.2f} | {row['overload_requested_kwh']:.2f} | {row['reward_eur']:.2f} |")


if __name__ == "__main__":
    main()
