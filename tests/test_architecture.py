"""The package's layering, checked on the source (ast), not on a running import.

Layers, lowest first: ``core`` (numpy + the C++ extension) <- ``frontend`` (torch)
<- ``runtime`` <- ``evaluation`` <- ``cli``; the top-level ``cic_fast`` package
only re-exports. A module may import its own layer and the layers below it, never
one above (type-checking-only imports included: a type is a dependency too). The
private extension ``cic_fast._core`` is the core's alone. No module imports, or
reaches through an attribute, another module's ``_private`` name. No package
exports a name that is also the name of one of its submodules (``import
cic_fast.x`` would rebind ``cic_fast.x`` to the module, or the reverse).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import cic_fast

PACKAGE = Path(cic_fast.__file__).resolve().parent
LAYERS = ("core", "frontend", "runtime", "evaluation", "cli")
TOP = len(LAYERS)  # cic_fast/__init__.py and __main__.py

# Private attributes of objects the project does not own, read on purpose:
# (module, attribute) -> why.
ALLOWED_PRIVATE = {
    ("cic_fast.frontend.tracing", "_version"): "torch's tensor version counter",
    ("cic_fast.frontend.tracing", "_codegen"): "torch.export's pytree codegen (in/out specs)",
    ("cic_fast.frontend.tracing", "_opname"): "torch OpOverload name",
    ("cic_fast.frontend.tracing", "_overloadname"): "torch OpOverload overload name",
    ("cic_fast.core.graph", "_core"): "Graph's own slot, read by graph.core_graph",
    ("cic_fast.frontend.fxsafety", "_loader"): (
        "torch.fx.graph_module's source cache: a collected GraphModule's entry is removed"
    ),
}
# The public API of namedtuples starts with an underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under a package folder."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules_of(PACKAGE)


def layer_of(module: str) -> int:
    """The layer index of a cic_fast module name."""
    parts = module.split(".")
    if parts[0] != "cic_fast":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    if parts[1] == "_core":
        return 0
    return LAYERS.index(parts[1])


def _imports(
    module: str, is_package: bool, tree: ast.Module
) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names imported from it) for every import in the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def _targets(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The cic_fast modules an import statement depends on."""
    if not target.startswith("cic_fast"):
        return []
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules or n == "_core"]
    # `from cic_fast.x import y` depends on the submodule y where y is one, and on
    # x itself where it takes any other name from it.
    return subs if names and len(subs) == len(names) else [target, *subs]


def violations(modules: dict[str, Path]) -> list[str]:
    """Every layering, private-name or private-attribute violation in ``modules``."""
    bad = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        mine = layer_of(module)
        for line, target, names in _imports(module, path.name == "__init__.py", tree):
            for dep in _targets(target, names, modules):
                if dep == "cic_fast._core" and not module.startswith("cic_fast.core"):
                    bad.append(f"{module}:{line} imports the private extension cic_fast._core")
                elif dep == "cic_fast" and mine != TOP:
                    bad.append(f"{module}:{line} imports the top-level package (an upward import)")
                elif layer_of(dep) > mine:
                    bad.append(
                        f"{module}:{line} imports {dep} "
                        f"({LAYERS[layer_of(dep)] if layer_of(dep) < TOP else 'top'} is above "
                        f"{LAYERS[mine] if mine < TOP else 'top'})"
                    )
            if target.startswith("cic_fast"):
                for n in names:
                    if n.startswith("_") and not n.startswith("__") and n != "_core":
                        bad.append(f"{module}:{line} imports the private name {target}.{n}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in NAMEDTUPLE_API:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (module, attr) in ALLOWED_PRIVATE:
                continue
            bad.append(
                f"{module}:{node.lineno} reaches another object's private name {ast.unparse(node)}"
            )
    return bad


def test_every_module_is_in_a_layer():
    for module in MODULES:
        assert layer_of(module) in range(TOP + 1), module
    assert {m.split(".")[1] for m in MODULES if m.count(".") >= 1} >= set(LAYERS)


def test_imports_run_one_way_and_no_private_names():
    bad = violations(MODULES)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_checker_sees_violations(tmp_path):
    # The walk itself must flag what it exists to flag.
    root = tmp_path / "cic_fast"
    for sub in ("core", "runtime"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "bad.py").write_text(
        "from cic_fast.runtime.client import Client\n"
        "from cic_fast.core.graph import _private\n"
        "def f(g):\n    return g._secret\n"
    )
    (root / "runtime" / "x.py").write_text("from cic_fast import _core\nfrom .. import Graph\n")
    bad = "\n".join(violations(modules_of(root)))
    assert "cic_fast.core.bad:1 imports cic_fast.runtime.client" in bad
    assert "private name cic_fast.core.graph._private" in bad
    assert "g._secret" in bad
    assert "cic_fast.runtime.x:1 imports the private extension" in bad
    assert "cic_fast.runtime.x:2 imports the top-level package" in bad


def _packages() -> list[str]:
    return [m for m, path in MODULES.items() if path.name == "__init__.py"]


@pytest.mark.parametrize("package", _packages())
def test_no_exported_name_is_also_a_submodule(package):
    pkg = importlib.import_module(package)
    subs = {info.name for info in pkgutil.iter_modules(pkg.__path__)}
    clash = sorted(set(getattr(pkg, "__all__", ())) & subs)
    assert not clash, f"{package} exports {clash}, which are also its submodules"


def test_importing_a_submodule_keeps_the_exported_function():
    # The bug this layout fixes: `import cic_fast.trace` rebound cic_fast.trace.
    import cic_fast.frontend.tracing

    assert callable(cic_fast.trace) and not isinstance(cic_fast.trace, type(cic_fast))
    assert cic_fast.frontend.tracing.LayerGraph is cic_fast.LayerGraph
    for module in MODULES:
        if module != "cic_fast.__main__":
            importlib.import_module(module)
    for name in cic_fast.__all__:
        assert getattr(cic_fast, name) is not None
        assert not isinstance(getattr(cic_fast, name), type(cic_fast)), name


# -- the C++ core ------------------------------------------------------------------------

CORE_HEADERS = Path(__file__).resolve().parent.parent / "cpp" / "include" / "cic"


def _includes(header: Path) -> list[str]:
    out = []
    for line in header.read_text().splitlines():
        s = line.strip()
        if s.startswith("#include"):
            out.append(s.split(None, 1)[1].strip('<>"'))
    return out


@pytest.mark.skipif(not CORE_HEADERS.is_dir(), reason="run from a source checkout")
def test_cpp_core_knows_nothing_of_python_and_has_no_include_cycle():
    headers = {h.name: _includes(h) for h in sorted(CORE_HEADERS.glob("*.hpp"))}
    assert {"cost.hpp", "network.hpp", "envelope.hpp", "plan.hpp"} <= set(headers)
    for name, incs in headers.items():
        bad = [i for i in incs if "Python" in i or "pybind11" in i or "structmember" in i]
        assert not bad, f"{name} includes {bad}: the core is Python-free"
    deps = {
        name: [i.removeprefix("cic/") for i in incs if i.startswith("cic/")]
        for name, incs in headers.items()
    }
    # Depth-first search for a back edge: an include cycle.
    state: dict[str, int] = {}

    def visit(h: str, path: list[str]) -> None:
        state[h] = 1
        for d in deps.get(h, []):
            assert d in headers, f"{h} includes a missing header {d}"
            assert state.get(d) != 1, "include cycle: " + " -> ".join([*path, h, d])
            if d not in state:
                visit(d, [*path, h])
        state[h] = 2

    for h in headers:
        if h not in state:
            visit(h, [])
    # One place prices: only cost.hpp defines the latency sum.
    pricing = [
        name
        for name in headers
        if "latency_s = " in (CORE_HEADERS / name).read_text() and name != "cost.hpp"
    ]
    assert not pricing, f"latency assembled outside cost.hpp: {pricing}"
