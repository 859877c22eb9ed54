"""The artifact a scheduler runs: ``manifest.json`` (what the policy reads and does) beside ``policy.onnx``.

Shared by the writer (``agents.export``) and the runtime; numpy and ``envs`` only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import cut
from envs.observability import ESTIMATED_FIELDS, FLAG_FIELDS, SessionEstimator, estimator_for, port_is_dc
from envs.observation import NODE_FIELDS, PORT_FIELDS, declared_layout, observation_scale
from envs.site import SiteParams

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
INPUT_NAME, OUTPUT_NAME = "observation", "action"
ACTION_MODE = "signed_fraction_of_available_power"
ACTION_MEANING = ("one value per port in [-1, 1]: a > 0 charges at a times the port's available charge "
                  "power this step, a < 0 discharges at -a times its available discharge power (V2G); "
                  "available power is the lower of the port's and the car's limits, tapered near full, "
                  "within the battery's room, the energy still requested and the min SoC "
                  "(envs.dynamics.available_power); node limits are then applied by "
                  "envs.dynamics.project_to_limits")
UNITS = {
    "occupied": "flag", "available": "flag", "soc": "fraction", "remaining_kwh": "kWh",
    "hours_to_departure": "h", "max_charge_kw": "kW", "max_discharge_kw": "kW", "v2g_allowed": "flag",
    "node_headroom_kw": "kW", "time_of_day": "sin, cos of the hour", "weekday": "one-hot, Monday first",
    "setpoint_kw": "kW", "queue_length": "EVs", "price_buy_eur_kwh": "EUR/kWh",
    "price_sell_eur_kwh": "EUR/kWh", "carbon_kg_kwh": "kg/kWh", "site_load_kw": "kW", "site_pv_kw": "kW",
    "expected_arrivals": "EVs per step", "expected_energy_kwh": "kWh per step", "peak_import_kw": "kW",
    **{name: "flag" for name in FLAG_FIELDS},
}
SESSION_FIELDS = ("soc", "battery_kwh", "energy_requested_kwh", "departure", "max_charge_kw")
SITE_FIELDS = ("price_buy_eur_kwh", "price_sell_eur_kwh", "carbon_kg_kwh", "site_load_forecast_kw",
               "site_pv_forecast_kw", "node_load_kw", "node_pv_kw", "setpoint_kw", "queue_length",
               "peak_import_kw")
DEMAND_FIELDS = ("expected_arrivals", "expected_energy_kwh")
LEVEL_SESSION_FIELDS = {  # observability level -> session fields needed on every port
    "full": SESSION_FIELDS,
    "iso15118": ("energy_requested_kwh", "departure", "max_charge_kw", "plugged_in"),
    "ocpp": ("max_charge_kw", "plugged_in"),
}
DC_SESSION_FIELDS = ("soc", "battery_kwh")  # needed on DC ports at iso15118


class ArtifactError(ValueError):
    """An artifact that is missing, altered, of another format or for another site; names what differs."""


def site_topology(params: SiteParams) -> dict[str, Any]:
    """The site's static description an artifact depends on, as plain JSON values.

    Nodes, ports, their limits and efficiencies, step length, taper, forecast window and the
    observation's physical scale (which holds the queue capacity and the tariff), and the
    ``observability`` level when it is not ``full`` (so ``full`` sites keep their hashes). Not
    the episode's horizon, start or scenario: a deployment runs without them.
    """
    level = {} if params.observability == "full" else {"observability": params.observability}
    return {**level,
        "node_names": list(params.node_names),
        "node_parent": params.node_parent.tolist(),
        "node_import_limit_kw": params.node_import_limit_kw.tolist(),
        "node_export_limit_kw": params.node_export_limit_kw.tolist(),
        "port_names": list(params.port_names),
        "port_node": params.port_node.tolist(),
        "port_max_charge_kw": params.port_max_charge_kw.tolist(),
        "port_max_discharge_kw": params.port_max_discharge_kw.tolist(),
        "port_charge_efficiency": params.port_charge_efficiency.tolist(),
        "port_discharge_efficiency": params.port_discharge_efficiency.tolist(),
        "dt_hours": float(params.dt_hours),
        "taper_knee_soc": float(params.taper_knee_soc),
        "taper_floor": float(params.taper_floor),
        "forecast_steps": int(params.forecast_steps),
        "demand_forecast": bool(params.demand_forecast),
        "observation_scale": observation_scale(params).astype(np.float64).tolist(),
    }


def site_hash(params: SiteParams) -> str:
    """sha256 of ``site_topology`` as canonical JSON: equal for sites a policy cannot tell apart."""
    text = json.dumps(site_topology(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def observation_manifest(params: SiteParams) -> dict[str, Any]:
    """The flat observation's fields in order: kind (port, node, site), columns, unit and scale."""
    layout = declared_layout(params)
    scale = observation_scale(params)
    fields = []
    for name, columns in layout.slices.items():
        kind = ("port" if name in PORT_FIELDS else "node" if name in NODE_FIELDS
                else "port_flag" if name in FLAG_FIELDS else "site")
        values = scale[columns].astype(np.float64)
        fields.append({"name": name, "kind": kind, "start": columns.start, "stop": columns.stop,
                       "unit": UNITS.get(name, ""),
                       "scale": float(values[0]) if np.all(values == values[0]) else values.tolist()})
    return {"size": layout.size, "dtype": "float32", "builder": "envs.observation.observe_live",
            "scale_meaning": "obs / scale is of order 1 (envs.observation.observation_scale)",
            "fields": fields}


def required_fields(params: SiteParams) -> dict[str, list[str]]:
    """The live-state fields (``agents.scheduler.SiteState``) an artifact for ``params`` needs.

    ``session``: on every port, by the site's ``observability`` level (``LEVEL_SESSION_FIELDS``);
    ``session_on_dc_ports``: also on DC ports (``iso15118``: SoC and battery); ``site``: site-wide.
    """
    site = list(SITE_FIELDS) + (list(DEMAND_FIELDS) if params.demand_forecast else [])
    required = {"session": list(LEVEL_SESSION_FIELDS[params.observability]), "site": site}
    if params.observability == "iso15118":
        required["session_on_dc_ports"] = list(DC_SESSION_FIELDS)
    return required


def observability_manifest(params: SiteParams) -> dict[str, Any]:
    """The site's observability level, what it hides, the flag fields and the estimator's tables
    (``envs.observability.SessionEstimator``; none at ``full``)."""
    full = params.observability == "full"
    return {"level": params.observability,
            "estimated_fields": [] if full else list(ESTIMATED_FIELDS),
            "flag_fields": [] if full else list(FLAG_FIELDS),
            "dc_ports": [name for name, dc in zip(params.port_names, port_is_dc(params), strict=True) if dc],
            "estimator": None if full else estimator_for(params).to_dict()}


def manifest_estimator(manifest: dict[str, Any], params: SiteParams) -> SessionEstimator | None:
    """The estimator an artifact's observation was built with; ArtifactError naming
    ``observability`` when the artifact's level is not the deployment site's."""
    spec = manifest.get("observability") or {"level": "full"}
    level = spec.get("level") if isinstance(spec, dict) else None
    if level != params.observability:
        raise ArtifactError(f"the artifact's observability is {cut(level)}, the deployment site "
                            f"{params.name!r} has observability {params.observability!r}; they must match")
    if level == "full":
        return None
    try:
        return SessionEstimator.from_dict(spec["estimator"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"manifest observability.estimator is not a valid estimator: "
                            f"{str(error)[:200]}") from None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an artifact folder, its format version checked (JSON only, nothing executed)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {directory} is not an exported artifact") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not a readable manifest: {str(error)[:200]}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest must be a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {cut(version)} differs from the {FORMAT_VERSION} "
                            "this runtime reads")
    missing = [key for key in ("site", "observation", "action", "policy", "fallback", "required_fields")
               if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return manifest


def check_site(manifest: dict[str, Any], params: SiteParams) -> None:
    """ArtifactError naming the fields that differ when ``params`` is not the artifact's site."""
    expected = manifest["site"].get("hash")
    actual = site_hash(params)
    if expected == actual:
        return
    topology, ours = manifest["site"].get("topology") or {}, site_topology(params)
    differing = sorted(key for key in ours.keys() | topology.keys() if topology.get(key) != ours.get(key))
    raise ArtifactError(
        f"site hash differs: the artifact is for site {manifest['site'].get('name')!r} (hash "
        f"{str(expected)[:12]}...), the deployment site {params.name!r} has hash {actual[:12]}...; "
        f"differing: {', '.join(differing) or 'the manifest topology does not match its own hash'}")


def read_policy_file(directory: str | Path, manifest: dict[str, Any]) -> bytes | None:
    """The bytes of the manifest's ONNX file after their sha256 is checked; None for a baseline's artifact.

    The bytes checked are the bytes returned, so the file cannot change between check and use.
    """
    policy = manifest["policy"]
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ArtifactError(f"manifest policy must be an object or null, got {str(policy)[:60]!r}")
    name = str(policy.get("file", POLICY_FILE))
    if Path(name).name != name or name in ("", ".", ".."):
        raise ArtifactError(f"manifest policy.file {name[:100]!r} must be a file name inside the artifact")
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path} cannot be read: {str(error)[:200]}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != policy.get("sha256"):
        raise ArtifactError(f"{path}: sha256 {actual[:16]}... differs from the manifest's "
                            f"{str(policy.get('sha256'))[:16]}...; the file was altered or replaced")
    return data
