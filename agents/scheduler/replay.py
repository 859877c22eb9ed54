"""The live state a real site would report for an env of a simulated batch: to drive the scheduler
with the env's episodes (parity tests, simulated charge points)."""

from __future__ import annotations

import datetime as dt

from agents.scheduler.live import FORECAST_FIELDS, PluggedSession, SiteState
from envs.site import SiteParams
from envs.state import State

MONDAY = dt.datetime(2024, 1, 1)  # episode days are placed on the week of this Monday


def episode_start(params: SiteParams, state: State, env: int = 0) -> dt.datetime:
    """Wall-clock time of step 0 of env ``env``: its weekday in the week of ``MONDAY``, at the site's
    start."""
    return MONDAY + dt.timedelta(days=int(state.episode.weekday[env]), minutes=params.start_minute)


def step_time(params: SiteParams, start: dt.datetime, step) -> dt.datetime:
    return start + dt.timedelta(seconds=float(step) * params.dt_hours * 3600)


def site_state_from_env(params: SiteParams, state: State, env: int = 0) -> SiteState:
    """What the site of env ``env`` knows at the state's step, as a ``SiteState``.

    Every plugged EV reports its SoC, battery, requested and delivered energy, announced
    departure and limits (its discharge limit already on the port, 0 without consent) and its
    plug-in time (its arrival at the site, as ``envs.observation.observe`` counts it); the
    forecasts are the ones the env's observation shows; sessions are named ``ev<index>``.
    """
    t, episode, b = state.t, state.episode, env
    start = episode_start(params, state, b)
    sessions = []
    for port in range(params.num_ports):
        k = int(state.port_ev[b, port])
        if k < 0:
            continue
        sessions.append(PluggedSession(
            port=params.port_names[port], session_id=f"ev{k}", soc=float(state.soc[b, port]),
            battery_kwh=float(state.battery_kwh[b, port]),
            energy_requested_kwh=float(episode.ev_requested_kwh[b, k]),
            energy_delivered_kwh=float(state.delivered_kwh[b, port]),
            departure=step_time(params, start, state.announced_departure_step[b, port]),
            max_charge_kw=float(state.ev_max_charge_kw[b, port]),
            max_discharge_kw=float(state.ev_max_discharge_kw[b, port]),
            v2g_consent=bool(state.ev_max_discharge_kw[b, port] > 0), min_soc=float(state.min_soc[b, port]),
            plugged_in=step_time(params, start, episode.ev_arrival_step[b, k])))
    h = params.forecast_steps
    issued = episode.forecast_windows
    window = state.forecast_series[b, :, t:t + h + 1] if issued is None else issued[b, t]
    forecasts = {name: window[i].tolist() for i, name in enumerate(FORECAST_FIELDS)}
    demand = {}
    if params.demand_forecast:
        demand = {"expected_arrivals": episode.demand_forecast[b, t, 0].tolist(),
                  "expected_energy_kwh": episode.demand_forecast[b, t, 1].tolist()}
    down = () if episode.port_down is None else [params.port_names[p] for p in
                                                 episode.port_down[b, t].nonzero()[0]]
    return SiteState(
        now=step_time(params, start, t), sessions=tuple(sessions), **forecasts, **demand,
        node_load_kw=dict(zip(params.node_names, episode.node_load_kw[b, t].tolist(), strict=True)),
        node_pv_kw=dict(zip(params.node_names, episode.node_pv_kw[b, t].tolist(), strict=True)),
        setpoint_kw=float(episode.setpoint_kw[b, t]), queue_length=int(state.schedule.queue_length[b, t]),
        peak_import_kw=float(state.peak_import_kw[b]), unavailable_ports=tuple(down))
