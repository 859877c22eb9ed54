"""Latency of one scheduler decision: a ``SiteState`` in, OCPP ``SetChargingProfile`` requests out.

One decision is what a deployment runs every step: the observation built from the live state,
the ONNX policy (or the fallback), the deadline guard, the node projection
(``Scheduler.decide``) and the setpoints turned into charging profiles
(``ocpp_profiles.ChargingProfiles.build``) for the ports holding a session. The states are the
ones a rollout of the artifact's own policy on its site visits (``replay.site_state_from_env``),
so the number of plugged EVs follows the site's day. Times are wall-clock (or CPU) time, one thread (the
caller sets numpy's thread variables before importing it; ``Scheduler`` runs onnxruntime on one
intra-op thread).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.scheduler.live import SiteState
from agents.scheduler.ocpp_profiles import ChargingProfiles, PortBinding
from agents.scheduler.replay import site_state_from_env
from agents.scheduler.runtime import Scheduler
from envs.core import reset, step
from envs.generators import generator_for
from envs.site import SiteParams, load_site

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}  # cpu: steadier on a busy machine


class DecisionPipeline:
    """``scheduler.decide`` then the OCPP requests for the ports holding a session.

    ``version`` None picks OCPP 2.1 (``v2x`` on ports that can discharge) for a site with
    discharging ports, 1.6 otherwise; each port is connector 1 of its own charge point.
    """

    def __init__(self, scheduler: Scheduler, version: str | None = None, unit: str = "W",
                 kind: str = "Absolute"):
        params = scheduler.params
        self.scheduler = scheduler
        self.version = version or ("2.1" if params.bidirectional else "1.6")
        self.unit = unit
        self.profiles = ChargingProfiles(params, kind=kind)
        v2x = self.version == "2.1"
        self.bindings = {name: PortBinding(f"CP-{index + 1}", 1, transaction_id=index + 1,
                                           v2x=v2x and bool(params.port_max_discharge_kw[index] > 0))
                         for index, name in enumerate(params.port_names)}

    def __call__(self, state: SiteState):
        decision = self.scheduler.decide(state)
        return decision, self.requests(state, decision)

    def requests(self, state: SiteState, decision) -> list:
        """The ``ProfileCall`` of each port holding a session (a naive ``now`` read as UTC)."""
        ports = {name: self.bindings[name]
                 for name, session in zip(decision.port_names, decision.session_ids, strict=True)
                 if session is not None}
        start = state.now if state.now.tzinfo is not None else state.now.replace(tzinfo=dt.timezone.utc)
        return self.profiles.build(decision, ports, start, self.version, self.unit)


def rollout_states(scheduler: Scheduler, episodes: int = 7, seed: int = 0) -> list[SiteState]:
    """The live states of ``episodes`` days of the site (a batch), driven by the scheduler's own
    decisions, every step of every day."""
    params = scheduler.params
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(seed), episodes))
    states = []
    while state.t < params.horizon_steps:
        actions = np.zeros((episodes, params.num_ports))
        for env in range(episodes):
            live = site_state_from_env(params, state, env)
            states.append(live)
            actions[env] = scheduler.decide(live).action
        state, _, _ = step(params, state, actions)
    return states


def time_decisions(pipeline: DecisionPipeline, states: Sequence[SiteState], decisions: int,
                   warmup: int = 50, seed: int = 0, clock: str = "wall") -> np.ndarray:
    """(decisions, 2) ms of the decision and of the OCPP requests, the states taken in a shuffled
    order (all of them before any twice); ``clock`` "wall" or "cpu" (this process's CPU time)."""
    order = np.random.default_rng(seed).permutation(len(states))
    for index in range(warmup):
        pipeline(states[order[-1 - index % len(states)]])
    now = CLOCKS[clock]
    ms = np.empty((decisions, 2))
    for index in range(decisions):
        state = states[order[index % len(states)]]
        start = now()
        decision = pipeline.scheduler.decide(state)
        middle = now()
        pipeline.requests(state, decision)
        ms[index] = middle - start, now() - middle
    return ms / 1e6


def bench_artifact(artifact: str | Path, site: SiteParams | str | Path | None = None, decisions: int = 2000,
                   episodes: int = 7, seed: int = 0, warmup: int = 50, ocpp: Mapping[str, Any] | None = None,
                   targets_p99_ms: Mapping[str, float] | None = None, clock: str = "wall") -> dict[str, Any]:
    """Times ``decisions`` decisions of the artifact on its site (``site``: a ``SiteParams``, preset or
    YAML path; None: the preset the manifest names). Loading refuses an altered or foreign
    artifact with ``ArtifactError``. Returns one result row (ms); ``targets_p99_ms`` maps site
    names to the p99 they should keep."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {str(clock)[:40]!r}")
    if site is None:
        from agents.scheduler.artifact import read_manifest

        site = read_manifest(artifact)["site"]["name"]
    params = site if isinstance(site, SiteParams) else load_site(site)
    scheduler = Scheduler(artifact, params, threads=1)
    pipeline = DecisionPipeline(scheduler, **dict(ocpp or {}))
    states = rollout_states(scheduler, episodes, seed)
    ms = time_decisions(pipeline, states, decisions, warmup, seed, clock)
    total = ms.sum(axis=1)
    sessions = [len(state.sessions) for state in states]
    fell_back = sum(scheduler.decide(state).fell_back for state in states[:: max(len(states) // 50, 1)])
    target = (targets_p99_ms or {}).get(params.name)
    p99 = np.percentile(total, 99)
    return {
        "site": params.name, "ports": params.num_ports, "nodes": params.num_nodes,
        "ocpp": pipeline.version, "clock": clock, "decisions": int(decisions), "states": len(states),
        "sessions_mean": round(float(np.mean(sessions)), 1), "sessions_max": int(max(sessions)),
        "p50_ms": _round(np.percentile(total, 50)), "p99_ms": _round(p99),
        "mean_ms": _round(total.mean()), "max_ms": _round(total.max()),
        "decide_p50_ms": _round(np.percentile(ms[:, 0], 50)),
        "ocpp_p50_ms": _round(np.percentile(ms[:, 1], 50)),
        "fell_back_sampled": int(fell_back), "target_p99_ms": target,
        "meets_target": None if target is None else bool(p99 <= target),
    }


def export_artifact(run: str | Path, site: str, out: Path, check_observations: int = 200) -> dict[str, Any]:
    """``agents.export.export_policy`` of ``run`` for ``site`` into ``out``; returns the manifest (its
    ``policy.export_check`` holds the ONNX-vs-torch difference and the tolerance for the site's
    ports, ``agents.export.writer.parity_tolerance``)."""
    from agents.export import export_policy

    return export_policy(run, out, site, check_observations=check_observations)


def bench_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``scripts/bench_scheduler.py``: the ``artifact`` given, or ``run`` exported for each of ``sites``
    into a temporary folder; one summary (``rows``: one per site)."""
    import tempfile

    options = dict(decisions=int(cfg["decisions"]), episodes=int(cfg["episodes"]), seed=int(cfg["seed"]),
                   warmup=int(cfg["warmup"]), ocpp=dict(cfg.get("ocpp") or {}),
                   targets_p99_ms=dict(cfg.get("targets_p99_ms") or {}), clock=str(cfg.get("clock", "wall")))
    rows = []
    if cfg.get("artifact") is not None:
        rows.append(bench_artifact(cfg["artifact"], cfg.get("site"), **options)
                    | {"artifact": str(cfg["artifact"])})
    else:
        with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as folder:
            for site in cfg["sites"]:
                manifest = export_artifact(cfg["run"], site, Path(folder) / site,
                                           int(cfg.get("export_check_observations", 200)))
                check = manifest["policy"]["export_check"]
                rows.append(bench_artifact(Path(folder) / site, site, **options)
                            | {"artifact": f"{cfg['run']} exported for {site}",
                               "export_max_abs_diff": check["max_abs_diff"],
                               "export_tolerance": check["tolerance"]})
    return {"benchmark": "scheduler_decision", "threads": 1, "machine": machine(), "rows": rows}


def machine() -> dict[str, Any]:
    import onnxruntime

    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__,
            "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES}}


def table(summary: Mapping[str, Any]) -> str:
    header = (f"{'site':<16}{'ports':>7}{'EVs mean':>10}{'ocpp':>7}{'clock':>7}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'mean ms':>9}{'decide p50':>12}{'ocpp p50':>10}{'target p99':>12}")
    lines = [header, "-" * len(header)]
    for row in summary["rows"]:
        target = "-" if row["target_p99_ms"] is None else \
            f"{'<=' if row['meets_target'] else '>'} {row['target_p99_ms']:g}"
        lines.append(f"{row['site']:<16}{row['ports']:>7}{row['sessions_mean']:>10.1f}{row['ocpp']:>7}"
                     f"{row['clock']:>7}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['mean_ms']:>9.3f}"
                     f"{row['decide_p50_ms']:>12.3f}{row['ocpp_p50_ms']:>10.3f}{target:>12}")
    return "\n".join(lines)


def _round(value) -> float:
    return round(float(value), 4)
