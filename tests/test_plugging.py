"""The vectorized plug schedule against a plain per-env reference of the same queue rules."""

import dataclasses

import numpy as np
import pytest

from envs.generators import generator_for
from envs.plugging import ABANDONED, DEPARTED, PLUGGED, QUEUED, TURNED_AWAY, plug_schedule
from envs.site import load_site


def reference_schedule(params, episode, env):
    """One env, one EV at a time: departures, outages, arrivals, expiry, FIFO plugging, overflow."""
    steps = params.horizon_steps + 1
    ports_by_rank = list(np.argsort(episode.port_rank[env]))
    on_port = {}
    queue = []  # [ev, queued_since]
    status = {}
    occupancy = np.full((steps, params.num_ports), -1)
    counts = {name: np.zeros(steps, dtype=int) for name in
              ("arrived", "turned_away", "abandoned", "displaced", "wait_steps", "queue_length")}
    evs = np.flatnonzero(episode.ev_valid[env])
    departure = episode.ev_departure_step[env]
    for t in range(steps):
        for port, ev in list(on_port.items()):
            if departure[ev] <= t:
                del on_port[port]
                status[ev] = DEPARTED
        no_outage = np.zeros(params.num_ports, dtype=bool)
        down = no_outage if episode.port_down is None else episode.port_down[env, t]
        for port, ev in list(on_port.items()):
            if down[port]:
                del on_port[port]
                status[ev] = QUEUED
                queue.append([ev, t])
                counts["displaced"][t] += 1
        for ev in evs[episode.ev_arrival_step[env, evs] == t]:
            status[ev] = QUEUED
            queue.append([ev, t])
            counts["arrived"][t] += 1
        for entry in list(queue):
            ev, since = entry
            if t - since > params.queue_patience_steps or departure[ev] <= t:
                queue.remove(entry)
                status[ev] = ABANDONED
                counts["abandoned"][t] += 1
                counts["wait_steps"][t] += t - since
        queue.sort(key=lambda entry: entry[0])
        free = [port for port in ports_by_rank if port not in on_port and not down[port]]
        for position, (ev, since) in enumerate(list(queue)):
            if position < len(free):
                on_port[free[position]] = ev
                status[ev] = PLUGGED
                counts["wait_steps"][t] += t - since
            elif position >= len(free) + params.queue_capacity:
                status[ev] = TURNED_AWAY
                counts["turned_away"][t] += 1
        queue = [entry for entry in queue if status[entry[0]] == QUEUED]
        counts["queue_length"][t] = len(queue)
        for port, ev in on_port.items():
            occupancy[t, port] = ev
    return occupancy, counts, status


def replay_occupancy(schedule, env, steps, num_ports):
    occupancy = np.full((steps, num_ports), -1)
    current = np.full(num_ports, -1)
    for t in range(steps):
        unplug = slice(schedule.unplug_offsets[t], schedule.unplug_offsets[t + 1])
        plug = slice(schedule.plug_offsets[t], schedule.plug_offsets[t + 1])
        mine = schedule.unplug_env[unplug] == env
        current[schedule.unplug_port[unplug][mine]] = -1
        mine = schedule.plug_env[plug] == env
        current[schedule.plug_port[plug][mine]] = schedule.plug_ev[plug][mine]
        occupancy[t] = current
    return occupancy


@pytest.mark.parametrize(("site", "queue", "failures_per_day", "busy"), [
    ("caltech", {"capacity": 10, "patience_minutes": 60}, 0.0, 1.0),
    ("caltech", {"capacity": 3, "patience_minutes": 30}, 0.0, 2.0),
    ("caltech", {"capacity": 0, "patience_minutes": 0}, 0.0, 2.0),
    ("v2g_workplace", {"capacity": 5, "patience_minutes": 45}, 4.0, 1.5),
    ("v2g_workplace", {"capacity": 2, "patience_minutes": 15}, 12.0, 2.5),
])
def test_schedule_matches_reference(site, queue, failures_per_day, busy):
    params = load_site(site, queue=queue, horizon_steps=48)
    base = generator_for(params)
    generator = dataclasses.replace(base, failure_rate_per_day=failures_per_day,
                                    sessions_per_day=base.sessions_per_day * busy, weekday=1)
    episode = generator.sample(params, np.random.default_rng(7), 6)
    schedule = plug_schedule(params, episode)
    steps = params.horizon_steps + 1
    congested = 0
    for env in range(episode.num_envs):
        occupancy, counts, status = reference_schedule(params, episode, env)
        np.testing.assert_array_equal(replay_occupancy(schedule, env, steps, params.num_ports), occupancy)
        for name, expected in counts.items():
            np.testing.assert_array_equal(getattr(schedule, name)[env], expected, err_msg=name)
        for ev, final in status.items():
            assert schedule.ev_status[env, ev] == final
        congested += counts["turned_away"].sum() + counts["abandoned"].sum()
    if busy >= 2.0:
        assert congested > 0, "the busy cases must exercise the queue"


def test_every_ev_is_accounted_for():
    params = load_site("caltech", queue={"capacity": 4, "patience_minutes": 30})
    generator = dataclasses.replace(generator_for(params), sessions_per_day=150, failure_rate_per_day=2.0)
    episode = generator.sample(params, np.random.default_rng(3), 16)
    schedule = plug_schedule(params, episode)
    arrived = episode.ev_valid.sum(axis=1)
    np.testing.assert_array_equal(schedule.arrived.sum(axis=1), arrived)
    final = schedule.ev_status[episode.ev_valid]
    assert set(np.unique(final)) <= {QUEUED, PLUGGED, DEPARTED, TURNED_AWAY, ABANDONED}
    assert (schedule.ev_status[~episode.ev_valid] == 0).all()
    plugged_once = np.zeros_like(episode.ev_valid)
    plugged_once[schedule.plug_env, schedule.plug_ev] = True
    never_plugged = episode.ev_valid & ~plugged_once
    assert np.isin(schedule.ev_status[never_plugged], [QUEUED, TURNED_AWAY, ABANDONED]).all()
