"""Rule-based charging policies, batched over envs and ports, with SB3's predictor protocol."""

from __future__ import annotations

import numpy as np

from envs.dynamics import node_flows, project_to_limits
from envs.observation import layout_size, observation_layout
from envs.site import SiteParams

_SAFETY_REL, _SAFETY_KW = 1e-5, 1e-6


class RuleBasedPolicy:
    """Base of the rule-based policies: holds the site params and the observation layout.

    ``predict(obs)`` takes one observation (D,) or a batch (B, D) as built by
    ``envs.observation.observe`` and returns ``(actions, None)`` with actions (P,) or (B, P)
    float32 in [-1, 1], like an SB3 model, so one evaluator scores every policy. Subclasses
    implement ``act(obs)`` on a float64 batch and read it only through ``field``.

    The allocation helpers respect every node of the site's tree: they grant port power so
    that no node's import limit (minus its inflexible load and PV, i.e. ``node_headroom_kw``)
    is exceeded, with a tiny safety margin for the float32 observation, so the env's
    projection never has to scale their actions down.

    >>> from envs.site import load_site
    >>> policy = EarliestDeadlineFirst(load_site("caltech"))
    >>> actions, hidden = policy.predict(np.zeros((4, policy.obs_size), dtype=np.float32))
    >>> actions.shape, actions.dtype, hidden
    ((4, 54), dtype('float32'), None)
    """

    def __init__(self, params: SiteParams):
        self.params = params
        self.layout = observation_layout(params)
        self.obs_size = layout_size(params)
        self._level_slots = tuple(zip(params.levels_bottom_up, params.level_port_slot, strict=True))
        self._sort_keys = tuple(slot.astype(np.int16 if len(level) < np.iinfo(np.int16).max else np.int64)
                                for level, slot in self._level_slots)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.asarray(observation, dtype=np.float64)
        if obs.shape[-1:] != (self.obs_size,) or obs.ndim not in (1, 2):
            raise ValueError(f"observation has shape {obs.shape}, expected ({self.obs_size},) or "
                             f"(envs, {self.obs_size}) for site {self.params.name!r}")
        actions = self.act(np.atleast_2d(obs)).astype(np.float32)
        np.clip(actions, -1.0, 1.0, out=actions)
        return (actions[0] if obs.ndim == 1 else actions), None

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def field(self, obs: np.ndarray, name: str) -> np.ndarray:
        return obs[:, self.layout[name]]

    def headroom_kw(self, obs: np.ndarray) -> np.ndarray:
        """(B, N) power each node can still import, less the safety margin."""
        headroom = self.field(obs, "node_headroom_kw")
        return headroom - _SAFETY_REL * (np.abs(headroom) + self.params.node_import_limit_kw) - _SAFETY_KW

    def node_sums(self, port_values: np.ndarray) -> np.ndarray:
        """(B, N) sums over the ports below each node of (B, P) values."""
        return node_flows(self.params, port_values, 0.0)

    def scale_to_fit(self, request_kw: np.ndarray, headroom_kw: np.ndarray) -> np.ndarray:
        """Grant (B, P) kW: the env's own projection, against ``headroom_kw`` instead of the limits."""
        return project_to_limits(self.params, request_kw, self.params.node_import_limit_kw - headroom_kw)[0]

    def fill_in_order(self, priority: np.ndarray, request_kw: np.ndarray, headroom_kw: np.ndarray):
        """Grant (B, P) kW: ports in increasing ``priority`` take their request while it fits.

        Levels go bottom-up; at each node, a port gets at most the node's headroom less what
        the earlier ports below it were granted so far. Later cuts higher up only lower the
        grants, so every node ends within its headroom; on a single binding node this is the
        exact greedy fill.
        """
        b = request_kw.shape[0]
        rows = np.arange(b)[:, None]
        by_priority = np.argsort(priority, axis=1, kind="stable")
        grant = request_kw.copy()
        zeros, unlimited = np.zeros((b, 1)), np.full((b, 1), np.inf)
        for (level, slot), key in zip(self._level_slots, self._sort_keys, strict=True):
            order = np.take_along_axis(by_priority, np.argsort(key[by_priority], axis=1, kind="stable"), 1)
            sorted_grant = grant[rows, order]
            before = np.cumsum(sorted_grant, axis=1) - sorted_grant
            segment = np.concatenate([self.node_sums(grant)[:, level], zeros], axis=1)
            segment_start = np.cumsum(segment, axis=1) - segment
            sorted_slot = slot[order]
            room = np.concatenate([headroom_kw[:, level], unlimited], axis=1)[rows, sorted_slot]
            room -= before - segment_start[rows, sorted_slot]
            grant[rows, order] = np.minimum(sorted_grant, np.maximum(room, 0.0))
        return grant

    def fractions(self, grant_kw: np.ndarray, max_charge_kw: np.ndarray) -> np.ndarray:
        """Actions that ask for ``grant_kw`` on ports offering ``max_charge_kw`` (0 where none)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(max_charge_kw > 0, np.minimum(grant_kw / max_charge_kw, 1.0), 0.0)


class Uncontrolled(RuleBasedPolicy):
    """Charge every plugged EV as fast as it can: action 1 on occupied ports, 0 elsewhere.

    Ignores node limits; the env's projection scales the charging down where a node
    overloads and reports the excess as ``overload_requested_kwh``.
    """

    def act(self, obs):
        return self.field(obs, "occupied").copy()


class EarliestDeadlineFirst(RuleBasedPolicy):
    """Give the headroom to EVs in order of announced departure (earliest first).

    Each EV asks for its available charge power (``max_charge_kw``); in deadline order, every
    EV gets what still fits under each node above it, so earlier deadlines charge at full power
    and the last ones share the rest. No discharging.
    """

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        deadline = np.where(max_charge > 0, self.field(obs, "hours_to_departure"), np.inf)
        grant = self.fill_in_order(deadline, max_charge, self.headroom_kw(obs))
        return self.fractions(grant, max_charge)


class EqualShare(RuleBasedPolicy):
    """Fair share: the EVs below a full node all get the same fraction of their available power.

    Every EV asks for its available charge power; going up the tree, where a node's headroom is
    smaller than what its EVs ask, all of them are scaled by one common factor so the node is
    just full. With one binding node (the usual single-transformer site) every plugged EV gets
    the same fraction. No discharging.
    """

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        return self.fractions(self.scale_to_fit(max_charge, self.headroom_kw(obs)), max_charge)


class PriceThreshold(RuleBasedPolicy):
    """Charge when power is cheap or the deadline requires it; otherwise wait.

    An EV charges at full power when the buy price now is at most the mean of the price window
    (now and the forecast), or when its laxity, ``hours_to_departure - remaining_kwh /
    (max_charge_kw * charge_efficiency)``, is below ``laxity_hours``. Charging EVs share the
    headroom in order of least laxity, so node limits hold.

    Arguments:
        params: the site.
        laxity_hours: slack below which an EV charges regardless of price.
    """

    def __init__(self, params: SiteParams, laxity_hours: float = 1.0):
        super().__init__(params)
        self.laxity_hours = float(laxity_hours)

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        prices = self.field(obs, "price_buy_eur_kwh")
        cheap = prices[:, :1] <= prices.mean(axis=1, keepdims=True)
        charge_kwh_per_hour = max_charge * self.params.port_charge_efficiency
        with np.errstate(divide="ignore", invalid="ignore"):
            hours_needed = self.field(obs, "remaining_kwh") / charge_kwh_per_hour
        laxity = np.where(max_charge > 0, self.field(obs, "hours_to_departure") - hours_needed, np.inf)
        request = np.where(cheap | (laxity < self.laxity_hours), max_charge, 0.0)
        grant = self.fill_in_order(laxity, request, self.headroom_kw(obs))
        return self.fractions(grant, max_charge)
