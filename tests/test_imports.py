"""The import graph of ``envs`` has no cycle, lazy imports inside functions included, and every
generator module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR_MODULES = ("envs.generators", "envs.parametric", "envs.data.fit", "envs.data.fitting",
                     "envs.data.fit_presets", "envs.data.elaad", "envs.data.replay",
                     "envs.data.replay_config", "envs.data.overlay", "envs.data.forecasts",
                     "envs.data.sessions")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str = "envs") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its code: ``from a import b``
    counts ``a.b`` when that is a module, else ``a`` (so ``from envs import core`` is an import of
    ``envs.core``, not of the package's ``__init__``)."""
    modules = {module_name(path): path for path in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_envs_import_graph_has_no_cycle():
    graph = import_graph()
    assert "envs.generators" in graph["envs.data.fit_presets"] | graph["envs"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_generator_module_imports_the_choice_of_generator():
    graph = import_graph()
    for name in GENERATOR_MODULES[1:]:
        if name != "envs.data.fit_presets":  # writes presets: above the generators, like a script
            assert "envs.generators" not in graph[name], name


@pytest.mark.parametrize("module", GENERATOR_MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
