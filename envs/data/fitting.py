"""Fitting the fitted generator to charging sessions, and how closely a generator reproduces them.

``fit_sessions`` turns canonical sessions into the ``scenario`` fields of ``generator: fitted``;
``fidelity`` compares sessions with generated days (KS distances, Spearman correlations, rates).
pandas and scipy are imported by the functions that need them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from envs.data.fit import FittedGenerator
from envs.site import MINUTES_PER_DAY, SiteParams


def fit_sessions(sessions, dt_minutes: int = 15, tz: str | None = None, *, block_minutes: int = 60,
                 num_quantiles: int = 21, min_block_sessions: int = 50, copula_bins: int = 20,
                 error_dwell_bins: int = 5, energy_column: str = "requested_kwh", start=None,
                 end=None) -> dict[str, Any]:
    """Fitted-generator fields (a site's ``scenario`` block, ``generator: fitted``) from sessions.

    ``sessions`` is a canonical session DataFrame (arrival, departure, announced_departure,
    energy); times are taken in ``tz`` (default: as given). Arrival rates are the mean counts
    per ``dt_minutes`` slot over the weekdays and the weekend days from ``start`` to ``end``
    (default: the first and last arrival dates), with day-of-week factors. Dwell and energy
    (``energy_column``) tables hold ``num_quantiles`` quantiles per ``block_minutes`` block of
    arrival time, for weekdays and weekends; a block with fewer than ``min_block_sessions``
    sessions pools its nearest neighbouring blocks until it has them. The copula is the
    histogram of the dwell and energy ranks within blocks on up to ``copula_bins`` bins (fewer
    when there are under 10 sessions per cell), balanced to uniform margins; the
    announced-departure error gets one quantile row per bin of ``error_dwell_bins`` stay bins
    equally filled by the sessions with a known announced departure, in a weekday and a weekend
    table when both day types have ``min_block_sessions`` such sessions (else one table of all),
    a bin with fewer than ``min_block_sessions`` sessions of its day type pooling its nearest
    bins until it has them.
    """
    from scipy.stats import rankdata

    if MINUTES_PER_DAY % dt_minutes or MINUTES_PER_DAY % block_minutes:
        raise ValueError(f"dt_minutes ({dt_minutes}) and block_minutes ({block_minutes}) must divide 1440")
    data = session_arrays(sessions, tz, energy_column, start, end)
    slot = (data["minute"] // dt_minutes).astype(np.int64)
    counts = np.zeros((7, MINUTES_PER_DAY // dt_minutes))
    np.add.at(counts, (data["day_of_week"], slot), 1.0)
    days = data["days_per_weekday"]
    per_day = counts.sum(axis=1) / np.maximum(days, 1)
    factors, profiles = np.ones(7), {}
    for name, group in (("weekday", np.arange(5)), ("weekend", np.arange(5, 7))):
        group = group[days[group] > 0]
        if len(group):
            profiles[name] = (counts[group] / days[group, None]).mean(axis=0)
            mean = per_day[group].mean()
            factors[group] = per_day[group] / mean if mean > 0 else 1.0
    profiles.setdefault("weekday", profiles.get("weekend"))
    profiles.setdefault("weekend", profiles["weekday"])

    levels = np.linspace(0.0, 1.0, num_quantiles)
    blocks = MINUTES_PER_DAY // block_minutes
    block = (data["minute"] // block_minutes).astype(np.int64)
    weekend = data["day_of_week"] >= 5
    if (weekend.sum() < min_block_sessions) or (~weekend).sum() < min_block_sessions:
        weekend = np.zeros_like(weekend)

    def table(values, day_type):
        picked = weekend == day_type
        return pooled_quantiles(values[picked], block[picked], blocks, min_block_sessions, levels,
                                circular=True)

    fitted = {"generator": "fitted",
              "arrivals_weekday": _rounded(profiles["weekday"], 5),
              "arrivals_weekend": _rounded(profiles["weekend"], 5),
              "day_of_week_factors": _rounded(factors, 4)}
    for name, key in (("dwell_quantiles_hours", "dwell_hours"), ("energy_quantiles_kwh", "energy_kwh")):
        values = data[key]
        fitted[name] = _rounded(table(values, False), 4)
        if weekend.any():
            fitted[name + "_weekend"] = _rounded(table(values, True), 4)

    group = block + blocks * weekend
    ranks = np.zeros((2, len(group)))
    for g in np.unique(group):
        members = group == g
        for i, values in enumerate((data["dwell_hours"], data["energy_kwh"])):
            ranks[i, members] = (rankdata(values[members]) - 0.5) / members.sum()
    for day_type, suffix in ((False, ""), (True, "_weekend")):
        if day_type and not weekend.any():
            break
        dwell_rank, energy_rank = ranks[:, weekend == day_type]
        bins = int(np.clip(np.sqrt(len(dwell_rank) / 10), 1, copula_bins))
        counts, _, _ = np.histogram2d(dwell_rank, energy_rank, bins=bins, range=[[0, 1], [0, 1]])
        table = counts + 1e-3
        for _ in range(100):
            table /= table.sum(axis=1, keepdims=True)
            table /= table.sum(axis=0, keepdims=True)
        fitted["dwell_energy_copula" + suffix] = _rounded(table / bins, 6)

    known = np.isfinite(data["error_hours"])
    error, stay, error_weekend = data["error_hours"][known], data["dwell_hours"][known], weekend[known]
    if not len(error):
        error, stay, error_weekend = np.zeros(1), np.zeros(1), np.zeros(1, bool)
    if min(error_weekend.sum(), (~error_weekend).sum()) < max(min_block_sessions, 1):
        error_weekend = np.zeros_like(error_weekend)
    edges = np.unique(np.round(np.quantile(stay, np.arange(1, error_dwell_bins) / error_dwell_bins), 3))
    row = np.searchsorted(edges, stay, side="right")
    for day_type, suffix in ((False, ""), (True, "_weekend")):
        if day_type and not error_weekend.any():
            break
        picked = error_weekend == day_type
        fitted["departure_error_quantiles_hours" + suffix] = _rounded(pooled_quantiles(
            error[picked], row[picked], len(edges) + 1, min_block_sessions, levels), 4)
    fitted["departure_error_dwell_hours"] = edges.tolist()
    return fitted


def pooled_quantiles(values: np.ndarray, group: np.ndarray, groups: int, need: int, levels: np.ndarray, *,
                     circular: bool = False) -> np.ndarray:
    """(groups, L) quantiles at ``levels`` of ``values`` per ``group`` (0 .. groups - 1), a group with fewer
    than ``need`` values pooling its nearest groups (``circular``: the last neighbours the first) until it
    has them, or all values when there are fewer."""
    need = min(max(need, 1), len(values))
    out = np.empty((groups, len(levels)))
    for g in range(groups):
        distance = np.abs(group - g)
        if circular:
            distance = np.minimum(distance, groups - distance)
        out[g] = np.quantile(values[distance <= np.partition(distance, need - 1)[need - 1]], levels)
    return out


def calibrate_capped_energy(generator: FittedGenerator, params: SiteParams, *, rounds: int = 10,
                            draws: int = 4096, tolerance: float = 1e-3) -> np.ndarray:
    """(2, D, Q) weekday and weekend energy tables whose requests, capped to the stay on the site
    ``params`` (``cap_request_to_stay``), have the quantiles of ``generator``'s tables per arrival block.

    The targets are the tables' rows bounded by the largest battery (the generator caps every
    request there). Each round draws ``draws`` EVs per day type and block with ``_block_requests``
    (a fixed Latin hypercube sample, so the result is deterministic) and corrects the drawn
    energies' CDF at the target quantiles by the share the cap moves below them: CDF(x) =
    level(x) - P(capped <= x < drawn), made nondecreasing, inverted at the tables' levels. The
    drawn energies stay within the target's range: above its maximum a drawn energy changes nothing
    where the cap binds and overshoots where it does not. ``rounds`` rounds at most, fewer once no
    CDF value moves by ``tolerance``. Weekends share the weekday result (from both day types'
    draws) when their stay, energy and copula tables are the weekday ones.
    """
    largest = generator.fleet_battery_kwh[-1]
    target = np.minimum(generator.energy_quantiles_kwh, largest)
    days, blocks, num_levels = target.shape
    levels = np.linspace(0.0, 1.0, num_levels)
    weekday, weekend = generator.dwell_energy_copula
    shared = (np.array_equal(*generator.dwell_quantiles_hours) and np.array_equal(*target)
              and (weekday is weekend or (weekday is not None and weekend is not None
                                          and np.array_equal(weekday, weekend))))
    grid = target[:1] if shared else target  # the target quantiles, where the CDF is corrected
    table, previous = target, levels
    for _ in range(rounds):
        trial = dataclasses.replace(generator, energy_quantiles_kwh=table)
        energy, cap = (np.moveaxis(a, 0, 1) if shared else a for a in trial._block_requests(params, draws))
        energy, cap = (a.reshape(len(grid), blocks, -1, 1) for a in (energy, cap))
        x = grid[..., None, :]
        moved = ((np.minimum(energy, cap) <= x) & (energy > x)).mean(axis=-2)
        cdf = np.clip(levels - moved, 0.0, 1.0)
        rising = np.maximum.accumulate(cdf, axis=-1)
        falling = np.minimum.accumulate(cdf[..., ::-1], axis=-1)[..., ::-1]
        cdf = (rising + falling) / 2
        table = np.broadcast_to(_inverse_piecewise(grid, cdf, levels), target.shape)
        if np.abs(cdf - previous).max() < tolerance:
            break
        previous = cdf
    return np.array(table)


def _inverse_piecewise(x: np.ndarray, cdf: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles at ``levels`` of the piecewise-linear CDFs through the points (x, cdf) along the last
    axis (both nondecreasing): the least x at which each CDF reaches the level."""
    k = np.clip((cdf[..., None, :] < levels[:, None]).sum(-1), 1, x.shape[-1] - 1)
    lo_x, hi_x, lo, hi = (np.take_along_axis(a, k + shift, axis=-1) for a in (x, cdf) for shift in (-1, 0))
    fraction = np.clip((levels - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return lo_x + fraction * (hi_x - lo_x)


def _rounded(values: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def session_arrays(sessions, tz: str | None = None, energy_column: str = "requested_kwh", start=None,
                   end=None) -> dict[str, Any]:
    """Arrays of the sessions arriving from ``start`` to ``end`` (dates, inclusive) with a positive stay:
    local arrival minute of day, day of week (0 = Monday), dwell and announced-minus-real departure
    in hours (NaN when unknown), energy; and the number of calendar days per day of week."""
    import pandas as pd

    missing = sorted({"arrival", "departure", energy_column} - set(sessions.columns))
    if missing:
        raise ValueError(f"sessions lack the column(s) {missing}")

    def local(column):
        times = pd.to_datetime(sessions[column])
        if tz is not None:
            times = times.dt.tz_convert(tz) if times.dt.tz is not None else times.dt.tz_localize(tz)
        return times

    arrival, departure = local("arrival"), local("departure")
    energy = pd.to_numeric(sessions[energy_column], errors="coerce")
    dwell = (departure - arrival).dt.total_seconds() / 3600
    if "announced_departure" in sessions.columns:
        error = (local("announced_departure") - departure).dt.total_seconds() / 3600
    else:
        error = pd.Series(np.nan, index=sessions.index)
    date = (arrival.dt.tz_localize(None) if arrival.dt.tz is not None else arrival).dt.normalize()
    valid = dwell.gt(0) & energy.ge(0) & date.notna()
    if not valid.any():
        raise ValueError("no session with a positive stay and a known energy")
    first = pd.Timestamp(start) if start is not None else date[valid].min()
    last = pd.Timestamp(end) if end is not None else date[valid].max()
    keep = (valid & date.ge(first) & date.le(last)).to_numpy()
    if not keep.any():
        raise ValueError(f"no session arrives between {first.date()} and {last.date()}")
    arrival = arrival[keep]
    calendar = pd.date_range(first, last, freq="D")
    return {
        "minute": (arrival.dt.hour * 60 + arrival.dt.minute + arrival.dt.second / 60).to_numpy(np.float64),
        "day_of_week": arrival.dt.day_of_week.to_numpy(np.int64),
        "dwell_hours": dwell[keep].to_numpy(np.float64),
        "energy_kwh": energy[keep].to_numpy(np.float64),
        "error_hours": error[keep].to_numpy(np.float64),
        "days_per_weekday": np.bincount(calendar.day_of_week, minlength=7).astype(np.float64),
        "first_day": str(first.date()),
        "last_day": str(last.date()),
    }


def ks_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov distance (largest gap of the empirical CDFs); None if one is empty."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if not len(a) or not len(b):
        return None
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(gap).max())


def generated_sessions(generator, params: SiteParams, num_days: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The EVs of ``num_days`` one-day episodes (midnight to midnight, whole weeks, weekdays cycling
    Monday..Sunday): arrival step, stay and announced-minus-real departure in steps, energy, and
    whether the day is a weekend day; plus the EV count and weekend flag of each day."""
    day = params.replace(horizon_steps=params.steps_per_day, start_minute=0)
    num_days = 7 * -(-int(num_days) // 7)
    week = tuple(range(7))
    if isinstance(generator, FittedGenerator):
        generator = dataclasses.replace(generator, base=dataclasses.replace(generator.base, weekday=week))
    else:
        generator = dataclasses.replace(generator, weekday=week)
    episode = generator.sample(day, np.random.default_rng(seed), num_days)
    valid = episode.ev_valid
    weekend_day = episode.weekday >= 5
    arrival = episode.ev_arrival_step[valid]
    return {
        "slot": arrival,
        "weekend": np.broadcast_to(weekend_day[:, None], valid.shape)[valid],
        "dwell_steps": episode.ev_departure_step[valid] - arrival,
        "error_steps": episode.ev_announced_departure_step[valid] - episode.ev_departure_step[valid],
        "energy_kwh": episode.ev_requested_kwh[valid],
        "per_day": valid.sum(axis=1),
        "day_weekend": weekend_day,
    }


def fidelity(sessions, generator, params: SiteParams, num_days: int = 2800, *, tz: str | None = None,
             seed: int = 0, energy_column: str = "requested_kwh", start=None, end=None) -> dict[str, Any]:
    """How closely ``generator`` reproduces ``sessions`` on the site's time grid.

    For all days, weekdays and weekend days: two-sample KS distances of the arrival time of day,
    the stay, the announced-minus-real departure (all in steps of the site, the sessions rounded
    as the generator rounds) and the energy, between the sessions and ``num_days`` generated
    days; the Spearman correlation of stay and energy in both; and the mean sessions per day of
    both with the relative error of the generated one.
    """
    data = session_arrays(sessions, tz, energy_column, start, end)
    dt_hours, dt_minutes = params.dt_hours, round(params.dt_hours * 60)
    model = generated_sessions(generator, params, num_days, seed)
    dwell = np.maximum(1, np.rint(data["dwell_hours"] / dt_hours)).astype(np.int64)
    known = np.isfinite(data["error_hours"])
    error = np.maximum(1, dwell + np.rint(np.where(known, data["error_hours"], 0) / dt_hours)) - dwell
    observed = {"slot": data["minute"] // dt_minutes, "dwell_steps": dwell, "error_steps": error,
                "energy_kwh": data["energy_kwh"], "weekend": data["day_of_week"] >= 5}
    days = data["days_per_weekday"]
    report: dict[str, Any] = {"sessions": int(len(dwell)), "first_day": data["first_day"],
                              "last_day": data["last_day"], "days": int(days.sum()),
                              "generated_days": int(len(model["per_day"])), "dt_minutes": dt_minutes}
    for group, weekend in (("overall", None), ("weekday", False), ("weekend", True)):
        mask, generated, day_mask = (np.ones(len(x), bool) if weekend is None else x == weekend
                                     for x in (observed["weekend"], model["weekend"], model["day_weekend"]))
        num_days_data = days.sum() if weekend is None else days[5:].sum() if weekend else days[:5].sum()
        figures = {f"{name}_ks": ks_distance(observed[key][mask & (known if key == "error_steps" else True)],
                                             model[key][generated])
                   for name, key in (("arrival", "slot"), ("dwell", "dwell_steps"), ("energy", "energy_kwh"),
                                     ("departure_error", "error_steps"))}
        figures["dwell_energy_spearman"] = _spearman(dwell[mask], data["energy_kwh"][mask])
        figures["model_dwell_energy_spearman"] = _spearman(model["dwell_steps"][generated],
                                                           model["energy_kwh"][generated])
        report[group] = {**figures, **_rate_figures(mask.sum() / max(num_days_data, 1),
                                                    model["per_day"][day_mask].mean())}
    return _round_report(report)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    if len(a) < 3:
        return None
    ranks = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    return float(ranks) if np.isfinite(ranks) else None


def _rate_figures(observed: float, generated: float) -> dict[str, float | None]:
    return {"sessions_per_day": float(observed), "model_sessions_per_day": float(generated),
            "sessions_per_day_rel_error": float(generated / observed - 1) if observed > 0 else None}


def _round_report(report):
    if isinstance(report, dict):
        return {key: _round_report(value) for key, value in report.items()}
    return round(report, 4) if isinstance(report, float) else report
