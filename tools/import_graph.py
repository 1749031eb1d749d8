"""Print packprep's import graph and fail on a cycle, a private-name import or an upward import.

    python tools/import_graph.py            # the graph, one line per module, then the problems
    python tools/import_graph.py --check    # only the problems; exit 1 if there are any

Every import counts, function-local ones included: a cycle broken only by moving an
import into a function is still a knot in the design. Three rules (docs/architecture.md):

1. no cycle between modules;
2. no module imports another module's ``_private`` name (make it public where two need it);
3. a module imports only modules of its own layer or of lower layers (``LAYERS``, the one
   place the order is written down).

Lives outside the package: it reads the source with ``ast`` and is not part of the runtime.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "packprep"

# Bottom to top. A module may import modules of its own layer and of the layers before it.
# A name ending in "." is a package prefix: every module under it.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", ["version", "errors", "progress", "io", "children"]),
    ("pure stages: arrays in, arrays out; the strategy registry", ["stages."]),
    ("configs, validated against the registries", ["config", "recipe"]),
    ("tokenizers", ["tokenizers."]),
    ("files: raw input, WORK, outputs", ["json_text", "corpus", "store.", "formats.", "reader"]),
    ("engines: compute only", ["engines."]),
    ("pipeline: load, stage, save, cache", ["pipeline."]),
    ("reading a finished output", ["verify.", "inspect.", "torch"]),
    ("the public API and the CLI", ["__init__", "__main__", "convert", "options", "cli"]),
]


@dataclass
class Module:
    name: str  # dotted, without the "packprep." prefix; a package is "pkg.__init__"
    path: Path
    imports: dict[str, int] = field(default_factory=dict)  # module -> first line
    private: list[tuple[int, str]] = field(default_factory=list)  # (line, "module._name")


def module_name(path: Path) -> str:
    return path.relative_to(ROOT / PACKAGE).with_suffix("").as_posix().replace("/", ".")


def discover() -> dict[str, Module]:
    return {module_name(p): Module(module_name(p), p) for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(modules: dict[str, Module], dotted: str) -> str | None:
    """The module a dotted ``packprep...`` name refers to (a package: its __init__), or None."""
    if dotted == PACKAGE:
        return "__init__"
    if not dotted.startswith(PACKAGE + "."):
        return None
    name = dotted[len(PACKAGE) + 1 :]
    if name in modules:
        return name
    if f"{name}.__init__" in modules:
        return f"{name}.__init__"
    return None


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:-1])


def absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = [PACKAGE, *module.name.split(".")[:-1]]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan(modules: dict[str, Module]) -> None:
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = resolve(modules, alias.name)
                    if target:
                        module.imports.setdefault(target, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = absolute(module, node)
                target = resolve(modules, source)
                for alias in node.names:
                    sub = resolve(modules, f"{source}.{alias.name}")
                    if sub:  # `from packprep import pipeline`: the submodule itself
                        module.imports.setdefault(sub, node.lineno)
                        if alias.name.startswith("_") and package_of(sub) != package_of(module.name):
                            module.private.append((node.lineno, f"{source}.{alias.name}"))
                        continue
                    if target:
                        module.imports.setdefault(target, node.lineno)
                        private = alias.name.startswith("_") and not alias.name.startswith("__")
                        if private and target != module.name:
                            module.private.append((node.lineno, f"{source}.{alias.name}"))
        module.imports.pop(module.name, None)


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in modules[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in modules:
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(name: str) -> int | None:
    for rank, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or (member.endswith(".") and name.startswith(member)):
                return rank
            if member.endswith(".") and name == member + "__init__":
                return rank
    return None


def upward(modules: dict[str, Module]) -> list[str]:
    problems = []
    for module in modules.values():
        mine = layer_of(module.name)
        if mine is None:
            problems.append(f"{module.name}: in no layer; add it to LAYERS in tools/import_graph.py")
            continue
        for target, line in module.imports.items():
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{module.name}:{line} imports {target} ({LAYERS[theirs][0]}) from a lower layer ({LAYERS[mine][0]})"
                )
    return problems


def problems(modules: dict[str, Module]) -> list[str]:
    found = [f"cycle: {' <-> '.join(c)}" for c in cycles(modules)]
    found += [f"{m.name}:{line} imports the private name {name}" for m in modules.values() for line, name in m.private]
    found += upward(modules)
    return found


def graph() -> dict[str, Module]:
    modules = discover()
    scan(modules)
    return modules


def lines(modules: dict[str, Module]) -> Iterator[str]:
    for module in sorted(modules.values(), key=lambda m: (layer_of(m.name) or 0, m.name)):
        layer = layer_of(module.name)
        label = "?" if layer is None else str(layer)
        yield f"[{label}] {module.name} -> {', '.join(sorted(module.imports)) or '-'}"


def main(argv: list[str]) -> int:
    modules = graph()
    if "--check" not in argv:
        print("\n".join(lines(modules)))
    found = problems(modules)
    comps = cycles(modules)
    edges = sum(len(m.imports) for m in modules.values())
    private = sum(len(m.private) for m in modules.values())
    print(
        f"{len(modules)} modules, {edges} imports between them; {len(comps)} cycles over "
        f"{sum(map(len, comps))} modules, {private} private-name imports, {len(found) - len(comps) - private} upward imports",
        file=sys.stderr,
    )
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
