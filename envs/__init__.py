"""Smart-charging environments: the batched core, its Gymnasium shells, and their registration.

``import envs`` registers ``SmartCharging-v0`` (``gymnasium.make`` builds ``SmartChargingEnv``,
``gymnasium.make_vec`` builds ``SmartChargingVectorEnv``). The SB3 adapter
``SmartChargingVecEnv`` lives in ``envs.sb3`` and is imported only when asked for, so that
importing ``envs`` never loads stable_baselines3 or torch. Bad input raises the project's
errors, all ``ValueError``s: ``ConfigError`` (a setting or argument; ``SiteError``, a
``ConfigError`` of a site description) and ``DataError`` (a data file).
"""

from __future__ import annotations

import gymnasium

from envs.core import reset, step
from envs.episode import Episode, Generator
from envs.errors import ConfigError, DataError
from envs.generators import generator_for
from envs.gym_env import SmartChargingEnv
from envs.observation import observation_bounds, observation_layout, observe
from envs.parametric import ParametricGenerator
from envs.reward import TERMS, RewardWeights
from envs.site import SiteError, SiteParams, builtin_sites, load_site
from envs.state import State
from envs.vector_env import SmartChargingVectorEnv

ENV_ID = "SmartCharging-v0"

__all__ = [
    "ENV_ID",
    "TERMS",
    "ConfigError",
    "DataError",
    "Episode",
    "Generator",
    "ParametricGenerator",
    "RewardWeights",
    "SiteError",
    "SiteParams",
    "SmartChargingEnv",
    "SmartChargingVectorEnv",
    "State",
    "builtin_sites",
    "generator_for",
    "load_site",
    "observation_bounds",
    "observation_layout",
    "observe",
    "register_envs",
    "reset",
    "step",
]


def register_envs() -> None:
    """Register ``SmartCharging-v0`` with Gymnasium; calling it again changes nothing."""
    if ENV_ID in gymnasium.registry:
        return
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.gym_env:SmartChargingEnv",
        vector_entry_point="envs.vector_env:SmartChargingVectorEnv",
    )


def __getattr__(name: str):
    if name == "SmartChargingVecEnv":
        from envs.sb3 import SmartChargingVecEnv

        return SmartChargingVecEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


register_envs()
