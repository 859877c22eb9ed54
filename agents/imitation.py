"""Imitation of a planning teacher: demonstrations from the offline optimum or MPC, and behaviour
cloning of an SB3 actor-critic policy (actor to the teacher's actions, critic to its returns)."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.core import idle_site_terms, reset, step
from envs.episode import Episode
from envs.observation import observe
from envs.site import SiteParams


@dataclasses.dataclass(frozen=True)
class Demonstrations:
    """What a teacher did, step by step, on a batch of episodes, flattened over (step, env).

    ``returns`` is the discounted return-to-go of ``reward_coefficients`` (the training reward)
    from each step to the end of its episode; ``teacher_reward`` is each episode's total.
    """

    observations: np.ndarray  # (N, D) float32
    actions: np.ndarray  # (N, P) float32 in [-1, 1]
    returns: np.ndarray  # (N,) discounted return-to-go
    teacher_reward: np.ndarray  # (episodes,)

    @property
    def size(self) -> int:
        return len(self.actions)


def collect_demonstrations(teacher, params: SiteParams, episodes: Episode, reward_coefficients: np.ndarray,
                           gamma: float = 0.99, tie_break_eur_kwh_per_step: float = 0.0,
                           controllable_reward: bool = False, reward_scale: float = 1.0) -> Demonstrations:
    """Run ``teacher`` (predictor protocol; ``begin`` called first, as ``agents.evaluate`` does) on
    every episode of the batch and record its observations, actions and rewards.

    The rewards are the training reward's (``agents.training_reward``): with
    ``controllable_reward`` the idle site's reward is left out, and ``reward_scale`` multiplies.

    A planner's optimum is often not unique (charging now or an hour later can cost the same),
    and a clone of ties regresses to fractional power. With ``tie_break_eur_kwh_per_step`` > 0
    the teacher plans on buy prices that rise by that much per step, so among equal plans it
    charges earliest; the demonstrations still run on the real episodes.
    """
    begin = getattr(teacher, "begin", None)
    if callable(begin):
        begin(params, tie_broken(episodes, tie_break_eur_kwh_per_step))
    state = reset(params, episodes)
    observations, actions, rewards = [], [], []
    idle_peak_kw = np.zeros(episodes.num_envs)
    while state.t < params.horizon_steps:
        obs = observe(params, state)
        action, _ = teacher.predict(obs, deterministic=True)
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if controllable_reward:
            idle, idle_peak_kw = idle_site_terms(params, state, idle_peak_kw)
            terms_before = idle @ reward_coefficients
        state, terms, _ = step(params, state, action)
        observations.append(obs)
        actions.append(action.astype(np.float32))
        rewards.append(terms @ reward_coefficients - (terms_before if controllable_reward else 0.0))
    rewards = np.array(rewards) * float(reward_scale)
    returns = np.zeros_like(rewards)
    following = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        following = rewards[t] + gamma * following
        returns[t] = following
    return Demonstrations(np.concatenate(observations), np.concatenate(actions), returns.reshape(-1),
                          rewards.sum(axis=0))


def tie_broken(episodes: Episode, eur_kwh_per_step: float) -> Episode:
    """``episodes`` with buy prices raised by ``eur_kwh_per_step`` times the step index."""
    if eur_kwh_per_step == 0:
        return episodes
    prices = episodes.price_buy_eur_kwh
    rising = prices + eur_kwh_per_step * np.arange(prices.shape[1])
    return dataclasses.replace(episodes, price_buy_eur_kwh=rising)


def clone(policy, observations: np.ndarray, actions: np.ndarray, value_targets: np.ndarray | None = None,
          epochs: int = 10, batch_size: int = 1024, learning_rate: float = 1e-3, value_weight: float = 0.5,
          seed: int = 0) -> list[float]:
    """Fit ``policy`` (an SB3 ``ActorCriticPolicy``) to the demonstrations in place.

    The actor's mean action regresses onto ``actions`` (squared error, after the [-1, 1] clip the
    env applies, with the gradient passed through where the target sits at a bound, so a mean
    beyond a bound costs nothing); the critic onto ``value_targets`` when given. Observations
    are as the policy sees them (normalized where the run normalizes). Returns the mean loss of
    each epoch.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    obs = torch.as_tensor(observations, dtype=torch.float32)
    target = torch.as_tensor(actions, dtype=torch.float32)
    values = None if value_targets is None else torch.as_tensor(value_targets, dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=float(learning_rate))
    policy.set_training_mode(True)
    losses = []
    for _ in range(int(epochs)):
        order = torch.randperm(len(obs), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(obs), int(batch_size)):
            index = order[start:start + int(batch_size)]
            mean, value = _mean_and_value(policy, obs[index])
            loss = _bounded_squared_error(mean, target[index])
            if values is not None:
                loss = loss + value_weight * torch.nn.functional.mse_loss(value, values[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    policy.set_training_mode(False)
    return losses


def pretrain(model, imitation_cfg, params: SiteParams, training_coefficients: np.ndarray, seed: int,
             controllable_reward: bool = False, reward_scale: float = 1.0) -> dict:
    """Clone the configured teacher into ``model.policy`` before RL; returns what to log.

    ``params`` is the site with the training reward: the teacher plans for it; the critic's
    targets are returns of the training reward (``controllable_reward``, ``reward_scale``).

    ``imitation_cfg``: ``teacher`` (a ``_target_`` policy built with ``params``), ``episodes``
    and ``seed`` (demonstration episodes of the site's scenario), ``tie_break_eur_kwh_per_step``
    (see ``collect_demonstrations``), ``epochs``, ``batch_size``,
    ``learning_rate``, ``value_weight``, and ``log_std`` (the actor's log standard deviation
    after cloning, so RL explores near the cloned actions; null keeps it). Where the run
    normalizes, the demonstrations first update the observation and return statistics.
    """
    import time

    from hydra.utils import instantiate

    from agents.evaluate import episodes_for

    start = time.perf_counter()
    teacher = instantiate(imitation_cfg["teacher"], _partial_=True)(params=params)
    episodes = episodes_for(params, None, int(imitation_cfg["episodes"]), int(imitation_cfg["seed"]))
    gamma = float(getattr(model, "gamma", 0.99))
    demos = collect_demonstrations(teacher, params, episodes, training_coefficients, gamma,
                                   float(imitation_cfg.get("tie_break_eur_kwh_per_step", 0.0)),
                                   controllable_reward, reward_scale)
    collected = time.perf_counter() - start
    observations, value_targets = demos.observations, demos.returns
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        if normalizer.norm_obs:
            normalizer.obs_rms.update(observations)
            observations = normalizer.normalize_obs(observations)
        if normalizer.norm_reward:
            normalizer.ret_rms.update(value_targets)
            value_targets = value_targets / np.sqrt(normalizer.ret_rms.var + normalizer.epsilon)
    losses = clone(model.policy, observations, demos.actions, value_targets, imitation_cfg["epochs"],
                   imitation_cfg["batch_size"], imitation_cfg["learning_rate"],
                   float(imitation_cfg.get("value_weight", 0.5)), seed)
    log_std = imitation_cfg.get("log_std")
    if log_std is not None and hasattr(model.policy, "log_std"):
        import torch

        with torch.no_grad():
            model.policy.log_std.fill_(float(log_std))
    return {"imitation/samples": demos.size, "imitation/first_loss": losses[0],
            "imitation/last_loss": losses[-1],
            "imitation/teacher_reward_eur": float(demos.teacher_reward.mean()),
            "imitation/collect_s": collected, "imitation/wall_s": time.perf_counter() - start}


def _mean_and_value(policy, obs):
    distribution = policy.get_distribution(obs)
    value = policy.predict_values(obs).squeeze(-1)
    return distribution.distribution.mean, value


def _bounded_squared_error(mean, target):
    import torch

    error = mean - target
    error = torch.where((target >= 1.0) & (error > 0), torch.zeros_like(error), error)
    error = torch.where((target <= -1.0) & (error < 0), torch.zeros_like(error), error)
    return (error * error).mean()
