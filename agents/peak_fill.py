"""The peak fill: import below the peak so far costs no demand charge, so fill it while power is cheap.

Numpy only (no torch, no SB3), so the scheduler runtime applies it too; it acts inside the
deadline guard (``agents.guards.DeadlineGuard``'s ``peak_fill_quantile``).
"""

from __future__ import annotations

import numpy as np

from envs.errors import ConfigError
from envs.observation import PEAK_FIELD, observation_layout
from envs.site import SiteParams


class PeakFill:
    """Raises the ports that charge until the site imports as much as its peak so far, when the
    buy price now is at most the ``price_quantile`` of the prices the observation forecasts.

    A planner facing a demand charge fills up to the highest import of the billing window so
    far, where more import costs nothing but the energy, and stops there; the sum of per-port
    decisions does not. ``apply(obs, actions)`` (signed fractions, batch or single) reads the
    site import the actions ask for (the inflexible load and PV from the root node's headroom,
    plus every port's grid-side kW) and, where the price now is at most that quantile of the
    buy price over now and the forecast steps, spreads the import left below the peak so far
    (and within the root's headroom) over the charging ports in proportion to their room to
    full power. Idle and discharging ports keep their action. Sites without a demand charge,
    and steps without a peak yet, are left as they are.
    """

    def __init__(self, params: SiteParams, price_quantile: float):
        if not 0.0 <= float(price_quantile) <= 1.0:
            raise ConfigError(f"peak_fill_quantile must lie in [0, 1], got {price_quantile!r}")
        self.params, self.price_quantile = params, float(price_quantile)
        self.layout = observation_layout(params)
        self.active = params.reward.demand_charge_eur_per_kw > 0

    def apply(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        if not self.active:
            return actions
        batch = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        layout = self.layout
        prices = np.sort(batch[:, layout["price_buy_eur_kwh"]], axis=1)
        at = self.price_quantile * (prices.shape[1] - 1)
        low = int(at)
        high = min(low + 1, prices.shape[1] - 1)
        threshold = prices[:, low] + (at - low) * (prices[:, high] - prices[:, low])
        cheap = batch[:, layout["price_buy_eur_kwh"].start] <= threshold
        if not cheap.any():
            return actions
        fractions = actions.reshape(len(batch), self.params.num_ports).astype(np.float64)
        max_charge = batch[:, layout["max_charge_kw"]]
        charge = np.maximum(fractions, 0.0) * max_charge
        discharge = np.minimum(fractions, 0.0) * batch[:, layout["max_discharge_kw"]]
        root_headroom = batch[:, layout["node_headroom_kw"].start]
        ev_kw = charge.sum(axis=1) + discharge.sum(axis=1)
        site_import = self.params.node_import_limit_kw[0] - root_headroom + ev_kw
        below_peak = batch[:, layout[PEAK_FIELD].start] - site_import
        grant = np.where(cheap, np.minimum(below_peak, root_headroom - ev_kw), 0.0)
        if not (grant > 0.0).any():
            return actions
        room = np.where(charge > 0.0, np.maximum(max_charge - charge, 0.0), 0.0)
        total = room.sum(axis=1)
        share = np.divide(np.clip(grant, 0.0, total), total, out=np.zeros_like(total), where=total > 0)
        filled = np.divide(charge + share[:, None] * room, max_charge, out=np.zeros_like(charge),
                           where=max_charge > 0)
        out = np.where(charge > 0.0, np.minimum(filled, 1.0), fractions).astype(np.float32)
        return out.reshape(actions.shape)
