"""The deadline guard: no port gets less than what must flow now to meet its announced departure.

Numpy only (no torch, no SB3), so the scheduler runtime applies it too; the training env's
wrapper is ``agents.guarded_env.GuardedVecEnv``.
"""

from __future__ import annotations

import numpy as np

from agents.baselines import AsLateAsPossible
from envs.errors import ConfigError
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

    With ``fit_headroom`` the charging requests are then fitted into every node's import
    headroom, least laxity first (``RuleBasedPolicy.fill_in_order``, as the rule baselines
    do), so the policy never asks for power the env would cut and charge as
    ``overload_requested_kwh``; discharge requests are left as they are.
    """

    def __init__(self, params: SiteParams, margin_hours: float = 0.0, fit_headroom: bool = False):
        if params.action_mode == "priority" or (params.action_mode == "unit" and params.bidirectional):
            raise ConfigError(f"site {params.name!r}: the deadline guard raises signed actions; with "
                              f"action_mode {params.action_mode!r} they mean something else")
        self.params = params
        self.margin_hours = float(margin_hours)
        self.fit_headroom = bool(fit_headroom)
        self._alap = AsLateAsPossible(params, margin_hours=margin_hours)

    def apply(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        floor, _ = self._alap.predict(obs)
        actions = np.asarray(actions, dtype=np.float32)
        actions = np.where(floor > 0.0, np.maximum(actions, floor), actions)
        return self._fitted(np.atleast_2d(obs), actions) if self.fit_headroom else actions

    def _fitted(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        rules = self._alap
        obs = obs.astype(np.float64)
        max_charge = rules.field(obs, "max_charge_kw")
        request = np.maximum(actions.reshape(max_charge.shape), 0.0) * max_charge
        grant = rules.fill_in_order(rules.laxity(obs, max_charge), request, rules.headroom_kw(obs))
        charge = rules.fractions(grant, max_charge).astype(np.float32).reshape(actions.shape)
        return np.where(actions > 0.0, charge, actions)
