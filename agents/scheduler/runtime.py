"""The scheduler: an exported artifact, a live site state in, per-port setpoints in kW out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from agents import baselines
from agents.scheduler.artifact import (
    INPUT_NAME,
    ArtifactError,
    check_site,
    manifest_estimator,
    read_manifest,
    read_policy_file,
)
from agents.scheduler.live import SiteState, observation_inputs, reported_soc
from envs.dynamics import project_to_limits, split_power
from envs.observation import layout_size, observation_layout, observe_live
from envs.site import SiteParams, load_site

BASELINE_PREFIX = "agents.baselines."


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision for one site.

    ``setpoint_kw`` (P,) grid-side kW per port in ``port_names`` order (> 0 charging, < 0
    discharging, 0 on empty and unavailable ports), within every port, car and node limit the
    env enforces (at an ``observability`` level other than ``full`` the charge follows the
    estimated SoC and request, so the car may take less; discharge never passes min SoC);
    ``action`` (P,) the fractions of available power they come from (after the guard, before
    the node projection); ``observation`` (D,) what the policy saw.
    ``fell_back`` is True when the policy's output was not finite and the fallback baseline
    decided, ``reason`` then says why. ``violation_kw`` is what no schedule could avoid (the
    inflexible load alone breaks a node limit), summed over nodes; ``site_import_kw`` the
    grid connection's flow.
    """

    setpoint_kw: np.ndarray
    action: np.ndarray
    observation: np.ndarray
    port_names: tuple[str, ...]
    session_ids: tuple[str | None, ...]
    fell_back: bool
    reason: str | None
    violation_kw: float
    site_import_kw: float

    def by_session(self) -> dict[str, float]:
        """Setpoint kW of each plugged session, by session id."""
        return {session: float(kw) for session, kw in zip(self.session_ids, self.setpoint_kw, strict=True)
                if session is not None}


class Scheduler:
    """Runs an exported artifact (``agents.export``) on live site states, without torch.

    ## Description

    Loading checks the manifest's format version, the sha256 of ``policy.onnx`` and that the
    deployment ``site`` is the one the artifact was exported for (its ``site_hash``), and
    refuses with an ``ArtifactError`` naming what differs. ``decide(state)`` builds the
    observation from a ``SiteState`` with the env's own code (``envs.observation.observe_live``),
    reads it through the manifest's ``departure_level`` where it names one
    (``agents.departure_view.DepartureView``, from this site's own sessions; the policy and the
    guard read the view, the fallback and the decision's record the observation as built),
    runs the policy with onnxruntime (or the rule-based baseline of a manifest-only artifact),
    clips the actions to [-1, 1], applies the deadline guard where the manifest names one
    (``agents.guards.DeadlineGuard``, its margin and ``guard_fits_headroom``), turns fractions
    into kW with the ports' available power and projects them onto the node limits
    (``envs.dynamics.project_to_limits``): the same steps as the env's own ``step``. An
    artifact of an ``observability`` level other than ``full`` runs only on a site of that
    level, estimates what the level hides with the estimator in its manifest, needs the session
    fields its ``required_fields`` name (``plugged_in``, ...) and ignores the hidden ones. A
    non-finite policy output is replaced by the manifest's fallback baseline's decision
    (``Decision.fell_back``).

    ## Arguments

    * ``artifact``: the folder written by ``agents.export`` (``manifest.json``, ``policy.onnx``).
    * ``site``: the deployment site: a ``SiteParams``, a preset name or a YAML path.
    * ``threads``: onnxruntime intra-op threads (1: one decision on one core).
    """

    def __init__(self, artifact: str | Path, site: SiteParams | str | Path, threads: int = 1):
        params = site if isinstance(site, SiteParams) else load_site(site)
        if params.action_mode != "signed":
            raise ArtifactError(f"site {params.name!r} has action_mode {params.action_mode!r}; this runtime "
                                "turns signed actions into setpoints only")
        self.artifact = Path(artifact)
        self.manifest = read_manifest(self.artifact)
        self.estimator = manifest_estimator(self.manifest, params)
        check_site(self.manifest, params)
        self.params = params
        self.required = self.manifest["required_fields"]
        self.fallback_name, self.fallback = _fallback(self.manifest, params)
        self.session = None
        model = read_policy_file(self.artifact, self.manifest)
        if model is not None:
            self.session = _onnx_session(model, threads, self.artifact, layout_size(params), params.num_ports)
        elif self.fallback is None:
            raise ArtifactError(f"{self.artifact}: manifest-only artifact of {self.fallback_name}, which "
                                "this runtime cannot run (only agents.baselines classes run from a live "
                                "state)")
        self.full_view = None
        if params.observability != "full" and params.bidirectional:
            self.full_view = dataclasses.replace(params, observability="full")
            self.soc_estimated = observation_layout(params)["soc_estimated"]
        from agents.guards import DeadlineGuard

        self.guard = DeadlineGuard.from_config(params, self.manifest, "manifest")
        self.view = None
        if self.manifest.get("departure_level") is not None:
            from agents.departure_view import DepartureView

            self.view = DepartureView(params, self.manifest["departure_level"], "manifest departure_level")

    def decide(self, state: SiteState) -> Decision:
        """Per-port setpoints for ``state``; ``SiteStateError`` names a missing or malformed field."""
        params = self.params
        inputs, session_ids = observation_inputs(params, state, self.required)
        live = observe_live(params, **inputs, estimator=self.estimator)
        obs = live.obs if self.view is None else self.view.apply(live.obs)
        fell_back, reason = False, None
        if self.session is not None:
            action = self.session.run(None, {INPUT_NAME: obs})[0]
            if action.shape != (1, params.num_ports):
                raise ArtifactError(f"{self.artifact}: policy.onnx returned shape {action.shape}, expected "
                                    f"(1, {params.num_ports})")
            if not np.isfinite(action).all():
                if self.fallback is None:
                    raise ArtifactError(f"the policy's output is not finite and the fallback "
                                        f"{self.fallback_name} cannot run in this runtime")
                reason = (f"policy output not finite on {int((~np.isfinite(action)).sum())} ports; "
                          f"decided by the fallback {self.fallback_name}")
                action, fell_back = self.fallback.predict(live.obs)[0], True
        else:
            action = self.fallback.predict(live.obs)[0]
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if self.guard is not None:
            action = self.guard.apply(obs, action)
        charge_kw, discharge_kw = split_power(action.astype(np.float64))
        charge_kw *= live.max_charge_kw
        discharge_kw *= live.max_discharge_kw if self.full_view is None else \
            self._discharge_on_known_soc_kw(state, inputs, live)
        power, site_kw, violation_kw = project_to_limits(params, charge_kw + discharge_kw, live.node_exo_kw)
        return Decision(power[0], action[0], live.obs[0], params.port_names, tuple(session_ids), fell_back,
                        reason, float(violation_kw[0]), float(site_kw[0]))


    def _discharge_on_known_soc_kw(self, state: SiteState, inputs: dict, live) -> np.ndarray:
        """(1, P) discharge kW available on each port: 0 where the SoC is an estimate, unless the
        session reports its SoC and battery (then from those, as ``observe_live`` at ``full``)."""
        estimated = live.obs[:, self.soc_estimated] > 0.0
        if not (estimated & (live.max_discharge_kw > 0.0)).any():
            return live.max_discharge_kw
        soc, battery_kwh = reported_soc(self.params, state, estimated[0])
        reported = ~np.isnan(soc)
        discharge_kw = np.where(estimated, 0.0, live.max_discharge_kw)
        if not reported.any():
            return discharge_kw
        as_reported = {"soc": np.where(reported, soc, 0.0),
                       "battery_kwh": np.where(reported, battery_kwh, 0.0)}
        known = observe_live(self.full_view, **(inputs | as_reported))
        return np.where(estimated & reported, known.max_discharge_kw, discharge_kw)


def _fallback(manifest: dict, params: SiteParams):
    """(class path, the baseline built for ``params`` or None when this runtime cannot run it)."""
    spec = manifest["fallback"]
    if spec is None:
        return None, None
    path, arguments = str(spec.get("class")), dict(spec.get("arguments") or {})
    if not path.startswith(BASELINE_PREFIX):
        return path, None
    cls = getattr(baselines, path[len(BASELINE_PREFIX):], None)
    if not (isinstance(cls, type) and issubclass(cls, baselines.RuleBasedPolicy)):
        raise ArtifactError(f"manifest fallback.class {path[:100]!r} is not a rule-based baseline")
    try:
        return path, cls(params, **arguments)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"manifest fallback {path} does not accept arguments {arguments}: "
                            f"{error}") from None


def _onnx_session(model: bytes, threads: int, where: Path, obs_size: int, ports: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a bad model
        raise ArtifactError(f"{where}: policy.onnx does not load in onnxruntime: "
                            f"{str(error)[:200]}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].shape[1:] != [obs_size]:
        raise ArtifactError(f"{where}: policy.onnx takes {[(i.name, i.shape) for i in inputs]}, expected "
                            f"{INPUT_NAME!r} of shape (batch, {obs_size})")
    if len(outputs) != 1 or outputs[0].shape[1:] != [ports]:
        raise ArtifactError(f"{where}: policy.onnx gives {[(o.name, o.shape) for o in outputs]}, expected "
                            f"(batch, {ports}) actions")
    return session
