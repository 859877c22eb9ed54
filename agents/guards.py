"""The deadline guard: no port gets less than what must flow now to meet its announced departure.

Numpy only (no torch, no SB3), so the scheduler runtime applies it too; the training env's
wrapper is ``agents.guarded_env.GuardedVecEnv``.
"""

from __future__ import annotations

import numpy as np

from agents.baselines import AsLateAsPossible
from envs.site import SiteParams


class DeadlineGuard:
    """Raises each port's action to at least what ``AsLateAsPossible`` gives it.

    ALAP asks, for each EV, the part of its remaining energy that the steps left before its
    announced departure cannot deliver at full power, shared by least laxity within the node
    headroom. ``apply(obs, actions)`` returns ``max(action, floor)`` on the ports where that
    floor is positive and the action unchanged elsewhere (a discharge stays a discharge when
    nothing is due), so a learned or cloned policy cannot let small shortfalls pile up into
    unmet energy at departure. ``margin_hours`` plans to finish that long before the announced
    departure (whole steps), leaving room for EVs that compete for a node near the same time.
    """

    def __init__(self, params: SiteParams, margin_hours: float = 0.0):
        self.params = params
        self.margin_hours = float(margin_hours)
        self._alap = AsLateAsPossible(params, margin_hours=margin_hours)

    def apply(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        floor, _ = self._alap.predict(obs)
        actions = np.asarray(actions, dtype=np.float32)
        return np.where(floor > 0.0, np.maximum(actions, floor), actions)
