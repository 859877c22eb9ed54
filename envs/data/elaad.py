"""ElaadNL aggregated charging statistics (no sessions) turned into fitted-generator parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.fit import FittedGenerator
from envs.data.fitting import _round_report, _rounded, generated_sessions
from envs.site import MINUTES_PER_DAY, SiteParams

KINDS = {"private": "home", "public": "public", "workplace": "work"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclasses.dataclass(frozen=True, eq=False)
class ElaadStatistics:
    """The published ElaadNL statistics of one kind of charging: "private" (home), "public" or
    "workplace".

    Arrival shares are per 15-minute slot from 00:00 and sum to 1 (ElaadNL publishes no
    weekend shares for workplaces: None). The connection-time and energy distributions are
    quantiles at ``quantile_levels`` (0, 0.01, ..., 1; the published table gives the share of
    sessions above each value, and the minimum is taken as 0). Means per arrival slot are per
    30-minute slot from 00:00, NaN where unpublished; ``day_share`` is the median share of a
    week's sessions per day, Monday..Sunday, NaN where unpublished.
    """

    kind: str
    arrival_share_weekday: np.ndarray  # (96,)
    arrival_share_weekend: np.ndarray | None  # (96,)
    quantile_levels: np.ndarray  # (101,)
    connection_hours: np.ndarray  # (101,) quantiles
    energy_kwh: np.ndarray  # (101,) quantiles
    mean_connection_hours: np.ndarray  # (48,) per arrival slot
    mean_energy_kwh: np.ndarray  # (48,)
    day_share: np.ndarray  # (7,)

    def connection_cdf(self, hours: np.ndarray) -> np.ndarray:
        return _quantile_cdf(np.asarray(hours, dtype=np.float64), self.connection_hours, self.quantile_levels)

    def energy_cdf(self, kwh: np.ndarray) -> np.ndarray:
        return _quantile_cdf(np.asarray(kwh, dtype=np.float64), self.energy_kwh, self.quantile_levels)


def _quantile_cdf(x: np.ndarray, values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Right-continuous CDF of the piecewise-linear quantile function through (levels, values)."""
    j = np.searchsorted(values, x, side="right")
    inner = np.clip(j, 1, len(values) - 1)
    lo, hi = values[inner - 1], values[inner]
    fraction = np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    cdf = levels[inner - 1] + fraction * (levels[inner] - levels[inner - 1])
    return np.where(j == 0, 0.0, np.where(j == len(values), 1.0, cdf))


def read_elaad(folder, kind: str) -> ElaadStatistics:
    """Read the ElaadNL CSV files (UTF-8 with a byte-order mark) of ``folder`` for one ``kind``."""
    import pandas as pd

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    folder = Path(folder)

    def read(name):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"ElaadNL file {path} does not exist")
        return pd.read_csv(path, encoding="utf-8-sig")

    def by_time(table, column, slot_minutes):
        clock = pd.to_datetime(table.iloc[:, 0], format="%H:%M")
        slot = ((clock.dt.hour * 60 + clock.dt.minute) // slot_minutes).to_numpy()
        out = np.full(MINUTES_PER_DAY // slot_minutes, np.nan)
        if column in table.columns:
            out[slot] = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        return out

    def shares(table):
        share = by_time(table, kind, 15)
        if np.isnan(share).all():
            return None
        share = np.nan_to_num(share)
        return share / share.sum()

    def quantiles(name):
        table = read(name)
        percent = table.iloc[:, 0].to_numpy(np.float64)
        order = np.argsort(-percent)
        values = pd.to_numeric(table[kind], errors="coerce").to_numpy(np.float64)[order]
        return np.r_[0.0, np.maximum.accumulate(values)], np.r_[0.0, 1.0 - percent[order] / 100]

    connection, levels = quantiles("distribution-of-connection-time.csv")
    energy, _ = quantiles("distribution-of-energy-demand.csv")
    days = read("distribution-of-charging.csv").set_index("Day of the week")
    median = f"{kind} (median)"
    return ElaadStatistics(
        kind=kind,
        arrival_share_weekday=shares(read("distribution-of-arrival.csv")),
        arrival_share_weekend=shares(read("distribution-of-arrival-weekend.csv")),
        quantile_levels=levels,
        connection_hours=connection,
        energy_kwh=energy,
        mean_connection_hours=by_time(read("mean-session-length-per.csv"), KINDS[kind], 30),
        mean_energy_kwh=by_time(read("mean-demand-per-arrival.csv"), KINDS[kind], 30),
        day_share=pd.to_numeric(days[median].reindex(list(_DAYS)), errors="coerce").to_numpy(np.float64) / 100
        if median in days.columns else np.full(7, np.nan),
    )


def elaad_scenario(stats: ElaadStatistics, sessions_per_weekday: float, *, weekend_ratio: float | None = None,
                   block_minutes: int = 30, num_quantiles: int = 41) -> dict[str, Any]:
    """Fitted-generator fields reproducing the published distributions at a chosen volume.

    Weekday arrivals are ``sessions_per_weekday`` spread by the weekday arrival shares;
    weekend days get ``weekend_ratio`` times as many (default: the published day shares) with
    the weekend shares (the weekday ones where none are published); day-of-week factors follow
    the day shares. Stay and energy are drawn as F^-1(G(Z)), Z ~ N(mu_s, 1) for arrivals in
    30-minute slot s and G the mixture CDF of Z over the week's arrivals: the marginals are
    exactly the published ones, and mu_s is solved so that each slot's mean is the published
    mean per arrival slot (scaled by one factor so that they average to the marginal's mean).
    Tables hold ``num_quantiles`` quantiles per ``block_minutes`` block (a multiple of 30).
    """
    if block_minutes % 30 or MINUTES_PER_DAY % block_minutes:
        raise ValueError(f"block_minutes must be a multiple of 30 dividing 1440, got {block_minutes}")
    factors = np.ones(7)
    share = stats.day_share
    if np.isfinite(share[:5]).all():
        factors[:5] = share[:5] / share[:5].mean()
    if np.isfinite(share[5:]).all():
        factors[5:] = share[5:] / share[5:].mean()
    if weekend_ratio is None:
        if not np.isfinite(share).all():
            raise ValueError(f"ElaadNL publishes no weekend shares for {stats.kind!r}; give weekend_ratio")
        weekend_ratio = float(share[5:].mean() / share[:5].mean())
    weekday = sessions_per_weekday * stats.arrival_share_weekday
    weekend_share = stats.arrival_share_weekend
    weekend = sessions_per_weekday * weekend_ratio * (stats.arrival_share_weekday if weekend_share is None
                                                      else weekend_share)
    week = (5 * weekday + 2 * weekend).reshape(48, 2).sum(axis=1)
    weights = week / week.sum()
    levels = np.linspace(0.0, 1.0, num_quantiles)
    fitted = {"generator": "fitted", "arrivals_weekday": _rounded(weekday, 5),
              "arrivals_weekend": _rounded(weekend, 5), "day_of_week_factors": _rounded(factors, 4)}
    for name, values, means in (
            ("dwell_quantiles_hours", stats.connection_hours, stats.mean_connection_hours),
            ("energy_quantiles_kwh", stats.energy_kwh, stats.mean_energy_kwh)):
        fitted[name] = _rounded(_copula_tables(stats.quantile_levels, values, weights, means, block_minutes,
                                               levels), 4)
    return fitted


def _copula_tables(levels_pub, values_pub, weights, means, block_minutes, levels):
    from scipy.special import ndtr

    grid = np.linspace(-9.0, 9.0, 3601)
    slots = np.arange(len(means))
    known = np.isfinite(means)
    target = np.interp(slots, slots[known], means[known], period=len(means))
    mean_pub = np.trapezoid(values_pub, levels_pub)
    target *= mean_pub / (weights @ target)
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(40)
    node_weights /= node_weights.sum()
    mu = np.zeros(len(means))
    for _ in range(100):
        inverse = np.interp(ndtr(grid[:, None] - mu) @ weights, levels_pub, values_pub)
        lo, hi = mu - 8.0, mu + 8.0
        for _ in range(50):
            mid = (lo + hi) / 2
            low = np.interp(mid[:, None] + nodes, grid, inverse) @ node_weights < target
            lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
        step = (lo + hi) / 2 - (weights @ ((lo + hi) / 2)) - mu
        mu += step
        if np.abs(step).max() < 1e-6:
            break
    mixture = ndtr(grid[:, None] - mu) @ weights
    per_block = block_minutes // 30
    table = np.empty((len(means) // per_block, len(levels)))
    for b in range(len(table)):
        block = slice(b * per_block, (b + 1) * per_block)
        w = np.maximum(weights[block], 1e-12)
        cdf = ndtr(grid[:, None] - mu[block]) @ (w / w.sum())
        z = np.interp(levels, cdf, grid)
        table[b] = np.interp(np.interp(z, grid, mixture), levels_pub, values_pub)
    return np.maximum.accumulate(table, axis=1)


def elaad_fidelity(stats: ElaadStatistics, generator: FittedGenerator, params: SiteParams,
                   num_days: int = 2800, seed: int = 0) -> dict[str, Any]:
    """How closely ``generator`` reproduces the published ElaadNL distributions.

    KS distances (generated days against the published CDF, on the site's step grid) of the
    arrival time of day (weekdays, weekend days, all), of the stay and of the energy (all
    days: ElaadNL publishes them for all days together); the weighted mean absolute relative
    error of the mean stay and energy per 30-minute arrival slot against the published means,
    as published and times the one scale that makes them average to the generated mean (the
    published means and marginals disagree by that factor); and the generated sessions per
    day against the generator's expected ones.
    """
    model = generated_sessions(generator, params, num_days, seed)
    dt_minutes = round(params.dt_hours * 60)
    steps = MINUTES_PER_DAY // dt_minutes
    weekday_rate, weekend_rate = generator.step_rates(dt_minutes)
    factors = generator.day_of_week_factors * generator.arrival_scale
    expected = {False: weekday_rate.sum() * factors[:5].mean(), True: weekend_rate.sum() * factors[5:].mean()}
    edges = np.arange(0, MINUTES_PER_DAY + 1, 15)
    published = {}
    for weekend, share in ((False, stats.arrival_share_weekday), (True, stats.arrival_share_weekend)):
        share = stats.arrival_share_weekday if share is None else share
        published[weekend] = np.interp(np.arange(1, steps + 1) * dt_minutes, edges,
                                       np.r_[0, np.cumsum(share)])
    total = 5 * expected[False] + 2 * expected[True]
    published[None] = (5 * expected[False] * published[False] + 2 * expected[True] * published[True]) / total
    report: dict[str, Any] = {"source": "ElaadNL", "kind": stats.kind,
                              "generated_days": int(len(model["per_day"])), "dt_minutes": dt_minutes}
    for group, weekend in (("overall", None), ("weekday", False), ("weekend", True)):
        mask, day_mask = ((np.ones(len(x), bool) if weekend is None else x == weekend)
                          for x in (model["weekend"], model["day_weekend"]))
        counts = np.bincount(model["slot"][mask], minlength=steps)[:steps]
        generated_cdf = np.cumsum(counts) / max(mask.sum(), 1)
        rate = total / 7 if weekend is None else expected[weekend]
        report[group] = {"arrival_ks": float(np.abs(generated_cdf - published[weekend]).max()),
                         "sessions_per_day": float(rate),
                         "model_sessions_per_day": float(model["per_day"][day_mask].mean()),
                         "sessions_per_day_rel_error": float(model["per_day"][day_mask].mean() / rate - 1)}
    dwell = model["dwell_steps"]
    k = np.arange(1, dwell.max() + 1)
    dwell_cdf = np.searchsorted(np.sort(dwell), k, side="right") / len(dwell)
    energy = np.sort(model["energy_kwh"])
    cdf = stats.energy_cdf(energy)
    rank = np.arange(1, len(energy) + 1) / len(energy)
    slot = model["slot"] * dt_minutes // 30
    report["overall"].update(
        dwell_ks=float(np.abs(dwell_cdf - stats.connection_cdf((k + 0.5) * params.dt_hours)).max()),
        energy_ks=float(max((rank - cdf).max(), (cdf - rank + 1 / len(energy)).max())),
        **_slot_errors("dwell", slot, dwell * params.dt_hours, stats.mean_connection_hours),
        **_slot_errors("energy", slot, model["energy_kwh"], stats.mean_energy_kwh),
    )
    return _round_report(report)


def _slot_errors(name: str, slot: np.ndarray, values: np.ndarray, published: np.ndarray) -> dict[str, float]:
    count = np.bincount(slot, minlength=len(published))
    mean = np.bincount(slot, weights=values, minlength=len(published)) / np.maximum(count, 1)
    used = np.isfinite(published) & (count > 0) & (published > 0)
    scale = float(values.mean() / np.average(published[used], weights=count[used]))
    return {f"slot_mean_{name}_rel_error": _weighted_error(mean[used], published[used], count[used]),
            f"slot_mean_{name}_scale": scale,
            f"slot_mean_{name}_rel_error_scaled": _weighted_error(mean[used], scale * published[used],
                                                                  count[used])}


def _weighted_error(values: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> float:
    return float(np.average(np.abs(values / reference - 1), weights=weights))
