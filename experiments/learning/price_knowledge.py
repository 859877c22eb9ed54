"""What MPC's exact knowledge of the coming prices is worth: a teacher planning on the real prices,
and the same teacher planning on their expected values (the site's hourly profile without noise).

    .venv/bin/python experiments/learning/price_knowledge.py --site caltech --horizon 48 --margin 1.5 \
        --test-episodes 14 --test-seed 900001

Both plan over ``--horizon`` steps with departures ``--margin`` hours early and act behind the clones'
deadline guard (``--guard`` hours) on the same days; the second is handed, in ``begin``, the same days
drawn with ``scenario.price_noise`` at 0 (the generator draws the same random numbers, so only the
prices differ), and is scored on the real ones. The gap is what the price noise a planner sees over its
window is worth, the information a policy that sees ``forecast_steps`` ahead has to match. Scores are
ratios of sums against uncontrolled charging and the offline optimum, as in ``scripts/bench_learning.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from learning_days import ScoredSite, add_day_arguments, score_rows  # noqa: E402

PRICES = ("price_buy_eur_kwh", "price_sell_eur_kwh")


class PlansOnOtherPrices:
    """A planner handed ``prices`` (the same days with other price series) when it begins."""

    def __init__(self, planner, prices):
        self.planner, self.prices = planner, prices

    def begin(self, params, episode) -> None:
        if episode.num_envs != self.prices.num_envs:
            raise ValueError(f"expected the {self.prices.num_envs} days of the run, got {episode.num_envs}")
        swapped = {name: getattr(self.prices, name) for name in PRICES}
        self.planner.begin(params, dataclasses.replace(episode, **swapped))

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        return self.planner.predict(observation, deterministic=deterministic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--horizon", type=int, default=48, help="MPC's window, steps")
    parser.add_argument("--margin", type=float, default=1.5, help="MPC's departure margin, hours")
    parser.add_argument("--guard", type=float, default=1.0, help="the deadline guard's margin, hours")
    add_day_arguments(parser)
    args = parser.parse_args()

    from agents.evaluate import episodes_for, run_policies
    from agents.guards import GuardedPolicy
    from agents.mpc import ModelPredictiveControl

    site = ScoredSite(args.site)
    expected = ScoredSite(args.site, ["+site.overrides.scenario.price_noise=0.0"])
    params = site.params
    days = episodes_for(params, None, args.test_episodes, args.test_seed)
    smooth = episodes_for(expected.params, None, args.test_episodes, args.test_seed)
    for name in ("ev_arrival_step", "ev_departure_step", "ev_requested_kwh"):
        if not np.array_equal(getattr(days, name), getattr(smooth, name)):
            raise SystemExit(f"the noise-free days differ in {name}: this site's generator draws otherwise")

    def planner():
        return ModelPredictiveControl(params, horizon_steps=args.horizon, departure_margin_hours=args.margin)

    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    policies["MPC, real prices"] = GuardedPolicy(planner(), args.guard)
    policies["MPC, expected prices"] = GuardedPolicy(PlansOnOtherPrices(planner(), smooth), args.guard)
    summary = run_policies(policies, params, days).summary()
    gap = float(np.abs(days.price_buy_eur_kwh - smooth.price_buy_eur_kwh).mean())
    print(f"{args.site}, MPC {args.horizon} steps with a {args.margin:g} h margin behind a {args.guard:g} h "
          f"guard, {args.test_episodes} days (seed {args.test_seed}); real and expected buy prices differ by "
          f"{gap:.4f} EUR/kWh on average:")
    print(score_rows(summary, policies))


if __name__ == "__main__":
    main()
