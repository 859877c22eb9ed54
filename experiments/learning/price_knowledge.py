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

``--known-steps K ...`` adds, per K, the teacher that knows only what a policy with a K-step forecast
knows: the real prices and inflexible load for the first K steps of its window and their expected
values after (the same days drawn without price noise and without load noise; PV keeps its daily
cloud level, which the first steps show). It bounds what a clone of the full teacher can reach
with the site's ``forecast_steps`` = K.
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


class PlansOnForecast:
    """A planner whose window holds the real prices and inflexible load for ``known_steps`` steps
    and those of ``expected`` (the same days without noise) after them."""

    def __init__(self, planner, expected, known_steps: int):
        self.planner, self.expected, self.known_steps = planner, expected, int(known_steps)

    def begin(self, params, episode) -> None:
        from envs.core import reset

        if episode.num_envs != self.expected.num_envs:
            raise ValueError(f"expected the {self.expected.num_envs} days of the run, got {episode.num_envs}")
        self.planner.begin(params, episode)
        expected_exo_kw = reset(params, self.expected).node_exo_kw
        planner, exact_window, k = self.planner, self.planner.window, self.known_steps

        def window(b, obs):
            planned = exact_window(b, obs)
            later = slice(planner.t + k, planner.t + len(planned.price_buy_eur_kwh))
            return dataclasses.replace(planned, **{
                name: np.concatenate([getattr(planned, name)[:k], getattr(self.expected, name)[b, later]])
                for name in PRICES}, exo_kw=np.concatenate([planned.exo_kw[:k], expected_exo_kw[b, later]]))

        planner.window = window

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        return self.planner.predict(observation, deterministic=deterministic)


def without_noise(params, days_seed: int, count: int):
    """The test days drawn again without price and load noise (the same random numbers otherwise)."""
    from agents.evaluate import episodes_for
    from envs.generators import generator_for
    from envs.parametric import ParametricGenerator

    generator = generator_for(params)
    if not isinstance(generator, ParametricGenerator):
        raise SystemExit(f"--known-steps needs a parametric scenario, not {type(generator).__name__}")
    smooth = dataclasses.replace(generator, price_noise=0.0,
                                 loads=[{**load, "noise": 0.0} for load in generator.loads])
    return episodes_for(params, smooth, count, days_seed)


def check_same_sessions(days, other) -> None:
    """Exit unless ``other`` holds the EV sessions of ``days`` (drawn again with other noise)."""
    for name in ("ev_arrival_step", "ev_departure_step", "ev_requested_kwh"):
        if not np.array_equal(getattr(days, name), getattr(other, name)):
            raise SystemExit(f"the noise-free days differ in {name}: this site's generator draws otherwise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--horizon", type=int, default=48, help="MPC's window, steps")
    parser.add_argument("--margin", type=float, default=1.5, help="MPC's departure margin, hours")
    parser.add_argument("--guard", type=float, default=1.0, help="the deadline guard's margin, hours")
    parser.add_argument("--known-steps", nargs="*", type=int, default=[],
                        help="also the teacher that knows prices and load only this many steps ahead")
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
    check_same_sessions(days, smooth)

    def planner():
        return ModelPredictiveControl(params, horizon_steps=args.horizon, departure_margin_hours=args.margin)

    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    policies["MPC, real prices"] = GuardedPolicy(planner(), args.guard)
    policies["MPC, expected prices"] = GuardedPolicy(PlansOnOtherPrices(planner(), smooth), args.guard)
    if args.known_steps:
        noiseless = without_noise(params, args.test_seed, args.test_episodes)
        check_same_sessions(days, noiseless)
    for known in args.known_steps:
        policies[f"MPC, prices and load known {known} steps ahead"] = GuardedPolicy(
            PlansOnForecast(planner(), noiseless, known), args.guard)
    summary = run_policies(policies, params, days).summary()
    gap = float(np.abs(days.price_buy_eur_kwh - smooth.price_buy_eur_kwh).mean())
    print(f"{args.site}, MPC {args.horizon} steps with a {args.margin:g} h margin behind a {args.guard:g} h "
          f"guard, {args.test_episodes} days (seed {args.test_seed}); real and expected buy prices differ by "
          f"{gap:.4f} EUR/kWh on average:")
    print(score_rows(summary, policies))


if __name__ == "__main__":
    main()
