"""The training reward: the site's reward with what no action changes left out, at a fixed scale."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper

from envs.core import idle_site_terms


class TrainingRewardVecEnv(VecEnvWrapper):
    """Reshapes the rewards of a ``SmartChargingVecEnv`` for learning; observations, actions,
    ``infos`` (every term in physical units, the episode outcome) and evaluation stay as they are.

    ## Description

    With ``controllable_only`` the reward of each step is the site's reward minus the reward
    the same step would have with every port idle (``envs.core.idle_site_terms``: the energy
    cost, export revenue, carbon, peak and limit violations of the inflexible load and PV
    alone). That part is fixed by the episode, so the policies that maximize either reward are
    the same, but its noise (on sites with a building load it dwarfs what the ports change) no
    longer reaches the learner. ``scale`` then multiplies the reward by a fixed factor (EUR to
    the learner's units), in place of running reward normalization.

    ## Arguments

    * ``venv``: a ``SmartChargingVecEnv`` (its ``env.state`` and reward coefficients are read).
    * ``controllable_only``: subtract the idle site's reward (default True).
    * ``scale``: fixed factor on the reward (default 1).
    """

    def __init__(self, venv, controllable_only: bool = True, scale: float = 1.0):
        super().__init__(venv)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"env.reward_scale must be a positive number, got {scale!r}")
        self.controllable_only = bool(controllable_only)
        self.scale = float(scale)
        self.coefficients = venv.params.reward.coefficients()
        self.idle_peak_kw = np.zeros(venv.num_envs)
        self._idle_reward = np.zeros(venv.num_envs)

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self.idle_peak_kw = np.zeros(self.num_envs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if self.controllable_only:
            state = self.venv.env.state
            terms, self.idle_peak_kw = idle_site_terms(self.venv.params, state, self.idle_peak_kw)
            self._idle_reward = terms @ self.coefficients
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        shaped = rewards.astype(np.float64)
        if self.controllable_only:
            shaped = shaped - self._idle_reward
        if dones.any():
            self.idle_peak_kw = np.where(dones, 0.0, self.idle_peak_kw)
        return obs, (shaped * self.scale).astype(np.float32), dones, infos
