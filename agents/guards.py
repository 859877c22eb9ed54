"""The deadline guard: no port gets less than what must flow now to meet its announced departure.

Numpy only (no torch, no SB3), so the scheduler runtime applies it too; the training env's
wrapper is ``agents.guarded_env.GuardedVecEnv``.
"""

from __future__ import annotations

import numpy as np

from agents.baselines import AsLateAsPossible
from agents.peak_fill import PeakFill
from envs.action_layer import fill_in_order, fill_orders
from envs.errors import ConfigError
from envs.projection import node_flows
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

    With ``peak_fill_quantile`` the raised actions then pass through an
    ``agents.peak_fill.PeakFill`` at that price quantile (charging ports raised toward the peak so
    far while power is cheap), before the headroom fit, which it needs (``fit_headroom``).
    ``from_config(params, mapping)`` builds the guard a run, a saved policy or a manifest names
    (``deadline_guard_hours``, ``guard_fits_headroom``, ``peak_fill_quantile``), or None where it
    names none.
    """

    def __init__(self, params: SiteParams, margin_hours: float = 0.0, fit_headroom: bool = False,
                 peak_fill_quantile: float | None = None):
        if params.action_mode == "priority" or (params.action_mode == "unit" and params.bidirectional):
            raise ConfigError(f"site {params.name!r}: the deadline guard raises signed actions; with "
                              f"action_mode {params.action_mode!r} they mean something else")
        self.params = params
        self.margin_hours = float(margin_hours)
        self.fit_headroom = bool(fit_headroom)
        self._alap = AsLateAsPossible(params, margin_hours=margin_hours)
        if peak_fill_quantile is not None and not fit_headroom:
            raise ConfigError("peak_fill_quantile needs guard_fits_headroom: true (the guard fits the "
                              "power the fill adds into every node's headroom)")
        self.peak_fill = None if peak_fill_quantile is None else PeakFill(params, peak_fill_quantile)

    @classmethod
    def from_config(cls, params: SiteParams, config, where: str = "env") -> DeadlineGuard | None:
        margin, fill = config.get("deadline_guard_hours"), config.get("peak_fill_quantile")
        if margin is None:
            if fill is not None:
                raise ConfigError(f"{where}.peak_fill_quantile acts inside the deadline guard: set "
                                  f"{where}.deadline_guard_hours too")
            return None
        return cls(params, float(margin), bool(config.get("guard_fits_headroom")),
                   None if fill is None else float(fill))

    def apply(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        rules = self._alap
        observation = np.asarray(obs, dtype=np.float64)
        if observation.shape[-1:] != (rules.obs_size,) or observation.ndim not in (1, 2):
            rules.predict(observation)  # raises naming the expected shape
        batch = np.atleast_2d(observation)
        max_charge = rules.field(batch, "max_charge_kw")
        fill = _LaxityFill(self.params, rules.laxity(batch, max_charge), rules.headroom_kw(batch))
        floor = rules.fractions(fill(rules.request_kw(batch, max_charge)), max_charge).astype(np.float32)
        np.clip(floor, -1.0, 1.0, out=floor)
        if observation.ndim == 1:
            floor = floor[0]
        actions = np.asarray(actions, dtype=np.float32)
        actions = np.where(floor > 0.0, np.maximum(actions, floor), actions)
        if self.peak_fill is not None:
            actions = self.peak_fill.apply(batch, actions.reshape(max_charge.shape)).reshape(actions.shape)
        if not self.fit_headroom:
            return actions
        request = np.maximum(actions.reshape(max_charge.shape), 0.0) * max_charge
        charge = rules.fractions(fill(request), max_charge).astype(np.float32).reshape(actions.shape)
        return np.where(actions > 0.0, charge, actions)


class _LaxityFill:
    """``envs.action_layer.fill_in_order`` (ties in port order) of requests in order of ``laxity``
    (B, P) into ``room_kw`` (B, N): the orders are sorted once for the guard's two fills, and
    requests that fit every node's room with a margin far above the round-off of the fill's sums
    (``FIT_MARGIN`` of the kW summed) are granted as they are, which is what the fill grants
    them."""

    FIT_MARGIN = 1e-9

    def __init__(self, params: SiteParams, laxity: np.ndarray, room_kw: np.ndarray):
        self.params, self.laxity, self.room_kw = params, laxity, room_kw
        self.orders = None

    def __call__(self, request_kw: np.ndarray) -> np.ndarray:
        if not request_kw.any() and not np.isnan(self.room_kw).any():
            return np.zeros(request_kw.shape)  # what the fill grants for nothing asked
        if (request_kw >= 0.0).all():
            total = request_kw.sum(axis=1, keepdims=True)
            margin = self.FIT_MARGIN * (total + np.abs(self.room_kw))
            if (node_flows(self.params, request_kw, 0.0) <= self.room_kw - margin).all():
                return request_kw.copy()
        return self._fill(request_kw)

    def _fill(self, request_kw: np.ndarray) -> np.ndarray:
        if self.orders is None:
            self.orders = fill_orders(self.params, self.laxity)
        return fill_in_order(self.params, self.laxity, request_kw, self.room_kw, orders=self.orders)


class GuardedPolicy:
    """Any policy with the baselines' ``predict`` protocol, acting behind a ``DeadlineGuard``.

    ``begin(params, episode)`` passes the site on (to the inner policy's own ``begin`` too) and
    builds the guard for it; ``predict(obs)`` returns the guard's ``apply`` of the inner
    policy's actions. It measures what a margin costs a planner (MPC behind the guard is the
    ceiling of a clone of MPC behind it: ``scripts/bench_guard.py``). With ``departure_level``
    the guard reads the observation through that ``agents.departure_view.DepartureView``, as a
    clone trained on the view does (the inner policy still reads it as it is).
    """

    def __init__(self, policy, margin_hours: float = 0.0, fit_headroom: bool = True, departure_level=None):
        self.policy = policy
        self.margin_hours, self.fit_headroom = float(margin_hours), bool(fit_headroom)
        self.departure_level = departure_level
        self.guard: DeadlineGuard | None = None
        self.view = None

    def begin(self, params: SiteParams, episode) -> None:
        begin = getattr(self.policy, "begin", None)
        if callable(begin):
            begin(params, episode)
        self.guard = DeadlineGuard(params, self.margin_hours, self.fit_headroom)
        if self.departure_level is not None:
            from agents.departure_view import DepartureView

            self.view = DepartureView(params, self.departure_level)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        if self.guard is None:
            raise ConfigError("call begin(params, episode) with the site before predict")
        actions, _ = self.policy.predict(observation, deterministic=deterministic)
        guarded = observation if self.view is None else self.view.apply(observation)
        return self.guard.apply(guarded, actions), None
