"""scripts/bench_guard.py: its MPC variants, departure scenarios included, and the errors of its arguments."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "bench_guard.py")


def bench_guard(*arguments, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_mpc_variants_are_scored_as_they_are_and_behind_each_margin():
    done = bench_guard("--site", "caltech", "--policies", "--margins", "1", "--unguarded", "--mpc", "4:0.5",
                       "4:0:3", "--test-episodes", "1", "--test-seed", "5")
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ")[0].lstrip("| ") for line in done.stdout.splitlines() if line.startswith("| ")]
    scenarios = "MPC 4 steps, 0 h margin, 3 departure scenarios"
    assert rows[1:] == ["uncontrolled", "offline_optimal", "MPC 4 steps, 0.5 h margin",
                        "MPC 4 steps, 0.5 h margin, behind 1 h", scenarios, f"{scenarios}, behind 1 h"]
    assert "caltech, 1 days (seed 5)" in done.stdout


def test_a_malformed_mpc_variant_is_refused_with_the_format():
    for bad in ("24", "24:1:0", "24:1:3:4", "a:1"):
        done = bench_guard("--mpc", bad, timeout=60)
        assert done.returncode == 2
        assert "HORIZON_STEPS:DEPARTURE_MARGIN_HOURS[:SCENARIOS]" in done.stderr and repr(bad) in done.stderr
