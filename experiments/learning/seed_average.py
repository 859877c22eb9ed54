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
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _learning_days():
    """``scripts/learning_days.py``, the learning benchmarks' site, references and score table."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import learning_days

    return learning_days


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
    days = _learning_days()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--margin", type=float, default=1.5)
    days.add_day_arguments(parser)
    args = parser.parse_args()

    from agents import load_policy
    from agents.guards import GuardedPolicy

    site = days.ScoredSite(args.site)
    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    members = []
    for path in args.runs:
        policies[str(path)] = load_policy(path)
        member = load_policy(path)
        member.config["deadline_guard_hours"] = None
        members.append(member)
    policies["average"] = GuardedPolicy(MeanAction(members), args.margin)
    print(days.score_rows(site.summary(policies, args.test_episodes, args.test_seed), policies))

if __name__ == "__main__":
    main()
