"""How well a clone fits its teacher, and what the fit is worth: cloning variants on one set of
demonstrations, without an env in the loop.

    .venv/bin/python experiments/learning/cloning_fit.py --site caltech --teacher-horizon 48 \
        --teacher-margin 1.5 --variant base '{}' \
        --variant wide_b256 '{"embed_dim": 64, "hidden_dim": 128, "batch_size": 256, "learning_rate": 0.003}'
    .venv/bin/python experiments/learning/cloning_fit.py --site caltech --teacher-horizon 48 \
        --teacher-margin 1.5 --site-overrides +site.overrides.forecast_steps=48 \
        --variant leads8 '{"embed_dim": 64, "hidden_dim": 128, "batch_size": 256, "learning_rate": 0.003,
                           "forecast_leads": 8, "price_ranks": true}'

MPC (``--teacher-horizon`` steps, departures planned ``--teacher-margin`` hours early, and with
``--tie-break`` > 0 on buy prices rising by that much per step, so that of equal plans it keeps the
earliest charging) labels
``--days`` training days (``experiment=clone_mpc``'s imitation seed) and 64 fresh days (seed
5555); each variant (a name and JSON: per-port network options, and ``epochs``,
``batch_size``, ``learning_rate``, replacing those of ``experiment=clone_mpc``, and
``forecast_leads``: the clone sees the site's forecasts only that many steps ahead) is a fresh
per-port policy cloned on the training days only (no DAgger, no critic), with the rate falling
along a cosine to that experiment's final rate. Printed per variant: the cloning seconds, the squared error
of the mean action on plugged ports on training and fresh days (20,000 sampled steps each), and
the score of its mean action behind the deadline guard (``--margin``) on the test days.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CLONING = ("epochs", "batch_size", "learning_rate")  # what a variant may change of the cloning


def base_recipe(site: str) -> dict:
    """``experiment=clone_mpc`` on ``site``: its per-port network options and imitation settings."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"site={site}", "experiment=clone_mpc"])
    return OmegaConf.to_container(cfg, resolve=True)


def _learning_days():
    sys.path.insert(0, str(ROOT / "scripts"))
    import learning_days

    return learning_days


class MeanAction:
    """A policy's mean action, clipped to [-1, 1]: the clone as a deterministic predictor."""

    def __init__(self, policy):
        self.policy = policy

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        import torch

        with torch.no_grad():
            obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
            mean = self.policy.get_distribution(obs).distribution.mean
        return np.clip(mean.numpy(), -1.0, 1.0), None


class HiddenLeads:
    """A predictor that sees the site's forecasts only up to ``leads`` steps ahead: the later leads
    are set to those of step 0, so a clone fitted and scored through it cannot use them."""

    def __init__(self, predictor, params, leads: int | None):
        from envs.episode import FORECAST_BLOCK
        from envs.observation import observation_layout

        self.predictor, self.leads = predictor, leads
        layout = observation_layout(params)
        self.blocks = [layout[name] for name in FORECAST_BLOCK]

    def hide(self, observation: np.ndarray) -> np.ndarray:
        if self.leads is None:
            return observation
        seen = np.array(observation, dtype=np.float32, copy=True)
        for block in self.blocks:
            seen[..., block.start + self.leads + 1:block.stop] = seen[..., block.start:block.start + 1]
        return seen

    def begin(self, params, episode) -> None:
        begin = getattr(self.predictor, "begin", None)
        if callable(begin):
            begin(params, episode)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        return self.predictor.predict(self.hide(np.asarray(observation)), state, episode_start, deterministic)


def squared_error(policy, observations: np.ndarray, actions: np.ndarray, occupied: slice) -> float:
    """Mean squared error of the mean action on plugged ports, over up to 20,000 sampled steps."""
    rows = np.random.default_rng(0).choice(len(observations), min(len(observations), 20_000), replace=False)
    predicted, _ = MeanAction(policy).predict(observations[rows])
    plugged = observations[rows][:, occupied] > 0.5
    return float(((predicted - actions[rows]) ** 2)[plugged].mean())


def main() -> None:
    days = _learning_days()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="caltech")
    parser.add_argument("--teacher-horizon", type=int, default=24)
    parser.add_argument("--teacher-margin", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=256)
    parser.add_argument("--tie-break", type=float, default=0.0,
                        help="EUR/kWh per step: the teacher plans on buy prices rising by that much per step")
    parser.add_argument("--margin", type=float, default=1.0, help="the scored clones' deadline guard, hours")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--seed", type=int, default=0, help="seeds the network and the batches")
    parser.add_argument("--site-overrides", nargs="*", default=[],
                        help="Hydra overrides of the site, e.g. +site.overrides.forecast_steps=48")
    days.add_day_arguments(parser)
    args = parser.parse_args()

    import torch
    from gymnasium import spaces

    from agents.evaluate import episodes_for
    from agents.guards import GuardedPolicy
    from agents.imitation import clone, collect_demonstrations
    from agents.mpc import ModelPredictiveControl
    from agents.networks import PerPortPolicy
    from envs.observation import layout_size, observation_layout
    from envs.reward import TERM_INDEX

    torch.set_num_threads(1)
    site = days.ScoredSite(args.site, args.site_overrides)
    params = site.params
    no_reward = np.zeros(len(TERM_INDEX))
    recipe = base_recipe(args.site)
    network, imitation = recipe["agent"]["policy_kwargs"], recipe["imitation"]

    def demonstrations(count: int, seed: int):
        teacher = ModelPredictiveControl(params, horizon_steps=args.teacher_horizon,
                                         departure_margin_hours=args.teacher_margin)
        data = collect_demonstrations(teacher, params, episodes_for(params, None, count, seed), no_reward,
                                      tie_break_eur_kwh_per_step=args.tie_break)
        return data.observations, data.actions

    train_obs, train_actions = demonstrations(args.days, imitation["seed"])
    fresh_obs, fresh_actions = demonstrations(64, 5555)
    occupied = observation_layout(params)["occupied"]
    observation_space = spaces.Box(-np.inf, np.inf, (layout_size(params),), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (params.num_ports,), np.float32)
    policies = {name: site.reference(name) for name in ("uncontrolled", "offline_optimal")}
    for name, text in args.variant:
        options = json.loads(text)
        cloning = {key: options.pop(key, imitation[key]) for key in CLONING}
        leads = options.pop("forecast_leads", None)
        torch.manual_seed(args.seed)
        policy = PerPortPolicy(observation_space, action_space, lambda _: 1e-3, site=params,
                               **{**network, **options})
        seen = HiddenLeads(MeanAction(policy), params, leads)
        start = time.perf_counter()
        clone(policy, seen.hide(train_obs), train_actions, None, cloning["epochs"], cloning["batch_size"],
              cloning["learning_rate"], seed=args.seed, final_learning_rate=imitation["final_learning_rate"])
        errors = [squared_error(policy, seen.hide(obs), actions, occupied)
                  for obs, actions in ((train_obs, train_actions), (fresh_obs, fresh_actions))]
        print(f"{name}: cloned in {time.perf_counter() - start:.0f} s; squared error on plugged ports "
              f"{errors[0]:.4f} (training days), {errors[1]:.4f} (fresh days)", flush=True)
        policies[name] = GuardedPolicy(seen, args.margin)
    summary = site.summary(policies, args.test_episodes, args.test_seed)
    print(f"\n{args.site}, teacher MPC {args.teacher_horizon} steps with a {args.teacher_margin:g} h margin, "
          f"{args.days} days; clones behind a {args.margin:g} h guard, {args.test_episodes} test days "
          f"(seed {args.test_seed}):")
    print(days.score_rows(summary, policies))


if __name__ == "__main__":
    main()
