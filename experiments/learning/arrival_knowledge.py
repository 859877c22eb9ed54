"""What knowing the day's later arrivals is worth to MPC: the same planner with and without the EVs
the episode will plug in during its window (``ModelPredictiveControl(future_arrivals=True)``, a
privileged teacher), behind the clones' deadline guard, on the same days.

    .venv/bin/python experiments/learning/arrival_knowledge.py --site v2g_workplace --horizon 48 \
        --margin 1 --test-episodes 14 --test-seed 900001

Scores are ratios of sums against uncontrolled charging and the offline optimum, as in
``scripts/bench_learning.py``. The gap between the two planners bounds what a teacher that plans
for later arrivals could give a clone; the offline optimum also knows the real departures and
the whole day.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import ScoredSite, add_day_arguments  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="v2g_workplace")
    parser.add_argument("--horizon", type=int, default=48, help="MPC's window, steps")
    parser.add_argument("--margin", type=float, default=1.0, help="MPC's departure margin, hours")
    parser.add_argument("--guard", type=float, default=1.0, help="the deadline guard's margin, hours")
    add_day_arguments(parser)
    args = parser.parse_args()

    from agents.guards import GuardedPolicy
    from agents.mpc import ModelPredictiveControl

    site = ScoredSite(args.site)

    def planner(future_arrivals: bool):
        return GuardedPolicy(ModelPredictiveControl(site.params, horizon_steps=args.horizon,
                                                    departure_margin_hours=args.margin,
                                                    future_arrivals=future_arrivals), args.guard)

    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    policies["MPC, EVs plugged in now"] = planner(False)
    policies["MPC, also the EVs arriving in its window"] = planner(True)
    site.print_scores(f"{args.site}, MPC {args.horizon} steps with a {args.margin:g} h margin behind a "
                      f"{args.guard:g} h guard", policies, args.test_episodes, args.test_seed)


if __name__ == "__main__":
    main()
