"""Which EV occupies which port and when: arrivals, the site queue, departures, outages.

Occupancy does not depend on the charging actions (departures are exogenous), so the plug
schedule of a whole batch is computed once at reset, with one loop over time and sparse work
over the EVs that arrive, wait or leave. The step then applies the events of its time step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.episode import Episode
from envs.site import SiteParams

QUEUED, PLUGGED, DEPARTED, TURNED_AWAY, ABANDONED = 1, 2, 3, 4, 5


@dataclasses.dataclass(frozen=True, eq=False)
class PlugSchedule:
    """Plug and unplug events of a batch of episodes, sorted by step, and per-step queue counts.

    The events of step ``t`` are ``[plug_offsets[t], plug_offsets[t + 1])`` (likewise for
    unplugs); at a step, unplugs happen before plugs, so a port freed at ``t`` can be taken at
    ``t``. An unplug is a departure (``unplug_departed``) or a displacement by an outage.
    ``partial_*`` list, by step, the ports whose EV is there for only ``partial_fraction`` of
    the step (the episode's ``ev_first_step_fraction`` at a plug on arrival, its
    ``ev_last_step_fraction`` in the step before a departure from a port; both in a stay of one
    step). Queued EVs plug in at step boundaries.
    """

    plug_env: np.ndarray  # (E,) int
    plug_port: np.ndarray  # (E,) int
    plug_ev: np.ndarray  # (E,) int, index into the episode's EV arrays
    plug_offsets: np.ndarray  # (T+2,) int
    unplug_env: np.ndarray  # (U,) int
    unplug_port: np.ndarray  # (U,) int
    unplug_ev: np.ndarray  # (U,) int
    unplug_departed: np.ndarray  # (U,) bool, False when an outage pushed the EV back to the queue
    unplug_offsets: np.ndarray  # (T+2,) int
    gave_up_env: np.ndarray  # (G,) int, EVs that had been plugged, were displaced, and left the queue
    gave_up_ev: np.ndarray  # (G,) int
    gave_up_offsets: np.ndarray  # (T+2,) int
    arrived: np.ndarray  # (B, T+1) int, EVs arriving at step t
    turned_away: np.ndarray  # (B, T+1) int, arrivals rejected because the queue was full
    abandoned: np.ndarray  # (B, T+1) int, queued EVs that ran out of patience or departed
    displaced: np.ndarray  # (B, T+1) int, EVs pushed back to the queue by a port outage
    wait_steps: np.ndarray  # (B, T+1) int, queue time of the EVs that left the queue at step t
    queue_length: np.ndarray  # (B, T+1) int, EVs waiting after step t's events
    ev_status: np.ndarray  # (B, K) int8, status at the end of the horizon
    partial_env: np.ndarray  # (Q,) int
    partial_port: np.ndarray  # (Q,) int
    partial_fraction: np.ndarray  # (Q,) in [0, 1), share of the step the EV on the port is there
    partial_offsets: np.ndarray  # (T+2,) int


class _Events:
    def __init__(self, *names):
        self.names = names
        self.parts = []

    def add(self, step: int, *columns):
        self.parts.append((np.full(columns[0].size, step), *columns))

    def arrays(self, steps: int, prefix: str) -> dict[str, np.ndarray]:
        columns = ([np.concatenate(column) for column in zip(*self.parts, strict=True)] if self.parts
                   else [np.zeros(0, dtype=np.int64) for _ in range(len(self.names) + 1)])
        result = {f"{prefix}_{name}": values for name, values in zip(self.names, columns[1:], strict=True)}
        result[f"{prefix}_offsets"] = np.searchsorted(columns[0], np.arange(steps + 1))
        return result


def _by_step(valid: np.ndarray, step: np.ndarray, steps: int):
    """(env, ev) of the valid EVs sorted by ``step`` and the offsets of each step's run."""
    env, ev = np.nonzero(valid)
    order = np.argsort(step[env, ev], kind="stable")
    env, ev = env[order], ev[order]
    return env, ev, np.searchsorted(step[env, ev], np.arange(steps + 1))


def plug_schedule(params: SiteParams, episode: Episode) -> PlugSchedule:
    b, k, p = episode.num_envs, episode.max_evs, params.num_ports
    steps = params.horizon_steps + 1
    departure = episode.ev_departure_step
    port_of_slot = np.argsort(episode.port_rank, axis=1)
    down_by_slot = (None if episode.port_down is None else
                    np.take_along_axis(episode.port_down, port_of_slot[:, None, :], axis=2))
    arrival_env, arrival_ev, arrival_offsets = _by_step(episode.ev_valid, episode.ev_arrival_step, steps)
    leaving_env, leaving_ev, leaving_offsets = _by_step(episode.ev_valid, departure, steps)

    counts = {name: np.zeros((b, steps), dtype=np.int64) for name in
              ("arrived", "turned_away", "abandoned", "displaced", "wait_steps", "queue_length")}
    status = np.zeros((b, k), dtype=np.int8)
    slot_ev = np.full((b, p), -1, dtype=np.int64)
    ev_slot = np.full((b, k), -1, dtype=np.int64)
    queue_env = queue_ev = queue_since = np.zeros(0, dtype=np.int64)
    plugs, unplugs = _Events("env", "port", "ev"), _Events("env", "port", "ev", "departed")
    gave_up = _Events("env", "ev")

    arrivals_per_step = np.diff(arrival_offsets)
    np.add.at(counts["arrived"], (arrival_env, np.repeat(np.arange(steps), arrivals_per_step)), 1)

    def count(name, t, envs, weights=None):
        counts[name][:, t] += np.bincount(envs, weights, minlength=b).astype(np.int64)

    for t in range(steps):
        first, last = leaving_offsets[t], leaving_offsets[t + 1]
        if last > first:
            env, ev = leaving_env[first:last], leaving_ev[first:last]
            plugged = status[env, ev] == PLUGGED
            env, ev = env[plugged], ev[plugged]
            slot = ev_slot[env, ev]
            status[env, ev] = DEPARTED
            unplugs.add(t, env, port_of_slot[env, slot], ev, np.ones(env.size, dtype=bool))
            slot_ev[env, slot] = -1
        down = None if down_by_slot is None else down_by_slot[:, t]
        if down is not None and (down & (slot_ev >= 0)).any():
            env, slot = np.nonzero(down & (slot_ev >= 0))
            ev = slot_ev[env, slot]
            status[env, ev] = QUEUED
            unplugs.add(t, env, port_of_slot[env, slot], ev, np.zeros(env.size, dtype=bool))
            count("displaced", t, env)
            slot_ev[env, slot] = -1
            queue_env, queue_ev = np.concatenate((queue_env, env)), np.concatenate((queue_ev, ev))
            queue_since = np.concatenate((queue_since, np.full(env.size, t)))
        only_new = queue_env.size == 0
        first, last = arrival_offsets[t], arrival_offsets[t + 1]
        if last > first:
            env, ev = arrival_env[first:last], arrival_ev[first:last]
            status[env, ev] = QUEUED
            queue_env, queue_ev = np.concatenate((queue_env, env)), np.concatenate((queue_ev, ev))
            queue_since = np.concatenate((queue_since, np.full(env.size, t)))
        if queue_env.size == 0:
            continue

        if not only_new:
            expired = (t - queue_since > params.queue_patience_steps) | (departure[queue_env, queue_ev] <= t)
            if expired.any():
                status[queue_env[expired], queue_ev[expired]] = ABANDONED
                served = expired & (ev_slot[queue_env, queue_ev] >= 0)
                if served.any():
                    gave_up.add(t, queue_env[served], queue_ev[served])
                count("abandoned", t, queue_env[expired])
                count("wait_steps", t, queue_env[expired], t - queue_since[expired])
                keep = ~expired
                queue_env, queue_ev, queue_since = queue_env[keep], queue_ev[keep], queue_since[keep]
            order = np.argsort(queue_env * k + queue_ev, kind="stable")
            queue_env, queue_ev, queue_since = queue_env[order], queue_ev[order], queue_since[order]
        rank = np.arange(queue_env.size) - np.searchsorted(queue_env, queue_env)
        free = slot_ev < 0
        if down is not None:
            free &= ~down
        n_free = free.sum(axis=1)[queue_env]
        plug = rank < n_free
        if plug.any():
            env, ev = queue_env[plug], queue_ev[plug]
            new_row = np.empty(env.size, dtype=bool)
            new_row[0], new_row[1:] = True, env[1:] != env[:-1]
            rows, row_of = env[new_row], np.cumsum(new_row) - 1
            filled = np.cumsum(free[rows], axis=1) + (np.arange(rows.size) * (p + 1))[:, None]
            position = np.searchsorted(filled.ravel(), row_of * (p + 1) + rank[plug] + 1)
            slot = position - row_of * p
            slot_ev[env, slot], ev_slot[env, ev] = ev, slot
            status[env, ev] = PLUGGED
            plugs.add(t, env, port_of_slot[env, slot], ev)
            if not only_new:
                count("wait_steps", t, env, t - queue_since[plug])
        overflow = rank >= n_free + params.queue_capacity
        if overflow.any():
            status[queue_env[overflow], queue_ev[overflow]] = TURNED_AWAY
            count("turned_away", t, queue_env[overflow])
        keep = ~(plug | overflow)
        if keep.any():
            queue_env, queue_ev, queue_since = queue_env[keep], queue_ev[keep], queue_since[keep]
            count("queue_length", t, queue_env)
        else:
            queue_env = queue_ev = queue_since = queue_env[:0]

    events = {**plugs.arrays(steps, "plug"), **unplugs.arrays(steps, "unplug"),
              **gave_up.arrays(steps, "gave_up")}
    return PlugSchedule(ev_status=status, **events, **counts, **_partial_steps(episode, events, steps, p))


def _partial_steps(episode: Episode, events: dict, steps: int, num_ports: int) -> dict[str, np.ndarray]:
    """The ``partial_*`` arrays: steps that an EV on a port spends only in part on the site."""
    b = episode.num_envs
    keys, missing = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    first, last = episode.ev_first_step_fraction, episode.ev_last_step_fraction
    if first is not None:
        step = np.repeat(np.arange(steps), np.diff(events["plug_offsets"]))
        env, ev = events["plug_env"], events["plug_ev"]
        on_arrival = step == episode.ev_arrival_step[env, ev]
        keys.append((step * b + env) * num_ports + events["plug_port"])
        missing.append(np.where(on_arrival, 1.0 - first[env, ev], 0.0))
    if last is not None:
        step = np.repeat(np.arange(steps), np.diff(events["unplug_offsets"])) - 1
        env, ev = events["unplug_env"], events["unplug_ev"]
        keys.append((step * b + env) * num_ports + events["unplug_port"])
        missing.append(np.where(events["unplug_departed"], 1.0 - last[env, ev], 0.0))
    key, where = np.unique(np.concatenate(keys), return_inverse=True)
    fraction = 1.0 - np.bincount(where, np.concatenate(missing), minlength=len(key))
    partial = fraction < 1.0
    key, fraction = key[partial], np.maximum(fraction[partial], 0.0)
    step, env_port = np.divmod(key, b * num_ports)
    return {"partial_env": env_port // num_ports, "partial_port": env_port % num_ports,
            "partial_fraction": fraction, "partial_offsets": np.searchsorted(step, np.arange(steps + 1))}
