"""The departure view inside a training env: an SB3 ``VecEnv`` wrapper (imports stable_baselines3)."""

from __future__ import annotations

from stable_baselines3.common.vec_env import VecEnvWrapper

from agents.departure_view import DepartureView
from envs.site import SiteParams


class DepartureViewVecEnv(VecEnvWrapper):
    """An SB3 ``VecEnv`` whose observations pass through a ``DepartureView``.

    Wrap it below the deadline guard and any normalization, so both read the view, as the saved
    policy's ``begin`` and the scheduler runtime apply it.
    """

    def __init__(self, venv, params: SiteParams, level: float, field: str = "env.departure_level"):
        super().__init__(venv)
        self.view = DepartureView(params, level, field)

    def reset(self):
        return self.view.apply(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.view.apply(info["terminal_observation"])
        return self.view.apply(obs), rewards, dones, infos
