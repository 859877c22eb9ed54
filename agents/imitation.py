"""Imitation of a planning teacher: demonstrations from the offline optimum or MPC, and behaviour
cloning of an SB3 actor-critic policy (actor to the teacher's actions, critic to its returns)."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.core import idle_site_terms, reset, step
from envs.episode import Episode
from envs.errors import ConfigError
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
                           controllable_reward: bool = False, reward_scale: float = 1.0,
                           actor=None) -> Demonstrations:
    """Run ``teacher`` (predictor protocol; ``begin`` called first, as ``agents.evaluate`` does) on
    every episode of the batch and record its observations, actions and rewards.

    The rewards are the training reward's (``agents.training_reward``): with
    ``controllable_reward`` the idle site's reward is left out, and ``reward_scale`` multiplies.
    With an ``actor`` (predictor protocol) the episodes follow the actor's actions and the
    teacher only labels the states the actor reaches (DAgger); the rewards are the actor's.

    A planner's optimum is often not unique (charging now or an hour later can cost the same),
    and a clone of ties regresses to fractional power. With ``tie_break_eur_kwh_per_step`` > 0
    the teacher plans on buy prices that rise by that much per step, so among equal plans it
    charges earliest; the demonstrations still run on the real episodes.
    """
    begin = getattr(teacher, "begin", None)
    if callable(begin):
        begin(params, tie_broken(episodes, tie_break_eur_kwh_per_step))
    if actor is not None and callable(getattr(actor, "begin", None)):
        actor.begin(params, episodes)
    state = reset(params, episodes)
    observations, actions, rewards = [], [], []
    idle_peak_kw = np.zeros(episodes.num_envs)
    while state.t < params.horizon_steps:
        obs = observe(params, state)
        action, _ = teacher.predict(obs, deterministic=True)
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        acting = action if actor is None else np.clip(actor.predict(obs, deterministic=True)[0], -1.0, 1.0)
        idle_reward = 0.0
        if controllable_reward:
            idle, idle_peak_kw = idle_site_terms(params, state, idle_peak_kw)
            idle_reward = idle @ reward_coefficients
        state, terms, _ = step(params, state, acting)
        observations.append(obs)
        actions.append(action.astype(np.float32))
        rewards.append(terms @ reward_coefficients - idle_reward)
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
          seed: int = 0, final_learning_rate: float | None = None,
          site_total_weight: float = 0.0) -> list[float]:
    """Fit ``policy`` (an SB3 ``ActorCriticPolicy``) to the demonstrations in place.

    The actor's mean action regresses onto ``actions`` (squared error, after the [-1, 1] clip the
    env applies, with the gradient passed through where the target sits at a bound, so a mean
    beyond a bound costs nothing), and a per-port policy's site power head (``site_power``)
    onto the actions' net power; the critic onto ``value_targets`` when given. With
    ``site_total_weight`` > 0 the loss also counts each step's error summed over its ports
    (squared, over the port count), which costs what independent errors cost and more where the
    ports err together, as a site total (and its peak) does. Observations
    are as the policy sees them (normalized where the run normalizes). With
    ``final_learning_rate`` the rate falls from ``learning_rate`` to it along a cosine over the
    epochs. Returns the mean loss of each epoch.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    obs = torch.as_tensor(observations, dtype=torch.float32)
    target = torch.as_tensor(actions, dtype=torch.float32)
    values = None if value_targets is None else torch.as_tensor(value_targets, dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=float(learning_rate))
    batches_per_epoch = -(-len(obs) // int(batch_size))
    schedule = None if final_learning_rate is None else torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(int(epochs) * batches_per_epoch, 1), eta_min=float(final_learning_rate))
    policy.set_training_mode(True)
    losses = []
    for _ in range(int(epochs)):
        order = torch.randperm(len(obs), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(obs), int(batch_size)):
            index = order[start:start + int(batch_size)]
            mean, value = _mean_and_value(policy, obs[index])
            error = _bounded_error(mean, target[index])
            loss = (error * error).mean() + _site_power_error(policy, obs[index], target[index])
            if site_total_weight > 0:
                loss = loss + site_total_weight * _site_total_error(error)
            if values is not None:
                loss = loss + value_weight * torch.nn.functional.mse_loss(value, values[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    policy.set_training_mode(False)
    return losses


def pretrain(model, imitation_cfg, params: SiteParams, training_coefficients: np.ndarray, seed: int,
             controllable_reward: bool = False, reward_scale: float = 1.0, guard=None, view=None) -> dict:
    """Clone the configured teacher into ``model.policy`` before RL; returns what to log.

    ``params`` is the site with the training reward: the teacher plans for it; the critic's
    targets are returns of the training reward (``controllable_reward``, ``reward_scale``).

    ``imitation_cfg``: ``teacher`` (a ``_target_`` policy built with ``params``), ``episodes``
    and ``seed`` (demonstration episodes of the site's scenario), ``tie_break_eur_kwh_per_step``
    (see ``collect_demonstrations``), ``epochs``, ``batch_size``,
    ``learning_rate``, ``value_weight``, and ``log_std`` (the actor's log standard deviation
    after cloning, so RL explores near the cloned actions; null keeps it). Where the run
    normalizes, the demonstrations first update the observation and return statistics.

    With ``view`` (an ``agents.departure_view.DepartureView`` as in the training env) the clone
    learns from, and acts on, the viewed observations; the teacher plans on the site's own.

    DAgger: ``dagger_rounds`` (0) times, the clone (behind ``guard``, an
    ``agents.guards.DeadlineGuard`` as in the training env) drives ``dagger_episodes`` new
    episodes, the teacher labels the states it reaches, and the policy is cloned again on all
    demonstrations so far for ``dagger_epochs`` (default ``epochs``). The teacher must act from
    the observation (MPC, the rule baselines), not from a plan fixed at the episode's start.
    """
    import time

    from hydra.utils import instantiate

    from agents.evaluate import episodes_for

    start = time.perf_counter()
    imitation_cfg = _checked_settings(imitation_cfg)
    teacher = instantiate(imitation_cfg["teacher"], _partial_=True)(params=params)
    gamma = float(getattr(model, "gamma", 0.99))
    normalizer = model.get_vec_normalize_env()
    tie_break = imitation_cfg.get("tie_break_eur_kwh_per_step", 0.0)
    rounds = imitation_cfg.get("dagger_rounds") or 0
    if rounds and not getattr(teacher, "acts_from_observation", True):
        raise ConfigError(f"imitation.dagger_rounds: the teacher {type(teacher).__name__} plays back a plan "
                          "and cannot label the states a clone reaches; use a teacher that acts from the "
                          "observation (imitation=mpc)")
    data: list[Demonstrations] = []
    losses: list[float] = []
    collect_s = 0.0
    for round_ in range(rounds + 1):
        count = int(imitation_cfg["episodes"] if round_ == 0 else imitation_cfg.get("dagger_episodes", 64))
        episodes = episodes_for(params, None, count, int(imitation_cfg["seed"]) + 7919 * round_)
        actor = None if round_ == 0 else _ClonedActor(model.policy, normalizer, guard, view)
        began = time.perf_counter()
        demonstrations = collect_demonstrations(teacher, params, episodes, training_coefficients, gamma,
                                                tie_break, controllable_reward, reward_scale, actor)
        if view is not None:
            demonstrations = dataclasses.replace(demonstrations,
                                                 observations=view.apply(demonstrations.observations))
        data.append(demonstrations)
        collect_s += time.perf_counter() - began
        observations = np.concatenate([d.observations for d in data])
        value_targets = np.concatenate([d.returns for d in data])
        if normalizer is not None:
            if normalizer.norm_obs:
                normalizer.obs_rms.update(data[-1].observations)
                observations = normalizer.normalize_obs(observations)
            if normalizer.norm_reward:
                normalizer.ret_rms.update(data[-1].returns)
                value_targets = value_targets / np.sqrt(normalizer.ret_rms.var + normalizer.epsilon)
        epochs = imitation_cfg["epochs"]
        if round_ > 0 and imitation_cfg.get("dagger_epochs"):
            epochs = imitation_cfg["dagger_epochs"]
        losses += clone(model.policy, observations, np.concatenate([d.actions for d in data]), value_targets,
                        epochs, imitation_cfg["batch_size"], imitation_cfg["learning_rate"],
                        imitation_cfg.get("value_weight", 0.5), seed + round_,
                        imitation_cfg.get("final_learning_rate"), imitation_cfg.get("site_total_weight", 0.0))
    log_std = imitation_cfg.get("log_std")
    if log_std is not None and hasattr(model.policy, "log_std"):
        import torch

        with torch.no_grad():
            model.policy.log_std.fill_(float(log_std))
    return {"imitation/samples": sum(d.size for d in data), "imitation/first_loss": losses[0],
            "imitation/last_loss": losses[-1],
            "imitation/teacher_reward_eur": float(data[0].teacher_reward.mean()),
            "imitation/collect_s": collect_s, "imitation/wall_s": time.perf_counter() - start}


def _mean_and_value(policy, obs):
    distribution = policy.get_distribution(obs)
    value = policy.predict_values(obs).squeeze(-1)
    return distribution.distribution.mean, value


def _site_power_error(policy, obs, target):
    """The site head's error on the teacher's net EV power (``PerPortNetwork.site_power_error``), or 0."""
    network = policy.mlp_extractor
    if getattr(network, "site_power_head", None) is None:
        return 0.0
    return network.site_power_error(policy.extract_features(obs), target)


def _site_total_error(error):
    """Mean over rows of (the row's summed port errors)^2 / ports: the per-port squared error
    where errors are independent, up to ports times it where they all agree in sign."""
    return (error.sum(dim=1) ** 2).mean() / error.shape[1]


def _bounded_error(mean, target):
    import torch

    error = mean - target
    error = torch.where((target >= 1.0) & (error > 0), torch.zeros_like(error), error)
    return torch.where((target <= -1.0) & (error < 0), torch.zeros_like(error), error)


_COUNTS = {  # imitation key: (size limit of envs.limits or None, lowest value)
    "episodes": ("episodes", 1), "epochs": (None, 1), "batch_size": (None, 1), "dagger_rounds": (None, 0),
    "dagger_episodes": ("episodes", 1), "dagger_epochs": (None, 1),
}
_NUMBERS = {  # imitation key: (lowest value or None, whether the value must lie above it)
    "learning_rate": (0.0, True), "final_learning_rate": (0.0, False), "value_weight": (0.0, False),
    "site_total_weight": (0.0, False), "tie_break_eur_kwh_per_step": (0.0, False), "log_std": (None, False),
}


def _checked_settings(imitation_cfg):
    """``imitation_cfg`` with its counts as ints and its other numbers as floats; a bad one is a
    ConfigError naming ``imitation.<key>``."""
    from envs.limits import check_count, check_number

    out = dict(imitation_cfg)
    for key, (limit, low) in _COUNTS.items():
        if out.get(key) is not None:
            out[key] = check_count(f"imitation.{key}", out[key], limit, low)
    for key, (low, above) in _NUMBERS.items():
        if out.get(key) is not None:
            out[key] = check_number(f"imitation.{key}", out[key], low, above)
    return out


class _ClonedActor:
    """The policy being cloned, acting deterministically on the run's departure view and behind its
    deadline guard."""

    def __init__(self, policy, normalizer=None, guard=None, view=None):
        self.policy, self.normalizer, self.guard, self.view = policy, normalizer, guard, view

    def predict(self, obs, deterministic=True):
        if self.view is not None:
            obs = self.view.apply(obs)
        scaled = obs
        if self.normalizer is not None and self.normalizer.norm_obs:
            scaled = self.normalizer.normalize_obs(obs)
        actions, _ = self.policy.predict(scaled, deterministic=True)
        actions = np.clip(np.asarray(actions, dtype=np.float32), -1.0, 1.0)
        return (actions if self.guard is None else self.guard.apply(obs, actions)), None
