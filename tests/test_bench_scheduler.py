"""The scheduler latency benchmark: the script's table and JSON line, the export path with the parity
tolerance of the site's ports, and the refusal of an altered artifact. No timing is asserted."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents.export import ExportError, writer
from agents.scheduler.bench import bench_from_config, export_artifact

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "learning" / "caltech" / "bc_ppo" / "seed_0"
ROW_KEYS = {"site", "ports", "nodes", "ocpp", "clock", "decisions", "states", "sessions_mean", "sessions_max",
            "p50_ms", "p99_ms", "mean_ms", "max_ms", "decide_p50_ms", "ocpp_p50_ms", "fell_back_sampled",
            "target_p99_ms", "meets_target", "artifact"}
QUICK = ["decisions=4", "warmup=1", "episodes=1"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "caltech"
    export_artifact(RUN, "caltech", folder, check_observations=20)
    return folder


def bench(tmp_path, *overrides):
    return subprocess.run([sys.executable, "scripts/bench_scheduler.py", *overrides,
                           f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_script_prints_a_table_and_one_json_line(artifact, tmp_path):
    result = bench(tmp_path, f"artifact={artifact}", *QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["site", "ports", "EVs"] and lines[2].split()[:2] == ["caltech", "54"]
    summary = json.loads(lines[-1])
    assert set(summary) == {"benchmark", "threads", "machine", "rows"} and summary["threads"] == 1
    assert summary["machine"]["thread_variables"]["OMP_NUM_THREADS"] == "1"
    [row] = summary["rows"]
    assert set(row) == ROW_KEYS
    assert row["site"] == "caltech" and row["ports"] == 54 and row["decisions"] == 4 and row["ocpp"] == "1.6"
    assert row["states"] == 96 and row["target_p99_ms"] == 1.0 and isinstance(row["meets_target"], bool)
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] and row["mean_ms"] > 0


def test_an_altered_artifact_is_refused_without_a_decision(artifact, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(artifact, altered)
    onnx = altered / "policy.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    result = bench(tmp_path, f"artifact={altered}", *QUICK)
    assert result.returncode != 0
    assert "artifact refused" in result.stderr and "sha256" in result.stderr and "altered" in result.stderr
    assert "p50" not in result.stdout and "{" not in result.stdout


def test_without_an_artifact_the_run_is_exported_per_site():
    """The default path (export into a temporary folder, then time), on the V2G site whose setpoints
    need OCPP 2.1."""
    cfg = {"artifact": None, "site": None, "run": str(RUN), "sites": ["v2g_workplace"],
           "export_check_observations": 8, "decisions": 3, "warmup": 1, "episodes": 1, "seed": 0,
           "ocpp": {"version": None, "unit": "W", "kind": "Absolute"}, "targets_p99_ms": {"caltech": 1.0},
           "clock": "cpu"}
    summary = bench_from_config(cfg)
    [row] = summary["rows"]
    assert set(row) == ROW_KEYS | {"export_max_abs_diff", "export_tolerance"}
    assert row["export_tolerance"] == writer.PARITY_TOLERANCE == writer.parity_tolerance(20)
    assert row["site"] == "v2g_workplace" and row["ocpp"] == "2.1" and row["clock"] == "cpu"
    assert row["target_p99_ms"] is None
    assert 0.0 <= row["export_max_abs_diff"] <= row["export_tolerance"]


def test_the_per_port_policy_exports_to_the_city_within_the_tolerance_of_its_ports(tmp_path):
    """1100 ports: float32 pooling sums in another order differ by more than the small sites' 1e-5,
    within the tolerance that grows with the ports (no loose retry); the manifest records both."""
    tolerance, ports = writer.PARITY_TOLERANCE, writer.PARITY_PORTS
    assert writer.parity_tolerance(1) == writer.parity_tolerance(ports) == tolerance
    assert writer.parity_tolerance(1100) == pytest.approx(tolerance * 1100 / ports)
    manifest = export_artifact(RUN, "city", tmp_path / "city", check_observations=200)
    check = manifest["policy"]["export_check"]
    assert check["tolerance"] == writer.parity_tolerance(1100)
    assert 0.0 < check["max_abs_diff"] <= check["tolerance"]
    written = json.loads((tmp_path / "city" / "manifest.json").read_text())
    assert written["policy"]["export_check"] == check


def test_an_export_beyond_the_tolerance_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differs from the torch actor by .* on 20 ports"):
        export_artifact(RUN, "v2g_workplace", tmp_path / "v2g", check_observations=4)
