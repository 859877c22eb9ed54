"""What the deadline guard's margin costs: policies scored as they are and behind the guard at each margin.

    python scripts/bench_guard.py --site v2g_workplace --margins 0.5 1 1.5
    python scripts/bench_guard.py --site caltech --trained experiments/learning/caltech/clone_mpc/seed_0
    python scripts/bench_guard.py --margins 1 --mpc 24:1 48:1 48:1.5 --test-episodes 14 --test-seed 900001
    python scripts/bench_guard.py --site jpl --margins --unguarded --mpc 24:1 24:0:9 --test-seed 900001
    python scripts/bench_guard.py --policies --margins 0 0.5 1 --mpc 48:1.5 --departure-level 0.2 \
        --test-episodes 14 --test-seed 900001

A policy behind the guard (``agents.guards.GuardedPolicy``, requests fitted into node headroom as
the training runs fit them) is the ceiling of a clone of that policy trained behind the same
guard. ``--policies`` names entries of ``configs/policies/with_optimum.yaml`` (default: MPC); ``--mpc``
adds MPC variants as ``HORIZON_STEPS:DEPARTURE_MARGIN_HOURS`` or, planning on departure scenarios at the
levels ``(i + 0.5) / SCENARIOS``, ``HORIZON_STEPS:DEPARTURE_MARGIN_HOURS:SCENARIOS`` (scored behind each
margin, and as they are with ``--unguarded``); a
``--trained`` run or policy folder is scored with its own guard and, with ``deadline_guard_hours``
replaced, at each margin. With ``--departure-level`` the guard in front of ``--policies`` and ``--mpc``
reads departures through that view, as in a run trained with ``env.departure_level``. Scores are ratios
of sums over the test days (seed 1000 by default) against uncontrolled charging and the offline
optimum, as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from learning_days import ScoredSite, add_day_arguments, runs_with_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--margins", nargs="*", type=float, default=[0.5, 1.0, 1.5])
    parser.add_argument("--policies", nargs="*", default=["model_predictive_control"])
    parser.add_argument("--mpc", nargs="*", type=_horizon_and_margin, default=[],
                        help="MPC variants HORIZON_STEPS:DEPARTURE_MARGIN_HOURS[:SCENARIOS], e.g. 48:1.5 or "
                             "24:0:9 (nine departure scenarios)")
    parser.add_argument("--unguarded", action="store_true",
                        help="also score the --mpc variants without a guard")
    parser.add_argument("--trained", nargs="*", type=Path, default=[])
    parser.add_argument("--departure-level", type=float, default=None,
                        help="the guard in front of --policies and --mpc reads departures at this quantile "
                             "of the site's real departures (agents.departure_view)")
    add_day_arguments(parser)
    args = parser.parse_args()

    from agents.guards import GuardedPolicy
    from agents.mpc import ModelPredictiveControl

    site = ScoredSite(args.site)
    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    for name in args.policies:
        policies[name] = site.reference(name)
        for margin in args.margins:
            policies[f"{name} behind {margin:g} h"] = GuardedPolicy(site.reference(name), margin,
                                                                    departure_level=args.departure_level)
    for horizon, planned_margin, scenarios in args.mpc:
        levels = None if not scenarios else [(i + 0.5) / scenarios for i in range(scenarios)]
        label = f"MPC {horizon} steps, {planned_margin:g} h margin" + (
            f", {scenarios} departure scenarios" if scenarios else "")

        options = {"horizon_steps": horizon, "departure_margin_hours": planned_margin,
                   "departure_quantiles": levels}
        if args.unguarded:
            policies[label] = ModelPredictiveControl(site.params, **options)
        for margin in args.margins:
            planner = ModelPredictiveControl(site.params, **options)
            policies[f"{label}, behind {margin:g} h"] = GuardedPolicy(planner, margin,
                                                                     departure_level=args.departure_level)
    policies.update(runs_with_config(args.trained, "deadline_guard_hours", args.margins,
                                     lambda margin: f"at {margin:g} h"))
    site.print_scores(args.site, policies, args.test_episodes, args.test_seed)


def _horizon_and_margin(text: str) -> tuple[int, float, int]:
    try:
        horizon, margin, *scenarios = text.split(":")
        if len(scenarios) > 1 or (scenarios and int(scenarios[0]) < 1):
            raise ValueError(text)
        return int(horizon), float(margin), int(scenarios[0]) if scenarios else 0
    except ValueError as error:
        raise argparse.ArgumentTypeError("--mpc wants HORIZON_STEPS:DEPARTURE_MARGIN_HOURS[:SCENARIOS], "
                                         f"got {text!r}") from error


if __name__ == "__main__":
    main()
