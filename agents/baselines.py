"""Rule-based charging policies, batched over envs and ports, with SB3's predictor protocol."""

from __future__ import annotations

import numpy as np

from envs.action_layer import fill_in_order
from envs.dynamics import node_flows, project_to_limits
from envs.observation import layout_size, observation_layout
from envs.site import SiteParams

_SAFETY_REL, _SAFETY_KW = 1e-5, 1e-6
_SLOT_ROUND_OFF = 1e-6


class RuleBasedPolicy:
    """Base of the rule-based policies: holds the site params and the observation layout.

    ``predict(obs)`` takes one observation (D,) or a batch (B, D) as built by
    ``envs.observation.observe`` and returns ``(actions, None)`` with actions (P,) or (B, P)
    float32 in [-1, 1], like an SB3 model, so one evaluator scores every policy. Subclasses
    implement ``act(obs)`` on a float64 batch and read it only through ``field``; they keep no
    state between calls. So at an ``observability`` level other than ``full``
    (``envs.observability``) they act on the site's estimates of the SoC, the request and the
    departure that the observation shows, never on the simulator's truth.

    The allocation helpers respect every node of the site's tree: they grant port power so
    that no node's import limit (minus its inflexible load and PV, i.e. ``node_headroom_kw``)
    is exceeded, with a tiny safety margin for the float32 observation, so the env's
    projection never has to scale their actions down. Discharging is granted against each
    node's export room (``export_room_kw``) the same way.

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
        self._charge_kwh_per_kw_step = params.port_charge_efficiency * params.dt_hours

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

    def export_room_kw(self, obs: np.ndarray, charge_kw: np.ndarray) -> np.ndarray:
        """(B, N) discharge power each node can still feed back while ports charge ``charge_kw``.

        A node's net exogenous flow is its import limit minus its headroom; discharging may
        take the flow down to minus the export limit, and charging below the node offsets it.
        Less the safety margin.
        """
        limit = self.params.node_export_limit_kw
        exo = self.params.node_import_limit_kw - self.field(obs, "node_headroom_kw")
        room = limit + exo + (1.0 - _SAFETY_REL) * self.node_sums(charge_kw)
        return room - _SAFETY_REL * (np.abs(room) + limit) - _SAFETY_KW

    def node_sums(self, port_values: np.ndarray) -> np.ndarray:
        """(B, N) sums over the ports below each node of (B, P) values."""
        return node_flows(self.params, port_values, 0.0)

    def scale_to_fit(self, request_kw: np.ndarray, headroom_kw: np.ndarray) -> np.ndarray:
        """Grant (B, P) kW: the env's own projection, against ``headroom_kw`` instead of the limits."""
        return project_to_limits(self.params, request_kw, self.params.node_import_limit_kw - headroom_kw)[0]

    def fill_in_order(self, priority: np.ndarray, request_kw: np.ndarray, headroom_kw: np.ndarray):
        """Grant (B, P) kW: ports in increasing ``priority`` take their request while it fits.

        ``envs.action_layer.fill_in_order`` (the fill of the env's ``priority`` action mode), ties
        in port order: levels go bottom-up; at each node, a port gets at most the node's headroom
        less what the earlier ports below it were granted so far, so every node ends within its
        headroom.
        """
        return fill_in_order(self.params, priority, request_kw, headroom_kw)

    def fractions(self, grant_kw: np.ndarray, max_kw: np.ndarray) -> np.ndarray:
        """Action magnitudes that ask for ``grant_kw`` on ports offering ``max_kw`` (0 where none)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(max_kw > 0, np.minimum(grant_kw / max_kw, 1.0), 0.0)

    def steps_to_departure(self, obs: np.ndarray, margin_steps: int = 0) -> np.ndarray:
        """(B, P) whole steps until ``margin_steps`` before the announced departure (<= 0 once
        that is past, and on empty ports)."""
        return np.rint(self.field(obs, "hours_to_departure") / self.params.dt_hours) - margin_steps

    def whole_steps(self, hours: float) -> int:
        return round(float(hours) / self.params.dt_hours)

    def full_step_kwh(self, max_charge_kw: np.ndarray) -> np.ndarray:
        """(B, P) battery energy of one step at ``max_charge_kw``."""
        return max_charge_kw * self._charge_kwh_per_kw_step

    def slots_needed(self, obs: np.ndarray, max_charge_kw: np.ndarray) -> np.ndarray:
        """(B, P) steps at ``max_charge_kw`` that the remaining request needs (0 where none)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            slots = np.ceil(self.field(obs, "remaining_kwh") / self.full_step_kwh(max_charge_kw)
                            - _SLOT_ROUND_OFF)
        return np.where(max_charge_kw > 0, np.maximum(slots, 0.0), 0.0)

    def laxity(self, obs: np.ndarray, max_charge_kw: np.ndarray) -> np.ndarray:
        """(B, P) hours to departure minus hours needed at ``max_charge_kw``; inf where it is 0."""
        charge_kwh_per_hour = max_charge_kw * self.params.port_charge_efficiency
        with np.errstate(divide="ignore", invalid="ignore"):
            hours_needed = self.field(obs, "remaining_kwh") / charge_kwh_per_hour
        return np.where(max_charge_kw > 0, self.field(obs, "hours_to_departure") - hours_needed, np.inf)

    def step_of_day(self, obs: np.ndarray) -> np.ndarray:
        """(B,) index of the current step within the day, read from ``time_of_day``."""
        sin_cos = self.field(obs, "time_of_day")
        turn = np.arctan2(sin_cos[:, 0], sin_cos[:, 1]) / (2 * np.pi)
        steps = self.params.steps_per_day
        return np.rint(turn * steps).astype(np.int64) % steps


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


class LeastLaxityFirst(RuleBasedPolicy):
    """Give the headroom to EVs in order of laxity (least slack first).

    Laxity is ``hours_to_departure - remaining_kwh / (max_charge_kw * charge_efficiency)``:
    the hours an EV could still wait and finish at its available power. Each EV asks for its
    available power; in laxity order every EV gets what still fits under each node above it.
    No discharging.
    """

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        grant = self.fill_in_order(self.laxity(obs, max_charge), max_charge, self.headroom_kw(obs))
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


class RoundRobin(RuleBasedPolicy):
    """Fair rotation: when the headroom cannot serve every EV, they take full power in turns.

    The EVs that can charge are ranked by port; each step the ranking is rotated by one turn,
    the number of EVs the site can serve at once (the plugged EVs times the share of their
    total available power that fits under the node limits, at least one). The step comes from
    ``time_of_day``, so the policy keeps no state: with a steady set of EVs, consecutive steps
    serve consecutive blocks of them. In rotated order every EV gets its available power while
    it fits under each node above it. No discharging.
    """

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        headroom = self.headroom_kw(obs)
        active = max_charge > 0
        count = active.sum(axis=1, keepdims=True)
        wanted = max_charge.sum(axis=1, keepdims=True)
        served = self.scale_to_fit(max_charge, headroom).sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(wanted > 0, served / wanted, 1.0)
        turn = np.maximum(np.floor(count * share + 1e-3), 1.0)
        rank = np.cumsum(active, axis=1) - 1.0
        rotated = np.mod(rank - self.step_of_day(obs)[:, None] * turn, np.maximum(count, 1))
        grant = self.fill_in_order(np.where(active, rotated, np.inf), max_charge, headroom)
        return self.fractions(grant, max_charge)


class AsLateAsPossible(RuleBasedPolicy):
    """Charge only what cannot wait: each EV finishes at full power just before it leaves.

    With ``n`` whole steps left to the announced departure, an EV asks now for the part of its
    remaining energy that ``n - 1`` later steps at its available power (``max_charge_kw``, as
    now) cannot deliver: nothing while its laxity allows waiting, then full power. Overdue EVs
    ask for full power. Requests share the headroom in order of least laxity. No discharging.

    Arguments:
        params: the site.
        margin_hours: finish this long before the announced departure (whole steps; 0: at it).
    """

    def __init__(self, params: SiteParams, margin_hours: float = 0.0):
        super().__init__(params)
        self.margin_steps = self.whole_steps(margin_hours)

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        grant = self.fill_in_order(self.laxity(obs, max_charge), self.request_kw(obs, max_charge),
                                   self.headroom_kw(obs))
        return self.fractions(grant, max_charge)

    def request_kw(self, obs: np.ndarray, max_charge_kw: np.ndarray) -> np.ndarray:
        """(B, P) kW each EV asks for now: what the later steps cannot deliver, at most ``max_charge_kw``."""
        full_step = self.full_step_kwh(max_charge_kw)
        steps_left = self.steps_to_departure(obs, self.margin_steps)
        later_kwh = np.maximum(steps_left - 1.0, 0.0) * full_step
        now_kwh = self.field(obs, "remaining_kwh") - later_kwh
        now_kwh = np.where(now_kwh > _SLOT_ROUND_OFF * (1.0 + full_step), now_kwh, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.minimum(now_kwh / self._charge_kwh_per_kw_step, max_charge_kw)


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
        laxity = self.laxity(obs, max_charge)
        request = np.where(cheap | (laxity < self.laxity_hours), max_charge, 0.0)
        grant = self.fill_in_order(laxity, request, self.headroom_kw(obs))
        return self.fractions(grant, max_charge)


class PriceAware(RuleBasedPolicy):
    """Charge each EV in the cheapest slots before its deadline; the deadline comes first.

    An EV needs ``ceil(remaining_kwh / (max_charge_kw * charge_efficiency * dt))`` slots at its
    available power. The slots it can use run from now to ``margin_hours`` before its announced
    departure (a reserve against drivers who leave early); their buy prices are the forecast
    window, and slots beyond the window are taken at the window's mean. The EV charges at full
    power now when fewer slots than it needs are strictly cheaper than now (so now is among
    its cheapest needed slots, ties going to the earliest); when it needs every slot left, or
    its deadline is past, that holds too. Charging EVs share the headroom in order of least
    laxity. No discharging.

    Arguments:
        params: the site.
        margin_hours: plan to finish this long before the announced departure (whole steps).
    """

    def __init__(self, params: SiteParams, margin_hours: float = 1.0):
        super().__init__(params)
        self.margin_steps = self.whole_steps(margin_hours)

    def charging_now(self, obs: np.ndarray, max_charge_kw: np.ndarray) -> np.ndarray:
        """(B, P) bool: the EVs whose cheapest needed slots include now."""
        prices = self.field(obs, "price_buy_eur_kwh")
        window = prices.shape[1]
        steps_left = self.steps_to_departure(obs, self.margin_steps)
        cheaper_upto = np.zeros(prices.shape)
        np.cumsum(prices[:, 1:] < prices[:, :1], axis=1, out=cheaper_upto[:, 1:])
        last = np.clip(steps_left - 1, 0, window - 1).astype(np.int64)
        cheaper = np.take_along_axis(cheaper_upto, last, axis=1)
        beyond = np.maximum(steps_left - window, 0.0)
        cheaper += beyond * (prices.mean(axis=1, keepdims=True) < prices[:, :1])
        needed = self.slots_needed(obs, max_charge_kw)
        return (needed > 0) & (cheaper < needed)

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        request = np.where(self.charging_now(obs, max_charge), max_charge, 0.0)
        grant = self.fill_in_order(self.laxity(obs, max_charge), request, self.headroom_kw(obs))
        return self.fractions(grant, max_charge)


class V2GArbitrage(PriceAware):
    """PriceAware charging, plus discharging in expensive slots while every deadline stays safe.

    Charging is PriceAware's, with the same deadline (``margin_hours`` before the announced
    departure). An EV that may discharge (``v2g_allowed``) and is not charging discharges now
    when the price now is at least the window mean and selling a battery kWh now beats buying
    it back in the cheapest slot before its deadline (window slots, and the window mean beyond
    it): ``value_now * discharge_efficiency - rebuy / charge_efficiency - 2 *
    degradation_eur_per_kwh > min_spread_eur_kwh``. ``value_now`` is the buy price while the
    site imports (discharging replaces imports), else the sell price. It discharges only its
    slack: what the steps after this one and before its deadline can recharge at its charge
    power beyond its remaining request, and at most ``max_discharge_kw`` (which already stops
    at the EV's minimum SoC); the deadline logic never relies on the env's projection. The
    charge power is ``max_charge_kw``; when that is cut by a nearly met request, the car is
    assumed to charge at least as fast as it discharges (tapered by SoC). Discharging takes
    each node's export room (``export_room_kw``) in order of most slack.

    Arguments:
        params: the site.
        margin_hours: deadline reserve before the announced departure (whole steps).
        min_spread_eur_kwh: least gain per battery kWh cycled that is worth discharging for.
    """

    def __init__(self, params: SiteParams, margin_hours: float = 1.0, min_spread_eur_kwh: float = 0.0):
        super().__init__(params, margin_hours)
        self.min_spread_eur_kwh = float(min_spread_eur_kwh)

    def act(self, obs):
        max_charge = self.field(obs, "max_charge_kw")
        max_discharge = self.field(obs, "max_discharge_kw")
        charging = self.charging_now(obs, max_charge)
        request = np.where(charging, max_charge, 0.0)
        charge = self.fill_in_order(self.laxity(obs, max_charge), request, self.headroom_kw(obs))
        slack_kwh = self._slack_kwh(obs, max_charge)
        wanted = self._profitable(obs, charge) & ~charging & (self.field(obs, "v2g_allowed") > 0)
        eta_d = self.params.port_discharge_efficiency
        request = np.where(wanted, np.clip(slack_kwh * eta_d / self.params.dt_hours, 0.0, max_discharge), 0.0)
        discharge = self.fill_in_order(-slack_kwh, request, self.export_room_kw(obs, charge))
        return self.fractions(charge, max_charge) - self.fractions(discharge, max_discharge)

    def _slack_kwh(self, obs, max_charge_kw):
        params = self.params
        remaining = self.field(obs, "remaining_kwh")
        soc = self.field(obs, "soc")
        taper = np.minimum(params.taper_intercept - params.taper_slope * soc, 1.0)
        assumed = taper * np.minimum(params.port_max_charge_kw, self.field(obs, "max_discharge_kw"))
        cut = remaining <= self.full_step_kwh(max_charge_kw) * (1.0 + _SLOT_ROUND_OFF)
        charge_kw = np.where(cut, np.maximum(max_charge_kw, assumed), max_charge_kw)
        steps = self.steps_to_departure(obs, self.margin_steps) - 1.0
        return np.maximum(steps, 0.0) * self.full_step_kwh(charge_kw) - remaining

    def _profitable(self, obs, charge_kw):
        params = self.params
        prices = self.field(obs, "price_buy_eur_kwh")
        now, mean = prices[:, :1], prices.mean(axis=1, keepdims=True)
        window = prices.shape[1]
        rebuy_upto = np.full(prices.shape, np.inf)
        np.minimum.accumulate(prices[:, 1:], axis=1, out=rebuy_upto[:, 1:])
        steps_left = self.steps_to_departure(obs, self.margin_steps)
        last = np.clip(steps_left - 1, 0, window - 1).astype(np.int64)
        rebuy = np.take_along_axis(rebuy_upto, last, axis=1)
        rebuy = np.where(steps_left > window, np.minimum(rebuy, mean), rebuy)
        site_exo = params.node_import_limit_kw[0] - self.field(obs, "node_headroom_kw")[:, :1]
        importing = site_exo + charge_kw.sum(axis=1, keepdims=True) > 0
        value = np.where(importing, now, self.field(obs, "price_sell_eur_kwh")[:, :1])
        gain = (value * params.port_discharge_efficiency - rebuy / params.port_charge_efficiency
                - 2.0 * params.reward.degradation_eur_per_kwh)
        return (now >= mean) & (gain > self.min_spread_eur_kwh)
