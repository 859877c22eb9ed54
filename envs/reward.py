"""Reward terms in physical units and their weighted sum."""

from __future__ import annotations

import dataclasses

import numpy as np

TERMS = (
    "energy_cost_eur",
    "charging_revenue_eur",
    "export_revenue_eur",
    "degradation_kwh",
    "unmet_kwh",
    "unmet_at_horizon_kwh",
    "overload_requested_kwh",
    "grid_violation_kwh",
    "peak_increase_kw",
    "carbon_kg",
    "setpoint_error_kwh",
)
TERM_INDEX = {name: i for i, name in enumerate(TERMS)}


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Coefficients that turn each reward term into EUR; revenues count plus, costs minus.

    ``reward = charging_revenue + export_revenue - energy_cost - sum(weight * penalty term)``.
    A weight of 0 drops its term from the reward; the term is still reported in ``info``.
    ``unmet_kwh`` counts what EVs lack when they leave; ``unmet_at_horizon_kwh`` what the EVs
    still plugged in at the end of the horizon lack then (their stay goes on past the episode,
    so by default it is reported, not charged).
    """

    energy_cost: float = 1.0
    charging_revenue: float = 1.0
    export_revenue: float = 1.0
    degradation_eur_per_kwh: float = 0.02
    unmet_eur_per_kwh: float = 0.5
    unmet_at_horizon_eur_per_kwh: float = 0.0
    overload_eur_per_kwh: float = 1.0
    grid_violation_eur_per_kwh: float = 1.0
    demand_charge_eur_per_kw: float = 0.0
    carbon_eur_per_kg: float = 0.0
    setpoint_eur_per_kwh: float = 0.0

    def coefficients(self) -> np.ndarray:
        """Vector ``c`` with ``reward = terms @ c`` for terms ordered as ``TERMS``."""
        return np.array([
            -self.energy_cost,
            self.charging_revenue,
            self.export_revenue,
            -self.degradation_eur_per_kwh,
            -self.unmet_eur_per_kwh,
            -self.unmet_at_horizon_eur_per_kwh,
            -self.overload_eur_per_kwh,
            -self.grid_violation_eur_per_kwh,
            -self.demand_charge_eur_per_kw,
            -self.carbon_eur_per_kg,
            -self.setpoint_eur_per_kwh,
        ])

