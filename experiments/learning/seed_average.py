"""Whether a clone's errors are noise or bias: the average of several seeds' actions, behind one guard.

    .venv/bin/python experiments/learning/seed_average.py --site caltech \
        --runs experiments/learning/caltech/clone_mpc/seed_{0,1,2} --margin 1.5

Each run's policy acts without its own guard; their mean action then passes the deadline guard
(``agents.guards.GuardedPolicy``, requests fitted into node headroom) at ``--margin`` hours. If
the average scores above its members, their errors are partly independent noise that more seeds
(or a wider network) would average out; if not, they share a bias.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class MeanAction:
    """The mean of several policies' actions (each with the ``predict`` protocol)."""

    def __init__(self, members):
        self.members = list(members)

    def begin(self, params, episode):
        for member in self.members:
            member.begin(params, episode)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return np.mean([member.predict(observation)[0] for member in self.members], axis=0), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--margin", type=float, default=1.5)
    parser.add_argument("--test-episodes", type=int, default=28)
    parser.add_argument("--test-seed", type=int, default=1000)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from agents import load_policy
    from agents.evaluate import episodes_for, run_policies
    from agents.guards import GuardedPolicy
    from envs.site import load_site

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"site={args.site}", "policies=with_optimum"])
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    policies = {name: instantiate(cfg.policies[name], _partial_=True)(params=params)
                for name in ("uncontrolled", "offline_optimal")}
    members = []
    for path in args.runs:
        policies[str(path)] = load_policy(path)
        member = load_policy(path)
        member.config["deadline_guard_hours"] = None
        members.append(member)
    policies["average"] = GuardedPolicy(MeanAction(members), args.margin)
    episodes = episodes_for(params, None, args.test_episodes, args.test_seed)
    summary = run_policies(policies, params, episodes).summary()
    print("| policy | score | unmet % | reward EUR/day |\n|---|---|---:|---:|")
    for name in policies:
        row = summary.loc[name]
        print(f"| {name} | {row['score']:.3f} [{row['score_low']:.3f}, {row['score_high']:.3f}] | "
              f"{row['unmet_pct']:.2f} | {row['reward_eur']:.2f} |")


if __name__ == "__main__":
    main()
