"""Solving a planning window's model with HiGHS into a plan the env can carry out exactly."""

from __future__ import annotations

import dataclasses
import time

import highspy
import numpy as np

from agents.plan_model import INFINITY, TOLERANCE_KW, Model, Plan, Window, build_model
from envs.site import SiteParams

_INTEGER = np.uint8(highspy.HighsVarType.kInteger.value)
_SOLVED = {highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kModelEmpty}
_FEASIBLE_STOPS = {highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kIterationLimit,
                   highspy.HighsModelStatus.kInterrupt}


class OptimizationError(RuntimeError):
    """HiGHS ended without a usable solution; the message names its status and the model size."""


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
                mip_rel_gap: float = 1e-4, time_limit_s: float = 10.0, basis: tuple | None = None,
                lp_time_limit_s: float | None = None) -> Plan:
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
    simplex; HiGHS repairs it where it is not a basis. ``lp_time_limit_s`` bounds each linear
    solve (a warm start can stall where a cold one does not) and running past it raises.
    Raises OptimizationError on any other HiGHS outcome.
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
                             else INFINITY if lp_time_limit_s is None else lp_time_limit_s)
        highs.run()
        status, info = highs.getModelStatus(), highs.getInfo()
        if not mip and lp_time_limit_s is not None and status == highspy.HighsModelStatus.kTimeLimit:
            raise OptimizationError(f"HiGHS ran past {lp_time_limit_s:g} s on a linear model of {a.shape[1]} "
                                    f"columns and {a.shape[0]} rows")
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

