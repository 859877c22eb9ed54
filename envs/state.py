"""Dynamic state of a batch of charging sites."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.episode import Episode
from envs.plugging import PlugSchedule

EV_FIELDS = ("battery_kwh", "ev_max_charge_kw", "ev_max_discharge_kw", "min_soc",
             "announced_departure_step", "charge_cap_kw", "taper_start_soc")


@dataclasses.dataclass(frozen=True, eq=False)
class State:
    """Everything that changes during an episode, with a leading batch axis.

    All envs of a batch share the step counter ``t`` (episodes have a fixed horizon). Port
    fields describe the EV on the port and are 0 where the port is empty. The EV's fixed data
    (``EV_FIELDS``) are stacked in ``ev_on_port`` so that plugging copies them in one go; they
    read as ``state.battery_kwh`` and so on. ``ev_max_discharge_kw`` is already limited by the
    port and is 0 without V2G consent; ``charge_cap_kw`` and ``taper_start_soc`` are set when
    the EV plugs (``envs.dynamics.plug_limits``). ``max_charge_kw`` and ``max_discharge_kw`` are the
    grid-side powers the port can take right now (taper, SoC bounds, remaining request,
    consent); the step and the observation both read them.
    """

    t: int
    episode: Episode
    schedule: PlugSchedule
    node_exo_kw: np.ndarray  # (B, L, N) net inflexible load minus PV of each node's subtree
    forecast_series: np.ndarray  # (B, len(FORECAST_BLOCK), L) float32 series observed with a forecast
    step_obs: np.ndarray  # (B, T+1, width) float32 headroom and calendar fields per step
    ev_table: np.ndarray  # (len(EV_FIELDS), B, K) the episode's EVs, as plugged onto a port
    port_ev: np.ndarray  # (B, P) EV index on the port, -1 empty
    ev_on_port: np.ndarray  # (len(EV_FIELDS), B, P) fixed data of the EV on each port
    soc: np.ndarray  # (B, P) state of charge in [0, 1]
    remaining_kwh: np.ndarray  # (B, P) energy the driver still wants in the battery
    delivered_kwh: np.ndarray  # (B, P) net energy put into the battery since arrival
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

    @property
    def battery_kwh(self) -> np.ndarray:
        return self.ev_on_port[0]

    @property
    def ev_max_charge_kw(self) -> np.ndarray:
        return self.ev_on_port[1]

    @property
    def ev_max_discharge_kw(self) -> np.ndarray:
        return self.ev_on_port[2]

    @property
    def min_soc(self) -> np.ndarray:
        return self.ev_on_port[3]

    @property
    def announced_departure_step(self) -> np.ndarray:
        return self.ev_on_port[4]

    @property
    def charge_cap_kw(self) -> np.ndarray:
        return self.ev_on_port[5]

    @property
    def taper_start_soc(self) -> np.ndarray:
        return self.ev_on_port[6]

    def replace(self, **changes) -> State:
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"State has no fields {sorted(unknown)}")
        new = object.__new__(State)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_FIELDS = frozenset(field.name for field in dataclasses.fields(State))


def ev_table(episode: Episode) -> np.ndarray:
    """Stack the episode's EV data in ``EV_FIELDS`` order; discharge is 0 without consent, and the
    port-dependent fields are left for ``plug_limits``."""
    return np.stack([
        episode.ev_battery_kwh,
        episode.ev_max_charge_kw,
        episode.ev_max_discharge_kw * episode.ev_v2g_consent,
        episode.ev_min_soc,
        episode.ev_announced_departure_step,
        episode.ev_max_charge_kw,
        np.zeros(episode.ev_valid.shape),
    ]).astype(np.float64)
