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
