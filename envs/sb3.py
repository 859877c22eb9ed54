"""Stable-Baselines3 VecEnv adapter over the native vector env (imports stable_baselines3)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from envs.episode import Generator
from envs.outcome import episode_outcome
from envs.reward import TERMS
from envs.vector_env import SmartChargingVectorEnv


class SmartChargingVecEnv(VecEnv):
    """A batch of smart-charging sites as an SB3 ``VecEnv``, stepped by one core call.

    ## Description

    Wraps ``SmartChargingVectorEnv`` (``self.env``) with SB3's conventions: ``reset()`` returns
    only observations; ``step_wait()`` returns ``(obs, rewards float32, dones, infos)`` where
    ``infos`` is a list with one dict per env holding that env's reward terms and diagnostics
    of the step (see ``SmartChargingEnv``). With ``step_info=False`` those per-step dicts stay
    empty (at 1024 envs, building the dicts takes nearly as long as the step itself), and only
    the episode-end entries below are written.

    ## Episode End

    Every env is truncated after ``horizon_steps`` steps, all at once. At that step the batch is
    reset in the same call: the returned observations start the new episodes, and each env's
    info holds ``terminal_observation`` (the last observation of the finished episode),
    ``TimeLimit.truncated = True``, ``episode = {"r": return, "l": length, "t": seconds since
    the adapter was made}`` as SB3's ``Monitor`` writes it (so rollout logging and
    ``evaluate_policy`` work, and ``env_is_wrapped(Monitor)`` answers True),
    ``episode_totals`` (every reward term summed over the episode, physical units) and
    ``episode_outcome`` (that env's entries of ``envs.outcome.episode_outcome``, from which
    ``agents.kpis`` builds the episode's KPIs).

    ## Seeding and attributes

    ``seed(s)`` takes effect at the next ``reset()``, which seeds one
    ``np.random.default_rng(s)`` for the whole batch (the per-env seeds SB3 returns are
    nominal). The envs of a batch are one object: ``get_attr`` and ``env_method`` read or call
    ``self.env`` once and repeat the result for each requested index; ``set_attr`` sets it on
    ``self.env`` and accepts only indices that cover every env.

    ## Arguments

    * ``num_envs``: the batch size.
    * ``site``, ``generator``, ``**overrides``: as for ``SmartChargingEnv``.
    * ``step_info``: put each step's reward terms and diagnostics in ``infos`` (default True).
    """

    def __init__(self, num_envs: int = 1, site: Any = "caltech", generator: Generator | None = None,
                 step_info: bool = True, **overrides):
        self.env = SmartChargingVectorEnv(num_envs, site, AutoresetMode.DISABLED, generator, **overrides)
        self.params = self.env.params
        self.layout = self.env.layout
        self._coefficients = self.params.reward.coefficients()
        self.step_info = step_info
        self._actions: np.ndarray | None = None
        self._created = time.perf_counter()
        self._charged_kwh = np.zeros(self.env.num_envs)
        self._discharged_kwh = np.zeros(self.env.num_envs)
        super().__init__(self.env.num_envs, self.env.single_observation_space, self.env.single_action_space)

    def reset(self) -> np.ndarray:
        obs = self._new_episodes(self._seeds[0], self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        self._charged_kwh += info["charged_kwh"]
        self._discharged_kwh += info["discharged_kwh"]
        if self.step_info:
            keys = [key for key in info if not key.startswith("_") and key != "episode_totals"]
            columns = [info[key].tolist() for key in keys]
            infos = [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
        else:
            infos = [{} for _ in range(self.num_envs)]
        dones = terminated | truncated
        if dones.any():
            totals = self.env.state.totals
            returns = (totals @ self._coefficients).tolist()
            seconds = round(time.perf_counter() - self._created, 6)
            length = self.params.horizon_steps
            outcome = episode_outcome(self.params, self.env.state, self._charged_kwh, self._discharged_kwh)
            for i, (env_info, env_totals) in enumerate(zip(infos, totals.tolist(), strict=True)):
                env_info["terminal_observation"] = obs[i]
                env_info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                env_info["episode"] = {"r": returns[i], "l": length, "t": seconds}
                env_info["episode_totals"] = dict(zip(TERMS, env_totals, strict=True))
                env_info["episode_outcome"] = {key: value[i] for key, value in outcome.items()}
            obs = self._new_episodes(None, None)
        return obs, rewards.astype(np.float32), dones, infos

    def _new_episodes(self, seed: int | None, options: dict | None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed, options=options)
        self._charged_kwh[:] = 0.0
        self._discharged_kwh[:] = 0.0
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self._check_every_env(indices, "set_attr")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices=None) -> list[bool]:
        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def _check_every_env(self, indices, what: str) -> None:
        if set(self._get_indices(indices)) != set(range(self.num_envs)):
            raise ValueError(f"{what} needs indices covering every env (the batch is one object), "
                             f"got {indices!r}")
