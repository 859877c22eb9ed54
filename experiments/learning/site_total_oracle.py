"""How much a perfect site power head could add: a clone's ports rescaled to MPC's net EV power.

    .venv/bin/python experiments/learning/site_total_oracle.py --site v2g_workplace \
        --run experiments/learning/v2g_workplace/clone_mpc_1h/seed_0 --noise 0 0.1

At every step MPC (behind the same guard) decides on the state the clone reached; the clone's
charging is scaled by one factor per site (then discharge added or taken back) until the EVs'
net power equals MPC's, times ``1 + noise * N(0, 1)`` for a head with that relative error. The
deadline guard then raises what must flow. This is an analysis, not a policy: it needs MPC at
every step.
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


def _share(total_kw: np.ndarray, room_kw: np.ndarray, grant_kw: np.ndarray) -> np.ndarray:
    """Each row's ``grant_kw`` (B,) spread over its ports in proportion to ``room_kw`` (B, P)."""
    room = room_kw.sum(axis=1)
    fraction = np.clip(np.divide(grant_kw, room, out=np.zeros_like(room), where=room > 0), 0.0, 1.0)
    return fraction[:, None] * room_kw


def port_kw(actions, max_charge_kw, max_discharge_kw):
    """(charge, discharge) kW per port of signed fractional ``actions``."""
    return np.maximum(actions, 0.0) * max_charge_kw, np.minimum(actions, 0.0) * max_discharge_kw


def as_actions(charge_kw, discharge_kw, max_charge_kw, max_discharge_kw) -> np.ndarray:
    """The signed fractional actions (float32) of per-port ``charge_kw`` and ``discharge_kw``."""
    zeros = np.zeros_like(charge_kw)
    return (np.divide(charge_kw, max_charge_kw, out=zeros.copy(), where=charge_kw > 1e-9)
            + np.divide(discharge_kw, max_discharge_kw, out=zeros.copy(), where=discharge_kw < -1e-9)
            ).astype(np.float32)


def rescale(charge_kw, discharge_kw, floor_kw, max_charge_kw, max_discharge_kw, may_discharge, target_kw):
    """(charge, discharge) kW per port after moving the site's net EV power to ``target_kw``."""
    gap = target_kw - charge_kw.sum(axis=1) - discharge_kw.sum(axis=1)
    cut = _share(gap, np.maximum(charge_kw - floor_kw, 0.0), -gap)
    charge_kw, gap = charge_kw - cut, gap + cut.sum(axis=1)
    idle = may_discharge & (charge_kw <= floor_kw + 1e-9)
    extra = _share(gap, np.where(idle, max_discharge_kw + discharge_kw, 0.0), -gap)
    discharge_kw, gap = discharge_kw - extra, gap + extra.sum(axis=1)
    back = _share(gap, -discharge_kw, gap)
    discharge_kw, gap = discharge_kw + back, gap - back.sum(axis=1)
    more = _share(gap, np.where(discharge_kw < -1e-9, 0.0, max_charge_kw - charge_kw), gap)
    return charge_kw + more, discharge_kw


class SiteTotalOracle:
    """The clone's ports, rescaled each step to MPC's net EV power (with a relative error)."""

    def __init__(self, clone, mpc, margin_hours: float, noise: float, seed: int = 0):
        self.clone, self.mpc, self.margin_hours, self.noise, self.seed = clone, mpc, margin_hours, noise, seed

    def begin(self, params, episode):
        from agents.baselines import AsLateAsPossible
        from agents.guards import DeadlineGuard

        self.clone.begin(params, episode)
        self.mpc.begin(params, episode)
        self.guard = DeadlineGuard(params, self.margin_hours, fit_headroom=True)
        self.rules, self.rng = AsLateAsPossible(params), np.random.default_rng(self.seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        obs = np.atleast_2d(observation)
        field = self.rules.field
        max_charge, max_discharge = field(obs, "max_charge_kw"), field(obs, "max_discharge_kw")

        def kw(actions):
            return port_kw(actions, max_charge, max_discharge)

        mpc_charge, mpc_discharge = kw(self.guard.apply(obs, self.mpc.predict(obs)[0]))
        target = (mpc_charge.sum(axis=1) + mpc_discharge.sum(axis=1)) * (
            1.0 + self.noise * self.rng.standard_normal(len(obs)))
        idle = np.zeros(max_charge.shape, dtype=np.float32)
        floor = np.maximum(self.guard.apply(obs, idle), 0.0) * max_charge
        charge, discharge = rescale(*kw(self.clone.predict(obs)[0]), floor, max_charge, max_discharge,
                                    field(obs, "v2g_allowed") > 0, target)
        return self.guard.apply(obs, as_actions(charge, discharge, max_charge, max_discharge)), None


def main() -> None:
    days = _learning_days()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="v2g_workplace")
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1])
    days.add_day_arguments(parser)
    args = parser.parse_args()

    from agents import load_policy

    site = days.ScoredSite(args.site)
    references = ("uncontrolled", "offline_optimal", "model_predictive_control")
    policies = {name: site.reference(name) for name in references}
    policies["clone"] = load_policy(args.run)
    for noise in args.noise:
        policies[f"clone at MPC's net power, error {noise:g}"] = SiteTotalOracle(
            load_policy(args.run), site.reference("model_predictive_control"), args.margin, noise)
    print(days.score_rows(site.summary(policies, args.test_episodes, args.test_seed), policies))

if __name__ == "__main__":
    main()
