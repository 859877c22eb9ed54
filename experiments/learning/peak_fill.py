"""What the peak fill does to trained policies, scored as they are and with it set when they act.

Each run is scored as it is and with ``peak_fill_quantile`` set when it acts (``agents.peak_fill.PeakFill``
inside the run's deadline guard: when the buy price now is at most that quantile of the forecast prices,
the charging ports are raised until the site imports its peak so far):

    .venv/bin/python experiments/learning/peak_fill.py --site v2g_workplace --quantiles 0.25 0.5 0.75 \
        --runs experiments/learning/v2g_workplace/clone_mpc_12h_m1/seed_{0,1,2} \
        --test-episodes 14 --test-seed 900001

A run trained with the fill (``env.peak_fill_quantile``) acts with it wherever it acts, and
``--quantiles`` then replaces its quantile. Scores are ratios of sums against uncontrolled charging and
the offline optimum, as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import score_acting_config  # noqa: E402


def main() -> None:
    score_acting_config(__doc__.splitlines()[0], "peak_fill_quantile", "--quantiles", "v2g_workplace", [0.5],
                        ["price_aware", "model_predictive_control"],
                        lambda quantile: f"filling at the {quantile:g} price quantile")


if __name__ == "__main__":
    main()
