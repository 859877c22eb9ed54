"""Dynamic state of a batch of charging sites."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.episode import Episode
from envs.plugging import PlugSchedule


@dataclasses.dataclass(frozen=True, eq=False)
class State:
    """Everything that changes during an episode, with a leading batch axis.

    All envs of a batch share the step counter ``t`` (episodes have a fixed horizon). Port
    fields describe the EV on the port and are 0 where the port is empty. ``max_charge_kw`` and
    ``max_discharge_kw`` are the grid-side powers the port can take right now (taper, SoC
    bounds, remaining request, consent); the step and the observation both read them.
    """

    t: int
    episode: Episode
    schedule: PlugSchedule
    node_exo_kw: np.ndarray  # (B, L, N) net inflexible load minus PV of each node's subtree
    site_load_kw: np.ndarray  # (B, L) inflexible load of the whole site
    site_pv_kw: np.ndarray  # (B, L) PV generation of the whole site
    step_obs: np.ndarray  # (B, T+1, width) float32 observation fields fixed per step (STEP_BLOCK)
    port_ev: np.ndarray  # (B, P) int32 EV index on the port, -1 empty
    soc: np.ndarray  # (B, P) state of charge in [0, 1]
    battery_kwh: np.ndarray  # (B, P)
    remaining_kwh: np.ndarray  # (B, P) energy the driver still wants in the battery
    delivered_kwh: np.ndarray  # (B, P) net energy put into the battery since arrival
    ev_max_charge_kw: np.ndarray  # (B, P) the car's own charge limit below the taper knee
    ev_max_discharge_kw: np.ndarray  # (B, P) min(car, port) discharge limit if consented, else 0
    min_soc: np.ndarray  # (B, P)
    announced_departure_step: np.ndarray  # (B, P) int
    max_charge_kw: np.ndarray  # (B, P) available grid-side charge power now
    max_discharge_kw: np.ndarray  # (B, P) available grid-side discharge power now
    ev_soc: np.ndarray  # (B, K) SoC of EVs off a port (updated when one leaves a port)
    ev_delivered_kwh: np.ndarray  # (B, K) energy delivered to EVs off a port
    peak_import_kw: np.ndarray  # (B,) highest site import so far this episode
    totals: np.ndarray  # (B, len(TERMS)) reward terms summed over the episode

    @property
    def num_envs(self) -> int:
        return self.port_ev.shape[0]

    @property
    def occupied(self) -> np.ndarray:
        return self.port_ev >= 0

    def replace(self, **changes) -> State:
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"State has no fields {sorted(unknown)}")
        new = object.__new__(State)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_FIELDS = frozenset(field.name for field in dataclasses.fields(State))
