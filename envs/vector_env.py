"""Native Gymnasium vector env: one core call steps the whole batch."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs import core
from envs.actions import action_array, action_space
from envs.episode import Generator
from envs.errors import cut
from envs.generators import generator_for
from envs.limits import check_count
from envs.observation import observation_bounds, observation_layout, observe
from envs.reward import TERMS
from envs.site import load_site
from envs.state import State


class SmartChargingVectorEnv(VectorEnv):
    """``num_envs`` copies of ``SmartChargingEnv`` stepped as one batch by a single core call.

    ## Description

    The same site, actions, observations, rewards and ``info`` keys as ``SmartChargingEnv``
    (see its contract), for a batch: observations ``(num_envs, D)`` float32, actions
    ``(num_envs, num_ports)``, rewards float64, and ``info`` a dict of arrays with a leading
    ``num_envs`` axis, each key ``k`` paired with a boolean mask ``_k`` as Gymnasium's vector
    envs do.

    ## Episode End

    All envs of a batch share the step counter, so they are all truncated together after
    ``horizon_steps`` steps (never terminated); the final step's ``info`` holds
    ``episode_totals`` (a dict of per-term arrays). What follows depends on ``autoreset_mode``
    (also in ``metadata["autoreset_mode"]``), as in Gymnasium 1.x:

    * ``NEXT_STEP`` (default): the step after the last one ignores its actions, draws a new
      batch of episodes and returns its first observations, zero rewards, False flags and an
      empty ``info``.
    * ``SAME_STEP``: the last step already returns the new episodes' first observations; its
      ``info`` holds ``final_obs`` (an object array of the last observations) and
      ``final_info`` (the step's ``info``), with masks ``_final_obs`` and ``_final_info``.
    * ``DISABLED``: the caller must ``reset()`` (``options={"reset_mask": m}`` is accepted when
      ``m`` selects every env); stepping on raises ``RuntimeError``.

    ## Arguments

    * ``num_envs``: the batch size.
    * ``site``, ``generator``, ``**overrides``: as for ``SmartChargingEnv``.
    * ``autoreset_mode``: an ``AutoresetMode`` or its value.

    ``reset(seed=s)`` seeds one ``np.random.default_rng(s)`` for the whole batch, so the
    episodes equal ``generator.sample(params, np.random.default_rng(s), num_envs)``; later
    batches continue that generator.

    >>> import gymnasium as gym
    >>> import envs
    >>> vec = gym.make_vec("SmartCharging-v0", num_envs=8, site="caltech", horizon_steps=2)
    >>> obs, info = vec.reset(seed=0)
    >>> obs.shape, vec.action_space.shape
    ((8, 491), (8, 54))
    >>> for _ in range(2):
    ...     obs, rewards, terminated, truncated, info = vec.step(vec.action_space.sample())
    >>> bool(truncated.all()), bool(terminated.any()), info["episode_totals"]["unmet_kwh"].shape
    (True, False, (8,))
    """

    def __init__(self, num_envs: int = 1, site: Any = "caltech",
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 generator: Generator | None = None, **overrides):
        self.num_envs = check_count("num_envs", num_envs, "envs")
        self.params = load_site(site, **overrides)
        self.generator = generator_for(self.params) if generator is None else generator
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.layout = observation_layout(self.params)
        low, high = observation_bounds(self.params)
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = action_space(self.params)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._per_port = "2 per port: power, priority" if self.params.action_mode == "priority" else "ports"
        self.state: State | None = None
        self._coefficients = self.params.reward.coefficients()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None and not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int or None, got {cut(seed)}: the whole batch draws its "
                            "episodes from one generator")
        mask = (options or {}).get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.all():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) "
                                 "selecting every env: the envs of a batch share the step counter")
        super().reset(seed=None if seed is None else int(seed))
        return self._new_episodes(), {}

    def step(self, actions):
        if self.state is None:
            raise RuntimeError("call reset before step")
        n, horizon = self.num_envs, self.params.horizon_steps
        if self.state.t >= horizon:
            if self.autoreset_mode is AutoresetMode.NEXT_STEP:
                return self._new_episodes(), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), {}
            raise RuntimeError(f"every env was truncated at step {horizon}; with autoreset_mode "
                               f"{self.autoreset_mode.name} call reset() before stepping again")
        actions = action_array(actions, (n, *self.single_action_space.shape),
                               f" (envs, {self._per_port} of site {self.params.name!r})")
        self.state, terms, diagnostics = core.step(self.params, self.state, actions)
        rewards = terms @ self._coefficients
        done = self.state.t >= horizon
        every = np.ones(n, dtype=bool)
        infos = _with_masks({**dict(zip(TERMS, terms.T, strict=True)), **diagnostics}, every)
        if done:
            totals = dict(zip(TERMS, self.state.totals.T, strict=True))
            infos["episode_totals"], infos["_episode_totals"] = _with_masks(totals, every), every
        terminated, truncated = np.zeros(n, dtype=bool), np.full(n, done)
        if done and self.autoreset_mode is AutoresetMode.SAME_STEP:
            final_obs = np.empty(n, dtype=object)
            final_obs[:] = list(observe(self.params, self.state))
            infos = {"final_obs": final_obs, "_final_obs": every, "final_info": infos, "_final_info": every}
            return self._new_episodes(), rewards, terminated, truncated, infos
        return observe(self.params, self.state), rewards, terminated, truncated, infos

    def _new_episodes(self) -> np.ndarray:
        episode = self.generator.sample(self.params, self.np_random, self.num_envs)
        self.state = core.reset(self.params, episode)
        return observe(self.params, self.state)


def _with_masks(arrays: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for key in arrays:
        out[f"_{key}"] = mask
    return out
