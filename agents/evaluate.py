"""Score policies on the same episodes and tabulate their KPIs; no failing policy aborts the rest."""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents import kpis
from agents.baselines import Uncontrolled
from agents.kpis import KPI_COLUMNS, add_score, episode_kpis, failed_kpis, summarize
from envs import generator_for
from envs.core import reset, step
from envs.episode import Episode, Generator
from envs.errors import ConfigError
from envs.limits import check_count
from envs.observation import observe
from envs.outcome import episode_outcome
from envs.render import EpisodeTrace
from envs.site import SiteParams

__all__ = ["KPI_COLUMNS", "Evaluation", "EvaluationError", "evaluate", "episodes_for", "rollout",
           "run_policies"]

OPTIMUM_CLASS = "OfflineOptimal"


class EvaluationError(ConfigError):
    """An evaluation setting that cannot run; the message names the field."""


@dataclasses.dataclass
class Evaluation:
    """The outcome of ``run_policies``: what every policy did on every episode.

    ``per_episode`` has one row of ``agents.kpis.EPISODE_COLUMNS`` per (policy, episode);
    ``traces`` the ``EpisodeTrace`` of the traced episode per policy that completed it;
    ``failures`` one line per (policy, batch or episode) that raised; ``uncontrolled`` and
    ``optimum`` the names of the reference policies (None when absent); ``min_gap_eur`` the
    per-episode gap below which an episode has no room to improve; ``trace_episode`` the index of
    the traced episode.
    """

    params: SiteParams
    per_episode: pd.DataFrame
    traces: dict[str, EpisodeTrace]
    failures: list[str]
    uncontrolled: str | None
    optimum: str | None
    min_gap_eur: float
    trace_episode: int | None = None

    @property
    def scored(self) -> bool:
        return self.uncontrolled is not None and self.optimum is not None

    def table(self) -> pd.DataFrame:
        """``KPI_COLUMNS`` per policy (``agents.kpis.summarize``)."""
        return summarize(self.per_episode)

    def summary(self, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
        """Every KPI per policy with its bootstrap interval and episode counts (``agents.kpis.summary``)."""
        return kpis.summary(self.per_episode, resamples, seed, level)


def evaluate(policies: Mapping[str, Any], params: SiteParams, num_episodes: int | None = None,
             seed: int = 0, num_envs: int | None = None, episodes: Episode | Generator | None = None,
             per_episode: bool = False,
             min_gap_eur_per_port_day: float = kpis.MIN_GAP_EUR_PER_PORT_DAY) -> pd.DataFrame:
    """KPIs (``agents.kpis.KPI_COLUMNS``) of each policy on the same episodes, one row per policy.

    The episodes are ``episodes`` when it is an ``Episode`` (replayed days, for instance), else
    ``num_episodes`` drawn with ``seed`` from ``episodes`` as a generator, by default the site's
    scenario; every policy is reset from them, so the rows differ only by the policy. They run
    as one batch, or in batches of ``num_envs``. Policies follow SB3's predictor protocol; one
    with a ``begin(params, episode)`` method is handed each batch's episodes before its
    rollout (an optimizer that plans on them), and that time counts in its ``wall_s``.

    The statistics per policy are those of the glossary in ``agents.kpis``. ``score`` is
    ``(sum R - sum R_unc) / (sum R_opt - sum R_unc)`` over the episodes, where the policies
    include an ``Uncontrolled`` and an ``OfflineOptimal`` (found by class); NaN otherwise, and
    when no episode has a gap ``R_opt - R_unc`` of at least ``min_gap_eur_per_port_day`` EUR per
    port and day. A policy that raises on a batch is run episode by episode; the episodes it
    still fails get NaN KPIs and a warning (an optimum's failures leave them out of the score).
    With ``per_episode`` the table has one row per (policy, episode) of
    ``agents.kpis.EPISODE_COLUMNS`` instead.
    """
    episode = episodes_for(params, episodes, num_episodes, seed)
    result = run_policies(policies, params, episode, num_envs, min_gap_eur_per_port_day)
    for failure in result.failures:
        warnings.warn(failure, RuntimeWarning, stacklevel=2)
    return result.per_episode if per_episode else result.table()


def run_policies(policies: Mapping[str, Any], params: SiteParams, episode: Episode,
                 num_envs: int | None = None,
                 min_gap_eur_per_port_day: float = kpis.MIN_GAP_EUR_PER_PORT_DAY,
                 trace_episode: int | None = None) -> Evaluation:
    """Run every policy on ``episode`` (in batches of ``num_envs``) and score them; see ``evaluate``.

    ``trace_episode`` (an index into the batch) records that episode of each policy for plots.
    """
    total = episode.num_envs
    if trace_episode is not None and not 0 <= trace_episode < total:
        raise EvaluationError(f"plots.episode must be in [0, {total}), got {trace_episode}")
    batch = total if num_envs is None else check_count("num_envs", num_envs, "envs")
    bounds = [(lo, min(lo + batch, total)) for lo in range(0, total, batch)]
    frames, traces, failures = {}, {}, []
    for name, policy in policies.items():
        start = time.perf_counter()
        parts = []
        for span in bounds:
            parts += _guarded_rollouts(name, policy, params, episode, span, trace_episode, traces, failures)
        frame = pd.concat(parts, ignore_index=True)
        frame["wall_s"] = np.where(frame["failed"] == 1.0, np.nan, (time.perf_counter() - start) / total)
        frames[name] = frame
    table = pd.concat(frames, names=["policy", "episode"])
    uncontrolled = _find(policies, lambda p: isinstance(p, Uncontrolled))
    optimum = _find(policies, lambda p: type(p).__name__ == OPTIMUM_CLASS)
    min_gap = kpis.min_gap_eur(params, min_gap_eur_per_port_day)
    add_score(table, uncontrolled, optimum, min_gap)
    return Evaluation(params, table, traces, failures, uncontrolled, optimum, min_gap, trace_episode)


def _guarded_rollouts(name, policy, params, episode, span, trace_episode, traces, failures) -> list:
    """KPI frames of the episodes ``span`` (lo, hi): one rollout, or one per episode when it raises."""
    lo, hi = span
    try:
        trace = EpisodeTrace(params, env=trace_episode - lo) if trace_episode in range(lo, hi) else None
        run = rollout(policy, params, episode.take(slice(lo, hi)), trace)
    except Exception as error:  # noqa: BLE001 - one bad episode never loses the others
        if hi - lo > 1:
            return [frame for one in range(lo, hi) for frame in
                    _guarded_rollouts(name, policy, params, episode, (one, one + 1), trace_episode, traces,
                                      failures)]
        line = traceback.extract_tb(error.__traceback__)[-1]
        failures.append(f"policy {name!r} failed on episode {lo}: {type(error).__name__}: {error} "
                        f"({Path(line.filename).name}:{line.lineno})")
        return [failed_kpis(1)]
    if trace is not None:
        traces[name] = trace
    return [episode_kpis(params, run, 0.0)]


def episodes_for(params: SiteParams, episodes: Episode | Generator | None = None,
                 num_episodes: int | None = None, seed: int = 0) -> Episode:
    """The episodes to evaluate on: ``episodes`` itself, or ``num_episodes`` sampled from it (or
    from the site's scenario when None) with ``seed``.

    ``num_episodes`` is a whole number in [1, ``envs.limits`` ``episodes``] and ``seed`` one
    >= 0 (a whole float or a text of one, as a Hydra override gives, is read as that number);
    anything else raises ``ConfigError`` naming the key.
    """
    seed = check_count("seed", seed, None, low=0)
    if isinstance(episodes, Episode):
        if num_episodes is not None and num_episodes != episodes.num_envs:
            raise EvaluationError(f"num_episodes is {num_episodes} but the given Episode holds "
                                  f"{episodes.num_envs}; pass None to use them all")
        episodes.check(params)
        return episodes
    if num_episodes is None:
        raise EvaluationError("num_episodes must be given (a whole number >= 1) to sample episodes")
    num_episodes = check_count("num_episodes", num_episodes, "episodes")
    generator = generator_for(params) if episodes is None else episodes
    return generator.sample(params, np.random.default_rng(seed), num_episodes)


def rollout(policy, params: SiteParams, episode: Episode,
            trace: EpisodeTrace | None = None) -> dict[str, np.ndarray]:
    """Run ``policy`` through a batch of episodes; per-episode arrays for ``agents.kpis.episode_kpis``.

    ``solver_fallbacks`` is the policy's own per-env count when it keeps one (MPC), else 0;
    ``trace`` records its env of the batch.
    """
    begin = getattr(policy, "begin", None)
    if callable(begin):
        begin(params, episode)
    state = reset(params, episode)
    if trace is not None:
        trace.record(state)
    charged = np.zeros(episode.num_envs)
    discharged = np.zeros(episode.num_envs)
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state), deterministic=True)
        state, _, info = step(params, state, action)
        if trace is not None:
            trace.record(state, info)
        charged += info["charged_kwh"]
        discharged += info["discharged_kwh"]
    fallbacks = getattr(policy, "solver_fallbacks", None)
    counted = np.zeros(episode.num_envs) if fallbacks is None else np.asarray(fallbacks, float)
    return {**episode_outcome(params, state, charged, discharged), "solver_fallbacks": counted}


def _find(policies: Mapping[str, Any], test) -> str | None:
    return next((name for name, policy in policies.items() if test(policy)), None)


def run_from_config(cfg, output_dir: str | Path | None = None,
                    policies: Mapping[str, Any] | None = None) -> Evaluation:
    """Evaluate the configured policies on the configured site; print the tables, write them and plots.

    ``cfg`` has ``site.preset`` and ``site.overrides`` (passed to ``envs.site.load_site``),
    ``policies`` (name -> a ``_target_`` spec, instantiated, then called with ``params=``),
    ``num_episodes``, ``seed`` and ``num_envs``; optionally ``trained`` (run or ``policy/``
    directories loaded with ``agents.load_policy``, each named by its run directory),
    ``episodes`` (a ``_target_`` spec that builds an ``Episode`` or a generator, e.g. replayed
    days; default: the site's scenario), ``min_gap_eur_per_port_day`` (see ``evaluate``),
    ``bootstrap`` (``resamples``, ``seed``, ``level``), ``tables`` (file stem -> ``episodes``:
    one row per policy and episode, ``summary``: per policy with intervals and counts, or
    ``policies``: per policy, points only; default ``{kpis: policies}``), ``formats`` (subset of
    ``csv``, ``md``, ``jsonl``; default ``[csv]``), ``plots`` (``episode``: the episode whose
    day figure is drawn per policy, and the score chart; null: no plots) and ``output_dir``
    (where the files go, instead of ``output_dir``; nothing is written when neither is given).
    ``policies`` adds policies built by the caller (already made for the site). A ``num_episodes``,
    ``seed`` or ``num_envs`` that is not a whole number in range (``num_episodes=2.7``) raises
    ``ConfigError`` naming the key before anything is built.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from agents.report import print_report, write_report
    from envs.site import load_site

    seed = check_count("seed", cfg.get("seed"), None, low=0)
    num_envs = None if cfg.get("num_envs") is None else check_count("num_envs", cfg.num_envs, "envs")
    given = None if cfg.get("num_episodes") is None else check_count("num_episodes", cfg.num_episodes,
                                                                      "episodes")

    overrides = cfg.site.get("overrides")
    overrides = OmegaConf.to_container(overrides, resolve=True) if overrides is not None else {}
    params = load_site(cfg.site.preset, **overrides)
    chosen = {name: instantiate(spec, _partial_=True)(params=params) for name, spec in cfg.policies.items()}
    for name, policy in {**_trained(cfg.get("trained")), **dict(policies or {})}.items():
        if name in chosen:
            raise EvaluationError(f"policy name {name!r} is taken twice (policies, trained)")
        chosen[name] = policy
    source = cfg.get("episodes")
    episodes = instantiate(source) if source is not None else None
    num_episodes = None if isinstance(episodes, Episode) else given
    episode = episodes_for(params, episodes, num_episodes, seed)
    plots = cfg.get("plots")
    trace_episode = None if plots is None else plots.get("episode")
    result = run_policies(chosen, params, episode, num_envs,
                          float(cfg.get("min_gap_eur_per_port_day", kpis.MIN_GAP_EUR_PER_PORT_DAY)),
                          None if trace_episode is None else int(trace_episode))
    bootstrap = cfg.get("bootstrap")
    bootstrap = OmegaConf.to_container(bootstrap, resolve=True) if bootstrap is not None else {}
    origin = f"seed {seed}" if num_episodes is not None else "given episodes"
    summary = result.summary(**bootstrap)
    print_report(result, summary, f"{episode.num_envs} episodes, {origin}")
    directory = cfg.get("output_dir") or output_dir
    if directory is not None:
        tables = cfg.get("tables") or {"kpis": "policies"}
        for path in write_report(result, summary, directory, dict(tables), cfg.get("formats") or ("csv",),
                                 plots is not None):
            print(f"wrote {path}")
    return result


def _trained(paths) -> dict[str, Any]:
    """Trained policies of ``paths`` by run directory name (the parent of a ``policy/`` folder)."""
    if not paths:
        return {}
    from agents import load_policy

    loaded = {}
    for path in map(Path, paths):
        name = path.parent.name if path.name == "policy" else path.name
        if name in loaded:
            raise EvaluationError(f"trained: two runs are named {name!r}; rename one directory")
        loaded[name] = load_policy(path)
    return loaded
