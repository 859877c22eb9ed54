"""reset() and step(): the one implementation of the site physics, for a whole batch."""

from __future__ import annotations

import numpy as np

from envs.action_layer import action_bounds, action_width, fill_by_priority, signed_fraction
from envs.actions import action_array
from envs.dynamics import available_power, battery_energy_kwh, project_to_limits, split_power
from envs.episode import Episode
from envs.observation import forecast_series, step_observations
from envs.plugging import plug_schedule
from envs.reward import TERM_INDEX, TERMS
from envs.site import SiteParams
from envs.state import EV_FIELDS, State, plug_table

_TINY = 1e-12


def reset(params: SiteParams, episode: Episode) -> State:
    """Initial state of a batch: the plug schedule is fixed and step 0's EVs are plugged in."""
    episode.check(params)
    b, p = episode.num_envs, params.num_ports
    exo = episode.node_load_kw - episode.node_pv_kw
    prefix = np.zeros(exo.shape[:2] + (exo.shape[2] + 1,))
    np.cumsum(exo, axis=2, out=prefix[:, :, 1:])
    node_exo = prefix[:, :, params.node_subtree_end] - prefix[:, :, :-1]
    schedule = plug_schedule(params, episode)
    state = State(
        t=0,
        episode=episode,
        schedule=schedule,
        node_exo_kw=node_exo,
        forecast_series=forecast_series(episode),
        step_obs=step_observations(params, episode, node_exo, schedule.queue_length),
        plug_table=plug_table(params, episode, schedule),
        port_ev=np.full((b, p), -1, dtype=np.int64),
        ev_on_port=np.zeros((len(EV_FIELDS), b, p)),
        soc=np.zeros((b, p)),
        remaining_kwh=np.zeros((b, p)),
        delivered_kwh=np.zeros((b, p)),
        max_charge_kw=np.zeros((b, p)),
        max_discharge_kw=np.zeros((b, p)),
        ev_soc=episode.ev_soc_arrival.copy(),
        ev_delivered_kwh=np.zeros_like(episode.ev_soc_arrival),
        peak_import_kw=np.zeros(b),
        totals=np.zeros((b, len(TERMS))),
    )
    changes = {"soc": state.soc, "remaining_kwh": state.remaining_kwh, "delivered_kwh": state.delivered_kwh}
    _plug_events(params, state, 0, changes)
    return _with_available_power(params, state, changes, 0)


def step(params: SiteParams, state: State, action: np.ndarray):
    """Advance every env of the batch by one step.

    ``action`` (B, P) in [-1, 1] is the fraction of each port's available charge (> 0) or
    discharge (< 0) power, or as the site's ``action_mode`` says (``envs.action_layer``); it is
    read, never modified. Returns ``(state, terms, info)`` where
    ``terms`` (B, len(TERMS)) are this step's reward terms in physical units and ``info`` holds
    per-env arrays for the diagnostics that are not reward terms.
    """
    t, dt, episode = state.t, params.dt_hours, state.episode
    if t >= params.horizon_steps:
        raise RuntimeError(f"the episode ended at step {t} (horizon_steps); reset before stepping")
    fraction, clipped = check_action(params, state, action)
    priority = None
    if params.action_mode != "signed":
        fraction, priority = signed_fraction(params, fraction)
    charge_kw, discharge_kw = split_power(fraction)
    charge_kw *= state.max_charge_kw
    discharge_kw *= state.max_discharge_kw
    if priority is None:
        requested = charge_kw + discharge_kw
    else:
        requested = fill_by_priority(params, charge_kw, discharge_kw, priority, state.node_exo_kw[:, t])
        charge_kw, discharge_kw = split_power(requested)
    power, site_kw, violation_kw = project_to_limits(params, requested, state.node_exo_kw[:, t])
    if power is not requested:
        charge_kw, discharge_kw = split_power(power)
    energy = battery_energy_kwh(params, charge_kw, discharge_kw)
    soc = energy / np.maximum(state.battery_kwh, _TINY)
    soc += state.soc
    np.minimum(soc, 1.0, out=soc)
    np.maximum(soc, 0.0, out=soc)

    net_kwh = _row_sum(energy)
    charged_kwh = _row_sum(np.maximum(energy, 0.0))
    discharged_kwh = charged_kwh - net_kwh
    terms = np.empty((len(site_kw), len(TERMS)))
    peak = _grid_terms(params, episode, t, site_kw, violation_kw, state.peak_import_kw, terms)
    terms[:, TERM_INDEX["charging_revenue_eur"]] = episode.tariff_eur_kwh[:, t] * net_kwh
    terms[:, TERM_INDEX["degradation_kwh"]] = charged_kwh + discharged_kwh
    terms[:, TERM_INDEX["overload_requested_kwh"]] = (
        _row_sum(np.abs(requested - power)) * dt if power is not requested and priority is None else 0.0)

    changes = {"t": t + 1, "soc": soc, "remaining_kwh": state.remaining_kwh - energy,
               "delivered_kwh": state.delivered_kwh + energy, "peak_import_kw": peak}
    terms[:, TERM_INDEX["unmet_at_horizon_kwh"]] = (
        _unmet_at_horizon(params, state, changes["remaining_kwh"]) if t + 1 == params.horizon_steps else 0.0)
    terms[:, TERM_INDEX["unmet_kwh"]] = _plug_events(params, state, t + 1, changes)
    changes["totals"] = state.totals + terms
    schedule = state.schedule
    info = {
        "site_power_kw": site_kw,
        "charged_kwh": charged_kwh,
        "discharged_kwh": discharged_kwh,
        "turned_away": schedule.turned_away[:, t + 1],
        "abandoned": schedule.abandoned[:, t + 1],
        "wait_hours": schedule.wait_steps[:, t + 1] * dt,
        "action_clipped": clipped,
    }
    return _with_available_power(params, state, changes, t + 1), terms, info


def check_action(params: SiteParams, state: State, action) -> tuple[np.ndarray, np.ndarray]:
    """The action clipped to the mode's bounds and the count of clipped entries per env.

    The action is (B, P), or (B, 2P) in ``priority`` mode (``envs.action_layer``). Raises
    ValueError naming the env and port of a NaN or infinite entry, or naming the expected
    shape. The caller's array is never modified.
    """
    expected = (state.port_ev.shape[0], action_width(params))
    per_port = "2 per port: power, priority" if params.action_mode == "priority" else "ports"
    action = action_array(action, expected, f" (envs, {per_port} of site {params.name!r})")
    low, high = action_bounds(params)
    if low == -1.0:
        largest = np.maximum.reduce(np.abs(action), axis=None)
        if largest <= 1.0:
            return action, np.zeros(expected[0], dtype=np.int64)
    elif np.minimum.reduce(action, axis=None) >= low and np.maximum.reduce(action, axis=None) <= high:
        return action, np.zeros(expected[0], dtype=np.int64)
    if not np.isfinite(action).all():
        env, column = np.argwhere(~np.isfinite(action))[0]
        port, what = column, ""
        if params.action_mode == "priority":
            port, what = column // 2, (" power", " priority")[column % 2]
        raise ValueError(f"action for env {env}, port {port} ({params.port_names[port]}){what} is "
                         f"{action[env, column]}; actions must be finite")
    return np.clip(action, low, high), np.count_nonzero((action < low) | (action > high), axis=1)


def _row_sum(x: np.ndarray) -> np.ndarray:
    return np.add.reduce(x, axis=1)


def _unmet_at_horizon(params: SiteParams, state: State, remaining_kwh: np.ndarray) -> np.ndarray:
    """kWh (per env) still wanted at the horizon by the EVs on a port in the last step that
    have not departed by then (those departing at the horizon count in ``unmet_kwh``)."""
    departure = np.take_along_axis(state.episode.ev_departure_step, np.maximum(state.port_ev, 0), axis=1)
    staying = state.occupied & (departure > params.horizon_steps)
    return _row_sum(np.where(staying, np.maximum(remaining_kwh, 0.0), 0.0))


def _with_available_power(params: SiteParams, state: State, changes: dict, t: int) -> State:
    """``changes`` with the power available at step ``t``, applied to ``state``."""
    ev_on_port = changes.get("ev_on_port", state.ev_on_port)
    schedule, present = state.schedule, None
    partial = slice(schedule.partial_offsets[t], schedule.partial_offsets[t + 1])
    if partial.start < partial.stop:
        present = (schedule.partial_env[partial] * params.num_ports + schedule.partial_port[partial],
                   schedule.partial_fraction[partial])
    changes["max_charge_kw"], changes["max_discharge_kw"] = available_power(
        params, changes["soc"], changes["remaining_kwh"], ev_on_port, present)
    return state.replace(**changes)


GRID_TERMS = ("energy_cost_eur", "export_revenue_eur", "grid_violation_kwh", "peak_increase_kw", "carbon_kg",
              "setpoint_error_kwh")


def _grid_terms(params: SiteParams, episode: Episode, t: int, site_kw, violation_kw, peak_before_kw,
                terms: np.ndarray) -> np.ndarray:
    """Write the ``GRID_TERMS`` of step ``t`` (the terms that follow from the grid connection's
    flow ``site_kw``) into ``terms``; returns the peak import after the step."""
    dt = params.dt_hours
    imported = np.maximum(site_kw, 0.0) * dt
    exported = np.maximum(-site_kw, 0.0) * dt
    terms[:, TERM_INDEX["energy_cost_eur"]] = episode.price_buy_eur_kwh[:, t] * imported
    terms[:, TERM_INDEX["export_revenue_eur"]] = episode.price_sell_eur_kwh[:, t] * exported
    terms[:, TERM_INDEX["grid_violation_kwh"]] = violation_kw * dt
    peak = np.maximum(peak_before_kw, site_kw)
    terms[:, TERM_INDEX["peak_increase_kw"]] = peak - peak_before_kw
    terms[:, TERM_INDEX["carbon_kg"]] = episode.carbon_kg_kwh[:, t] * imported
    terms[:, TERM_INDEX["setpoint_error_kwh"]] = np.abs(site_kw - episode.setpoint_kw[:, t]) * dt
    return peak


def idle_site_terms(params: SiteParams, state: State, idle_peak_kw: np.ndarray):
    """The reward terms step ``state.t`` would have if no port drew or gave power: what the
    inflexible load and PV alone cost (energy, export, carbon, the peak they set, the limits they
    break), which no action changes. ``idle_peak_kw`` (B,) is the idle site's peak import so
    far (0 at an episode's start). Returns (terms (B, len(TERMS)), the idle peak after the step);
    terms outside ``GRID_TERMS`` are 0.
    """
    t = state.t
    idle = np.zeros((state.episode.num_envs, params.num_ports))
    _, site_kw, violation_kw = project_to_limits(params, idle, state.node_exo_kw[:, t])
    terms = np.zeros((len(site_kw), len(TERMS)))
    peak = _grid_terms(params, state.episode, t, site_kw, violation_kw, idle_peak_kw, terms)
    return terms, peak


def _plug_events(params: SiteParams, state: State, t: int, changes: dict) -> np.ndarray:
    """Unplug leaving EVs and plug arriving ones per the schedule at step ``t``.

    Reads and writes the port arrays in ``changes``; ``soc``, ``remaining_kwh`` and
    ``delivered_kwh`` there are written in place (the caller made them for this step; at reset
    they are fresh zeros). Returns the unmet energy (kWh, per env) of EVs that departed, or that
    an outage pushed off their port and that left the queue without charging again.
    """
    episode, schedule = state.episode, state.schedule
    unplug = slice(schedule.unplug_offsets[t], schedule.unplug_offsets[t + 1])
    plug = slice(schedule.plug_offsets[t], schedule.plug_offsets[t + 1])
    unmet = np.zeros(state.port_ev.shape[0])
    gave_up = slice(schedule.gave_up_offsets[t], schedule.gave_up_offsets[t + 1])
    if gave_up.start < gave_up.stop:
        bi, ki = schedule.gave_up_env[gave_up], schedule.gave_up_ev[gave_up]
        left = np.maximum(episode.ev_requested_kwh[bi, ki] - state.ev_delivered_kwh[bi, ki], 0.0)
        unmet += np.bincount(bi, left, minlength=len(unmet))
    if unplug.start == unplug.stop and plug.start == plug.stop:
        return unmet
    soc, remaining, delivered = changes["soc"], changes["remaining_kwh"], changes["delivered_kwh"]
    port_ev, ev_on_port = state.port_ev.copy(), state.ev_on_port.copy()
    ev_soc, ev_delivered = state.ev_soc, state.ev_delivered_kwh

    if unplug.start < unplug.stop:
        bi, pi, ki = schedule.unplug_env[unplug], schedule.unplug_port[unplug], schedule.unplug_ev[unplug]
        departed = schedule.unplug_departed[unplug]
        unmet += np.bincount(bi[departed], np.maximum(remaining[bi[departed], pi[departed]], 0.0),
                             minlength=len(unmet))
        if not departed.all():
            moved = ~departed
            ev_soc, ev_delivered = ev_soc.copy(), ev_delivered.copy()
            ev_soc[bi[moved], ki[moved]] = soc[bi[moved], pi[moved]]
            ev_delivered[bi[moved], ki[moved]] = delivered[bi[moved], pi[moved]]
        port_ev[bi, pi] = -1
        ev_on_port[:, bi, pi] = 0.0
        soc[bi, pi] = remaining[bi, pi] = delivered[bi, pi] = 0.0

    if plug.start < plug.stop:
        bi, pi, ki = schedule.plug_env[plug], schedule.plug_port[plug], schedule.plug_ev[plug]
        port_ev[bi, pi] = ki
        ev_on_port[:, bi, pi] = state.plug_table[:, plug]
        soc[bi, pi] = ev_soc[bi, ki]
        delivered[bi, pi] = ev_delivered[bi, ki]
        remaining[bi, pi] = episode.ev_requested_kwh[bi, ki] - ev_delivered[bi, ki]
    changes.update(port_ev=port_ev, ev_on_port=ev_on_port, ev_soc=ev_soc, ev_delivered_kwh=ev_delivered)
    return unmet
