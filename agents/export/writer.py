"""Write a scheduler artifact: ``policy.onnx`` (the deterministic actor) and ``manifest.json``."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agents.scheduler.artifact import (
    ACTION_MEANING,
    ACTION_MODE,
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_FILE,
    OUTPUT_NAME,
    POLICY_FILE,
    observability_manifest,
    observation_manifest,
    required_fields,
    sha256_file,
    site_hash,
    site_topology,
)
from envs.observation import declared_layout, observation_scale
from envs.site import SiteParams, load_site

DEFAULT_FALLBACK = {"class": "agents.baselines.EarliestDeadlineFirst", "arguments": {}}
PARITY_TOLERANCE = 1e-5  # the largest |ONNX - torch| action accepted on a site of up to PARITY_PORTS ports
PARITY_PORTS = 32
_ALLOWED_PREFIXES = ("agents.baselines.", "agents.mpc.")
_PACKAGES = ("smartcharging", "numpy", "gymnasium", "torch", "stable-baselines3", "onnx", "onnxruntime")


class ExportError(ValueError):
    """A policy, site or baseline that cannot be exported; names what is wrong."""


def export_policy(run: str | Path, out: str | Path, site: SiteParams | str | Path | None = None,
                  fallback: Mapping[str, Any] | None = None, check_observations: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Export the trained policy of ``run`` (a run directory or its ``policy/`` folder) to ``out``.

    ``site`` is the deployment site (a ``SiteParams``, preset name or YAML path); by default the
    training site. A site-aware policy (``agents.networks.PerPortPolicy``) is rebound to it
    with ``set_site``; any other policy must have been trained on a site of the same
    observation and port count. ``fallback`` is the baseline a scheduler falls back to, as
    ``{"class": ..., "arguments": {...}}`` (default ``EarliestDeadlineFirst``). The ONNX graph is
    checked against the torch actor on ``check_observations`` random observations
    (``parity_tolerance``); the largest difference and the tolerance go into the manifest
    (``policy.export_check``). Returns the manifest.
    """
    import torch

    from agents.export.onnx_graph import OPSET, ScaledActor, write_onnx
    from agents.networks import deterministic_actor
    from agents.policy_io import PolicyFileError, load_policy

    try:
        trained = load_policy(run)
    except PolicyFileError as error:
        raise ExportError(str(error)) from None
    config = trained.config
    if site is None:
        params = load_site(config["site"]["preset"], **(config["site"].get("overrides") or {}))
    else:
        params = site if isinstance(site, SiteParams) else load_site(site)
    if params.action_mode != "signed":
        raise ExportError(f"site {params.name!r} has action_mode {params.action_mode!r}; the scheduler "
                          "runtime reads signed actions only (action_mode: signed)")
    if trained.recurrent:
        raise ExportError(f"{run}: recurrent policies ({config['policy']}) keep a hidden state; the "
                          "scheduler exports feed-forward actors only")
    try:
        trained.begin(params, None)
        actor = deterministic_actor(trained.policy)
    except (PolicyFileError, ValueError, AttributeError) as error:
        raise ExportError(f"{run}: cannot export to site {params.name!r}: {str(error)[:300]}") from None
    module = ScaledActor(actor, trained.obs_mean, trained.obs_var, trained.clip_obs, trained.epsilon).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = write_onnx(module, random_observations(params, 64, rng), params.num_ports, out / POLICY_FILE)
    obs = random_observations(params, check_observations, rng)
    with torch.no_grad():
        expected = module(torch.as_tensor(obs)).numpy()
    difference = float(np.abs(onnx_actions(path, obs) - expected).max())
    tolerance = parity_tolerance(params.num_ports)
    if not difference <= tolerance:
        raise ExportError(f"{path}: the ONNX actor differs from the torch actor by {difference:.3g} "
                          f"(> {tolerance:.3g} on {params.num_ports} ports) on random observations")
    scaling = ("frozen VecNormalize statistics: clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)"
               if trained.obs_mean is not None else "none outside the network")
    policy = {
        "file": POLICY_FILE, "sha256": sha256_file(path), "input": INPUT_NAME, "output": OUTPUT_NAME,
        "opset": OPSET, "observation_scaling": scaling,
        "clip_obs": trained.clip_obs if trained.obs_mean is not None else None,
        "algorithm": config["algorithm"], "policy_class": _class_name(config["policy"]),
        "policy_kwargs": config.get("policy_kwargs") or {},
        "trained_on_site": config.get("site_name"), "source": str(Path(run)),
        "export_check": {"observations": int(check_observations), "max_abs_diff": difference,
                         "tolerance": tolerance},
    }
    manifest = build_manifest(params, policy, _fallback_entry(fallback or DEFAULT_FALLBACK, params),
                              config.get("deadline_guard_hours"), bool(config.get("guard_fits_headroom")),
                              config.get("departure_level"), config.get("peak_fill_quantile"))
    return write_manifest(out, manifest)


def parity_tolerance(num_ports: int) -> float:
    """The largest difference between the ONNX and the torch actions an export accepts on a site of
    ``num_ports`` ports.

    Both compute in float32 but may add in another order, and a per-port policy pools over the
    ports: the rounding error of a float32 sum of n terms is bounded by a multiple of n (n times
    the unit round-off times the sum of magnitudes), so the tolerance is ``PARITY_TOLERANCE`` up to
    ``PARITY_PORTS`` ports and grows in proportion to the ports beyond (1100 ports: 3.4e-4, where
    exports of the committed per-port policy differed by 1.1e-5 to 9.9e-5; 54 ports: 1.7e-5, where
    they differ by about 4e-7). An error in the graph differs by orders of magnitude more.
    """
    return PARITY_TOLERANCE * max(1.0, int(num_ports) / PARITY_PORTS)


def export_baseline(baseline: Mapping[str, Any], out: str | Path, site: SiteParams | str | Path) -> dict:
    """A manifest-only artifact (``policy: null``) of a rule-based baseline or MPC, which is also its
    own fallback: ``baseline`` is ``{"class": ..., "arguments": {...}}`` or a Hydra ``_target_`` spec."""
    params = site if isinstance(site, SiteParams) else load_site(site)
    entry = _fallback_entry(baseline, params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / POLICY_FILE
    if stale.exists():
        stale.unlink()
    return write_manifest(out, build_manifest(params, None, entry, None, False))


def export_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``scripts/export_policy.py``: ``run`` exported with the ``fallback`` baseline (a key of
    ``baselines``), or without ``run`` that baseline alone for ``site`` (a preset name, a YAML
    path, or ``{"preset": ..., "overrides": ...}`` as the ``site`` config group gives it)."""
    baselines = cfg.get("baselines") or {}
    name = cfg.get("fallback")
    if name not in baselines:
        raise ExportError(f"fallback {str(name)[:60]!r} is not one of baselines: "
                          f"{', '.join(sorted(baselines))}")
    spec, site = baselines[name], cfg.get("site")
    if isinstance(site, Mapping):
        site = load_site(site["preset"], **(site.get("overrides") or {}))
    if cfg.get("run") is not None:
        return export_policy(cfg["run"], cfg["out"], site, spec)
    if site is None:
        raise ExportError("site is required to export a baseline alone (run=null)")
    return export_baseline(spec, cfg["out"], site)


def build_manifest(params: SiteParams, policy: dict | None, fallback: dict, guard_hours,
                   guard_fits_headroom: bool, departure_level=None,
                   peak_fill_quantile=None) -> dict[str, Any]:
    """The manifest; ``guard_hours`` (None: no guard), ``guard_fits_headroom`` and
    ``peak_fill_quantile`` (None: no fill) are the ``agents.guards.DeadlineGuard`` the policy acts
    behind, ``departure_level`` (None: the announced departure) the
    ``agents.departure_view.DepartureView`` it and the guard read."""
    guarded = guard_hours is not None
    return {
        "format_version": FORMAT_VERSION,
        "policy": policy,
        "fallback": fallback,
        "deadline_guard_hours": float(guard_hours) if guarded else None,
        "guard_fits_headroom": bool(guard_fits_headroom) and guarded,
        "peak_fill_quantile": (float(peak_fill_quantile) if guarded and peak_fill_quantile is not None
                               else None),
        "departure_level": None if departure_level is None else float(departure_level),
        "action": {"mode": ACTION_MODE, "meaning": ACTION_MEANING, "shape": ["batch", params.num_ports],
                   "low": -1.0, "high": 1.0, "port_order": "site.topology.port_names"},
        "observation": observation_manifest(params),
        "required_fields": required_fields(params),
        "observability": observability_manifest(params),
        "site": {"name": params.name, "hash": site_hash(params), "num_ports": params.num_ports,
                 "num_nodes": params.num_nodes, "topology": site_topology(params)},
        "step_hours": float(params.dt_hours),
        "versions": versions(),
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def onnx_actions(path: str | Path, obs: np.ndarray) -> np.ndarray:
    """Actions of an exported ``policy.onnx`` for observations (B, D), one onnxruntime thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.asarray(obs, dtype=np.float32)})[0]


def random_observations(params: SiteParams, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, D) float32 observations spread over each column's physical scale: flags 0/1 (about
    60 % of ports occupied; estimate flags on half of them), SoC in [0, 1], a one-hot weekday, a
    time of day on the circle, signed headroom, departures and prices, non-negative powers and
    energies."""
    layout = declared_layout(params).slices
    scale = observation_scale(params)
    obs = rng.uniform(0.0, 1.5, (count, len(scale))) * scale
    for name in ("node_headroom_kw", "hours_to_departure", "price_buy_eur_kwh", "price_sell_eur_kwh",
                 "setpoint_kw"):
        obs[:, layout[name]] = rng.uniform(-1.0, 1.5, (count, layout[name].stop - layout[name].start)) * \
            scale[layout[name]]
    occupied = rng.random((count, params.num_ports)) < 0.6
    obs[:, layout["occupied"]] = occupied
    obs[:, layout["available"]] = 1.0
    obs[:, layout["soc"]] = rng.random((count, params.num_ports))
    obs[:, layout["v2g_allowed"]] = occupied & (rng.random((count, params.num_ports)) < 0.5)
    for name in ("remaining_kwh", "hours_to_departure", "max_charge_kw", "max_discharge_kw", "soc"):
        obs[:, layout[name]] *= occupied
    for name in declared_layout(params).flag_fields:
        obs[:, layout[name]] = occupied & (rng.random((count, params.num_ports)) < 0.5)
    angle = rng.uniform(0, 2 * np.pi, count)
    obs[:, layout["time_of_day"]] = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    obs[:, layout["weekday"]] = rng.integers(0, 7, count)[:, None] == np.arange(7)
    return obs.astype(np.float32)


def _fallback_entry(spec: Mapping[str, Any], params: SiteParams) -> dict[str, Any]:
    """``{"class", "arguments"}`` of a baseline spec, after checking it builds for ``params``."""
    spec = dict(spec)
    path = spec.pop("class", None) or spec.pop("_target_", None)
    arguments = dict(spec.pop("arguments", None) or {}) | {k: v for k, v in spec.items() if k != "_partial_"}
    if not isinstance(path, str) or not path.startswith(_ALLOWED_PREFIXES):
        raise ExportError(f"a fallback must be a class under {', '.join(_ALLOWED_PREFIXES)}; got "
                          f"{str(path)[:100]!r}")
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not isinstance(cls, type):
        raise ExportError(f"fallback class {path!r} does not exist")
    try:
        built_arguments = {key: _built(value) for key, value in arguments.items()}
        cls(params, **built_arguments)
    except (TypeError, ValueError) as error:
        raise ExportError(f"fallback {path} does not build with arguments {arguments}: {error}") from None
    return {"class": path, "arguments": _plain(arguments)}


def _built(value):
    """A nested ``{_target_, _partial_: true}`` argument (MPC's own fallback) as the class it names."""
    if isinstance(value, Mapping) and "_target_" in value:
        target = str(value["_target_"])
        if not target.startswith(_ALLOWED_PREFIXES):
            raise ExportError(f"nested class {target[:100]!r} is not under {', '.join(_ALLOWED_PREFIXES)}")
        module, _, name = target.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def _plain(value):
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _class_name(policy) -> str:
    if isinstance(policy, Mapping):
        return str(policy.get("path", policy))
    return str(policy)
