"""Where a clone departs from its teacher: MPC asked on the states the clone itself reaches.

    .venv/bin/python experiments/learning/teacher_agreement.py --site v2g_workplace \
        --run experiments/learning/v2g_workplace/clone_mpc_1h/seed_0 --margin 1.0

The clone drives the test days; at each step MPC (behind the same deadline guard) decides on the
same observation. Printed per hour of the day: both net EV powers (kW, mean over the days), the
mean and mean absolute gap of the site totals, and the share of plugged ports on which the two
disagree about charging (above 0.5 kW or not).
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


def main() -> None:
    days = _learning_days()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="v2g_workplace")
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--margin", type=float, default=1.0)
    days.add_day_arguments(parser)
    args = parser.parse_args()

    from agents import load_policy
    from agents.baselines import AsLateAsPossible
    from agents.evaluate import episodes_for
    from agents.guards import GuardedPolicy
    from envs.core import reset, step
    from envs.observation import observe

    site = days.ScoredSite(args.site)
    params = site.params
    episodes = episodes_for(params, None, args.test_episodes, args.test_seed)
    clone = load_policy(args.run)
    teacher = GuardedPolicy(site.reference("model_predictive_control"), args.margin)
    clone.begin(params, episodes)
    teacher.begin(params, episodes)
    field = AsLateAsPossible(params).field
    state, rows = reset(params, episodes), []
    steps_per_hour = int(round(1.0 / params.dt_hours))
    while state.t < params.horizon_steps:
        obs = observe(params, state)
        max_charge, max_discharge = field(obs, "max_charge_kw"), field(obs, "max_discharge_kw")
        actions, teacher_actions = clone.predict(obs)[0], teacher.predict(obs)[0]
        clone_kw, teacher_kw = (np.where(a > 0, a * max_charge, a * max_discharge)
                                for a in (actions, teacher_actions))
        plugged = field(obs, "occupied") > 0.5
        disagree = ((clone_kw > 0.5) != (teacher_kw > 0.5))[plugged]
        rows.append((state.t // steps_per_hour, clone_kw.sum(axis=1), teacher_kw.sum(axis=1),
                     disagree.mean() if disagree.size else np.nan))
        state = step(params, state, actions)[0]
    print("| hour | clone kW | MPC kW | mean gap kW | mean abs gap kW | ports disagreeing |")
    print("|---:|---:|---:|---:|---:|---:|")
    for hour in sorted({row[0] for row in rows}):
        at = [row for row in rows if row[0] == hour]
        clone_kw = np.concatenate([row[1] for row in at])
        teacher_kw = np.concatenate([row[2] for row in at])
        share = np.nanmean([row[3] for row in at]) if any(np.isfinite(row[3]) for row in at) else np.nan
        gap = clone_kw - teacher_kw
        print(f"| {hour} | {clone_kw.mean():.1f} | {teacher_kw.mean():.1f} | {gap.mean():+.1f} | "
              f"{np.abs(gap).mean():.1f} | {share:.2f} |")


if __name__ == "__main__":
    main()
