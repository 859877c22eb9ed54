"""SB3 callbacks of a training run: progress bar, training-episode KPIs, validation, checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure

from agents.kpis import episode_kpis
from envs.reward import TERMS
from envs.site import SiteParams

EPISODE_KPIS = {
    "profit_eur": "profit_eur",
    "unmet_pct": "unmet_pct",
    "overload_kwh": "grid_violation_kwh",
    "curtailed_kwh": "overload_requested_kwh",
    "peak_kw": "peak_import_kw",
    "v2g_kwh": "v2g_discharged_kwh",
}


class ProgressBar(BaseCallback):
    """A terminal progress bar over the run's target steps: steps, steps/s, latest score, ETA."""

    def __init__(self, total_timesteps: int, latest_score: Callable[[], float | None]):
        super().__init__()
        self.total_timesteps = int(total_timesteps)
        self.latest_score = latest_score
        self._bar = None
        self._shown_score = None

    def _on_training_start(self) -> None:
        import sys

        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.total_timesteps, initial=self.model.num_timesteps, unit="step",
                         unit_scale=True, dynamic_ncols=True, smoothing=0.05, desc="train",
                         mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def _on_step(self) -> bool:
        self._bar.update(self.model.num_timesteps - self._bar.n)
        score = self.latest_score()
        if score is not None and score != self._shown_score:
            self._shown_score = score
            self._bar.set_postfix_str(f"eval score {score:.3f}")
        return True

    def _on_training_end(self) -> None:
        self._bar.update(self.model.num_timesteps - self._bar.n)
        self._bar.close()


class EpisodeKpiLogger(BaseCallback):
    """Logs, per finished training episode (means over those ending between two dumps),
    ``kpi/<name>`` for ``EPISODE_KPIS`` and ``reward/<term>`` for every reward term, read from the
    ``episode_outcome`` and ``episode_totals`` infos of ``envs.sb3.SmartChargingVecEnv``."""

    def __init__(self, params: SiteParams):
        super().__init__()
        self.params = params

    def _on_step(self) -> bool:
        finished = [info for info in self.locals["infos"] if "episode_outcome" in info]
        if not finished:
            return True
        outcomes = [info["episode_outcome"] for info in finished]
        run = {key: np.array([outcome[key] for outcome in outcomes]) for key in outcomes[0]}
        table = episode_kpis(self.params, run, float("nan"))
        for name, column in EPISODE_KPIS.items():
            for value in table[column]:
                self.logger.record_mean(f"kpi/{name}", float(value))
        for term in TERMS:
            for info in finished:
                self.logger.record_mean(f"reward/{term}", float(info["episode_totals"][term]))
        return True


class Periodic(BaseCallback):
    """Runs ``evaluate(model)`` every ``eval_freq`` and ``checkpoint(model)`` every
    ``checkpoint_freq`` env steps, at the start of a rollout (after the previous update, so the
    weights and the step counter agree); a frequency of 0 or less disables it."""

    def __init__(self, eval_freq: int, checkpoint_freq: int, evaluate: Callable, checkpoint: Callable,
                 next_eval: int, next_checkpoint: int):
        super().__init__()
        self.eval_freq, self.checkpoint_freq = int(eval_freq), int(checkpoint_freq)
        self.evaluate, self.checkpoint = evaluate, checkpoint
        self.next_eval, self.next_checkpoint = next_eval, next_checkpoint

    def _on_rollout_start(self) -> None:
        steps = self.model.num_timesteps
        if self.eval_freq > 0 and steps >= self.next_eval:
            self.next_eval = _next_multiple(steps, self.eval_freq)
            self.evaluate(self.model)
        if self.checkpoint_freq > 0 and steps >= self.next_checkpoint:
            self.next_checkpoint = _next_multiple(steps, self.checkpoint_freq)
            self.checkpoint(self.model)

    def _on_step(self) -> bool:
        return True


def _next_multiple(steps: int, every: int) -> int:
    return (steps // every + 1) * every


def log_validation(logger, table, score: float, figure=None, wall_s: float | None = None) -> None:
    """Record ``eval/score``, ``eval/<kpi>`` (validation means; ``unmet_pct`` as a ratio of sums, as
    in the evaluation tables) and the day figure."""
    logger.record("eval/score", float(score) if not math.isnan(score) else float("nan"))
    for name, column in EPISODE_KPIS.items():
        logger.record(f"eval/{name}", float(table[column].mean()))
    requested = float(table["energy_requested_kwh"].sum())
    if requested > 0:
        logger.record("eval/unmet_pct", 100.0 * float(table["unmet_kwh"].sum()) / requested)
    logger.record("eval/unmet_kwh", float(table["unmet_kwh"].mean()))
    logger.record("eval/reward_eur", float(table["reward_eur"].mean()))
    if wall_s is not None:
        logger.record("eval/wall_s", float(wall_s))
    if figure is not None:
        logger.record("eval/day", Figure(figure, close=True), exclude=("stdout", "log", "json", "csv"))


class Stopwatch:
    """Wall time of a run across resumes: ``elapsed()`` adds the time of earlier attempts."""

    def __init__(self, before_s: float = 0.0):
        self.before_s = float(before_s)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.before_s + time.perf_counter() - self.started
