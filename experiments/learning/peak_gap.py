"""Where a clone's reward goes against its teacher's, term by term, and what the teacher's daily peak
is worth to it as a cap.

    .venv/bin/python experiments/learning/peak_gap.py --site v2g_workplace \
        --run experiments/learning/v2g_workplace/clone_mpc_12h_m1/seed_0 --horizon 48 --margin 1

The teacher (MPC over ``--horizon`` steps, departures ``--margin`` hours early, behind the clone's
``--guard``) and the clone drive the test days. Printed: the score table, then the mean per day of
each reward term (EUR or kWh, and the day's highest site import, which the demand charge bills), and
the clone with its site import capped each day at the teacher's highest import of that day (times
``1 + slack``, or times ``1 + noise`` drawn normal with each ``--cap-noise`` standard deviation, what
a learned daily cap with that error would allow): the clone's charging is scaled down until the import
fits, its discharge kept, and the deadline guard raises what must flow. The cap is an oracle: it
knows the teacher's whole day.
The same cap set step by step: at the peak so far or the import the teacher would draw now on the
clone's state, whichever is higher (what a perfect site head could allow the ports), and at the peak
so far plus each fixed ``--allowances`` kW.
Last, for the teacher and the clone, how many steps a day import within ``--near`` kW of that day's
highest import: a planner that fills up to its peak so far, where more import costs no demand
charge, holds many steps at that level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "scripts"))
sys.path.insert(0, str(HERE))

from learning_days import ScoredSite, add_day_arguments, score_rows  # noqa: E402
from site_total_oracle import as_actions, port_kw, rescale  # noqa: E402

TERMS = ("reward_eur", "energy_cost_eur", "charging_revenue_eur", "export_revenue_eur", "degradation_kwh",
         "unmet_kwh", "peak_import_kw", "v2g_discharged_kwh")


class DailyPeakCap:
    """A policy behind a deadline guard with each env's site import held under ``caps_kw`` (B,)."""

    def __init__(self, policy, caps_kw: np.ndarray, margin_hours: float):
        self.policy, self.caps_kw, self.margin_hours = policy, np.asarray(caps_kw, dtype=float), margin_hours

    def begin(self, params, episode) -> None:
        from agents.baselines import AsLateAsPossible
        from agents.guards import DeadlineGuard

        if episode.num_envs != len(self.caps_kw):
            raise ValueError(f"expected {len(self.caps_kw)} days, one cap each, got {episode.num_envs}")
        if callable(getattr(self.policy, "begin", None)):
            self.policy.begin(params, episode)
        self.guard = DeadlineGuard(params, self.margin_hours, fit_headroom=True)
        self.field = AsLateAsPossible(params).field
        self.root_limit_kw = float(params.node_import_limit_kw[0])

    def inflexible_kw(self, obs: np.ndarray) -> np.ndarray:
        """(B,) the site's inflexible load less PV now, from the root's headroom."""
        return self.root_limit_kw - self.field(obs, "node_headroom_kw")[:, 0]

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.atleast_2d(observation)
        max_charge, max_discharge = self.field(obs, "max_charge_kw"), self.field(obs, "max_discharge_kw")
        actions = self.guard.apply(obs, self.policy.predict(obs, deterministic=True)[0])
        charge, discharge = port_kw(actions, max_charge, max_discharge)
        floor = np.maximum(self.guard.apply(obs, np.zeros(max_charge.shape, np.float32)), 0.0) * max_charge
        room_kw = self.caps_kw - self.inflexible_kw(obs)
        target = np.minimum(charge.sum(axis=1) + discharge.sum(axis=1), room_kw)
        charge, discharge = rescale(charge, discharge, floor, max_charge, max_discharge,
                                    self.field(obs, "v2g_allowed") > 0, target)
        return self.guard.apply(obs, as_actions(charge, discharge, max_charge, max_discharge)), None


class PeakSoFarCeiling(DailyPeakCap):
    """A policy behind a deadline guard whose site import stays under a ceiling set each step: the
    peak so far plus ``allowance_kw``, or, with a ``teacher``, the peak so far or the import the
    teacher (behind the same guard) would draw now, whichever is higher."""

    def __init__(self, policy, margin_hours: float, teacher=None, allowance_kw: float = 0.0):
        super().__init__(policy, np.zeros(0), margin_hours)
        self.teacher, self.allowance_kw = teacher, float(allowance_kw)

    def begin(self, params, episode) -> None:
        from envs.observation import PEAK_FIELD, observation_layout

        self.caps_kw = np.zeros(episode.num_envs)
        super().begin(params, episode)
        if self.teacher is not None:
            self.teacher.begin(params, episode)
        self.peak_column = observation_layout(params)[PEAK_FIELD].start

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.atleast_2d(observation)
        ceiling = obs[:, self.peak_column] + self.allowance_kw
        if self.teacher is not None:
            charge, discharge = port_kw(self.teacher.predict(obs, deterministic=True)[0],
                                        self.field(obs, "max_charge_kw"), self.field(obs, "max_discharge_kw"))
            teacher_kw = self.inflexible_kw(obs) + charge.sum(axis=1) + discharge.sum(axis=1)
            ceiling = np.maximum(ceiling, teacher_kw)
        self.caps_kw = ceiling
        return super().predict(obs)


def steps_near_peak(policy, params, days, within_kw: float) -> float:
    """Steps per day (mean over ``days``) whose site import is within ``within_kw`` of the day's highest."""
    from envs.core import reset, step
    from envs.observation import observe

    if callable(getattr(policy, "begin", None)):
        policy.begin(params, days)
    state, imports = reset(params, days), []
    while state.t < params.horizon_steps:
        state, _, info = step(params, state, policy.predict(observe(params, state), deterministic=True)[0])
        imports.append(info["site_power_kw"])
    imports = np.stack(imports, axis=1)
    return float((imports >= imports.max(axis=1, keepdims=True) - within_kw).sum(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="v2g_workplace")
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--horizon", type=int, default=48, help="the teacher's window, steps")
    parser.add_argument("--margin", type=float, default=1.0, help="the teacher's departure margin, hours")
    parser.add_argument("--guard", type=float, default=1.0, help="the deadline guard's margin, hours")
    parser.add_argument("--slack", nargs="*", type=float, default=[0.0, 0.05],
                        help="caps at the teacher's daily peak times 1 + each of these")
    parser.add_argument("--cap-noise", nargs="*", type=float, default=[],
                        help="caps at the teacher's daily peak times 1 + a normal error of each of these "
                             "standard deviations (drawn with --noise-seed)")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--allowances", nargs="*", type=float, default=[0.0, 5.0],
                        help="ceilings at the peak so far plus each of these kW")
    parser.add_argument("--near", type=float, default=1.0, help="kW below the day's peak counted as at it")
    add_day_arguments(parser)
    args = parser.parse_args()

    from agents import load_policy
    from agents.evaluate import episodes_for, run_policies
    from agents.guards import GuardedPolicy
    from agents.mpc import ModelPredictiveControl

    site = ScoredSite(args.site)
    days = episodes_for(site.params, None, args.test_episodes, args.test_seed)
    teacher = f"MPC {args.horizon} steps, {args.margin:g} h margin"

    def planner():
        return GuardedPolicy(ModelPredictiveControl(site.params, horizon_steps=args.horizon,
                                                    departure_margin_hours=args.margin), args.guard)

    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    policies[teacher] = planner()
    policies["clone"] = load_policy(args.run)
    first = run_policies(policies, site.params, days)
    peaks = first.per_episode.loc[teacher, "peak_import_kw"].to_numpy()
    capped = {f"clone, capped at the teacher's daily peak {slack:+.0%}": DailyPeakCap(
        load_policy(args.run), peaks * (1.0 + slack), args.guard) for slack in args.slack}
    rng = np.random.default_rng(args.noise_seed)
    for noise in args.cap_noise:
        capped[f"clone, capped at the teacher's daily peak, {noise:.0%} error"] = DailyPeakCap(
            load_policy(args.run), peaks * (1.0 + noise * rng.standard_normal(len(peaks))), args.guard)
    capped["clone, ceiling at the peak so far or the teacher's import now"] = PeakSoFarCeiling(
        load_policy(args.run), args.guard, planner())
    for allowance in args.allowances:
        capped[f"clone, ceiling at the peak so far + {allowance:g} kW"] = PeakSoFarCeiling(
            load_policy(args.run), args.guard, allowance_kw=allowance)
    references = {name: policies[name] for name in ("uncontrolled", "offline_optimal")}
    second = run_policies({**references, **capped}, site.params, days)
    per_episode = first.per_episode.combine_first(second.per_episode.drop(list(references)))
    names = [*policies, *capped]
    summary = first.summary().combine_first(second.summary()).loc[names]
    print(f"{args.site}, {args.test_episodes} days (seed {args.test_seed}), clone {args.run}:")
    print(score_rows(summary, names))
    means = per_episode.groupby(level="policy")[list(TERMS)].mean().loc[names]
    print("\nmean per day (peak_import_kw: the day's highest site import, which the demand charge bills):")
    print("| policy | " + " | ".join(TERMS) + " |")
    print("|---|" + "---:|" * len(TERMS))
    for name, row in means.iterrows():
        print(f"| {name} | " + " | ".join(f"{row[term]:.2f}" for term in TERMS) + " |")
    print(f"\nsteps a day within {args.near:g} kW of the day's highest import:")
    for name in (teacher, "clone"):
        fresh = policies[name] if name == teacher else load_policy(args.run)
        print(f"- {name}: {steps_near_peak(fresh, site.params, days, args.near):.1f}")


if __name__ == "__main__":
    main()
