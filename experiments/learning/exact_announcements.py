"""What unreliable announced departures cost a site's planners: the references scored on the site as it is
and on the same days with every driver leaving exactly when announced.

    .venv/bin/python experiments/learning/exact_announcements.py --site jpl
    .venv/bin/python experiments/learning/exact_announcements.py --site caltech --policies price_aware \
        --test-episodes 14 --test-seed 900001
    .venv/bin/python experiments/learning/exact_announcements.py --site jpl --policies price_aware \
        --runs experiments/learning/caltech/clone_mpc_12h_d4_rank/seed_0 --test-episodes 14 --test-seed 900001

The sessions, prices and loads of each day are the same in both tables (the scenario draws the error of the
announcement from its own random numbers, which the exact version still draws); only the announced departures
differ. Scores are ratios of sums against uncontrolled charging and the offline optimum (which knows the real
departures either way), as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import ScoredSite, add_day_arguments  # noqa: E402

ERROR_TABLES = ("departure_error_quantiles_hours", "departure_error_quantiles_hours_weekend")


def exact_overrides(site: ScoredSite) -> list[str]:
    """Hydra overrides that make the site's announced departures the real ones."""
    scenario = site.params.scenario
    if not any(name in scenario for name in ERROR_TABLES):
        return ["+site.overrides.scenario.departure_error_minutes=0.0"]
    overrides = []
    for name in ERROR_TABLES:
        if name in scenario:
            zeros = [[0.0] * len(row) for row in scenario[name]]
            overrides.append(f"+site.overrides.scenario.{name}={json.dumps(zeros)}")
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="jpl")
    parser.add_argument("--policies", nargs="*", default=["price_aware", "model_predictive_control"])
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="trained runs or policy folders")
    add_day_arguments(parser)
    args = parser.parse_args()

    site = ScoredSite(args.site)
    names = ["uncontrolled", *args.policies, "offline_optimal"]
    exact = ScoredSite(args.site, exact_overrides(site))
    from agents import load_policy

    for label, scored in (("as it is", site), ("exact announcements", exact)):
        policies = {name: scored.reference(name) for name in names}
        policies.update({"/".join(run.parts[-2:]): load_policy(run) for run in args.runs})
        scored.print_scores(f"{args.site}, {label}", policies, args.test_episodes, args.test_seed)


if __name__ == "__main__":
    main()
