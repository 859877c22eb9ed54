"""The offline optimum: every episode planned with full knowledge of its future (HiGHS)."""

from __future__ import annotations

import numpy as np

from agents.plan_model import Window
from agents.plan_solver import OptimizationError, checked_batch, new_highs, plan_window
from envs.core import reset
from envs.episode import Episode
from envs.observation import observation_layout
from envs.site import SiteParams
from envs.state import State

__all__ = ["OfflineOptimal", "OptimizationError", "Window", "offline_windows", "plan_window",
           "power_to_action"]


def _rank_within(key: np.ndarray) -> np.ndarray:
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(len(key)) - np.searchsorted(ordered, ordered)
    return rank


def offline_windows(params: SiteParams, state: State) -> list[Window]:
    """One window per env of a freshly reset ``state``: the whole episode, every plug interval
    of its plug schedule, real departures; the unmet energy of EVs that leave (or give up after
    an outage) within the horizon is counted, and that of EVs plugged in at its end who have
    not left by then."""
    episode, schedule = state.episode, state.schedule
    horizon, k = params.horizon_steps, episode.max_evs
    counts = np.arange(horizon + 1)
    plug_step = np.repeat(counts, np.diff(schedule.plug_offsets))
    unplug_step = np.repeat(counts, np.diff(schedule.unplug_offsets))
    plug_key = schedule.plug_env * k + schedule.plug_ev
    unplug_key = schedule.unplug_env * k + schedule.unplug_ev
    stride = horizon + 2
    unplug_code = unplug_key * stride + _rank_within(unplug_key)
    order = np.argsort(unplug_code)
    code = plug_key * stride + _rank_within(plug_key)
    end = np.full(len(code), horizon)
    if len(order):
        at = np.minimum(np.searchsorted(unplug_code[order], code), len(order) - 1)
        matched = unplug_code[order[at]] == code
        end[matched] = unplug_step[order[at[matched]]]
    counted = np.zeros((episode.num_envs, k), dtype=bool)
    departed = schedule.unplug_departed
    counted[schedule.unplug_env[departed], schedule.unplug_ev[departed]] = True
    counted[schedule.gave_up_env, schedule.gave_up_ev] = True

    interval = np.lexsort((plug_step, plug_key))
    length = (end - plug_step)[interval]
    first = np.cumsum(length) - length
    which = np.repeat(interval, length)
    entry_step = plug_step[which] + np.arange(int(length.sum())) - np.repeat(first, length)
    entry_port, entry_key = schedule.plug_port[which], plug_key[which]
    entry_env = entry_key // k
    at_horizon = np.zeros((episode.num_envs, k), dtype=bool)
    last_step = entry_step == horizon - 1
    at_horizon[entry_env[last_step], entry_key[last_step] % k] = True
    at_horizon &= episode.ev_departure_step > horizon
    bounds = np.searchsorted(entry_env, np.arange(episode.num_envs + 1))
    fraction = _entry_fraction(params, schedule, entry_step, entry_env, entry_port)
    soc0 = episode.ev_soc_arrival
    room = np.minimum(episode.ev_requested_kwh, (1.0 - soc0) * episode.ev_battery_kwh)
    discharge = episode.ev_max_discharge_kw * episode.ev_v2g_consent
    windows = []
    for b in range(episode.num_envs):
        rows = slice(bounds[b], bounds[b + 1])
        evs, local = np.unique(entry_key[rows] - b * k, return_inverse=True)
        windows.append(Window(
            exo_kw=state.node_exo_kw[b, :horizon],
            price_buy_eur_kwh=episode.price_buy_eur_kwh[b, :horizon],
            price_sell_eur_kwh=episode.price_sell_eur_kwh[b, :horizon],
            tariff_eur_kwh=episode.tariff_eur_kwh[b, :horizon],
            carbon_kg_kwh=episode.carbon_kg_kwh[b, :horizon],
            setpoint_kw=episode.setpoint_kw[b, :horizon],
            peak_import_kw=0.0,
            entry_step=entry_step[rows], entry_port=entry_port[rows], entry_ev=local,
            ev_soc=soc0[b, evs], ev_battery_kwh=episode.ev_battery_kwh[b, evs],
            ev_max_charge_kw=episode.ev_max_charge_kw[b, evs], ev_max_discharge_kw=discharge[b, evs],
            ev_min_soc=episode.ev_min_soc[b, evs], ev_room_kwh=room[b, evs],
            ev_unmet_base_kwh=episode.ev_requested_kwh[b, evs], ev_counted=counted[b, evs],
            ev_at_horizon=at_horizon[b, evs], entry_fraction=None if fraction is None else fraction[rows]))
    return windows


def _entry_fraction(params: SiteParams, schedule, step, env, port) -> np.ndarray | None:
    """Share of its step each (step, env, port) entry's EV is there, from the schedule's partial
    steps; None when every entry is a whole step."""
    if len(schedule.partial_env) == 0:
        return None
    b, p = len(schedule.turned_away), params.num_ports
    partial_step = np.repeat(np.arange(len(schedule.partial_offsets) - 1), np.diff(schedule.partial_offsets))
    known = (partial_step * b + schedule.partial_env) * p + schedule.partial_port
    key = (step * b + env) * p + port
    at = np.minimum(np.searchsorted(known, key), len(known) - 1)
    return np.where(known[at] == key, schedule.partial_fraction[at], 1.0)


FLOAT32_MARGIN = 2.0**-22


def power_to_action(charge_kw: np.ndarray, discharge_kw: np.ndarray, max_charge_kw: np.ndarray,
                    max_discharge_kw: np.ndarray, margin: float = FLOAT32_MARGIN) -> np.ndarray:
    """Actions in [-1, 1] that ask for the planned grid-side kW of ports offering the given maxima.

    Partial fractions shrink by ``margin`` so that maxima read from a float32 observation never
    make the env deliver more than planned (which could overload a node the plan fills exactly).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        charge = np.where(max_charge_kw > 0, charge_kw / max_charge_kw, 0.0)
        discharge = np.where(max_discharge_kw > 0, discharge_kw / max_discharge_kw, 0.0)
    fraction = np.where(discharge_kw > charge_kw, -discharge, charge)
    return np.where(np.abs(fraction) >= 1.0, np.sign(fraction), fraction * (1.0 - margin))


class OfflineOptimal:
    """The perfect-foresight optimum of each episode, played back step by step.

    ``begin(params, episode)`` resets the env's physics on the batch (to read its plug
    schedule), solves one model per episode with everything known in advance (arrivals, real
    departures, prices, loads, PV, outages), and stores the plans; ``predict(obs)`` then
    returns, at each call, the next step's planned power as fractions of the available power
    in ``obs``, like an SB3 model (``(actions, None)``; float64 so that the plan is replayed to
    round-off). After ``begin``: ``objective_eur`` (B,), the reward the plan earns, and
    ``bound_eur`` (B,) above it (equal when proven optimal), ``solve_s`` (B,) including the model
    build, ``plans`` and ``windows``.

    Usually the plan is the exact optimum of a linear program. Where mixing charge and
    discharge would pay (negative prices, export dearer than import), the model becomes a MIP,
    solved within ``time_limit_s`` per episode and ``mip_rel_gap`` (see ``solve_model``).

    Arguments:
        params: the site.
        time_limit_s: HiGHS time per episode.
        mip_rel_gap: relative optimality gap at which a MIP stops.

    >>> import numpy as np
    >>> from envs.site import load_site
    >>> from envs.generators import generator_for
    >>> params = load_site("caltech", horizon_steps=16)
    >>> episode = generator_for(params).sample(params, np.random.default_rng(0), 2)
    >>> policy = OfflineOptimal(params)
    >>> policy.begin(params, episode)
    >>> policy.objective_eur.shape, bool((policy.bound_eur >= policy.objective_eur).all())
    ((2,), True)
    """

    acts_from_observation = False  # plays back a plan: cannot label states it did not plan for

    def __init__(self, params: SiteParams, time_limit_s: float = 10.0, mip_rel_gap: float = 1e-4):
        self.params = params
        self.options = {"time_limit_s": float(time_limit_s), "mip_rel_gap": float(mip_rel_gap)}
        self.layout = observation_layout(params)
        self.t = None

    def begin(self, params: SiteParams, episode: Episode) -> None:
        self.params = params
        self.layout = observation_layout(params)
        state = reset(params, episode)
        self.windows = offline_windows(params, state)
        highs = new_highs()
        self.plans = [plan_window(params, window, highs, **self.options) for window in self.windows]
        shape = (episode.num_envs, params.horizon_steps, params.num_ports)
        self.charge_kw, self.discharge_kw = np.zeros(shape), np.zeros(shape)
        for b, (window, plan) in enumerate(zip(self.windows, self.plans, strict=True)):
            self.charge_kw[b, window.entry_step, window.entry_port] = plan.charge_kw
            self.discharge_kw[b, window.entry_step, window.entry_port] = plan.discharge_kw
        self.objective_eur = np.array([plan.objective_eur for plan in self.plans])
        self.bound_eur = np.array([plan.bound_eur for plan in self.plans])
        self.solve_s = np.array([plan.build_s + plan.solve_s for plan in self.plans])
        self.t = 0

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        planned_envs = 0 if self.t is None else self.charge_kw.shape[0]
        obs, batch = checked_batch(observation, self.t, planned_envs, self.params.horizon_steps)
        t = self.t
        self.t += 1
        actions = power_to_action(self.charge_kw[:, t], self.discharge_kw[:, t],
                                  batch[:, self.layout["max_charge_kw"]],
                                  batch[:, self.layout["max_discharge_kw"]])
        return (actions[0] if obs.ndim == 1 else actions), None
