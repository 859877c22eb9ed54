"""How far a site can trust announced departures: quantiles of the real departure given the announcement.

Drivers announce a departure (ISO 15118 charging needs, an app) and often leave hours before or
after it. A site that keeps its history can tell, for an EV that announced a stay of ``a`` hours
and is still plugged in after ``e`` hours, how the real departure spreads around the
announcement. ``DepartureModel`` holds that spread as quantiles of the error ``stay - announced
stay`` over the sessions of the same announced stay (whole hours) still there after ``e``; a
planner turns them into departure scenarios (``agents.mpc.ModelPredictiveControl``'s
``departure_quantiles``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from envs.errors import ConfigError, cut
from envs.observability import REFERENCE_SEED, session_model
from envs.site import SiteParams

REFERENCE_DAYS = 112  # scenario days sampled once per site for the tables
MIN_SESSIONS = 30  # an announced-stay row with fewer sessions still plugged in reads the pooled row
MAX_ANNOUNCED_HOURS = 24  # announced stays of this many hours and more share the last row
MAX_LEVELS = 99  # departure scenarios per EV: each is a row of every plan


@dataclasses.dataclass(frozen=True, eq=False)
class DepartureModel:
    """Quantiles of the departure error given the announced stay and the time plugged in so far.

    ``error_steps`` (A, E, K): at announced stay ``a`` whole hours (row ``min(a, A - 1)``), after
    ``e`` steps plugged in (column ``min(e, E - 1)``), the ``levels`` (K,) quantiles of ``stay -
    announced stay`` in steps among the reference sessions of that row still plugged in after
    ``e`` steps; a row with fewer than ``MIN_SESSIONS`` of them reads the quantiles of all
    sessions still plugged in. ``steps_left(announced_steps, elapsed_steps)`` gives, per EV,
    the K quantiles of the steps it still stays, at least one (it is plugged in now).
    """

    dt_hours: float
    levels: np.ndarray  # (K,) increasing in (0, 1)
    error_steps: np.ndarray  # (A, E, K)
    sessions: int

    @classmethod
    def from_sessions(cls, dt_hours: float, stay_steps, announced_steps,
                      levels: Sequence[float]) -> DepartureModel:
        stay = np.asarray(stay_steps, dtype=np.int64)
        announced = np.asarray(announced_steps, dtype=np.int64)
        levels = np.asarray(levels, dtype=np.float64)
        if len(stay) == 0 or stay.shape != announced.shape:
            raise ConfigError("departure model: needs at least one session, with a stay and an announced "
                              "stay each")
        if levels.ndim != 1 or not 0 < len(levels) <= MAX_LEVELS or not ((levels > 0) & (levels < 1)).all() \
                or (np.diff(levels) <= 0).any():
            raise ConfigError(f"departure_quantiles must be 1 to {MAX_LEVELS} increasing levels in (0, 1), "
                              f"got {cut(levels.tolist())}")
        per_hour = max(1, round(1.0 / dt_hours))
        row = np.minimum(np.maximum(announced, 0) // per_hour, MAX_ANNOUNCED_HOURS - 1)
        elapsed = np.arange(int(stay.max()) + 1)
        error = stay - announced
        pooled = _survivor_quantiles(stay, error, elapsed, levels, 1)
        table = np.empty((MAX_ANNOUNCED_HOURS, len(elapsed), len(levels)))
        for hour in range(MAX_ANNOUNCED_HOURS):
            chosen = row == hour
            table[hour] = _survivor_quantiles(stay[chosen], error[chosen], elapsed, levels, MIN_SESSIONS,
                                              pooled)
        return cls(float(dt_hours), levels, table, len(stay))

    def steps_left(self, announced_steps, elapsed_steps) -> np.ndarray:
        """(..., K) quantiles of the steps each EV still stays, from its announced stay and the steps
        it has been plugged in (arrays of one shape), each at least 1."""
        announced = np.asarray(announced_steps, dtype=np.int64)
        elapsed = np.asarray(elapsed_steps, dtype=np.int64)
        per_hour = max(1, round(1.0 / self.dt_hours))
        row = np.clip(announced // per_hour, 0, self.error_steps.shape[0] - 1)
        column = np.clip(elapsed, 0, self.error_steps.shape[1] - 1)
        left = (announced - elapsed)[..., None] + self.error_steps[row, column]
        return np.maximum(np.rint(left).astype(np.int64), 1)


@dataclasses.dataclass(frozen=True, eq=False)
class RemainingStay:
    """A quantile of the steps an EV still stays, read from the steps left to its announced departure.

    ``steps[r + span]`` is, at ``r`` steps left to the announced departure (negative once overdue;
    clipped to [-span, span]), the ``level`` quantile of the real steps left over every step that
    a reference session spent plugged in with ``r`` announced steps left. It pools the time
    plugged in so far, so it needs the observation alone (no state): a site whose drivers keep
    their announcements maps ``r`` to ``r``, one whose drivers often leave early maps long
    announcements to much shorter stays. An ``r`` seen fewer than ``MIN_SESSIONS`` times reads
    the nearest ones seen (linear in between). ``hours(announced_hours)`` maps hours left to the
    announced departure to hours left to that quantile, at least one step.
    """

    dt_hours: float
    level: float
    span: int
    steps: np.ndarray  # (2 * span + 1,)

    @classmethod
    def from_sessions(cls, dt_hours: float, stay_steps, announced_steps, level: float,
                      span: int) -> RemainingStay:
        stay = np.asarray(stay_steps, dtype=np.int64)
        announced = np.asarray(announced_steps, dtype=np.int64)
        if len(stay) == 0 or stay.shape != announced.shape or (stay < 1).any():
            raise ConfigError("remaining stay: needs at least one session, each with a stay of at least one "
                              "step and an announced stay")
        if not 0.0 < float(level) < 1.0:
            raise ConfigError(f"departure_level must lie in (0, 1), got {cut(level)}")
        elapsed = np.arange(int(stay.sum())) - np.repeat(np.cumsum(stay) - stay, stay)
        left = np.repeat(stay, stay) - elapsed
        announced_left = np.clip(np.repeat(announced, stay) - elapsed, -span, span)
        order = np.argsort(announced_left, kind="stable")
        announced_left, left = announced_left[order], left[order]
        keys, first, counts = np.unique(announced_left, return_index=True, return_counts=True)
        seen = counts >= MIN_SESSIONS
        if not seen.any():
            seen = counts == counts.max()
        quantiles = np.array([np.quantile(left[f:f + n], level)
                              for f, n in zip(first[seen], counts[seen], strict=True)])
        grid = np.arange(-span, span + 1)
        return cls(float(dt_hours), float(level), int(span), np.interp(grid, keys[seen], quantiles))

    def hours(self, announced_hours) -> np.ndarray:
        announced = np.rint(np.asarray(announced_hours, dtype=np.float64) / self.dt_hours)
        index = np.clip(announced, -self.span, self.span).astype(np.int64) + self.span
        return np.maximum(self.steps[index], 1.0) * self.dt_hours


def _survivor_quantiles(stay, error, elapsed, levels, least: int, fallback=None) -> np.ndarray:
    """(E, K) ``levels`` quantiles of ``error`` over the sessions with ``stay > e`` for each ``e`` in
    ``elapsed``; where fewer than ``least`` remain, ``fallback``'s row (or the last row computed,
    or zero error)."""
    out = np.zeros((len(elapsed), len(levels)))
    order = np.argsort(stay, kind="stable")
    stay, error = stay[order], error[order]
    first = np.searchsorted(stay, elapsed, side="right")
    for e, start in enumerate(first):
        if len(stay) - start >= least:
            out[e] = np.quantile(error[start:], levels)
        elif fallback is not None:
            out[e] = fallback[e]
        elif e:
            out[e] = out[e - 1]
    return out


@functools.lru_cache(maxsize=32)
def remaining_stay_for(params: SiteParams, level: float) -> RemainingStay:
    """``RemainingStay`` at ``level`` over the reference sessions of ``departure_model_for`` (the
    same every time), over announcements up to one episode long."""
    stay, announced = _reference_stays(params)
    return RemainingStay.from_sessions(params.dt_hours, stay, announced, level, params.horizon_steps)


@functools.lru_cache(maxsize=32)
def departure_model_for(params: SiteParams, levels: tuple[float, ...]) -> DepartureModel:
    """The model of ``REFERENCE_DAYS`` days drawn from the site's session model
    (``envs.observability.session_model``) with its ``REFERENCE_SEED``: the same every time."""
    return DepartureModel.from_sessions(params.dt_hours, *_reference_stays(params), levels)


@functools.lru_cache(maxsize=8)
def _reference_stays(params: SiteParams) -> tuple[np.ndarray, np.ndarray]:
    """(stay, announced stay) in steps of every session of the site's ``REFERENCE_DAYS`` reference days,
    drawn once per site."""
    episode = session_model(params).sample(params, np.random.default_rng(REFERENCE_SEED), REFERENCE_DAYS)
    valid = episode.ev_valid
    arrival = episode.ev_arrival_step[valid]
    return episode.ev_departure_step[valid] - arrival, episode.ev_announced_departure_step[valid] - arrival
