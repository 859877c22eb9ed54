"""What a finished batch of episodes amounts to: the per-episode arrays KPI tables are built from."""

from __future__ import annotations

import numpy as np

from envs.plugging import DEPARTED
from envs.site import SiteParams
from envs.state import State


def episode_outcome(params: SiteParams, state: State, charged_kwh: np.ndarray,
                    discharged_kwh: np.ndarray) -> dict[str, np.ndarray]:
    """Per-episode arrays (B,) of a batch at the end of its episodes.

    ``charged_kwh`` and ``discharged_kwh`` are the step diagnostics of the same names summed over
    the episode by the caller (the state keeps no per-step history). ``requested_kwh`` counts
    the EVs that departed; ``wait_hours`` is queue time summed over arriving EVs.
    """
    schedule, episode = state.schedule, state.episode
    departed = schedule.ev_status == DEPARTED
    return {
        "totals": state.totals.copy(),
        "charged_kwh": np.asarray(charged_kwh, dtype=np.float64).copy(),
        "discharged_kwh": np.asarray(discharged_kwh, dtype=np.float64).copy(),
        "peak_import_kw": state.peak_import_kw.copy(),
        "requested_kwh": np.where(departed, episode.ev_requested_kwh, 0.0).sum(axis=1),
        "turned_away": schedule.turned_away.sum(axis=1),
        "abandoned": schedule.abandoned.sum(axis=1),
        "arrived": schedule.arrived.sum(axis=1),
        "wait_hours": schedule.wait_steps.sum(axis=1) * params.dt_hours,
    }
