"""Export for a scheduler: the ONNX actor equals the torch policy, the manifest describes what the
policy reads and does, baselines export as manifests, and the script writes both."""

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, train_config

from agents import load_policy
from agents.export import ExportError, export_baseline, export_policy, onnx_actions, random_observations
from agents.export.onnx_graph import ScaledActor
from agents.networks import deterministic_actor
from agents.scheduler.artifact import site_hash
from agents.train import train
from envs.observation import declared_layout
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]
QUICK = [*TINY, "total_timesteps=96", "eval_freq=0", "checkpoint_freq=0"]
RUNS = {
    "per_port": [*QUICK, "agent=ppo_perport", "env=physical", "env.deadline_guard_hours=1.0"],
    "per_port_fit": [*QUICK, "agent=ppo_perport", "env=physical", "env.deadline_guard_hours=2.0",
                     "env.guard_fits_headroom=true"],
    "per_port_view": [*QUICK, "agent=ppo_perport", "env=physical", "env.deadline_guard_hours=1.0",
                      "env.departure_level=0.2"],
    "mlp": QUICK,  # SB3's MlpPolicy behind VecNormalize (env=default)
    "per_port_fill": [*QUICK, "site=v2g_workplace", "agent=ppo_perport", "env=physical",
                      "env.deadline_guard_hours=1.0", "env.guard_fits_headroom=true",
                      "env.peak_fill_quantile=0.5"],
}
SEED_SITE = {"horizon_steps": 24, "start_hour": 7}  # TINY's site overrides


@functools.cache
def _workspace() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="export-tests-"))
    import atexit

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def trained_run(kind: str) -> Path:
    """A tiny training run whose policy weights are then spread out (noise of std 1 / sqrt(fan-in)
    on every weight matrix, 0.3 on biases), so that its actions cover [-1, 1] and a parity test
    has something to compare."""
    run_dir = _workspace() / f"run_{kind}"
    train(train_config(*RUNS[kind]), run_dir)
    weights_path = run_dir / "policy" / "weights.pt"
    weights = torch.load(weights_path, weights_only=True)
    generator = torch.Generator().manual_seed(7)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and "log_std" not in name:
            std = 1.0 / np.sqrt(tensor.shape[1]) if tensor.ndim == 2 else 0.3
            tensor += std * torch.randn(tensor.shape, generator=generator)
    torch.save(weights, weights_path)
    return run_dir


@functools.cache
def exported(kind: str, site: str | None = None) -> Path:
    out = _workspace() / f"artifact_{kind}_{site}"
    export_policy(trained_run(kind), out, site)
    return out


@pytest.mark.parametrize("kind", ["per_port", "mlp"])
def test_onnx_equals_the_torch_policy_on_10000_random_observations(kind):
    artifact = exported(kind)
    policy = load_policy(trained_run(kind))
    params = load_site("caltech", **SEED_SITE)
    policy.begin(params, None)
    obs = random_observations(params, 10_000, np.random.default_rng(11))
    onnx = onnx_actions(artifact / "policy.onnx", obs)
    module = ScaledActor(deterministic_actor(policy.policy), policy.obs_mean, policy.obs_var, policy.clip_obs,
                         policy.epsilon).eval()
    with torch.no_grad():
        actor = module(torch.as_tensor(obs)).numpy()
    policy.config["deadline_guard_hours"] = None  # the guard runs after the graph, in the scheduler
    predicted, _ = policy.predict(obs)
    assert onnx.shape == (10_000, params.num_ports) and onnx.dtype == np.float32
    assert np.abs(onnx - actor).max() <= 1e-5
    assert np.abs(onnx - predicted).max() <= 1e-5
    occupied = obs[:, declared_layout(params).slices["occupied"]] > 0
    assert onnx[occupied].std() > 0.2 and (np.abs(onnx) == 1.0).any()  # actions spread over [-1, 1]
    assert np.all(onnx[~occupied] == 0.0) or kind == "mlp"  # the per-port network leaves empty ports at 0


def test_a_per_port_policy_exports_to_another_site():
    artifact = exported("per_port", "jpl")
    manifest = json.loads((artifact / "manifest.json").read_text())
    jpl = load_site("jpl")
    assert manifest["site"]["name"] == "jpl" and manifest["site"]["hash"] == site_hash(jpl)
    obs = random_observations(jpl, 2000, np.random.default_rng(3))
    policy = load_policy(trained_run("per_port"))
    policy.begin(jpl, None)
    policy.config["deadline_guard_hours"] = None
    np.testing.assert_allclose(onnx_actions(artifact / "policy.onnx", obs), policy.predict(obs)[0], atol=1e-5)
    assert manifest["policy"]["trained_on_site"] == "caltech"


def test_a_fixed_size_policy_refuses_a_site_of_another_size(tmp_path):
    with pytest.raises(ExportError, match="jpl"):
        export_policy(trained_run("mlp"), tmp_path, "jpl")


def test_manifest_describes_the_observation_actions_site_guard_and_file():
    artifact = exported("per_port")
    manifest = json.loads((artifact / "manifest.json").read_text())
    params = load_site("caltech")
    layout = declared_layout(params)
    assert manifest["format_version"] == 1
    fields = manifest["observation"]["fields"]
    assert [field["name"] for field in fields] == list(layout.slices)
    assert fields[0]["start"] == 0 and fields[-1]["stop"] == layout.size == manifest["observation"]["size"]
    assert all(a["stop"] == b["start"] for a, b in zip(fields[:-1], fields[1:], strict=True))
    by_name = {field["name"]: field for field in fields}
    assert by_name["max_charge_kw"]["kind"] == "port" and by_name["max_charge_kw"]["unit"] == "kW"
    assert by_name["max_charge_kw"]["scale"] == pytest.approx(6.6)
    assert by_name["node_headroom_kw"]["kind"] == "node"
    assert by_name["node_headroom_kw"]["scale"] == [300, 150]
    assert by_name["peak_import_kw"]["kind"] == "site"
    assert manifest["action"]["mode"] == "signed_fraction_of_available_power"
    assert manifest["action"]["shape"] == ["batch", 54]
    assert manifest["deadline_guard_hours"] == 1.0 and manifest["guard_fits_headroom"] is False
    assert manifest["site"]["hash"] == site_hash(params) and manifest["step_hours"] == 0.25
    assert manifest["site"]["topology"]["port_names"] == list(params.port_names)
    assert manifest["fallback"] == {"class": "agents.baselines.EarliestDeadlineFirst", "arguments": {}}
    import hashlib

    assert manifest["policy"]["sha256"] == hashlib.sha256((artifact / "policy.onnx").read_bytes()).hexdigest()
    assert manifest["policy"]["export_check"]["max_abs_diff"] <= 1e-5
    assert {"numpy", "torch", "onnx", "onnxruntime", "smartcharging"} <= set(manifest["versions"])
    mlp = json.loads((exported("mlp") / "manifest.json").read_text())
    assert mlp["policy"]["observation_scaling"].startswith("frozen VecNormalize")
    assert mlp["deadline_guard_hours"] is None


def test_site_hash_follows_what_the_policy_sees_not_the_episode():
    caltech = load_site("caltech")
    assert site_hash(caltech) == site_hash(load_site("caltech", horizon_steps=24, start_hour=7))
    limits = caltech.node_import_limit_kw.copy()
    limits[1] = 120.0
    assert site_hash(caltech.replace(node_import_limit_kw=limits)) != site_hash(caltech)
    assert site_hash(load_site("jpl")) != site_hash(caltech)


def test_baselines_and_mpc_export_as_manifests(tmp_path):
    manifest = export_baseline({"_target_": "agents.baselines.PriceAware", "margin_hours": 2.0},
                               tmp_path / "price_aware", "caltech")
    assert manifest["policy"] is None and not (tmp_path / "price_aware" / "policy.onnx").exists()
    assert manifest["fallback"] == {"class": "agents.baselines.PriceAware",
                                    "arguments": {"margin_hours": 2.0}}
    edf = {"_target_": "agents.baselines.EarliestDeadlineFirst", "_partial_": True}
    mpc_spec = {"_target_": "agents.mpc.ModelPredictiveControl", "horizon_steps": 12, "fallback": edf}
    mpc = export_baseline(mpc_spec, tmp_path / "mpc", "caltech")
    assert mpc["fallback"]["class"] == "agents.mpc.ModelPredictiveControl"
    assert mpc["fallback"]["arguments"]["horizon_steps"] == 12
    with pytest.raises(ExportError, match="os.system"):
        export_baseline({"_target_": "os.system"}, tmp_path / "bad", "caltech")
    with pytest.raises(ExportError, match="margin"):
        export_baseline({"_target_": "agents.baselines.Uncontrolled", "margin": 1}, tmp_path / "bad",
                        "caltech")


def test_export_script_writes_a_policy_artifact_and_a_baseline_manifest(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "export_policy.py")]
    subprocess.run([*script, f"run={trained_run('per_port')}", f"out={tmp_path / 'jpl'}", "site=jpl"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    manifest = json.loads((tmp_path / "jpl" / "manifest.json").read_text())
    assert manifest["site"]["name"] == "jpl" and (tmp_path / "jpl" / "policy.onnx").is_file()
    subprocess.run([*script, "fallback=price_aware", "site=caltech", f"out={tmp_path / 'pa'}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    manifest = json.loads((tmp_path / "pa" / "manifest.json").read_text())
    assert manifest["policy"] is None and manifest["fallback"]["class"] == "agents.baselines.PriceAware"
