"""Packaging: the base dependencies plus the ``scheduler`` extra hold no training stack, and they cover
everything the environment and the scheduler runtime import. A subprocess blocks every top-level
package outside that install (stdlib, ``envs`` and ``agents`` aside) and imports the modules, resets
every built-in site and lets exported artifacts decide."""

import importlib.metadata as metadata
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import agents.scheduler
import envs
from agents.export import export_baseline, export_policy
from envs.site import builtin_sites

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = {"torch", "stable-baselines3", "sb3-contrib", "hydra-core"}
COMMITTED_POLICY = ROOT / "experiments" / "learning" / "caltech" / "bc" / "seed_0" / "policy"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(spec: dict, *extras: str) -> list[Requirement]:
    extra_texts = [text for extra in extras for text in spec["optional-dependencies"][extra]]
    texts = [*spec["dependencies"], *extra_texts]
    return [Requirement(text) for text in texts]


def scheduler_install(spec: dict) -> set[str]:
    """The distributions ``pip install smartcharging[scheduler]`` names directly."""
    return {normalized(req.name) for req in requirements(spec, "scheduler")}


def closure(requested: list[Requirement]) -> set[str]:
    """The installed distributions ``requested`` pull in, transitively (markers evaluated, extras
    followed)."""
    found, todo = set(), [(normalized(req.name), frozenset(req.extras)) for req in requested]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in found:
            continue
        found.add((name, extras))
        try:
            texts = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is required by the scheduler install but not installed here")
        for req in map(Requirement, texts):
            if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in {"", *extras}):
                todo.append((normalized(req.name), frozenset(req.extras)))
    return {name for name, _ in found}


def import_names(distributions: set[str]) -> set[str]:
    """The top-level import names of the installed ``distributions`` (``pyyaml`` -> ``yaml``)."""
    return {module for module, owners in metadata.packages_distributions().items()
            if any(normalized(owner) in distributions for owner in owners)}


def torch_free_modules() -> list[str]:
    """``envs`` but its real-data readers (``envs.data``, pandas) and SB3 adapter, the rule baselines and
    the guard, and all of ``agents.scheduler`` (the OCPP central system and simulated charge points too)."""
    names = ["envs", "agents", "agents.baselines", "agents.guards", "agents.scheduler"]
    names += [info.name for info in pkgutil.walk_packages(envs.__path__, "envs.")
              if not info.name.startswith("envs.data") and info.name != "envs.sb3"]
    names += [info.name for info in pkgutil.walk_packages(agents.scheduler.__path__, "agents.scheduler.")]
    return names


BLOCKED_RUN = """
import importlib, importlib.abc, json, sys

ALLOWED = set(json.loads(sys.argv[1])) | set(sys.stdlib_module_names) | {"envs", "agents"}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED and top not in sys.modules:
            raise ModuleNotFoundError(f"{top} is not in the scheduler install", name=top)
        return None


sys.meta_path.insert(0, Block())
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)

import numpy as np
from agents.scheduler import Scheduler
from agents.scheduler.replay import site_state_from_env
from envs.core import reset, step
from envs.generators import generator_for
from envs.site import load_site

decided = {}
for name, artifact in json.loads(sys.argv[3]).items():
    params = load_site(name.split(":")[0], horizon_steps=12, start_hour=8)
    scheduler = Scheduler(artifact, params)
    state = reset(params, generator_for(params).sample(params, np.random.default_rng(1), 1))
    total = 0.0
    for _ in range(4):
        total += float(np.abs(scheduler.decide(site_state_from_env(params, state, 0)).setpoint_kw).sum())
        state, _, _ = step(params, state, np.full((1, params.num_ports), 0.5))
    decided[name] = total
print(json.dumps({"decided": decided, "onnxruntime": "onnxruntime" in sys.modules}))
"""


def run_blocked(allowed: set[str], modules: list[str], artifacts: dict[str, str]):
    arguments = [json.dumps(sorted(allowed)), json.dumps(modules), json.dumps(artifacts)]
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_base_and_scheduler_extra_name_no_training_stack():
    spec = project()
    assert scheduler_install(spec) & TRAINING_STACK == set()
    assert TRAINING_STACK <= {normalized(req.name) for req in requirements(spec, "train")}
    assert {"onnxruntime", "ocpp", "websockets"} <= scheduler_install(spec)


def test_the_training_stack_check_finds_torch_in_base():
    spec = {"dependencies": ["numpy>=2", "torch>=2.4"], "optional-dependencies": {"scheduler": ["ocpp"]}}
    assert scheduler_install(spec) & TRAINING_STACK == {"torch"}


def test_the_scheduler_install_pulls_in_no_training_stack():
    assert closure(requirements(project(), "scheduler")) & TRAINING_STACK == set()


@pytest.fixture(scope="module")
def allowed_imports() -> set[str]:
    names = import_names(closure(requirements(project(), "scheduler")))
    assert {"numpy", "gymnasium", "yaml", "onnxruntime", "ocpp", "websockets"} <= names
    assert not names & {"torch", "stable_baselines3", "sb3_contrib", "hydra", "pandas", "scipy", "matplotlib"}
    return names


def test_envs_and_the_scheduler_run_on_the_scheduler_install_alone(allowed_imports, tmp_path):
    artifacts, baseline = {}, {"class": "agents.baselines.EarliestDeadlineFirst", "arguments": {}}
    for name in builtin_sites():
        artifacts[name] = str(tmp_path / name)
        export_baseline(baseline, tmp_path / name, name)
    artifacts["caltech:onnx"] = str(tmp_path / "onnx")
    export_policy(COMMITTED_POLICY, tmp_path / "onnx", "caltech", check_observations=8)
    result = run_blocked(allowed_imports, torch_free_modules(), artifacts)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["onnxruntime"] and set(report["decided"]) == set(artifacts)
    assert report["decided"]["caltech:onnx"] > 0 and report["decided"]["caltech"] > 0


def test_the_blocker_refuses_a_package_outside_the_install(allowed_imports):
    result = run_blocked(allowed_imports, ["envs", "envs.data.replay"], {})
    assert result.returncode != 0 and "pandas is not in the scheduler install" in result.stderr
