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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import score_acting_config  # noqa: E402


def main() -> None:
    score_acting_config(__doc__.splitlines()[0], "departure_level", "--levels", "jpl", [0.2],
                        ["price_aware"], lambda level: f"reading the {level:g} quantile")


if __name__ == "__main__":
    main()
