"""Forecasts for episodes: windows of exogenous series and expected EV demand.

Series forecasts (``forecast_windows``: perfect, persistence or noisy) are issued at every step
of an episode from its truth; ``episode_forecasts`` builds the ``Episode.forecast_windows`` the
observation shows. Demand forecasts give the expected arrivals and requested energy over the
next H steps, from a generator's arrival rates (``parametric_arrival_rates``) or from a
regression on past sessions (``fit_demand_regression``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from envs.site import SiteParams

FORECAST_MODES = ("perfect", "persistence", "noisy")


# --- forecasts -------------------------------------------------------------------------------

def forecast_windows(truth: np.ndarray, horizon_steps: int, forecast_steps: int,
                     mode: str = "perfect", **kwargs) -> np.ndarray:
    """Forecasts issued at every step: (B, T+1, H+1) from a (B, L >= T+H+1) truth series.

    Entry ``[b, t, h]`` is what is known at step ``t`` about step ``t + h``; lead 0 is always the
    truth (the present is measured). ``mode`` picks ``perfect_forecast``,
    ``persistence_forecast`` or ``noisy_forecast``; ``kwargs`` go to it.
    """
    if mode == "perfect":
        return perfect_forecast(truth, horizon_steps, forecast_steps)
    if mode == "persistence":
        return persistence_forecast(truth, horizon_steps, forecast_steps, **kwargs)
    if mode == "noisy":
        return noisy_forecast(truth, horizon_steps, forecast_steps, **kwargs)
    raise ValueError(f"forecast mode must be one of {FORECAST_MODES}, got {mode!r}")


def _windows(series: np.ndarray, horizon_steps: int, forecast_steps: int) -> np.ndarray:
    series = np.asarray(series, dtype=np.float64)
    if series.shape[-1] < horizon_steps + forecast_steps + 1:
        raise ValueError(f"truth has {series.shape[-1]} steps, needs horizon_steps + forecast_steps + 1 = "
                         f"{horizon_steps + forecast_steps + 1}")
    index = np.arange(horizon_steps + 1)[:, None] + np.arange(forecast_steps + 1)[None, :]
    return series[..., index]


def perfect_forecast(truth: np.ndarray, horizon_steps: int, forecast_steps: int) -> np.ndarray:
    """The truth itself: ``[b, t, h] = truth[b, t + h]``."""
    return _windows(truth, horizon_steps, forecast_steps)


def persistence_forecast(truth: np.ndarray, horizon_steps: int, forecast_steps: int,
                         steps_per_day: int | None = None, history: np.ndarray | None = None) -> np.ndarray:
    """Yesterday's value at the same clock time, or the last value held (``steps_per_day`` None).

    The daily version forecasts step ``t + h`` (h > 0) by the most recent step ``t + h - k *
    steps_per_day`` that is not in the future of ``t``. ``history`` (B, steps_per_day) holds the
    day before step 0; without it, lags before the episode fall back to the last value held.
    """
    truth = np.asarray(truth, dtype=np.float64)
    t = np.arange(horizon_steps + 1)[:, None]
    h = np.arange(forecast_steps + 1)[None, :]
    held = np.broadcast_to(truth[..., t], truth.shape[:-1] + (horizon_steps + 1, forecast_steps + 1))
    if steps_per_day is None:
        out = held.copy()
    else:
        days_back = -(-h // steps_per_day)
        lagged = t + h - days_back * steps_per_day
        if history is not None:
            history = np.asarray(history, dtype=np.float64)
            if history.shape != truth.shape[:-1] + (steps_per_day,):
                raise ValueError(f"history has shape {history.shape}, expected "
                                 f"{truth.shape[:-1] + (steps_per_day,)}")
            extended = np.concatenate([history, truth], axis=-1)
            out = np.where(lagged >= -steps_per_day, extended[..., np.maximum(lagged + steps_per_day, 0)],
                           held)
        else:
            out = np.where(lagged >= 0, truth[..., np.maximum(lagged, 0)], held)
    out[..., 0] = truth[..., :horizon_steps + 1]
    return out


def noisy_forecast(truth: np.ndarray, horizon_steps: int, forecast_steps: int,
                   rng: np.random.Generator | None = None, std_at_horizon: float = 0.1,
                   scale: float | np.ndarray | None = None, nonnegative: bool = False) -> np.ndarray:
    """Truth plus an error that grows with the lead like a random walk, drawn from ``rng``.

    The error at lead h has standard deviation ``std_at_horizon * scale * sqrt(h / H)`` (0 at
    lead 0) and is correlated along the lead, as a forecast issued at one time would be. ``scale``
    defaults to each env's mean absolute truth, so ``std_at_horizon`` is relative; pass a number
    (or a (B,) array) for an absolute error. ``nonnegative`` clips the forecast at 0 (load, PV).
    """
    if rng is None:
        raise ValueError("noisy_forecast needs an rng (a numpy Generator) to be reproducible")
    windows = _windows(truth, horizon_steps, forecast_steps)
    batch = windows.shape[:-2]
    if scale is None:
        scale = np.mean(np.abs(np.asarray(truth, dtype=np.float64)), axis=-1)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), batch)
    steps = rng.standard_normal(batch + (horizon_steps + 1, forecast_steps))
    walk = np.concatenate([np.zeros(batch + (horizon_steps + 1, 1)), np.cumsum(steps, axis=-1)], axis=-1)
    out = windows + walk * (std_at_horizon / np.sqrt(max(forecast_steps, 1))) * scale[..., None, None]
    return np.maximum(out, 0.0) if nonnegative else out


def episode_forecasts(params: SiteParams, episode, spec: Mapping[str, Mapping] | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Forecast windows of every ``FORECAST_BLOCK`` series: (B, T+1, 5, H+1) float32.

    ``spec`` maps a block name (``price_buy_eur_kwh``, ``site_load_kw``, ...) to the keyword
    arguments of ``forecast_windows`` (``mode`` and its options); missing names are perfect.
    Persistence defaults to the site's day; noisy load and PV are clipped at 0. Put the result
    in ``Episode.forecast_windows`` and the observation shows it instead of the truth.
    """
    from envs.episode import FORECAST_BLOCK
    from envs.observation import forecast_series

    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(FORECAST_BLOCK))
    if unknown:
        raise ValueError(f"forecast spec names unknown series {unknown}; known: {', '.join(FORECAST_BLOCK)}")
    truth = forecast_series(episode).astype(np.float64)
    out = []
    for i, name in enumerate(FORECAST_BLOCK):
        options = dict(spec.get(name, {}))
        mode = options.pop("mode", "perfect")
        if mode == "persistence":
            options.setdefault("steps_per_day", params.steps_per_day)
        if mode == "noisy":
            options.setdefault("rng", rng)
            options.setdefault("nonnegative", name in ("site_load_kw", "site_pv_kw"))
        out.append(forecast_windows(truth[:, i], params.horizon_steps, params.forecast_steps, mode,
                                    **options))
    return np.stack(out, axis=2).astype(np.float32)


# --- demand forecasts ------------------------------------------------------------------------

def demand_forecast_from_rates(arrival_rate: np.ndarray, energy_per_arrival_kwh, forecast_steps: int
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Expected arrivals and requested energy over the next H steps, issued at every step.

    ``arrival_rate`` (B, T) or (T,) is the expected number of arrivals in each step of the
    episode (after it: none); ``energy_per_arrival_kwh`` a scalar or the same shape. Returns two
    (..., T+1) arrays: the sums over steps ``t+1 .. t+H`` (arrivals at ``t`` are already seen).
    """
    rate = np.asarray(arrival_rate, dtype=np.float64)
    energy = rate * np.asarray(energy_per_arrival_kwh, dtype=np.float64)
    out = []
    for values in (rate, energy):
        prefix = np.concatenate([np.zeros(values.shape[:-1] + (1,)), np.cumsum(values, axis=-1)], axis=-1)
        steps = values.shape[-1]
        t = np.arange(steps + 1)
        out.append(prefix[..., np.minimum(t + forecast_steps + 1, steps)]
                   - prefix[..., np.minimum(t + 1, steps)])
    return out[0], out[1]


def parametric_arrival_rates(generator, params: SiteParams, weekday) -> np.ndarray:
    """(B, T) expected arrivals per step of a ``ParametricGenerator`` for episodes starting on ``weekday``."""
    return generator.arrival_rates(params, np.atleast_1d(np.asarray(weekday, dtype=np.int64)))


@dataclasses.dataclass(frozen=True)
class DemandRegression:
    """Expected arrivals and requested kWh per step of the day, by day type and special days.

    A ridge least-squares fit of the counts (and kWh) per day and step of the day on the features
    one-hot(step of day) x one-hot(day type: weekday, saturday, sunday) plus one-hot(step of day)
    x special day (holidays, events: a list of local dates). Predictions are clipped at 0.
    """

    dt_minutes: int
    tz: str | None
    special_days: frozenset
    arrival_coef: np.ndarray  # (4, steps_per_day): day types, then the special-day increment
    energy_coef: np.ndarray  # (4, steps_per_day) kWh

    def _features(self, dates) -> tuple[np.ndarray, np.ndarray]:
        days = pd.DatetimeIndex(np.asarray(dates, dtype="datetime64[D]"))
        kind = np.clip(days.day_of_week.to_numpy() - 4, 0, 2)
        special = days.normalize().isin(pd.DatetimeIndex(sorted(self.special_days)))
        return kind, np.asarray(special, dtype=np.float64)

    def predict_days(self, dates) -> tuple[np.ndarray, np.ndarray]:
        """(D, steps_per_day) expected arrivals and kWh for each local date."""
        kind, special = self._features(dates)
        arrivals = self.arrival_coef[kind] + special[:, None] * self.arrival_coef[3]
        energy = self.energy_coef[kind] + special[:, None] * self.energy_coef[3]
        return np.maximum(arrivals, 0.0), np.maximum(energy, 0.0)

    def episode_rates(self, params: SiteParams, dates) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) expected arrivals and kWh per episode step, for episodes starting on ``dates``."""
        if round(params.dt_hours * 60) != self.dt_minutes:
            raise ValueError(f"regression fitted at dt {self.dt_minutes} min, "
                             f"site has {params.dt_hours * 60:g}")
        days = np.asarray(dates, dtype="datetime64[D]").reshape(-1)
        step = params.start_minute // self.dt_minutes + np.arange(params.horizon_steps)
        spd = params.steps_per_day
        offset, slot = step // spd, step % spd
        arrivals = np.empty((len(days), params.horizon_steps))
        energy = np.empty_like(arrivals)
        for k in np.unique(offset):
            a, e = self.predict_days(days + k)
            day = offset == k
            arrivals[:, day], energy[:, day] = a[:, slot[day]], e[:, slot[day]]
        return arrivals, energy


def fit_demand_regression(sessions: pd.DataFrame, dt_minutes: int = 15, tz: str | None = None,
                          special_days: Iterable = (), ridge: float = 1.0) -> DemandRegression:
    """Fit ``DemandRegression`` on past sessions (columns ``arrival``, tz-aware, and ``requested_kwh``).

    Every local date from the first arrival to the last is a sample day, days without sessions
    count as zero demand. ``tz`` (default: the arrivals' own zone) sets the local calendar.
    """
    for column in ("arrival", "requested_kwh"):
        if column not in sessions.columns:
            raise ValueError(f"sessions need a column {column!r}; got {', '.join(sessions.columns)}")
    arrival = pd.DatetimeIndex(sessions["arrival"])
    if arrival.tz is None:
        raise ValueError("sessions.arrival must be tz-aware (local clock times are needed for day types)")
    if tz is not None:
        arrival = arrival.tz_convert(tz)
    local = arrival.tz_localize(None)
    spd = 1440 // dt_minutes
    day = local.normalize()
    first, last = day.min(), day.max()
    num_days = (last - first).days + 1
    row = ((day - first).days).to_numpy()
    slot = ((local - day).total_seconds().to_numpy() // (dt_minutes * 60)).astype(np.int64)
    counts = np.zeros((num_days, spd))
    energy = np.zeros((num_days, spd))
    np.add.at(counts, (row, slot), 1.0)
    np.add.at(energy, (row, slot), sessions["requested_kwh"].to_numpy(dtype=np.float64))
    model = DemandRegression(dt_minutes, tz, frozenset(pd.DatetimeIndex(
        [pd.Timestamp(d) for d in special_days]).normalize()), np.zeros((4, spd)), np.zeros((4, spd)))
    kind, special = model._features(pd.date_range(first, periods=num_days, freq="D").to_numpy())
    design = np.stack([kind == 0, kind == 1, kind == 2, special], axis=1).astype(np.float64)
    gram = design.T @ design + ridge * np.diag([1e-6, 1e-6, 1e-6, 1.0])
    solve = np.linalg.solve(gram, design.T)
    return dataclasses.replace(model, arrival_coef=solve @ counts, energy_coef=solve @ energy)


@dataclasses.dataclass(frozen=True)
class IssuedForecasts:
    """A Generator that adds the forecasts of the scenario's ``forecasts`` block to its base's episodes.

    ``spec`` maps ``FORECAST_BLOCK`` names to ``forecast_windows`` options (``mode``: perfect,
    persistence or noisy); the observation then shows these windows instead of the truth,
    while rewards keep using the truth.
    """

    base: Any
    spec: Mapping[str, Mapping]

    def sample(self, params, rng: np.random.Generator, num_envs: int):
        episode = self.base.sample(params, rng, num_envs)
        issued = episode_forecasts(params, episode, self.spec, rng)
        return dataclasses.replace(episode, forecast_windows=issued)
