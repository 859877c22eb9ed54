"""The deadline guard inside a training env: an SB3 ``VecEnv`` wrapper (imports stable_baselines3)."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper

from agents.guards import DeadlineGuard


class GuardedVecEnv(VecEnvWrapper):
    """An SB3 ``VecEnv`` whose actions pass through ``guard`` (a ``DeadlineGuard``) on the raw observation.

    Wrap the env before any normalization, so the guard reads physical units; the learner
    stores its own (unguarded) actions, and the guard acts as part of the env's dynamics.
    """

    def __init__(self, venv, guard: DeadlineGuard):
        super().__init__(venv)
        self.guard = guard
        self._obs: np.ndarray | None = None

    def reset(self):
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(self.guard.apply(self._obs, actions))

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self._obs = obs
        return obs, rewards, dones, infos
