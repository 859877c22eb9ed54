"""What a policy reads of the departures: the announced one, or a quantile of the real one at this site.

Numpy only (no torch, no SB3), so the scheduler runtime applies it too; the training env's
wrapper is ``agents.viewed_env.DepartureViewVecEnv``.
"""

from __future__ import annotations

import numpy as np

from envs.departures import remaining_stay_for
from envs.errors import ConfigError
from envs.limits import check_number
from envs.observation import observation_layout
from envs.site import SiteParams


class DepartureView:
    """Replaces each plugged port's ``hours_to_departure`` with hours to the site's ``level``
    quantile of the real departure (``envs.departures.RemainingStay``), leaving the rest of the
    observation as it is.

    A policy trained on one site's announcements learns how far they can be trusted there, and
    acts on another site's as if they were as reliable. Reading a quantile of the real departure
    instead, learned from each site's own sessions, the input means the same on every site: at
    ``level`` 0.2 one driver in five has left by then. ``apply(obs)`` takes (D,) or (B, D) and
    returns a float32 copy; the deadline guard behind the policy reads the same view. A bad
    ``level`` is a ``ConfigError`` naming ``field``.
    """

    def __init__(self, params: SiteParams, level: float, field: str = "departure_level"):
        self.level = check_number(field, level, 0.0, above=True)
        if self.level >= 1.0:
            raise ConfigError(f"{field} must lie in (0, 1), got {level!r}")
        if params.observability == "ocpp":
            raise ConfigError(f"site {params.name!r}: {field} reads the announced departure, which "
                              "observability 'ocpp' does not report")
        layout = observation_layout(params)
        self.hours, self.occupied = layout["hours_to_departure"], layout["occupied"]
        self.stay = remaining_stay_for(params, self.level)

    def apply(self, obs: np.ndarray) -> np.ndarray:
        viewed = np.array(obs, dtype=np.float32)
        batch = viewed.reshape(-1, viewed.shape[-1])
        announced = batch[:, self.hours]
        plugged = batch[:, self.occupied] > 0.5
        batch[:, self.hours] = np.where(plugged, self.stay.hours(announced), announced)
        return viewed
