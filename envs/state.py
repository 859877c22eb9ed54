"""Dynamic state of a batch of charging sites."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.dynamics import EV_FIELDS, TAPER_FIELDS, plug_limits
from envs.episode import Episode
from envs.plugging import PlugSchedule
from envs.site import SiteParams


@dataclasses.dataclass(frozen=True, eq=False)
class State:
    """Everything that changes during an episode, with a leading batch axis.

    All envs of a batch share the step counter ``t`` (episodes have a fixed horizon). Port
    fields describe the EV on the port and are 0 where the port is empty. The EV's fixed data
    (``EV_FIELDS``, ready for each plug event in ``plug_table``) are stacked in ``ev_on_port`` so
    that plugging copies them in one go; they
    read as ``state.battery_kwh`` and so on. ``ev_max_discharge_kw`` is already limited by the
    port and is 0 without V2G consent; ``TAPER_FIELDS`` (``charge_cap_kw``, ...) are set when
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
    plug_table: np.ndarray  # (len(EV_FIELDS), E) the EV of each plug event of the schedule, on its port
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
    def taper(self) -> np.ndarray:
        """(len(TAPER_FIELDS), B, P) the taper fields of the EV on each port."""
        return self.ev_on_port[len(EV_FIELDS) - len(TAPER_FIELDS):]

    def replace(self, **changes) -> State:
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"State has no fields {sorted(unknown)}")
        new = object.__new__(State)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_FIELDS = frozenset(field.name for field in dataclasses.fields(State))


def plug_table(params: SiteParams, episode: Episode, schedule: PlugSchedule) -> np.ndarray:
    """``EV_FIELDS`` (rows) of the EV of each plug event of ``schedule`` on its port: discharge
    is 0 without consent and at most the port's, and the taper fields are set (``plug_limits``)."""
    env, ev = schedule.plug_env, schedule.plug_ev
    table = np.zeros((len(EV_FIELDS), len(env)))
    table[:5] = (
        episode.ev_battery_kwh[env, ev],
        episode.ev_max_charge_kw[env, ev],
        episode.ev_max_discharge_kw[env, ev] * episode.ev_v2g_consent[env, ev],
        episode.ev_min_soc[env, ev],
        episode.ev_announced_departure_step[env, ev],
    )
    plug_limits(params, table, schedule.plug_port)
    return table
