"""Model predictive control: the offline model over a rolling window of what is known now."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import highspy
import numpy as np

from agents.baselines import EarliestDeadlineFirst
from agents.optimal import power_to_action
from agents.plan_model import Model, Window, build_model
from agents.plan_solver import OptimizationError, checked_batch, new_highs, solve_model
from envs.core import reset
from envs.departures import departure_model_for
from envs.episode import Episode
from envs.errors import ConfigError
from envs.observability import estimator_for
from envs.observation import PEAK_FIELD, observation_layout
from envs.site import SiteParams

PRIMAL_SIMPLEX = 4  # HiGHS simplex_strategy; the last window's basis, shifted, is nearly primal feasible
RETRY_OPTIONS = ({"simplex_strategy": 1}, {"solver": "ipm"}, {"presolve": "off", "simplex_strategy": 1})
_STATUSES = tuple(highspy.HighsBasisStatus.__members__.values())
_SCENARIO_KEY = 1 << 20  # a checkpoint's key: EV times this plus the episode step the scenario leaves at


class ModelPredictiveControl:
    """Re-plan every step over the next ``horizon_steps`` with what is known now; apply the first step.

    The plan is the offline model (``agents.plan_model.build_model``) of a window that holds only
    the EVs plugged in now, with their SoC and remaining request from the observation and their
    *announced* departures brought forward by ``departure_margin_hours`` (drivers also leave
    early), and the price, tariff, carbon, setpoint, load and PV series of the episode over the
    window (the env's perfect forecast); no future arrivals. At an ``observability`` level other
    than ``full`` it plans on what the site sees (``envs.observability``): the departure from the
    observation's (estimated) hours to departure, and the estimator's mean battery where the SoC
    is an estimate; the car's power limits and V2G consent are known at every level. An EV
    still plugged past that time is planned as leaving after this step. An EV leaving after the
    window counts as unmet only what it could not get after the window at full power. The
    demand charge counts from the highest import applied so far. Where the relaxation would
    charge and discharge a port in the first step (cycling V2G pays under a tariff on charged
    energy), the first step's modes are made integer. Each solve starts from the last window's
    basis, shifted by one step; one that runs past ``warm_start_limit_s`` is retried from scratch.

    With ``departure_quantiles`` (levels such as ``(0.1, 0.3, 0.5, 0.7, 0.9)``) the plan does not
    trust the announced departure: it plans each EV up to the last of its departure scenarios,
    the quantiles of the real departure given the announced stay and the time plugged in so
    far (``envs.departures``, from the site's own sessions), and weighs the energy missing at
    each scenario by its share of the levels (``agents.plan_model.Window``'s checkpoints). The
    margin then moves every scenario. The announcement must be known (not ``ocpp``).

    With ``future_arrivals`` the planner is a privileged teacher: its window also holds the EVs
    the episode will plug in during it (their port, arrival, announced departure less the margin,
    SoC and request, from the episode's plug schedule), as the offline optimum knows them. No
    site can know this when it acts; it measures what arrival knowledge is worth and gives
    imitation a teacher that plans for the day's later EVs. It plans on announced departures
    (not with ``departure_quantiles``).

    When HiGHS ends without a usable plan (status ``Unknown``, say), the window is solved again
    from scratch with each of ``retry_options`` in turn (HiGHS options: dual simplex, interior
    point, no presolve); when every try fails, that env's decision is the ``fallback`` policy's.
    ``solver_retries`` and ``solver_fallbacks`` (B,) count them per env since ``begin``.

    ``begin(params, episode)`` must be called before each rollout: it reads the episode's
    series and its plug schedule (the env's assignment of arrivals to ports, applied step by
    step as it happens, never ahead). ``predict(obs)`` follows SB3's protocol, one call per
    step, and returns float64 actions. ``decision_s`` lists the seconds of each env's decision.

    Arguments:
        params: the site.
        horizon_steps: length of the planning window.
        departure_margin_hours: how much earlier than announced each EV is planned to leave.
        time_limit_s: HiGHS time per decision.
        mip_rel_gap: relative optimality gap at which a MIP stops.
        fallback: the policy of the decisions no solve could plan: a baseline class (or any
            callable taking the params) or a policy object; default ``EarliestDeadlineFirst``.
        retry_options: HiGHS option sets tried, in order, after a failed solve.
        departure_quantiles: levels of the departure scenarios, or None to plan on the
            announced departure alone.
        warm_start_limit_s: a solve from the last window's basis running longer than this is
            solved again from scratch (with ``retry_options``, counted in ``solver_retries``).
        future_arrivals: also plan the EVs the episode plugs in during the window (privileged).

    >>> import numpy as np
    >>> from envs.site import load_site
    >>> from envs.generators import generator_for
    >>> from envs.core import reset, step
    >>> from envs.observation import observe
    >>> params = load_site("caltech", horizon_steps=12)
    >>> episode = generator_for(params).sample(params, np.random.default_rng(0), 2)
    >>> policy, state = ModelPredictiveControl(params, horizon_steps=8), reset(params, episode)
    >>> policy.begin(params, episode)
    >>> while state.t < params.horizon_steps:
    ...     action, _ = policy.predict(observe(params, state))
    ...     state, terms, info = step(params, state, action)
    >>> from envs.reward import TERM_INDEX
    >>> float(state.totals[:, TERM_INDEX["overload_requested_kwh"]].max())  # plans respect every limit
    0.0
    """

    def __init__(self, params: SiteParams, horizon_steps: int = 24, departure_margin_hours: float = 1.0,
                 time_limit_s: float = 1.0, mip_rel_gap: float = 1e-4, fallback=EarliestDeadlineFirst,
                 retry_options: Sequence[Mapping] = RETRY_OPTIONS,
                 departure_quantiles: Sequence[float] | None = None, warm_start_limit_s: float = 1.0,
                 future_arrivals: bool = False):
        if horizon_steps < 1:
            raise ValueError(f"horizon_steps must be >= 1, got {horizon_steps}")
        if future_arrivals and departure_quantiles is not None:
            raise ConfigError("future_arrivals plans on announced departures; "
                              "leave departure_quantiles unset")
        self.future_arrivals = bool(future_arrivals)
        self.warm_start_limit_s = float(warm_start_limit_s)
        self.departure_quantiles = (None if departure_quantiles is None
                                    else tuple(map(float, departure_quantiles)))
        self.params = params
        is_policy = not isinstance(fallback, type) and callable(getattr(fallback, "predict", None))
        self.make_fallback = None if is_policy else fallback
        self.fallback = fallback if self.make_fallback is None else self.make_fallback(params)
        self.retry_options = [dict(options) for options in retry_options]
        self.horizon_steps = int(horizon_steps)
        self.departure_margin_hours = float(departure_margin_hours)
        self.options = {"time_limit_s": float(time_limit_s), "mip_rel_gap": float(mip_rel_gap),
                        "first_steps": 1}
        self.t = None
        self.decision_s: list[float] = []

    def begin(self, params: SiteParams, episode: Episode) -> None:
        if self.make_fallback is not None and params is not self.params:
            self.fallback = self.make_fallback(params)
        self.params = params
        self.layout = observation_layout(params)
        state = reset(params, episode)
        self.episode, self.schedule, self.node_exo_kw = episode, state.schedule, state.node_exo_kw
        self.port_ev = np.full((episode.num_envs, params.num_ports), -1, dtype=np.int64)
        self.peak_import_kw = np.zeros(episode.num_envs)
        self.highs = [new_highs() for _ in range(episode.num_envs)]
        for highs in self.highs:
            highs.setOptionValue("simplex_strategy", PRIMAL_SIMPLEX)
        self.last = [None] * episode.num_envs
        self.solver_retries = np.zeros(episode.num_envs, dtype=np.int64)
        self.solver_fallbacks = np.zeros(episode.num_envs, dtype=np.int64)
        self.charge_kwh_per_kw = params.port_charge_efficiency * params.dt_hours
        self.departures = None
        if self.departure_quantiles is not None:
            if params.observability == "ocpp":
                raise ConfigError(f"site {params.name!r}: departure_quantiles need the announced departure, "
                                  f"which observability 'ocpp' does not report")
            self.departures = departure_model_for(params, self.departure_quantiles)
        self.t = 0

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        prepared_envs = 0 if self.t is None else self.episode.num_envs
        obs, batch = checked_batch(observation, self.t, prepared_envs, self.params.horizon_steps)
        self._apply_plug_events(self.t)
        actions = np.zeros((batch.shape[0], self.params.num_ports))
        for b in range(batch.shape[0]):
            start = time.perf_counter()
            actions[b] = self._decide(b, batch[b])
            self.decision_s.append(time.perf_counter() - start)
        self.t += 1
        return (actions[0] if obs.ndim == 1 else actions), None

    def _apply_plug_events(self, t: int) -> None:
        s = self.schedule
        gone = slice(s.unplug_offsets[t], s.unplug_offsets[t + 1])
        self.port_ev[s.unplug_env[gone], s.unplug_port[gone]] = -1
        came = slice(s.plug_offsets[t], s.plug_offsets[t + 1])
        self.port_ev[s.plug_env[came], s.plug_port[came]] = s.plug_ev[came]

    def window(self, b: int, obs: np.ndarray) -> Window:
        """The window env ``b`` plans at the current step from its observation ``obs`` (D,)."""
        params, episode, t = self.params, self.episode, self.t
        steps = min(self.horizon_steps, params.horizon_steps - t)
        ports = np.flatnonzero(self.port_ev[b] >= 0)
        evs = self.port_ev[b, ports]
        soc = obs[self.layout["soc"]][ports]
        remaining = obs[self.layout["remaining_kwh"]][ports]
        battery = episode.ev_battery_kwh[b, evs]
        car_kw = episode.ev_max_charge_kw[b, evs]
        announced = episode.ev_announced_departure_step[b, evs]
        if params.observability != "full":
            hours = obs[self.layout["hours_to_departure"]][ports]
            announced = t + np.rint(hours / params.dt_hours).astype(np.int64)
            estimated = obs[self.layout["soc_estimated"]][ports] > 0.5
            battery = np.where(estimated, estimator_for(params).battery_kwh, battery)
            remaining = np.where(obs[self.layout["max_charge_kw"]][ports] > 0, remaining, 0.0)
        margin = round(self.departure_margin_hours / params.dt_hours)
        scenarios = None
        if self.departures is not None:
            arrival = episode.ev_arrival_step[b, evs]
            departs = t + self.departures.steps_left(announced - arrival, t - arrival)
            scenarios = np.maximum(departs - margin - t, 1)
            steps_left = scenarios.max(axis=1)
        else:
            steps_left = np.maximum(announced - margin - t, 1)
        length = np.minimum(steps_left, steps)
        discharge_kw = episode.ev_max_discharge_kw[b, evs] * episode.ev_v2g_consent[b, evs]
        min_soc, offset = episode.ev_min_soc[b, evs], np.zeros(len(ports), dtype=np.int64)
        if self.future_arrivals:
            now = (ports, evs, offset, soc, remaining, battery, car_kw, announced, steps_left, discharge_kw,
                   min_soc)
            (ports, evs, offset, soc, remaining, battery, car_kw, announced, steps_left, discharge_kw,
             min_soc) = (np.concatenate(pair) for pair in zip(now, self._arrivals(b, steps, margin),
                                                               strict=True))
            length = np.minimum(steps_left, steps - offset)
        first = np.cumsum(length) - length
        entry_ev = np.repeat(np.arange(len(ports)), length)
        full_kwh = self.charge_kwh_per_kw[ports] * np.minimum(car_kw, params.port_max_charge_kw[ports])
        later_kwh = full_kwh * np.maximum(steps_left - (steps - offset), 0)
        checkpoints = {}
        if scenarios is not None:
            k = scenarios.shape[1]
            counted = (departs <= params.horizon_steps).ravel()
            pairs = np.stack([np.repeat(np.arange(len(ports)), k), scenarios.ravel()], axis=1)[counted]
            pairs, count = np.unique(pairs, axis=0, return_counts=True)  # scenarios that coincide: one row
            ev_of, left = pairs.T
            checkpoints = dict(
                checkpoint_entry=first[ev_of] + np.minimum(left, length[ev_of]) - 1,
                checkpoint_base_kwh=remaining[ev_of] - full_kwh[ev_of] * np.maximum(left - steps, 0),
                checkpoint_weight=count / k,
                checkpoint_key=evs[ev_of].astype(np.int64) * _SCENARIO_KEY + t + left)
        window = slice(t, t + steps)
        return Window(
            exo_kw=self.node_exo_kw[b, window],
            price_buy_eur_kwh=episode.price_buy_eur_kwh[b, window],
            price_sell_eur_kwh=episode.price_sell_eur_kwh[b, window],
            tariff_eur_kwh=episode.tariff_eur_kwh[b, window],
            carbon_kg_kwh=episode.carbon_kg_kwh[b, window],
            setpoint_kw=episode.setpoint_kw[b, window],
            peak_import_kw=float(self.peak_import_kw[b]),
            entry_step=np.repeat(offset, length) + np.arange(len(entry_ev)) - np.repeat(first, length),
            entry_port=ports[entry_ev],
            entry_ev=entry_ev,
            ev_soc=soc,
            ev_battery_kwh=battery,
            ev_max_charge_kw=car_kw,
            ev_max_discharge_kw=discharge_kw,
            ev_min_soc=min_soc,
            ev_room_kwh=np.maximum(np.minimum(remaining, (1.0 - soc) * battery), 0.0),
            ev_unmet_base_kwh=remaining - later_kwh,
            ev_counted=(announced <= params.horizon_steps) & (scenarios is None),
            ev_id=evs,
            start_step=t,
            **checkpoints,
        )

    def _arrivals(self, b: int, steps: int, margin: int) -> tuple:
        """The EVs env ``b``'s plug schedule plugs in after this step and within ``steps`` (each one's
        first plug interval): ports, EVs, step offsets, SoC, request, battery, car kW, announced
        departure, steps left from the offset, discharge kW and min SoC, as ``window`` orders them."""
        s, episode, t = self.schedule, self.episode, self.t
        events = np.arange(s.plug_offsets[t + 1], s.plug_offsets[t + steps])
        events = events[s.plug_env[events] == b]
        evs, first = np.unique(s.plug_ev[events], return_index=True)
        events = events[first]
        offset = np.searchsorted(s.plug_offsets, events, side="right") - 1 - t
        announced = episode.ev_announced_departure_step[b, evs]
        return (s.plug_port[events], evs, offset, episode.ev_soc_arrival[b, evs],
                episode.ev_requested_kwh[b, evs], episode.ev_battery_kwh[b, evs],
                episode.ev_max_charge_kw[b, evs], announced, np.maximum(announced - margin - t - offset, 1),
                episode.ev_max_discharge_kw[b, evs] * episode.ev_v2g_consent[b, evs],
                episode.ev_min_soc[b, evs])

    def _decide(self, b: int, obs: np.ndarray) -> np.ndarray:
        if self.solver_fallbacks[b]:  # a fallback step made an import no plan knows: read the peak so far
            self.peak_import_kw[b] = max(self.peak_import_kw[b], float(obs[self.layout[PEAK_FIELD]][0]))
        window = self.window(b, obs)
        now = window.entry_step == 0
        if not now.any():
            self.peak_import_kw[b] = max(self.peak_import_kw[b], window.exo_kw[0, 0])
            return np.zeros(self.params.num_ports)
        model = build_model(self.params, window)
        plan = self._solve(b, model)
        if plan is None:
            self.solver_fallbacks[b] += 1
            self.last[b] = None
            action, _ = self.fallback.predict(obs.astype(np.float32), deterministic=True)
            return np.asarray(action, dtype=np.float64)
        self.last[b] = None if plan.basis is None else (model.col_key, model.row_key, *plan.basis)
        self.peak_import_kw[b] = max(self.peak_import_kw[b], plan.site_import_kw[0])
        charge, discharge = np.zeros(self.params.num_ports), np.zeros(self.params.num_ports)
        charge[window.entry_port[now]] = plan.charge_kw[now]
        discharge[window.entry_port[now]] = plan.discharge_kw[now]
        return power_to_action(charge, discharge, obs[self.layout["max_charge_kw"]],
                               obs[self.layout["max_discharge_kw"]])

    def _solve(self, b: int, model: Model):
        """The plan of ``model`` for env ``b``, retried with each of ``retry_options``; None if all fail."""
        try:
            basis = _carried_basis(model, self.last[b])
            return solve_model(model, self.highs[b], basis=basis, lp_time_limit_s=self.warm_start_limit_s,
                               **self.options)
        except OptimizationError:
            self.highs[b] = new_highs()
            self.highs[b].setOptionValue("simplex_strategy", PRIMAL_SIMPLEX)
        for options in self.retry_options:
            self.solver_retries[b] += 1
            highs = new_highs()
            for key, value in options.items():
                highs.setOptionValue(key, value)
            try:
                return solve_model(model, highs, **self.options)
            except OptimizationError:
                continue
        return None


def _carried_basis(model: Model, last: tuple | None) -> tuple[list, list] | None:
    """The last window's basis on this model: statuses of the columns and rows with the same key
    (same kind, EV and episode step); new columns at their lower bound, new rows basic."""
    if last is None:
        return None
    col_key, row_key, col_status, row_status = last
    return _lookup(model.col_key, col_key, col_status, 0), _lookup(model.row_key, row_key, row_status, 1)


def _lookup(keys: np.ndarray, known: np.ndarray, status: np.ndarray, default: int) -> list:
    order = np.argsort(known)
    at = order[np.minimum(np.searchsorted(known[order], keys), len(order) - 1)]
    return [_STATUSES[value] for value in np.where(known[at] == keys, status[at], default).tolist()]
