"""The import graph of the installed packages holds the layering the design promises: no cycle
between modules or between subpackages, the shared code below both daemons, the daemons below the
command line and the demo, nothing of adaptcast importing the benchmarks, and no module importing
the old top-level names (`shared`, `sender`, `receiver`).

The graph is read from the source with `ast` (nothing is imported, so it costs milliseconds and
needs no optional dependency), over every module the two distributions install: the folders are
found by walking them, not listed, so that a new module or subpackage is checked the day it lands.

Every import counts, wherever it is written: at module level, inside a function (a lazy import
still runs, and still ties the two modules' designs together) and under `if TYPE_CHECKING:` (a
type-only import is a dependency of the design, which mypy follows: `sender/metrics.py` reading
`CameraStreamer` under TYPE_CHECKING was half of a cycle). The one exception is named below: the
command line's functions that run the benchmark commands import the bench distribution lazily.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE_DIRS = {
    "app": "adaptcast",
    "shared": "adaptcast.shared",
    "sender": "adaptcast.sender",
    "receiver": "adaptcast.receiver",
    "bench": "adaptcast_bench",
}
"""Repository folder -> the package it installs as (pyproject.toml and bench/pyproject.toml)."""
OLD_TOP_LEVEL = ("shared", "sender", "receiver")
"""The names the folders installed under before they became subpackages of adaptcast."""
DAEMONS = ("adaptcast.sender", "adaptcast.receiver")
COMMAND_LINE = ("adaptcast.cli", "adaptcast.commands", "adaptcast.demo", "adaptcast.__main__")
"""The command line (one module, or a package of commands) and the demo's process harness."""
BENCH = "adaptcast_bench"
METRICS = ("adaptcast.sender.metrics", "adaptcast.receiver.metrics")
"""Each daemon's metrics, which read its components only through the frozen snapshots of its `stats` module."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    lazy: bool
    """Written inside a function (runs when the function does)."""
    type_only: bool
    """Written under `if TYPE_CHECKING:`."""


def within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether module `name` is one of `prefixes` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def discover_modules(repo: Path = REPO) -> dict[str, Path]:
    """Installed module name -> file, for every .py file in a package folder (a folder with an
    __init__.py, all the way down from the package's root)."""
    modules = {}
    for folder, package in PACKAGE_DIRS.items():
        root = repo / folder
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if not all((root.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(len(parts))):
                continue  # not in a package (a build folder, a script beside one)
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, lazy: bool = False, type_only: bool = False) -> Iterator[tuple[ast.AST, bool, bool]]:
    """Every import statement under `node`, with whether it is inside a function or a TYPE_CHECKING block."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy, type_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), lazy, True)
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), lazy, type_only)
        else:
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from _walk(child, inner, type_only)


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """The imports module `name` makes, each resolved to the module it loads: `from a import b`
    names module `a.b` when that is a module, `a` otherwise; relative imports are made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, lazy, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            assert isinstance(node, ast.ImportFrom)
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found += [Import(name, target, node.lineno, lazy, type_only) for target in dict.fromkeys(targets)]
    return found


def import_graph(repo: Path = REPO) -> tuple[dict[str, Path], list[Import]]:
    modules = discover_modules(repo)
    return modules, [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle of `graph` (node -> the nodes it points to) as [a, b, ..., a], or None when it has
    none: a depth-first search that meets a node still on its path has closed a cycle."""
    on_path: dict[str, int] = {}
    path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        on_path[node] = len(path)
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[on_path[nxt]:], nxt]
            if nxt not in done and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        del on_path[node]
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_of(name: str, modules: Mapping[str, Path]) -> str:
    """The node of the subpackage graph that module `name` belongs to: its package when that is
    a leaf (adaptcast.shared.codec, adaptcast.sender, adaptcast_bench), the module itself when its
    package also holds subpackages (adaptcast.shared.config, adaptcast.cli): such a package is a
    namespace for its parts, not a layer of its own, and its loose modules sit at various heights
    (adaptcast.shared.errors below the codec, adaptcast.shared.config above it)."""
    package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
    holds_subpackages = any(other.startswith(package + ".") and modules[other].name == "__init__.py"
                            for other in modules)
    return name if holds_subpackages else package


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    return import_graph()


def _internal(imports: list[Import], modules: Mapping[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for i in imports:
        if i.target in modules:
            edges[i.source].add(i.target)
    return edges


def _listing(imports: Iterable[Import], modules: Mapping[str, Path]) -> list[str]:
    return [f"{modules[i.source].relative_to(REPO)}:{i.line} imports {i.target}" for i in imports]


def test_the_walk_finds_every_part_and_its_imports(graph):
    """The checks below would pass on an empty graph: see that this one is whole."""
    modules, imports = graph
    for name in ("adaptcast", "adaptcast.shared.codec.ssf", "adaptcast.shared.pipeline.stream",
                 "adaptcast.sender.daemon", "adaptcast.receiver.daemon", "adaptcast_bench.suite"):
        assert name in modules, name
    edges = _internal(imports, modules)
    assert "adaptcast.sender.encoder" in edges["adaptcast.sender.daemon"]
    assert "adaptcast.shared.codec.ssf" in edges["adaptcast.shared.adapters.lora"]
    assert not any(within(name, ("adaptcast.build", "adaptcast_bench.build")) for name in modules)


def test_no_import_cycle_between_modules(graph):
    modules, imports = graph
    cycle = find_cycle(_internal(imports, modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages(graph):
    """codec <- adapters <- pipeline <- sender, receiver <- the command line, and so on: a DAG."""
    modules, imports = graph
    layer = {name: layer_of(name, modules) for name in modules}
    edges: dict[str, set[str]] = {}
    for source, targets in _internal(imports, modules).items():
        edges.setdefault(layer[source], set()).update(layer[t] for t in targets if layer[t] != layer[source])
    cycle = find_cycle(edges)
    assert cycle is None, "subpackage cycle: " + " -> ".join(cycle)


def test_shared_code_imports_neither_daemon_nor_the_command_line(graph):
    modules, imports = graph
    bad = [i for i in imports if within(i.source, ["adaptcast.shared"]) and within(i.target, DAEMONS + COMMAND_LINE)]
    assert not bad, _listing(bad, modules)


def test_nothing_of_adaptcast_imports_the_benchmarks(graph):
    """The container images do not carry adaptcast_bench. The one allowance: the command line's
    bench commands import it inside the functions that run them (they exist to run it)."""
    modules, imports = graph
    bad = [i for i in imports if within(i.source, ["adaptcast"]) and within(i.target, [BENCH])
           and not (i.lazy and not i.type_only and within(i.source, COMMAND_LINE))]
    assert not bad, _listing(bad, modules)


def test_the_daemons_import_neither_the_command_line_nor_the_demo(graph):
    modules, imports = graph
    bad = [i for i in imports if within(i.source, DAEMONS) and within(i.target, COMMAND_LINE)]
    assert not bad, _listing(bad, modules)


def test_no_module_imports_the_old_top_level_names(graph):
    modules, imports = graph
    bad = [i for i in imports if within(i.target, OLD_TOP_LEVEL)]
    assert not bad, _listing(bad, modules)


def test_the_metrics_import_only_the_stats_module_of_their_daemon(graph):
    """As MediaMTX's internal/metrics reads the data types of internal/defs and never internals: a
    daemon's metrics know its components by their stats snapshots alone, so that a component's
    insides can change without the metrics, and the metrics import no component (nor the daemon
    that owns them: sender/daemon.py <-> sender/metrics.py was a cycle)."""
    modules, imports = graph
    assert all(name in modules for name in METRICS)
    bad = [i for i in imports if i.source in METRICS and within(i.target, DAEMONS)
           and i.target != i.source.rpartition(".")[0] + ".stats"]
    assert not bad, _listing(bad, modules)


def test_the_checks_see_a_cycle_a_lazy_import_and_a_type_only_import(tmp_path):
    """The checker itself, on a small fake repository: a cycle through a function-level import and
    a TYPE_CHECKING one is reported, and a relative import resolves."""
    for folder in PACKAGE_DIRS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "sender" / "daemon.py").write_text("from adaptcast.sender.metrics import serve\n")
    (tmp_path / "sender" / "metrics.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .daemon import Streamer\n")
    (tmp_path / "shared" / "config.py").write_text("def f():\n    import adaptcast.receiver.server\n")
    (tmp_path / "receiver" / "server.py").write_text("import adaptcast.shared.config\nimport shared.frames\n")
    (tmp_path / "bench" / "build").mkdir()
    (tmp_path / "bench" / "build" / "stray.py").write_text("import adaptcast_bench\n")

    modules, imports = import_graph(tmp_path)
    assert "adaptcast_bench.build.stray" not in modules
    edges = _internal(imports, modules)
    assert find_cycle(edges) in (
        ["adaptcast.receiver.server", "adaptcast.shared.config", "adaptcast.receiver.server"],
        ["adaptcast.sender.daemon", "adaptcast.sender.metrics", "adaptcast.sender.daemon"],
    )
    edges["adaptcast.shared.config"].clear()
    assert find_cycle(edges) == ["adaptcast.sender.daemon", "adaptcast.sender.metrics", "adaptcast.sender.daemon"]
    by_source = {i.source: i for i in imports}
    assert by_source["adaptcast.sender.metrics"].type_only and by_source["adaptcast.shared.config"].lazy
    assert any(i.target == "shared.frames" for i in imports)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
