"""One linear model of the site physics, solved with HiGHS: the offline optimum and MPC's model."""

from __future__ import annotations

import dataclasses
import functools
import time

import highspy
import numpy as np
import scipy.sparse as sp

from envs.core import reset
from envs.dynamics import taper_energy_kwh
from envs.episode import Episode
from envs.observation import observation_layout
from envs.site import SiteParams
from envs.state import State

TOLERANCE_KW = 1e-7
_INF = highspy.kHighsInf
_INTEGER = np.uint8(highspy.HighsVarType.kInteger.value)
_SOLVED = {highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kModelEmpty}
_FEASIBLE_STOPS = {highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kIterationLimit,
                   highspy.HighsModelStatus.kInterrupt}


class OptimizationError(RuntimeError):
    """HiGHS ended without a usable solution; the message names its status and the model size."""


@dataclasses.dataclass(frozen=True, eq=False)
class Window:
    """What one linear program plans: S steps of one env and the EVs plugged during them.

    An *entry* is one (EV, step) pair with the EV on a port; an EV's entries are consecutive
    and in step order, over one or several plug intervals (an outage moves it between ports).
    ``ev_room_kwh`` bounds the energy the EV may take over the window (its remaining request
    and its battery room); ``ev_unmet_base_kwh`` minus that energy is counted unmet where
    ``ev_counted``, and unmet at the horizon where ``ev_at_horizon``.
    """

    exo_kw: np.ndarray  # (S, N) inflexible load minus PV of each node's subtree
    price_buy_eur_kwh: np.ndarray  # (S,)
    price_sell_eur_kwh: np.ndarray  # (S,)
    tariff_eur_kwh: np.ndarray  # (S,)
    carbon_kg_kwh: np.ndarray  # (S,)
    setpoint_kw: np.ndarray  # (S,)
    peak_import_kw: float  # highest site import before the window
    entry_step: np.ndarray  # (R,) int, step within the window
    entry_port: np.ndarray  # (R,) int
    entry_ev: np.ndarray  # (R,) int, index into the ev_ arrays
    ev_soc: np.ndarray  # (E,) SoC at the window start
    ev_battery_kwh: np.ndarray  # (E,)
    ev_max_charge_kw: np.ndarray  # (E,) the car's own limit
    ev_max_discharge_kw: np.ndarray  # (E,) 0 without V2G consent
    ev_min_soc: np.ndarray  # (E,)
    ev_room_kwh: np.ndarray  # (E,)
    ev_unmet_base_kwh: np.ndarray  # (E,)
    ev_counted: np.ndarray  # (E,) bool
    ev_at_horizon: np.ndarray | None = None  # (E,) bool, still plugged in at the episode's horizon
    entry_fraction: np.ndarray | None = None  # (R,) share of the step the EV is there (None: all)
    ev_id: np.ndarray | None = None  # (E,) int identity across windows (episode EV index), for warm starts
    start_step: int = 0  # episode step of the window's first step

    @property
    def steps(self) -> int:
        return self.exo_kw.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A window's linear program as HiGHS takes it (column-wise), with its column indices."""

    window: Window
    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    matrix: sp.csc_matrix
    col_key: np.ndarray  # identity of each column across windows (kind, EV, episode step)
    row_key: np.ndarray  # likewise for rows
    offset: float
    charge: np.ndarray  # (R,) column of each entry's charge kW
    discharge: np.ndarray  # (V,) columns of the discharge kW of the entries that may discharge
    v2g_entry: np.ndarray  # (V,) those entries
    mode: np.ndarray  # (V,) columns choosing discharge (1) or charge (0)
    energy: np.ndarray  # (R,) columns of the EV's energy taken since the window start, after each entry
    floor_kwh: np.ndarray  # (V,) lowest energy allowed after discharging (min SoC)
    site_import: np.ndarray  # (S,) columns
    site_export: np.ndarray  # (S,)
    export_mode: np.ndarray  # (S,)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A solved window: grid-side kW per entry, the reward the plan earns, and solver figures."""

    charge_kw: np.ndarray  # (R,)
    discharge_kw: np.ndarray  # (R,)
    site_import_kw: np.ndarray  # (S,)
    objective_eur: float
    bound_eur: float  # no plan earns more (equal to objective_eur when the plan is optimal)
    status: str
    integer_columns: int
    build_s: float
    solve_s: float
    basis: tuple[np.ndarray, np.ndarray] | None = None  # HiGHS column and row statuses of the relaxation


@functools.lru_cache(maxsize=32)
def port_ancestors(params: SiteParams) -> np.ndarray:
    """(P, depth + 1) nodes above each port, its own node first, padded with -1."""
    node = params.port_node.copy()
    out = np.full((params.num_ports, int(params.node_depth.max()) + 1), -1, dtype=np.int64)
    for level in range(out.shape[1]):
        out[:, level] = node
        node = np.where(node >= 0, params.node_parent[np.maximum(node, 0)], -1)
    return out


_KIND = 1 << 44
_STEP = 1 << 20


class _Triplets:
    def __init__(self):
        self.parts, self.num_rows = [], 0
        self.lower, self.upper, self.keys = [], [], []

    def rows(self, key: np.ndarray, lower, upper) -> np.ndarray:
        count = len(key)
        index = np.arange(self.num_rows, self.num_rows + count)
        self.num_rows += count
        self.lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)))
        self.upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)))
        self.keys.append((len(self.keys) + 1) * _KIND + key)
        return index

    def add(self, rows, cols, values):
        rows, cols, values = np.broadcast_arrays(rows, cols, np.asarray(values, dtype=np.float64))
        self.parts.append((rows.ravel(), cols.ravel(), values.ravel()))


def build_model(params: SiteParams, window: Window) -> Model:
    """The linear program of ``window``: maximize the reward terms of ``envs.reward`` under the env's physics.

    Columns: per entry charge ``c`` and battery energy ``x`` (cumulative since the window start);
    per entry that may discharge, discharge ``d`` and a mode ``z`` (continuous unless made
    integer); per counted EV unmet kWh, per EV at the horizon its unmet kWh there (when
    weighted); per step site import, export and an export mode; slacks
    for nodes whose inflexible load (PV) alone breaks a limit, under which no port charges
    (discharges), as the env would cut it; the peak; the setpoint error.
    """
    w, dt, weights = window, params.dt_hours, params.reward
    s_len, n_nodes = w.exo_kw.shape
    step, port, ev = w.entry_step, w.entry_port, w.entry_ev
    r_len = len(step)
    first = np.ones(r_len, dtype=bool)
    first[1:] = ev[1:] != ev[:-1]
    last = np.ones(r_len, dtype=bool)
    last[:-1] = ev[:-1] != ev[1:]

    ancestors = port_ancestors(params)[port]
    has_node = ancestors >= 0
    node = np.maximum(ancestors, 0)
    over_import = w.exo_kw > params.node_import_limit_kw
    over_export = w.exo_kw < params.node_export_floor_kw
    charge_blocked = (over_import[step[:, None], node] & has_node).any(axis=1)
    discharge_blocked = (over_export[step[:, None], node] & has_node).any(axis=1)

    soc, battery = w.ev_soc[ev], w.ev_battery_kwh[ev]
    car_kw = w.ev_max_charge_kw[ev]
    charge_cap = np.minimum(car_kw, params.port_max_charge_kw[port])
    charge_kwh = params.port_charge_efficiency[port] * dt
    fraction = np.ones(r_len) if w.entry_fraction is None else w.entry_fraction
    hours = fraction * dt
    first_kw = taper_energy_kwh(params, soc, battery, car_kw, charge_cap, port, hours) / charge_kwh
    charge_ub = np.where(first, np.minimum(charge_cap * fraction, first_kw), charge_cap * fraction)
    charge_ub = np.where(charge_blocked, 0.0, np.maximum(charge_ub, 0.0))
    top_soc = soc + w.ev_room_kwh[ev] / battery
    floor = (np.maximum(w.ev_min_soc, 0.0) - w.ev_soc) * w.ev_battery_kwh
    discharge_ub = np.minimum(w.ev_max_discharge_kw[ev], params.port_max_discharge_kw[port]) * fraction
    discharge_ub[discharge_blocked | (first & (floor[ev] > 0))] = 0.0
    v2g = np.flatnonzero(discharge_ub > 0)
    discharge_kwh = dt / params.port_discharge_efficiency[port]
    counted = np.flatnonzero(w.ev_counted)
    at_horizon = (np.flatnonzero(w.ev_at_horizon) if w.ev_at_horizon is not None
                  and weights.unmet_at_horizon_eur_per_kwh > 0 else counted[:0])
    last_entry = np.flatnonzero(last)

    ev_id = np.arange(len(w.ev_soc)) if w.ev_id is None else w.ev_id
    entry_key = ev_id[ev] * _STEP + w.start_step + step
    step_key = w.start_step + np.arange(s_len)
    node_step_key = np.arange(n_nodes) * _STEP + step_key[:, None]
    keys = {"c": entry_key, "d": entry_key[v2g], "z": entry_key[v2g], "x": entry_key, "u": ev_id[counted],
            "h": ev_id[at_horizon],
            "i": step_key, "e": step_key, "w": step_key, "s_imp": node_step_key[over_import],
            "s_exp": node_step_key[over_export], "peak": np.zeros(int(weights.demand_charge_eur_per_kw > 0)),
            "a": step_key if weights.setpoint_eur_per_kwh > 0 else step_key[:0]}
    start = np.cumsum([0, *(len(key) for key in keys.values())])
    col = {name: np.arange(start[i], start[i + 1]) for i, name in enumerate(keys)}
    col_key = np.concatenate([(i + 1) * _KIND + key.astype(np.int64) for i, key in enumerate(keys.values())])
    num_cols = int(start[-1])
    cost, lower, upper = np.zeros(num_cols), np.zeros(num_cols), np.full(num_cols, _INF)

    root_exo = w.exo_kw[:, 0]
    import_cap = np.maximum(params.node_import_limit_kw[0], root_exo)
    export_cap = np.maximum(params.node_export_limit_kw[0], -root_exo)
    upper[col["c"]] = charge_ub
    upper[col["d"]] = discharge_ub[v2g]
    upper[col["z"]] = 1.0
    upper[col["w"]] = 1.0
    upper[col["i"]], upper[col["e"]] = import_cap, export_cap
    x_floor = np.where((w.ev_max_discharge_kw > 0) & (floor <= 0), floor, 0.0)
    lower[col["x"]], upper[col["x"]] = x_floor[ev], w.ev_room_kwh[ev]
    lower[col["peak"]] = w.peak_import_kw

    tariff_weight = weights.charging_revenue * w.tariff_eur_kwh[step]
    cost[col["c"]] = (tariff_weight - weights.degradation_eur_per_kwh) * charge_kwh
    cost[col["d"]] = -(tariff_weight[v2g] + weights.degradation_eur_per_kwh) * discharge_kwh[v2g]
    import_eur_kwh = weights.energy_cost * w.price_buy_eur_kwh + weights.carbon_eur_per_kg * w.carbon_kg_kwh
    cost[col["i"]] = -import_eur_kwh * dt
    cost[col["e"]] = weights.export_revenue * w.price_sell_eur_kwh * dt
    cost[col["s_imp"]] = cost[col["s_exp"]] = -weights.grid_violation_eur_per_kwh * dt
    cost[col["peak"]] = -weights.demand_charge_eur_per_kw
    cost[col["a"]] = -weights.setpoint_eur_per_kwh * dt
    cost[col["u"]] = -weights.unmet_eur_per_kwh
    cost[col["h"]] = -weights.unmet_at_horizon_eur_per_kwh
    offset = weights.demand_charge_eur_per_kw * w.peak_import_kw if len(col["peak"]) else 0.0

    m = _Triplets()
    c_col, x_col = col["c"], col["x"]
    d_col = np.full(r_len, -1)
    d_col[v2g] = col["d"]
    rows = m.rows(entry_key, 0.0, 0.0)
    m.add(rows, x_col, 1.0)
    chained = np.flatnonzero(~first)
    m.add(rows[chained], x_col[chained - 1], -1.0)
    m.add(rows, c_col, -charge_kwh)
    m.add(rows[v2g], col["d"], discharge_kwh[v2g])

    can_taper = ~first & (charge_ub > 0)
    lines = taper_lines(params, soc, battery, car_kw, charge_cap, port, top_soc, hours)
    for needed, kwh_at_soc0, kwh_per_soc in lines:
        taper = np.flatnonzero(can_taper & needed)
        rows = m.rows(entry_key[taper], -_INF, kwh_at_soc0[taper] / charge_kwh[taper])
        m.add(rows, c_col[taper], 1.0)
        m.add(rows, x_col[taper - 1], -kwh_per_soc[taper] / (battery[taper] * charge_kwh[taper]))

    rows = m.rows(entry_key[v2g], -_INF, charge_ub[v2g])
    m.add(rows, c_col[v2g], 1.0)
    m.add(rows, col["z"], charge_ub[v2g])
    rows = m.rows(entry_key[v2g], -_INF, 0.0)
    m.add(rows, col["d"], 1.0)
    m.add(rows, col["z"], -discharge_ub[v2g])
    lifted = floor[ev[v2g]] > 0
    rows = m.rows(entry_key[v2g[lifted]], 0.0, _INF)
    m.add(rows, x_col[v2g[lifted]], 1.0)
    m.add(rows, col["z"][lifted], -floor[ev[v2g[lifted]]])

    flat_step = np.repeat(step, ancestors.shape[1])[has_node.ravel()]
    flat_node = ancestors.ravel()[has_node.ravel()]
    flat_entry = np.repeat(np.arange(r_len), ancestors.shape[1])[has_node.ravel()]
    most_import = np.zeros((s_len, n_nodes))
    most_export = np.zeros((s_len, n_nodes))
    np.add.at(most_import, (flat_step, flat_node), charge_ub[flat_entry])
    np.add.at(most_export, (flat_step, flat_node), discharge_ub[flat_entry])
    import_room = params.node_import_limit_kw - w.exo_kw
    export_room = params.node_export_limit_kw + w.exo_kw
    import_binds = over_import | (most_import > import_room + TOLERANCE_KW)
    export_binds = over_export | (most_export > export_room + TOLERANCE_KW)
    kept = import_binds | export_binds
    node_row = np.full((s_len, n_nodes), -1)
    node_row[kept] = m.rows(node_step_key[kept], np.where(export_binds, -export_room, -_INF)[kept],
                            np.where(import_binds, import_room, _INF)[kept])
    entry_row = node_row[flat_step, flat_node]
    on = entry_row >= 0
    m.add(entry_row[on], c_col[flat_entry[on]], 1.0)
    v_on = on & (d_col[flat_entry] >= 0)
    m.add(entry_row[v_on], d_col[flat_entry[v_on]], -1.0)
    m.add(node_row[over_import], col["s_imp"], -1.0)
    m.add(node_row[over_export], col["s_exp"], 1.0)

    rows = m.rows(step_key, -root_exo, -root_exo)
    m.add(rows[step], c_col, 1.0)
    m.add(rows[step[v2g]], col["d"], -1.0)
    m.add(rows, col["i"], -1.0)
    m.add(rows, col["e"], 1.0)
    rows = m.rows(step_key, -_INF, import_cap)
    m.add(rows, col["i"], 1.0)
    m.add(rows, col["w"], import_cap)
    rows = m.rows(step_key, -_INF, 0.0)
    m.add(rows, col["e"], 1.0)
    m.add(rows, col["w"], -export_cap)
    if len(col["peak"]):
        rows = m.rows(step_key, -_INF, 0.0)
        m.add(rows, col["i"], 1.0)
        m.add(rows, col["peak"], -1.0)
    if len(col["a"]):
        for sign, lo, hi in ((1.0, -_INF, w.setpoint_kw), (-1.0, w.setpoint_kw, _INF)):
            rows = m.rows(step_key, lo, hi)
            m.add(rows, col["i"], 1.0)
            m.add(rows, col["e"], -1.0)
            m.add(rows, col["a"], -sign)

    ev_last = np.empty(len(w.ev_soc), dtype=np.int64)
    ev_last[ev[last_entry]] = last_entry
    rows = m.rows(ev_id[counted], w.ev_unmet_base_kwh[counted], _INF)
    m.add(rows, x_col[ev_last[counted]], 1.0)
    m.add(rows, col["u"], 1.0)
    rows = m.rows(ev_id[at_horizon], w.ev_unmet_base_kwh[at_horizon], _INF)
    m.add(rows, x_col[ev_last[at_horizon]], 1.0)
    m.add(rows, col["h"], 1.0)

    r_idx, c_idx, values = (np.concatenate(part) for part in zip(*m.parts, strict=True))
    matrix = sp.csc_matrix((values, (r_idx, c_idx)), shape=(m.num_rows, num_cols))
    return Model(window=w, cost=cost, col_lower=lower, col_upper=upper,
                 row_lower=np.concatenate(m.lower), row_upper=np.concatenate(m.upper), matrix=matrix,
                 col_key=col_key, row_key=np.concatenate(m.keys),
                 offset=offset, charge=c_col, discharge=col["d"], v2g_entry=v2g, mode=col["z"],
                 energy=x_col, floor_kwh=floor[ev[v2g]], site_import=col["i"], site_export=col["e"],
                 export_mode=col["w"])


TAPER_CHORDS = 8


def taper_lines(params: SiteParams, soc, battery_kwh, car_kw, cap_kw, port, top_soc, hours):
    """Upper bounds on a step's battery kWh at full power as lines in the SoC at the step's start.

    ``envs.dynamics.taper_energy_kwh`` over the ``hours`` the EV is there is a concave function
    of that SoC: flat at ``cap_kw``, then a curve over those hours' worth of SoC below
    the cross SoC (where the tapered limit falls to ``cap_kw``), then linear. Its flat part
    is the charge bound itself; here come ``TAPER_CHORDS`` chords of the curve and the line of the
    linear part, whose minimum is the function, exact outside the curve and at most a chord's
    sag below it on it (so a plan never asks more than the env's car takes). Lists, per line,
    ``(needed, kwh_at_soc, kwh_per_soc)``: where ``top_soc`` (the highest SoC the EV may reach)
    gets to the line's range, and the line as kWh at ``soc`` plus a slope per unit of SoC.
    """
    if params.taper_slope == 0:
        return []
    lines = []
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cross = (params.taper_intercept - cap_kw / car_kw) / params.taper_slope
        width = cap_kw * params.port_charge_efficiency[port] * hours / battery_kwh
        for j in range(TAPER_CHORDS):
            low = cross - width * (1 - j / TAPER_CHORDS)
            high = cross - width * (1 - (j + 1) / TAPER_CHORDS)
            low_kwh = taper_energy_kwh(params, low, battery_kwh, car_kw, cap_kw, port, hours)
            high_kwh = taper_energy_kwh(params, high, battery_kwh, car_kw, cap_kw, port, hours)
            slope = (high_kwh - low_kwh) / (high - low)
            lines.append((top_soc > low, low_kwh + slope * (soc - low), slope))
        rate = params.taper_slope * params.port_charge_efficiency[port] * car_kw / battery_kwh
        share = -np.expm1(-rate * hours)
        at_soc = (params.taper_intercept / params.taper_slope - soc) * battery_kwh * share
        lines.append((top_soc > cross, at_soc, -battery_kwh * share))
    return lines


def _status_values(statuses) -> np.ndarray:
    return np.fromiter((int(s.value) for s in statuses), dtype=np.int64, count=len(statuses))


def checked_batch(observation, t: int | None, num_envs: int, horizon_steps: int):
    """``(obs, obs as a 2-D batch)`` for a planning policy at step ``t``, or an error that says why not."""
    obs = np.asarray(observation, dtype=np.float64)
    batch = np.atleast_2d(obs)
    if t is None:
        raise RuntimeError("call begin(params, episode) before predict")
    if batch.shape[0] != num_envs or t >= horizon_steps:
        raise ValueError(f"predict called for {batch.shape[0]} envs at step {t}; begin() prepared "
                         f"{num_envs} envs for {horizon_steps} steps")
    return obs, batch


def new_highs(threads: int = 1) -> highspy.Highs:
    """A silent HiGHS instance."""
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", threads)
    return highs


def solve_model(model: Model, highs: highspy.Highs | None = None, first_steps: int | None = None,
                mip_rel_gap: float = 1e-4, time_limit_s: float = 10.0, basis: tuple | None = None) -> Plan:
    """Solve ``model`` for a plan the env can carry out exactly.

    The plan may not charge and discharge a port in the same step, discharge an EV it has not
    yet lifted above its minimum SoC, or import and export at once. Where the linear
    relaxation does one of these (it can pay when prices are negative, or when export pays more
    than import), mode columns are made integer: every V2G
    mode (of the first ``first_steps`` steps only, for MPC) and the import/export mode of the
    steps that need it; the MIP runs within ``mip_rel_gap`` and what is left of
    ``time_limit_s`` (linear programs always run to the end). Without such steps the plan is
    the exact optimum; otherwise the best plan found, with ``bound_eur`` above it. If the MIP
    finds no plan in time, V2G is dropped (status "... (charge only)"). ``basis`` (lists of
    HiGHS column and row statuses, e.g. carried over from an overlapping window) starts the
    simplex; HiGHS repairs it where it is not a basis. Raises OptimizationError on any other
    HiGHS outcome.
    """
    highs = highs if highs is not None else new_highs()
    start = time.perf_counter()
    a = model.matrix
    highs.passModel(a.shape[1], a.shape[0], a.nnz, int(highspy.MatrixFormat.kColwise.value),
                    int(highspy.ObjSense.kMaximize.value), float(model.offset), model.cost,
                    model.col_lower, model.col_upper, model.row_lower, model.row_upper,
                    a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data,
                    np.zeros(a.shape[1], dtype=np.int32))
    highs.setOptionValue("mip_rel_gap", mip_rel_gap)
    if basis is not None:
        start_basis = highspy.HighsBasis()
        start_basis.alien, start_basis.valid = True, False
        start_basis.col_status, start_basis.row_status = basis
        highs.setBasis(start_basis)
    window, relaxed_basis = model.window, None
    limit = window.steps if first_steps is None else first_steps
    early_modes = model.mode[window.entry_step[model.v2g_entry] < limit]
    early_steps = np.arange(window.steps) < limit
    integer = np.zeros(len(model.cost), dtype=bool)
    bound, fallback = np.inf, False
    while True:
        mip = integer.any() and not fallback
        highs.setOptionValue("time_limit", max(time_limit_s - (time.perf_counter() - start), 0.01) if mip
                             else _INF)
        highs.run()
        status, info = highs.getModelStatus(), highs.getInfo()
        feasible = info.primal_solution_status == highspy.kSolutionStatusFeasible
        if not (status in _SOLVED or (status in _FEASIBLE_STOPS and feasible)):
            if integer.any() and not fallback:
                fallback = True
                _drop_integer_modes(highs, model)
                continue
            raise OptimizationError(
                f"HiGHS ended with status {highs.modelStatusToString(status)!r} on a model of "
                f"{a.shape[1]} columns and {a.shape[0]} rows ({len(window.entry_step)} EV steps)")
        if relaxed_basis is None and status == highspy.HighsModelStatus.kOptimal:
            solved = highs.getBasis()
            relaxed_basis = (_status_values(solved.col_status), _status_values(solved.row_status))
        if not fallback:
            bound = min(bound, info.mip_dual_bound if integer.any() else info.objective_function_value)
        x = np.asarray(highs.getSolution().col_value)
        charge, discharge = x[model.charge[model.v2g_entry]], x[model.discharge]
        mixed = ((charge > TOLERANCE_KW) | (x[model.energy[model.v2g_entry]] < model.floor_kwh - TOLERANCE_KW)
                 ) & (discharge > TOLERANCE_KW)
        split = (x[model.site_import] > TOLERANCE_KW) & (x[model.site_export] > TOLERANCE_KW)
        wrong = model.export_mode[split & early_steps]
        if (mixed & (window.entry_step[model.v2g_entry] < limit)).any():
            wrong = np.concatenate([early_modes, wrong])
        wrong = wrong[~integer[wrong]]
        if wrong.size == 0 or fallback:
            break
        integer[wrong] = True
        highs.clearSolver()
        highs.changeColsIntegrality(wrong.size, wrong.astype(np.int32), np.full(wrong.size, _INTEGER))
    charge_kw = x[model.charge].copy()
    discharge_kw = np.zeros(len(charge_kw))
    discharge_kw[model.v2g_entry] = x[model.discharge]
    net = charge_kw - discharge_kw
    overlap = (charge_kw > 0) & (discharge_kw > 0)
    charge_kw[overlap], discharge_kw[overlap] = np.maximum(net, 0)[overlap], np.maximum(-net, 0)[overlap]
    objective = float(info.objective_function_value)
    return Plan(charge_kw=np.maximum(charge_kw, 0.0), discharge_kw=np.maximum(discharge_kw, 0.0),
                site_import_kw=x[model.site_import], objective_eur=objective,
                bound_eur=max(bound, objective), status=highs.modelStatusToString(status) + (
                    " (charge only)" if fallback else ""),
                integer_columns=int(integer.sum()), build_s=0.0, solve_s=time.perf_counter() - start,
                basis=relaxed_basis)


def _drop_integer_modes(highs: highspy.Highs, model: Model) -> None:
    """Fix every V2G mode to charging and every step's import/export mode to the direction of
    its inflexible flow, so the model is an LP that zero charging always satisfies and that
    cannot discharge, nor import and export at once."""
    modes = model.mode
    steps = np.arange(len(model.export_mode))
    cols = np.concatenate([modes, model.export_mode[steps]]).astype(np.int32)
    value = np.concatenate([np.zeros(len(modes)), (model.window.exo_kw[steps, 0] < 0).astype(np.float64)])
    highs.changeColsIntegrality(cols.size, cols, np.zeros(cols.size, dtype=np.uint8))
    highs.changeColsBounds(cols.size, cols, value, value)


def plan_window(params: SiteParams, window: Window, highs: highspy.Highs | None = None, **options) -> Plan:
    """Build and solve the model of ``window`` (``options`` go to ``solve_model``)."""
    start = time.perf_counter()
    model = build_model(params, window)
    build_s = time.perf_counter() - start
    return dataclasses.replace(solve_model(model, highs, **options), build_s=build_s)


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
