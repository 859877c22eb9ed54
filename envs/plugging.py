"""Which EV occupies which port at every step: arrivals, the site queue, departures, outages.

Occupancy does not depend on the charging actions (departures are exogenous), so the whole
plug schedule of an episode is computed once at reset, vectorized over envs, EVs and ports with
one loop over time. The step then only reads which EV sits on each port.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.episode import Episode
from envs.site import SiteParams

QUEUED, PLUGGED, DEPARTED, TURNED_AWAY, ABANDONED = 1, 2, 3, 4, 5


@dataclasses.dataclass(frozen=True, eq=False)
class PlugSchedule:
    """Outcome of arrivals and the queue for a batch of episodes (steps 0 .. horizon)."""

    port_ev: np.ndarray  # (B, T+1, P) int32, EV index on each port after step t's events, -1 empty
    arrived: np.ndarray  # (B, T+1) int, EVs arriving at step t
    turned_away: np.ndarray  # (B, T+1) int, arrivals rejected because the queue was full
    abandoned: np.ndarray  # (B, T+1) int, queued EVs that ran out of patience or departed
    displaced: np.ndarray  # (B, T+1) int, EVs pushed back to the queue by a port outage
    wait_steps: np.ndarray  # (B, T+1) int, queue time of the EVs that left the queue at step t
    queue_length: np.ndarray  # (B, T+1) int, EVs waiting after step t's events
    ev_status: np.ndarray  # (B, K) int8, status at the end of the horizon


def plug_schedule(params: SiteParams, episode: Episode) -> PlugSchedule:
    b, k, p = episode.num_envs, episode.max_evs, params.num_ports
    steps = params.horizon_steps + 1
    port_by_rank = np.argsort(episode.port_rank, axis=1)
    arrival, departure = episode.ev_arrival_step, episode.ev_departure_step
    valid = episode.ev_valid

    port_ev = np.full((b, steps, p), -1, dtype=np.int32)
    counts = {name: np.zeros((b, steps), dtype=np.int64) for name in
              ("arrived", "turned_away", "abandoned", "displaced", "wait_steps", "queue_length")}
    status = np.zeros((b, k), dtype=np.int8)
    queued_since = np.zeros((b, k), dtype=np.int64)
    current = np.full((b, p), -1, dtype=np.int32)
    leaves_at = np.full((b, p), np.iinfo(np.int64).max, dtype=np.int64)
    active_until = int(min(departure[valid].max(initial=0), steps))
    event_steps = np.zeros(steps, dtype=bool)
    event_steps[np.clip(arrival[valid], 0, steps - 1)] = True
    event_steps[np.clip(departure[valid], 0, steps - 1)] = True
    if episode.port_down is not None:
        event_steps[:] = True

    for t in range(steps):
        queue_open = bool(np.any(status == QUEUED)) if t <= active_until else False
        if not (event_steps[t] or queue_open):
            port_ev[:, t] = current
            continue
        leaving = leaves_at <= t
        if leaving.any():
            bi, pi = np.nonzero(leaving)
            status[bi, current[bi, pi]] = DEPARTED
            current[leaving], leaves_at[leaving] = -1, np.iinfo(np.int64).max
        down = None
        if episode.port_down is not None:
            down = episode.port_down[:, t]
            pushed = down & (current >= 0)
            if pushed.any():
                bi, pi = np.nonzero(pushed)
                status[bi, current[bi, pi]] = QUEUED
                queued_since[bi, current[bi, pi]] = t
                counts["displaced"][:, t] = pushed.sum(axis=1)
                current[pushed], leaves_at[pushed] = -1, np.iinfo(np.int64).max
        new = valid & (arrival == t)
        if new.any():
            status[new] = QUEUED
            queued_since[new] = t
            counts["arrived"][:, t] = new.sum(axis=1)
        queued = status == QUEUED
        if not queued.any():
            port_ev[:, t] = current
            continue
        expired = queued & ((t - queued_since > params.queue_patience_steps) | (departure <= t))
        if expired.any():
            status[expired] = ABANDONED
            counts["abandoned"][:, t] = expired.sum(axis=1)
            counts["wait_steps"][:, t] += np.where(expired, t - queued_since, 0).sum(axis=1)
            queued &= ~expired
        free = current < 0
        if down is not None:
            free &= ~down
        free_by_rank = np.take_along_axis(free, port_by_rank, axis=1)
        n_free = free_by_rank.sum(axis=1)
        rank = np.cumsum(queued, axis=1)
        plug = queued & (rank <= n_free[:, None])
        if plug.any():
            bi, ki = np.nonzero(plug)
            first_free = np.argsort(~free_by_rank, axis=1, kind="stable")
            pi = port_by_rank[bi, first_free[bi, rank[bi, ki] - 1]]
            current[bi, pi] = ki
            leaves_at[bi, pi] = departure[bi, ki]
            status[bi, ki] = PLUGGED
            counts["wait_steps"][:, t] += np.where(plug, t - queued_since, 0).sum(axis=1)
        overflow = queued & (rank > n_free[:, None] + params.queue_capacity)
        if overflow.any():
            status[overflow] = TURNED_AWAY
            counts["turned_away"][:, t] = overflow.sum(axis=1)
        counts["queue_length"][:, t] = (status == QUEUED).sum(axis=1)
        port_ev[:, t] = current
    return PlugSchedule(port_ev=port_ev, ev_status=status, **counts)
