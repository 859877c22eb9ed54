"""The linear model of the site physics for HiGHS: one planning window, its columns and rows."""

from __future__ import annotations

import dataclasses
import functools

import highspy
import numpy as np
import scipy.sparse as sp

from envs.dynamics import taper_energy_kwh
from envs.site import SiteParams

TOLERANCE_KW = 1e-7
BINDING_KWH = 1e-9  # a checkpoint binds when its base exceeds the EV's lowest energy by more than this
INFINITY = highspy.kHighsInf


@dataclasses.dataclass(frozen=True, eq=False)
class Window:
    """What one linear program plans: S steps of one env and the EVs plugged during them.

    An *entry* is one (EV, step) pair with the EV on a port; an EV's entries are consecutive
    and in step order, over one or several plug intervals (an outage moves it between ports).
    ``ev_room_kwh`` bounds the energy the EV may take over the window (its remaining request
    and its battery room); ``ev_unmet_base_kwh`` minus that energy is counted unmet where
    ``ev_counted``, and unmet at the horizon where ``ev_at_horizon``.

    *Checkpoints* weigh departures the plan is not sure of: checkpoint j counts
    ``checkpoint_weight[j]`` times the kWh by which the EV's energy after entry
    ``checkpoint_entry[j]`` falls short of ``checkpoint_base_kwh[j]`` at the unmet price, and the
    tariff revenue of the energy the EV takes after that entry at the same weight is taken back
    (the EV leaves after that entry in one of the planner's departure scenarios). A checkpoint
    whose base is not above the lowest energy the EV may reach cannot bind and is left out.
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
    checkpoint_entry: np.ndarray | None = None  # (M,) int, the entry after which a scenario's EV leaves
    checkpoint_base_kwh: np.ndarray | None = None  # (M,) kWh it must have taken by then to miss nothing
    checkpoint_weight: np.ndarray | None = None  # (M,) the scenario's probability
    checkpoint_key: np.ndarray | None = None  # (M,) int identity across windows (EV, scenario)

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
    weighted), per checkpoint its unmet kWh; per step site import, export and an export mode; slacks
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
    x_floor = np.where((w.ev_max_discharge_kw > 0) & (floor <= 0), floor, 0.0)
    discharge_ub = np.minimum(w.ev_max_discharge_kw[ev], params.port_max_discharge_kw[port]) * fraction
    discharge_ub[discharge_blocked | (first & (floor[ev] > 0))] = 0.0
    v2g = np.flatnonzero(discharge_ub > 0)
    discharge_kwh = dt / params.port_discharge_efficiency[port]
    counted = np.flatnonzero(w.ev_counted)
    at_horizon = (np.flatnonzero(w.ev_at_horizon) if w.ev_at_horizon is not None
                  and weights.unmet_at_horizon_eur_per_kwh > 0 else counted[:0])
    binds = (np.zeros(0, dtype=np.int64) if w.checkpoint_entry is None else
             np.flatnonzero(w.checkpoint_base_kwh > x_floor[ev[w.checkpoint_entry]] + BINDING_KWH))
    checkpoint = binds if w.checkpoint_entry is None else w.checkpoint_entry[binds]
    last_entry = np.flatnonzero(last)

    ev_id = np.arange(len(w.ev_soc)) if w.ev_id is None else w.ev_id
    entry_key = ev_id[ev] * _STEP + w.start_step + step
    step_key = w.start_step + np.arange(s_len)
    node_step_key = np.arange(n_nodes) * _STEP + step_key[:, None]
    keys = {"c": entry_key, "d": entry_key[v2g], "z": entry_key[v2g], "x": entry_key, "u": ev_id[counted],
            "h": ev_id[at_horizon], "q": binds if w.checkpoint_key is None else w.checkpoint_key[binds],
            "i": step_key, "e": step_key, "w": step_key, "s_imp": node_step_key[over_import],
            "s_exp": node_step_key[over_export], "peak": np.zeros(int(weights.demand_charge_eur_per_kw > 0)),
            "a": step_key if weights.setpoint_eur_per_kwh > 0 else step_key[:0]}
    start = np.cumsum([0, *(len(key) for key in keys.values())])
    col = {name: np.arange(start[i], start[i + 1]) for i, name in enumerate(keys)}
    col_key = np.concatenate([(i + 1) * _KIND + key.astype(np.int64) for i, key in enumerate(keys.values())])
    num_cols = int(start[-1])
    cost, lower, upper = np.zeros(num_cols), np.zeros(num_cols), np.full(num_cols, INFINITY)

    root_exo = w.exo_kw[:, 0]
    import_cap = np.maximum(params.node_import_limit_kw[0], root_exo)
    export_cap = np.maximum(params.node_export_limit_kw[0], -root_exo)
    upper[col["c"]] = charge_ub
    upper[col["d"]] = discharge_ub[v2g]
    upper[col["z"]] = 1.0
    upper[col["w"]] = 1.0
    upper[col["i"]], upper[col["e"]] = import_cap, export_cap
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
    checkpoint_weight = w.checkpoint_weight[binds] if len(checkpoint) else 1.0
    cost[col["q"]] = -weights.unmet_eur_per_kwh * checkpoint_weight
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
        rows = m.rows(entry_key[taper], -INFINITY, kwh_at_soc0[taper] / charge_kwh[taper])
        m.add(rows, c_col[taper], 1.0)
        m.add(rows, x_col[taper - 1], -kwh_per_soc[taper] / (battery[taper] * charge_kwh[taper]))

    rows = m.rows(entry_key[v2g], -INFINITY, charge_ub[v2g])
    m.add(rows, c_col[v2g], 1.0)
    m.add(rows, col["z"], charge_ub[v2g])
    rows = m.rows(entry_key[v2g], -INFINITY, 0.0)
    m.add(rows, col["d"], 1.0)
    m.add(rows, col["z"], -discharge_ub[v2g])
    lifted = floor[ev[v2g]] > 0
    rows = m.rows(entry_key[v2g[lifted]], 0.0, INFINITY)
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
    node_row[kept] = m.rows(node_step_key[kept], np.where(export_binds, -export_room, -INFINITY)[kept],
                            np.where(import_binds, import_room, INFINITY)[kept])
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
    rows = m.rows(step_key, -INFINITY, import_cap)
    m.add(rows, col["i"], 1.0)
    m.add(rows, col["w"], import_cap)
    rows = m.rows(step_key, -INFINITY, 0.0)
    m.add(rows, col["e"], 1.0)
    m.add(rows, col["w"], -export_cap)
    if len(col["peak"]):
        rows = m.rows(step_key, -INFINITY, 0.0)
        m.add(rows, col["i"], 1.0)
        m.add(rows, col["peak"], -1.0)
    if len(col["a"]):
        for sign, lo, hi in ((1.0, -INFINITY, w.setpoint_kw), (-1.0, w.setpoint_kw, INFINITY)):
            rows = m.rows(step_key, lo, hi)
            m.add(rows, col["i"], 1.0)
            m.add(rows, col["e"], -1.0)
            m.add(rows, col["a"], -sign)

    ev_last = np.empty(len(w.ev_soc), dtype=np.int64)
    ev_last[ev[last_entry]] = last_entry
    rows = m.rows(ev_id[counted], w.ev_unmet_base_kwh[counted], INFINITY)
    m.add(rows, x_col[ev_last[counted]], 1.0)
    m.add(rows, col["u"], 1.0)
    rows = m.rows(ev_id[at_horizon], w.ev_unmet_base_kwh[at_horizon], INFINITY)
    m.add(rows, x_col[ev_last[at_horizon]], 1.0)
    m.add(rows, col["h"], 1.0)
    if len(checkpoint):
        rows = m.rows(w.checkpoint_key[binds], w.checkpoint_base_kwh[binds], INFINITY)
        m.add(rows, x_col[checkpoint], 1.0)
        m.add(rows, col["q"], 1.0)
        revenue = tariff_weight[checkpoint] * checkpoint_weight
        np.add.at(cost, x_col[checkpoint], revenue)
        np.add.at(cost, x_col[ev_last[ev[checkpoint]]], -revenue)

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

