"""The house rules, checked on the source: layers import only downwards, no import circles, no two modules share a
name, the flows never import the CLI, and each dvc.yaml stage lists every crux module its command runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from import_graph import ROOT, command_closure, module_files, module_imports, module_path

# Bottom to top; a module may import from its own layer and the ones below. The flat vocabulary modules are shared
# by several stages; each stage of the loop is one package.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "vocabulary",
        (
            "crux",
            "crux.errors",
            "crux.geometry",
            "crux.postprocess",
            "crux.masks",
            "crux.evaluation",
            "crux.config",
            "crux.kinds",
            "crux.inference",
            "crux.verdict",
            # Pure drift math: the edge bins its scores and `crux export` records the reference with it.
            "crux.monitor.drift",
        ),
    ),
    # Datasets (manifest, provenance, agreement) are what labelling produces: the label stage writes and reviews them.
    ("data", ("crux.data",)),
    ("label", ("crux.label",)),
    ("train", ("crux.train",)),
    ("ship", ("crux.ship",)),
    ("edge", ("crux.edge",)),
    ("collect", ("crux.collect",)),
    # The drift monitor's checks: heartbeats and captures of the ingest DB against the production card.
    ("monitor", ("crux.monitor",)),
    ("loop", ("crux.loop",)),
    ("console", ("crux.console",)),
    ("settings", ("crux.settings",)),
    ("cli", ("crux.cli",)),
)

# CLI wiring and printing: they decide no output of a stage, so dvc.yaml need not list them.
NOT_DEPS = {"crux", "crux.cli", "crux.cli.root", "crux.cli.terminal", "crux.errors"}


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level >= 0, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return level


def test_every_module_has_a_layer() -> None:
    for module in module_files():
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in module_imports().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_there_are_no_import_circles() -> None:
    graph = module_imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt in NOT_PACKAGES_OF(node):
                continue
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def NOT_PACKAGES_OF(module: str) -> set[str]:
    """A package's __init__ importing its own submodules is not a circle (Python runs the __init__ first)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_two_modules_share_a_name() -> None:
    seen: dict[str, str] = {}
    clashes = []
    for module, path in module_files().items():
        if path.name == "__init__.py" or module.startswith("crux.cli."):
            continue  # the CLI modules are named after the stage packages they drive, on purpose
        leaf = module.rsplit(".", 1)[-1]
        if leaf in seen:
            clashes.append(f"{seen[leaf]} and {module}")
        seen[leaf] = module
    assert not clashes, clashes


def test_flows_never_import_the_cli() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "flows").glob("*.py")
        if "crux.cli" in path.read_text(encoding="utf-8").replace("crux.cli`", "")
    ]
    assert not offenders, offenders


def _stage_commands() -> list[tuple[str, str, list[str]]]:
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = []
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        words = " ".join(body["cmd"].split()).split()
        assert words[0] == "crux", f"dvc.yaml {name}: the stage should call the crux CLI"
        stages.append((name, words[1], list(body.get("deps", []))))
    return stages


def _command_function(command: str) -> tuple[str, str]:
    from crux.cli import app

    for info in app.registered_commands:
        if info.name == command and info.callback is not None:
            return info.callback.__module__, info.callback.__name__
    raise AssertionError(f"no top-level crux command {command!r}")


@pytest.mark.parametrize("stage", [s[0] for s in _stage_commands()])
def test_dvc_stage_deps_list_every_crux_module_its_command_runs(stage: str) -> None:
    name, command, deps = next(s for s in _stage_commands() if s[0] == stage)
    covered = [Path(d) for d in deps if d.startswith("crux")]
    needed = sorted(module_path(m) for m in command_closure(*_command_function(command)) if m not in NOT_DEPS)
    missing = [p for p in needed if not any(Path(p) == d or d in Path(p).parents for d in covered)]
    assert not missing, (
        f"dvc.yaml stage {name!r} (`crux {command}`) runs these modules but does not list them: {missing}"
    )
