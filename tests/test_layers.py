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


def test_lower_layers_import_no_model_driver_or_cli():
    """Backends, GRAPES and the optimizers know nothing of models, runs, studies or the CLI."""
    graph = module_graph()
    upper = {"grapes_hw.train", "grapes_hw.snu", "grapes_hw.cnn", "grapes_hw.sweep",
             "grapes_hw.report", "grapes_hw.cli", "grapes_hw.continual"}
    lower = [m for m in graph if m.startswith("grapes_hw.backends") or m in (
        "grapes_hw.grapes", "grapes_hw.optim", "grapes_hw.credit", "grapes_hw.network",
        "grapes_hw.runloop")]
    for m in lower:
        assert not graph[m] & upper, (m, graph[m] & upper)
