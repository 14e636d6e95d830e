"""The package's imports point one way: no module imports, directly or through others, a
module that imports it back (lazy imports inside functions count too; imports under
``if TYPE_CHECKING:`` are annotations only)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "grapes_hw"


def module_graph() -> dict[str, set[str]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, p in mods.items():
        tree = ast.parse(p.read_text())
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                skip.update(id(n) for b in node.body for n in ast.walk(b))
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                targets += subs
                if len(subs) < len(node.names):
                    targets.append(mod)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(module_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS = (
    ("errors", "_version"),                  # foundation: errors, the version
    ("config",),                             # typed-config machinery
    ("kernels",),                            # numba kernels (compiled on first call)
    ("functional", "data"),                  # pure functions, datasets
    ("backends", "torch"),                   # weight stores; GRAPES for torch modules
    ("models",),                             # networks whose layers hold backends
    ("rules",),                              # credit, optimizers, learners
    ("training",),                           # config, the one driver, builders, continual
    ("studies",),                            # sweeps, tuning, reports
    ("cli",),                                # the command line
)
"""The package's layers, bottom first: a module imports only from its own subpackage or
from a lower layer (the data flow: dataset -> model -> credit -> GRAPES -> optimizer ->
``backend.update``)."""


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package's __init__: lazy public names only
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS")


def test_every_module_is_in_a_layer_and_imports_point_down():
    graph = module_graph()
    wrong = []
    for m, targets in graph.items():
        rm = layer_of(m)
        for t in targets:
            rt = layer_of(t)
            if rm is None or rt is None or m.split(".")[1] == t.split(".")[1]:
                continue
            if rt >= rm:
                wrong.append(f"{m} -> {t}")
    assert not wrong, wrong


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("grapes_hw.backends.base") < layer_of("grapes_hw.training.driver")
    assert layer_of("grapes_hw.rules.learner") > layer_of("grapes_hw.models.mlp")
    assert layer_of("grapes_hw.cli.main") == len(LAYERS) - 1
