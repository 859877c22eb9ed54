"""A fixed validation set of seeded episodes, scored against uncontrolled charging and the optimum."""

from __future__ import annotations

import pandas as pd

from agents.baselines import Uncontrolled
from agents.evaluate import episodes_for, rollout
from agents.kpis import add_score, episode_kpis, min_gap_eur, summarize
from envs.render import EpisodeTrace
from envs.site import SiteParams

_AGENT = "agent"


class Validation:
    """Validation episodes drawn once with ``seed``, and the rewards of the two score references.

    ``score(policy)`` runs a policy (predictor protocol) on every episode and returns its
    per-episode KPI table (``agents.kpis.episode_kpis``) and its score as ``scripts/evaluate.py``
    computes it (``agents.kpis``: a ratio of sums between ``Uncontrolled`` at 0 and the offline
    optimum at 1 over the episodes with room to improve), against references run once here.
    Use seeds that no test table uses, so validation never sees the episodes a policy is
    finally judged on.
    """

    def __init__(self, params: SiteParams, num_episodes: int, seed: int):
        from agents.optimal import OfflineOptimal

        self.params = params
        self.episodes = episodes_for(params, None, int(num_episodes), int(seed))
        self.references = {"uncontrolled": self.kpis(Uncontrolled(params)),
                           "optimum": self.kpis(OfflineOptimal(params))}

    def kpis(self, policy) -> pd.DataFrame:
        return episode_kpis(self.params, rollout(policy, self.params, self.episodes), float("nan"))

    def score(self, policy) -> tuple[pd.DataFrame, float]:
        table = self.kpis(policy)
        per_episode = pd.concat({**self.references, _AGENT: table}, names=["policy", "episode"])
        add_score(per_episode, "uncontrolled", "optimum", min_gap_eur(self.params))
        score = float(summarize(per_episode).loc[_AGENT, "score"])
        return per_episode.loc[_AGENT], score

    def figure(self, policy, episode: int = 0):
        """The day figure (``envs.render.EpisodeTrace``) of ``policy`` on one validation episode."""
        trace = EpisodeTrace(self.params)
        rollout(policy, self.params, self.episodes.take([episode % self.episodes.num_envs]), trace)
        return trace.figure()
