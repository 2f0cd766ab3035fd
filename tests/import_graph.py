"""The crux import graph, read statically from the source (ast), for the architecture tests.

Two views:
- `module_imports`: every crux module a module imports anywhere (top level or inside a function), leaving out
  `if TYPE_CHECKING:` blocks, which never run. The layer rule is checked on this.
- `command_closure`: the crux modules a CLI command can execute: its own module, everything imported at module
  level (transitively), and the lazy imports of the functions it reaches by name (a name-based call graph). The
  dvc.yaml deps test compares this with each stage's `deps`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crux"


def module_files() -> dict[str, Path]:
    """Dotted name → file, for every module of the crux package (Alembic revision scripts left out)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "versions" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def module_path(name: str) -> str:
    """The repository path of a module, as dvc.yaml writes it."""
    return module_files()[name].relative_to(ROOT).as_posix()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(nodes: Iterable[ast.AST], *, into_defs: bool) -> Iterator[ast.AST]:
    """Nodes that run, skipping `if TYPE_CHECKING:` bodies (and function/class bodies unless `into_defs`)."""
    stack = list(nodes)[::-1]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(reversed(node.orelse))
            continue
        if not into_defs and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


@dataclass
class Module:
    name: str
    tree: ast.Module
    top_imports: set[str] = field(default_factory=set)  # crux modules imported at module level
    all_imports: set[str] = field(default_factory=set)  # ... anywhere at run time
    bindings: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name → (module, attribute)
    defs: dict[str, ast.AST] = field(default_factory=dict)  # top-level functions and classes


def _resolve(module: str, names: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """(bound name, module, attribute) for `from module import a, b`: an attribute that is a submodule becomes one."""
    known = module_files()
    for alias in names:
        sub = f"{module}.{alias}"
        if sub in known:
            yield alias, sub, None
        else:
            yield alias, module, alias


def _imports_in(nodes: Iterable[ast.AST]) -> Iterator[tuple[str, str, str | None]]:
    """(bound name, crux module, attribute or None) of every import among `nodes`."""
    known = module_files()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "crux":
            yield from _resolve(node.module, [a.asname or a.name for a in node.names if a.name != "*"])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "crux" and alias.name in known:
                    yield (alias.asname or alias.name.split(".")[0]), alias.name, None


def _parents(name: str) -> list[str]:
    """Importing crux.a.b runs crux/__init__ and crux/a/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def load(name: str) -> Module:
    tree = ast.parse(module_files()[name].read_text(encoding="utf-8"))
    mod = Module(name, tree)
    for bound, target, attr in _imports_in(_walk_runtime(tree.body, into_defs=False)):
        mod.top_imports.add(target)
        mod.bindings[bound] = (target, attr)
    mod.all_imports = {t for _, t, _ in _imports_in(_walk_runtime(tree.body, into_defs=True))}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.defs[node.name] = node
    return mod


def module_imports() -> dict[str, set[str]]:
    return {name: load(name).all_imports - {name} for name in module_files()}


def command_closure(module: str, function: str) -> set[str]:
    """The crux modules `module.function` (a CLI command) can run."""
    modules: set[str] = set()
    functions: set[tuple[str, str]] = set()

    def visit_module(name: str) -> None:
        if name in modules:
            return
        modules.add(name)
        for parent in _parents(name):
            visit_module(parent)
        mod = load(name)
        for target in mod.top_imports:
            visit_module(target)
        # Module-level statements (registries, decorators, defaults) reach functions by name.
        for node in mod.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                targets = [*node.decorator_list, *getattr(node, "bases", [])]
                for target in targets:
                    visit_names(name, {}, ast.walk(target))
            else:
                visit_names(name, {}, _walk_runtime([node], into_defs=False))

    def visit_names(name: str, local: dict[str, tuple[str, str | None]], nodes: Iterable[ast.AST]) -> None:
        mod = load(name)
        scope = {**mod.bindings, **local}
        for node in nodes:
            if isinstance(node, ast.Name):
                if node.id in scope:
                    target, attr = scope[node.id]
                    visit_module(target)
                    if attr:
                        visit_function(target, attr)
                elif node.id in mod.defs:
                    visit_function(name, node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in scope:
                target, attr = scope[node.value.id]
                if attr is None:  # `module.function`
                    visit_function(target, node.attr)

    def visit_function(name: str, function_name: str) -> None:
        if (name, function_name) in functions:
            return
        known = module_files()
        if f"{name}.{function_name}" in known:
            visit_module(f"{name}.{function_name}")
            return
        mod = load(name)
        node = mod.defs.get(function_name)
        functions.add((name, function_name))
        visit_module(name)
        if node is None:  # a re-exported name: follow the module's own binding
            if function_name in mod.bindings:
                target, attr = mod.bindings[function_name]
                visit_module(target)
                if attr:
                    visit_function(target, attr)
            return
        body = list(_walk_runtime([node], into_defs=True))
        local = {}
        for bound, target, attr in _imports_in(body):
            visit_module(target)
            local[bound] = (target, attr)
            if attr:
                visit_function(target, attr)
        visit_names(name, local, body)

    visit_function(module, function)
    return modules
