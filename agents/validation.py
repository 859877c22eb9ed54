"""A fixed validation set of seeded episodes, scored against uncontrolled charging and the optimum."""

from __future__ import annotations

import numpy as np
import pandas as pd

from agents.baselines import Uncontrolled
from agents.evaluate import episodes_for, rollout
from agents.kpis import episode_kpis
from envs.core import reset, step
from envs.observation import observe
from envs.render import EpisodeTrace
from envs.site import SiteParams


def ratio_of_sums(rewards, low, high) -> float:
    """``(sum R - sum R_low) / (sum R_high - sum R_low)``: 0 at ``low``'s level, 1 at ``high``'s; NaN
    when the references earn the same total."""
    gap = float(np.sum(high) - np.sum(low))
    return (float(np.sum(rewards)) - float(np.sum(low))) / gap if abs(gap) > 1e-9 else float("nan")


class Validation:
    """Validation episodes drawn once with ``seed``, and the rewards of the two score references.

    ``score(policy)`` runs a policy (predictor protocol) on every episode and returns its
    per-episode KPI table (``agents.kpis.episode_kpis``) and its score: the ratio of sums
    between ``Uncontrolled`` (0) and the offline optimum (1) on these episodes, whose rewards
    are computed once here. Use seeds that no test table uses, so validation never sees the
    episodes a policy is finally judged on.
    """

    def __init__(self, params: SiteParams, num_episodes: int, seed: int):
        from agents.optimal import OfflineOptimal

        self.params = params
        self.episodes = episodes_for(params, None, int(num_episodes), int(seed))
        self.uncontrolled_reward = self._rewards(Uncontrolled(params))
        self.optimum_reward = self._rewards(OfflineOptimal(params))

    def _rewards(self, policy) -> np.ndarray:
        return self.kpis(policy)["reward_eur"].to_numpy()

    def kpis(self, policy) -> pd.DataFrame:
        return episode_kpis(self.params, rollout(policy, self.params, self.episodes), float("nan"))

    def score(self, policy) -> tuple[pd.DataFrame, float]:
        table = self.kpis(policy)
        score = ratio_of_sums(table["reward_eur"], self.uncontrolled_reward, self.optimum_reward)
        table["score"] = score
        return table, score

    def figure(self, policy, episode: int = 0):
        """The day figure (``envs.render.EpisodeTrace``) of ``policy`` on one validation episode."""
        one = self.episodes.take([episode % self.episodes.num_envs])
        begin = getattr(policy, "begin", None)
        if callable(begin):
            begin(self.params, one)
        state = reset(self.params, one)
        trace = EpisodeTrace(self.params)
        trace.record(state)
        while state.t < self.params.horizon_steps:
            action, _ = policy.predict(observe(self.params, state), deterministic=True)
            state, _, info = step(self.params, state, action)
            trace.record(state, info)
        return trace.figure()
