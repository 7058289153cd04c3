"""The import graph of the installed package against docs/architecture.md: every module is
in the layer table, imports point down the table (or stay in a layer), no cycle, the runtime
never imports the exporter, nothing outside the engine and the backends calls an engine's
private method, and nothing outside ``clippy_rt.backends`` compares a backend's name.

The graph is read from the source with ``ast`` (every ``import`` statement, function-level
ones included), over the installed layout: ``kernels/`` is ``clippy_rt.kernels`` and
``export/`` is ``clippy_rt.export``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clippy_rt", "clippy_rt.kernels", "clippy_rt.export")
# Modules that own an engine's private methods.
ENGINE_OWNERS = ("clippy_rt.engine", "clippy_rt.backends")


def package_files() -> Dict[str, Path]:
    """Module name -> source file, for every module of the installed package."""
    modules: Dict[str, Path] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        (location,) = spec.submodule_search_locations
        location = Path(location)
        for path in sorted(location.rglob("*.py")):
            relative = path.relative_to(location).with_suffix("")
            parts = [package] + list(relative.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            # clippy_rt's own walk also finds kernels/ and export/ only if they sit inside it.
            modules.setdefault(name, path)
    return modules


def _absolute(module: str, is_package: bool, level: int, target) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _known(name: str, modules) -> str:
    """The longest prefix of ``name`` that is a module of the package, or ''."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return ""


def import_graph(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in targets:
                found = _known(target, modules)
                if found and found != name:
                    graph[name].add(found)
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def engine_private_methods(modules: Dict[str, Path]) -> Set[str]:
    """Names of the single-underscore methods defined by classes in the engine and backend modules."""
    names: Set[str] = set()
    for name, path in modules.items():
        if not name.startswith(ENGINE_OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("_") \
                            and not item.name.startswith("__"):
                        names.add(item.name)
    return names


def private_calls(path: Path, private: Set[str]) -> List[Tuple[int, str]]:
    """(line, method) of every ``something._method(...)`` call on a name in ``private``,
    other than on ``self`` / ``cls`` (a class's own helpers)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in private:
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append((node.lineno, node.func.attr))
    return found


@pytest.fixture(scope="module")
def modules():
    found = package_files()
    # The installed mapping is honoured: kernels/ and export/ are subpackages of clippy_rt.
    # (In a checkout clippy_rt/kernels and clippy_rt/export are links to the top-level folders.)
    assert found["clippy_rt.kernels.seg_head"].resolve() == ROOT / "kernels" / "seg_head.py"
    assert found["clippy_rt.export.onnx"].resolve() == ROOT / "export" / "onnx.py"
    assert "clippy_rt.engine" in found and "clippy_rt.backends.torch" in found
    return found


def test_graph_reader_sees_relative_and_function_level_imports(modules):
    graph = import_graph(modules)
    # engine.decode imports the seg head inside the method: a function-level edge.
    assert "clippy_rt.kernels.seg_head" in graph["clippy_rt.engine"]
    # export/onnx.py imports the runner inside export_onnx: the exporter may use the runtime.
    assert "clippy_rt.backends.onnxruntime" in graph["clippy_rt.export.onnx"]
    # ``from .seg_head_inputs import ...`` inside kernels/ resolves under clippy_rt.kernels.
    assert "clippy_rt.kernels.seg_head_inputs" in graph["clippy_rt.kernels.native"]


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle(modules):
    cycles = find_cycles(import_graph(modules))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_runtime_never_imports_the_exporter(modules):
    graph = import_graph(modules)
    offenders = {name: sorted(t for t in targets if t == "clippy_rt.export" or t.startswith("clippy_rt.export."))
                 for name, targets in graph.items() if name.startswith("clippy_rt.backends")}
    offenders = {name: targets for name, targets in offenders.items() if targets}
    assert not offenders, f"backends import the exporter: {offenders}"


def test_no_private_engine_method_called_from_outside(modules):
    private = engine_private_methods(modules)
    assert {"_image_forward", "_text_forward"} <= private
    outside = {name: path for name, path in modules.items() if not name.startswith(ENGINE_OWNERS)}
    outside.update({f"benchmarks/{p.name}": p for p in sorted((ROOT / "benchmarks").glob("*.py"))})
    offenders = {name: calls for name, path in outside.items() if (calls := private_calls(path, private))}
    assert not offenders, f"private engine methods called from outside the engine: {offenders}"


# -- layers ------------------------------------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def read_layers(text: str) -> Dict[str, int]:
    """Module -> layer number, from the ``## Layers`` table (``| # | layer | modules |``).
    ``ValueError`` for a module listed twice."""
    section = text.split("## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers: Dict[str, int] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for module in re.findall(r"`([\w.]+)`", cells[2]):
            if module in layers:
                raise ValueError(f"{module} is listed in layers {layers[module]} and {cells[0]}")
            layers[module] = int(cells[0])
    return layers


def upward_imports(graph: Dict[str, Set[str]], layers: Dict[str, int]) -> List[str]:
    """"a (layer i) -> b (layer j)" for each import of a module of a higher layer (j < i)."""
    return [f"{name} (layer {layers[name]}) -> {target} (layer {layers[target]})"
            for name, targets in sorted(graph.items()) for target in sorted(targets)
            if name in layers and target in layers and layers[target] < layers[name]]


def test_layer_checker_on_a_known_table():
    table = "## Layers\n\n| # | layer | modules |\n|---|---|---|\n| 1 | top | `a`, `a.b` |\n| 2 | low | `c` |\n"
    layers = read_layers(table)
    assert layers == {"a": 1, "a.b": 1, "c": 2}
    assert upward_imports({"a": {"c", "a.b"}, "a.b": {"a"}, "c": set()}, layers) == []
    assert upward_imports({"a": set(), "a.b": set(), "c": {"a.b"}}, layers) == ["c (layer 2) -> a.b (layer 1)"]
    with pytest.raises(ValueError, match="listed in layers 1 and 2"):
        read_layers(table.replace("`c`", "`a`"))


def test_every_module_is_in_the_layer_table(modules):
    layers = read_layers(ARCHITECTURE.read_text())
    assert not sorted(set(modules) - set(layers)), "modules missing from docs/architecture.md's layer table"
    assert not sorted(set(layers) - set(modules)), "docs/architecture.md lists modules that do not exist"


def test_imports_point_down_the_layer_table(modules):
    offenders = upward_imports(import_graph(modules), read_layers(ARCHITECTURE.read_text()))
    assert not offenders, "imports of a higher layer (docs/architecture.md): " + "; ".join(offenders)


# -- backend names -----------------------------------------------------------------------


def backend_name_comparisons(source: str, names: Tuple[str, ...]) -> List[int]:
    """Lines of comparisons (==, !=, in, not in) between a backend name given as a string
    (or a tuple / list / set of them) and an expression that names a backend (an identifier
    or attribute containing "backend")."""
    def is_name_literal(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name_literal(item) for item in node.elts)
        return False

    def names_backend(node) -> bool:
        return any("backend" in (sub.id if isinstance(sub, ast.Name) else sub.attr).lower()
                   for sub in ast.walk(node) if isinstance(sub, (ast.Name, ast.Attribute)))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(is_name_literal(o) for o in operands) and any(names_backend(o) for o in operands
                                                                    if not is_name_literal(o)):
                lines.append(node.lineno)
    return lines


def test_backend_name_comparison_finder():
    names = ("torch", "onnxruntime")
    assert backend_name_comparisons("engine.backend == 'torch'", names) == [1]
    assert backend_name_comparisons("x = 1\nif case.backend in ('onnxruntime', 'x'): pass", names) == [2]
    assert backend_name_comparisons("'torch' != settings.baseline_backend", names) == [1]
    assert backend_name_comparisons("impl == 'torch'", names) == []          # a kernel implementation
    assert backend_name_comparisons("backend in BACKENDS", names) == []      # membership in the registry


def test_no_backend_name_comparisons_outside_backends(modules):
    from clippy_rt.backends import BACKENDS

    offenders = {name: lines for name, path in modules.items()
                 if not (name == "clippy_rt.backends" or name.startswith("clippy_rt.backends."))
                 and (lines := backend_name_comparisons(path.read_text(), BACKENDS))}
    assert not offenders, f"backend names compared outside clippy_rt.backends (use the registry): {offenders}"
