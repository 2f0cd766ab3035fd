"""Issue #14: params.yaml problems are ConfigErrors naming the file (and the line for a syntax error)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crux.config import ConfigError
from crux.settings import PARAMS_SECTIONS, load_context

REPO = Path(__file__).resolve().parents[2]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 3\n  lr: [0.1\nedge:\n  remote: x\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:4:\d+: YAML syntax error") as exc:
        load_context(params)
    assert "<unicode string>" not in str(exc.value)


def test_empty_file_and_misspelled_section_are_refused(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: the params file is empty"):
        load_context(params)
    params.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=r"params\.yaml: unknown top-level section 'trian' \(did you mean 'train'\?\)"
    ):
        load_context(params)


def test_the_shipped_params_file_has_only_known_sections() -> None:
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert sections == set(PARAMS_SECTIONS)
    assert load_context(REPO / "params.yaml").section("train") is not None


# Issue #23, section 4: nothing in params.yaml or on the command line is accepted silently.
LINES = {"labelstudio": {"projects": {"neu-cls": {"title": "N", "kind": "classify", "classes": {"ok": "#000000"}}}}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"gate": {"lines": {"neu-clss": {"min": {"accuracy": 0.9}}}}}, r"gate\.lines\.neu-clss: line 'neu-clss'"),
        ({"pipeline": {"overrides": {"neucls": {"data": {"image_size": 64}}}}}, r"pipeline\.overrides\.neucls"),
        ({"pipeline": {"lines": ["neu-cls", "neu-det"]}}, r"pipeline\.lines: line 'neu-det'"),
    ],
    ids=["gate-lines", "overrides", "pipeline-lines"],
)
def test_line_keyed_entries_must_name_a_declared_line(tmp_path: Path, extra: dict, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**LINES, **extra}))
    with pytest.raises(ConfigError, match=message) as exc:
        load_context(params)
    assert "did you mean 'neu-cls'?" in str(exc.value) or "neu-det" in str(exc.value)


def test_line_option_must_name_a_declared_line() -> None:
    from crux.settings import params_for_line

    with pytest.raises(ConfigError, match=r"--line 'neu-clss' is not declared .*did you mean 'neu-cls'\?"):
        params_for_line(dict(LINES), "neu-clss")
    assert params_for_line(dict(LINES), "neu-cls")["labelstudio"] == LINES["labelstudio"]


def test_an_empty_gate_needs_the_explicit_opt_out(tmp_path: Path) -> None:
    from crux.settings import gate_config

    params = tmp_path / "params.yaml"
    for empty in ("gate:\n", "gate: {}\n"):
        params.write_text(yaml.safe_dump(LINES) + empty)
        with pytest.raises(ConfigError, match=r"gate is empty, which drops every floor .*defaults_only: true"):
            load_context(params)
    params.write_text(yaml.safe_dump(LINES) + "gate: {defaults_only: true}\n")
    assert gate_config(load_context(params)).defaults_only
    params.write_text(yaml.safe_dump(LINES) + "gate: {defaults_only: true, min: {classify: {accuracy: 0.9}}}\n")
    with pytest.raises(ConfigError, match="contradicts"):
        gate_config(load_context(params))


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("gate", "gate: {tolerance: .nan}"),
        ("gate", "gate: {min: {classify: {accuracy: .nan}}}"),
        ("gate", "gate: {lines: {neu-cls: {max: {inspection.false_reject_rate: .inf}}}}"),
        ("dataset", "dataset: {health: {tiny_box_px: .nan}}"),
        ("data", "data: {split_ratios: [.nan, 0.5, 0.5]}"),
    ],
)
def test_nan_is_refused_in_every_numeric_param(tmp_path: Path, section: str, text: str) -> None:
    """crux.config.from_mapping is the one place floats are read: NaN (which passes every range check) is refused
    there, naming the key."""
    from crux.settings import dataset_config, gate_config
    from crux.train.recipe import load_pipeline_config

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(LINES) + text + "\n")
    ctx = load_context(params)
    read = {"gate": gate_config, "dataset": dataset_config, "data": lambda c: load_pipeline_config(c.params, ("data",))}
    with pytest.raises(ConfigError, match=r"is not a finite number"):
        read[section](ctx)
