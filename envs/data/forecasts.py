"""Forecasts for episodes: windows of exogenous series and expected EV demand.

Series forecasts (``forecast_windows``: perfect, persistence or noisy) are issued at every step
of an episode from its truth; ``episode_forecasts`` builds the ``Episode.forecast_windows`` the
observation shows. Demand forecasts (expected arrivals and requested energy per step) come from
the generators' own rates, or, for replayed sessions, from a regression on past days
(``fit_demand_regression``); ``envs.episode.demand_windows`` turns them into
``Episode.demand_forecast``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from envs.errors import SiteError, cut, cut_key
from envs.scenario_fields import ScenarioFields
from envs.site import SiteParams

FORECAST_MODES = ("perfect", "persistence", "noisy")
MODE_OPTIONS = {"perfect": (), "persistence": ("steps_per_day",),
                "noisy": ("std_at_horizon", "scale", "nonnegative")}  # a scenario's options per mode


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
    arguments of ``forecast_windows`` (``mode`` and its options); missing names keep the
    episode's own ``forecast_windows`` (forecasts read from files, ``file_forecast_windows``)
    or, without them, are perfect. Persistence defaults to the site's day; noisy load and PV
    are clipped at 0. Put the result in ``Episode.forecast_windows`` and the observation shows
    it instead of the truth.
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
        if name not in spec and episode.forecast_windows is not None:
            out.append(episode.forecast_windows[:, :, i].astype(np.float64))
            continue
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


def file_forecast_windows(table: np.ndarray, rows_utc: np.ndarray, issue_utc: np.ndarray, truth: np.ndarray,
                          dt_minutes: float, lead_minutes: float, forecast_steps: int,
                          targets_utc: np.ndarray | None = None) -> np.ndarray:
    """Windows (B, T+1, H+1) of forecasts as a data file issued them (say, a carbon signal's
    ``f1 .. f36`` columns).

    ``table`` (R, K+1) holds, for each file row at the UTC times ``rows_utc`` (R,), the value
    measured then and the K forecasts it issued: column k for the interval of ``lead_minutes``
    that starts k leads later. At every step, issued at the UTC ``issue_utc`` (B, T+1), the
    forecast of step ``t + h`` is the time-weighted mean of the latest row's forecasts over that
    step's interval; past the last lead the last forecast holds. Lead 0 is ``truth`` (B, T+1),
    the measured step value, as for every forecast the observation shows. ``targets_utc``
    (B, T+1, H), the UTC start of the step each lead forecasts, defaults to ``issue + h * dt``;
    give it where steps are not evenly spaced in UTC (the wall-clock grid of a daylight-saving
    day). A target before the issue time reads the interval from the issue time on.
    """
    table = np.asarray(table, dtype=np.float64)
    rows = np.asarray(rows_utc, dtype="datetime64[ns]").astype(np.int64)
    issued = np.asarray(issue_utc, dtype="datetime64[ns]").astype(np.int64)
    row = np.searchsorted(rows, issued, side="right") - 1
    if row.min() < 0:
        raise ValueError(f"forecasts are asked for at {np.datetime64(int(issued.min()), 'ns')}, before the "
                         f"file's first row {np.datetime64(int(rows[0]), 'ns')}")
    if len(rows) > 1 and (issued - rows[row]).max() >= rows[-1] - rows[-2]:
        raise ValueError(f"forecasts are asked for at {np.datetime64(int(issued.max()), 'ns')}, after the "
                         f"file's last row {np.datetime64(int(rows[-1]), 'ns')}")
    lead_ns = lead_minutes * 60e9
    k = table.shape[1] - 1
    cumulative = np.zeros((len(table), k + 2))
    np.cumsum(table, axis=1, out=cumulative[:, 1:])
    level = np.concatenate([table, table[:, -1:]], axis=1)
    offset = (issued - rows[row]) / lead_ns
    width = dt_minutes / lead_minutes

    def integral(u):
        whole = np.minimum(np.floor(u).astype(np.int64), k + 1)
        at = row[..., None]
        return cumulative[at, whole] + level[at, whole] * (u - whole)

    if targets_utc is None:
        start = offset[..., None] + width * np.arange(1, forecast_steps + 1)
    else:
        targets = np.asarray(targets_utc, dtype="datetime64[ns]").astype(np.int64)
        start = np.maximum((targets - rows[row][..., None]) / lead_ns, offset[..., None])
    out = np.empty(issued.shape + (forecast_steps + 1,))
    out[..., 0] = truth
    out[..., 1:] = (integral(start + width) - integral(start)) / width
    return out


# --- demand forecasts ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class DemandRegression:
    """Expected arrivals and requested kWh per step of the day, by day type and special days.

    A ridge least-squares fit of the counts (and kWh) per day and step of the day on the
    features one-hot(day type: weekday, Saturday, Sunday) and special day (holidays, events),
    each with its own coefficient per step of the day; a special day adds its coefficients to
    its day type's. Day ``d`` of the fitted range has its own fit on the days before it only
    (an expanding window, so a replayed day is forecast from its past, never from itself);
    ``as_of=None`` uses the fit on every day. Before any day of a type was seen, its expected
    demand is 0. Predictions are clipped at 0.
    """

    dt_minutes: int
    first_day: np.datetime64  # first local date of the fitted sessions
    special_days: np.ndarray  # sorted datetime64[D]
    arrival_coef: np.ndarray  # (D + 1, 4, steps_per_day): row d fitted on the first d days
    energy_coef: np.ndarray  # (D + 1, 4, steps_per_day) kWh

    def _features(self, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kind = np.clip((days.astype(np.int64) + 3) % 7 - 4, 0, 2)
        return kind, np.isin(days, self.special_days).astype(np.float64)

    def predict_days(self, dates, as_of=None) -> tuple[np.ndarray, np.ndarray]:
        """(D, steps_per_day) expected arrivals and kWh for each local date, fitted on the days
        before ``as_of`` (a date or one per date; None: every fitted day)."""
        days = np.asarray(dates, dtype="datetime64[D]").reshape(-1)
        last = len(self.arrival_coef) - 1
        if as_of is None:
            row = np.full(len(days), last)
        else:
            row = np.broadcast_to(np.asarray(as_of, dtype="datetime64[D]"), days.shape) - self.first_day
            row = np.clip(row.astype(np.int64), 0, last)
        kind, special = self._features(days)
        out = []
        for coef in (self.arrival_coef, self.energy_coef):
            out.append(np.maximum(coef[row, kind] + special[:, None] * coef[row, 3], 0.0))
        return out[0], out[1]

    def episode_rates(self, params: SiteParams, dates, past_only: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) expected arrivals and kWh per step of episodes starting on ``dates``; with
        ``past_only`` each is fitted on the days before its start date."""
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
            a, e = self.predict_days(days + k, days if past_only else None)
            day = offset == k
            arrivals[:, day], energy[:, day] = a[:, slot[day]], e[:, slot[day]]
        return arrivals, energy


def fit_daily_demand(arrival_local, requested_kwh, dt_minutes: int = 15, special_days: Iterable = (),
                     ridge: float = 1.0, gap_days: int | None = 7) -> DemandRegression:
    """``DemandRegression`` from arrivals as local wall-clock times (naive datetime64) and their kWh.

    Every local date from the first arrival to the last is a sample day, and a day without
    sessions counts as zero demand, except in a run of at least ``gap_days`` such days (None:
    never), which is taken for a gap in the data (files of separate periods joined) and left out.
    """
    if 1440 % dt_minutes:
        raise ValueError(f"dt_minutes must divide the day (1440), got {dt_minutes}")
    minutes = np.asarray(arrival_local, dtype="datetime64[m]").astype(np.int64)
    kwh = np.asarray(requested_kwh, dtype=np.float64)
    if not len(minutes):
        raise ValueError("no sessions to fit a demand regression on")
    day = minutes // 1440
    first = int(day.min())
    num_days, spd = int(day.max()) - first + 1, 1440 // dt_minutes
    row, slot = day - first, minutes % 1440 // dt_minutes
    counts = np.zeros((num_days, spd))
    energy = np.zeros((num_days, spd))
    np.add.at(counts, (row, slot), 1.0)
    np.add.at(energy, (row, slot), kwh)
    special = np.unique(np.asarray(list(special_days), dtype="datetime64[D]"))
    model = DemandRegression(dt_minutes, np.datetime64(first, "D"), special, counts, energy)
    kind, is_special = model._features(np.datetime64(first, "D") + np.arange(num_days))
    design = np.column_stack([kind == 0, kind == 1, kind == 2, is_special]).astype(np.float64)
    design[_gap_days(counts.sum(axis=1) == 0, gap_days)] = 0.0
    gram = np.zeros((num_days + 1, 4, 4))
    np.cumsum(design[:, :, None] * design[:, None, :], axis=0, out=gram[1:])
    gram += ridge * np.diag([1e-6, 1e-6, 1e-6, 1.0])
    coef = []
    for values in (counts, energy):
        moments = np.zeros((num_days + 1, 4, spd))
        np.cumsum(design[:, :, None] * values[:, None, :], axis=0, out=moments[1:])
        coef.append(np.linalg.solve(gram, moments))
    return dataclasses.replace(model, arrival_coef=coef[0], energy_coef=coef[1])


def _gap_days(empty: np.ndarray, gap_days: int | None) -> np.ndarray:
    """Mask of the days in runs of at least ``gap_days`` consecutive ``empty`` days."""
    if gap_days is None:
        return np.zeros_like(empty)
    edges = np.diff(np.concatenate([[0], empty.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long = ends - starts >= gap_days
    run = np.cumsum(np.bincount(starts[long], minlength=len(empty) + 1)[:-1]
                    - np.bincount(ends[long], minlength=len(empty) + 1)[:-1])
    return run > 0


def fit_demand_regression(sessions: pd.DataFrame, dt_minutes: int = 15, tz: str | None = None,
                          special_days: Iterable = (), ridge: float = 1.0, gap_days: int | None = 7
                          ) -> DemandRegression:
    """``fit_daily_demand`` on a session table (columns ``arrival``, tz-aware, and ``requested_kwh``).

    ``tz`` (default: the arrivals' own zone) sets the local calendar.
    """
    for column in ("arrival", "requested_kwh"):
        if column not in sessions.columns:
            raise ValueError(f"sessions need a column {column!r}; got {', '.join(sessions.columns)}")
    arrival = pd.DatetimeIndex(sessions["arrival"])
    if arrival.tz is None:
        raise ValueError("sessions.arrival must be tz-aware (local clock times are needed for day types)")
    if tz is not None:
        arrival = arrival.tz_convert(tz)
    special = [pd.Timestamp(d).date() for d in special_days]
    return fit_daily_demand(arrival.tz_localize(None).to_numpy(), sessions["requested_kwh"].to_numpy(),
                            dt_minutes, special, ridge, gap_days)


def check_forecasts(spec, site_name: str | None = None) -> dict[str, dict]:
    """A scenario's ``forecasts`` block checked: ``FORECAST_BLOCK`` name -> ``{mode, options}``.

    ``mode`` is one of ``FORECAST_MODES`` (default perfect) and the options are those of
    ``MODE_OPTIONS``: ``steps_per_day`` (a whole number >= 1), ``std_at_horizon`` (>= 0),
    ``scale`` (>= 0) and ``nonnegative`` (true or false). Anything else raises SiteError naming
    ``scenario.forecasts.<series>.<option>`` (and the site when ``site_name`` is given).
    """
    from envs.episode import FORECAST_BLOCK

    where = "scenario.forecasts" if site_name is None else f"site {site_name!r}: scenario.forecasts"
    fields = ScenarioFields(where)
    if not isinstance(spec, Mapping):
        raise SiteError(f"{where} must be a mapping of series ({', '.join(FORECAST_BLOCK)}) to their "
                        f"forecast mode and options, got {cut(spec)}")
    checked = {}
    for name, options in spec.items():
        if name not in FORECAST_BLOCK:
            fields.fail(cut_key(name), f"is not a forecast series (known: {', '.join(FORECAST_BLOCK)})")
        if not isinstance(options, Mapping):
            fields.fail(name, f"must be a mapping with a mode ({', '.join(FORECAST_MODES)}), "
                        f"got {cut(options)}")
        options = dict(options)
        mode = options.pop("mode", "perfect")
        if not isinstance(mode, str) or mode not in FORECAST_MODES:
            fields.fail(f"{name}.mode", f"must be one of {', '.join(FORECAST_MODES)}, got {cut(mode)}")
        allowed = MODE_OPTIONS[mode]
        for key in options:
            if key not in allowed:
                fields.fail(f"{name}.{cut_key(key)}", f"is not an option of mode {mode} (its options: "
                            f"{', '.join(allowed) or 'none'})")
        out = {"mode": mode}
        if "steps_per_day" in options:
            steps = options["steps_per_day"]
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                fields.fail(f"{name}.steps_per_day", f"must be a whole number >= 1, got {cut(steps)}")
            out["steps_per_day"] = steps
        for key in ("std_at_horizon", "scale"):
            if key in options:
                out[key] = fields.number(f"{name}.{key}", options[key], low=0)
        if "nonnegative" in options:
            nonnegative = options["nonnegative"]
            if not isinstance(nonnegative, bool):
                fields.fail(f"{name}.nonnegative", f"must be true or false, got {cut(nonnegative)}")
            out["nonnegative"] = nonnegative
        checked[name] = out
    return checked


@dataclasses.dataclass(frozen=True)
class IssuedForecasts:
    """A Generator that adds the forecasts of the scenario's ``forecasts`` block to its base's episodes.

    ``spec`` maps ``FORECAST_BLOCK`` names to ``forecast_windows`` options (``mode``: perfect,
    persistence or noisy; checked by ``check_forecasts`` when built); the observation then shows
    these windows instead of the truth, while rewards keep using the truth.
    """

    base: Any
    spec: Mapping[str, Mapping]
    site_name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "spec", check_forecasts(self.spec, self.site_name))

    def sample(self, params, rng: np.random.Generator, num_envs: int):
        episode = self.base.sample(params, rng, num_envs)
        issued = episode_forecasts(params, episode, self.spec, rng)
        return dataclasses.replace(episode, forecast_windows=issued)
