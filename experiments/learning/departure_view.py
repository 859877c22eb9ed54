"""What reading a quantile of the real departure does to trained policies, scored as they are and with it.

Each run is scored as it is and with ``departure_level`` set when it acts
(``agents.departure_view.DepartureView``, from the acting site's sessions):

    .venv/bin/python experiments/learning/departure_view.py --site jpl --levels 0.1 0.2 0.3 \
        --runs experiments/learning/caltech/clone_mpc_12h_d4_rank/seed_{0,1,2} \
        --test-episodes 14 --test-seed 900001

A policy trained on the announced departures reads the view at acting time only here; one trained on a
view (``env.departure_level``) reads it wherever it acts, and ``--levels`` then replaces its level. Scores are
ratios of sums against uncontrolled charging and the offline optimum, as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import ScoredSite, add_day_arguments, runs_with_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="jpl")
    parser.add_argument("--levels", nargs="*", type=float, default=[0.2])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--policies", nargs="*", default=["price_aware"])
    add_day_arguments(parser)
    args = parser.parse_args()

    site = ScoredSite(args.site)
    names = ["uncontrolled", *args.policies, "offline_optimal"]
    policies = {name: site.reference(name) for name in names}
    policies.update(runs_with_config(args.runs, "departure_level", args.levels,
                                     lambda level: f"reading the {level:g} quantile"))
    site.print_scores(args.site, policies, args.test_episodes, args.test_seed)


if __name__ == "__main__":
    main()
