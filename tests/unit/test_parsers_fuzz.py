"""Issue #14: outside input never escapes as a traceback. Each parser of outside data, fed arbitrary input, either
returns or raises its CruxError (naming the item); nothing else."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from crux.config import ConfigError, ProjectSpec, from_mapping
from crux.errors import CruxError
from crux.label.importer import read_predictions
from crux.label.sources.yolo_source import _yolo_labels
from crux.postprocess import ImageError, load_image
from crux.ship.releases import ReleaseError
from crux.ship.signing import generate_private_key
from crux.ship.verify import verify_release

SPEC = from_mapping(ProjectSpec, {"title": "t", "kind": "detect", "classes": {"a": "#000000", "b": "#ffffff"}}, "p")
KEY = generate_private_key()
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "0x1", "", "-", "0.5", "1", "0"]),
    st.integers(-3, 3).map(str),
)
YOLO_LINE = st.one_of(st.lists(NUMBER, min_size=0, max_size=7).map(" ".join), st.text(max_size=40))
FUZZ = settings(max_examples=150, deadline=None)


class OneFile:
    """The two calls `_yolo_labels` makes on an fsspec filesystem."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8", "surrogatepass")

    def exists(self, path: str) -> bool:
        return True

    def cat_file(self, path: str) -> bytes:
        return self.data


@FUZZ
@given(st.lists(YOLO_LINE, max_size=5))
@example(["1 0.0 0.5 2.2250738585072014e-308 2.2250738585072014e-308"])  # positive size, zero pixels (found)
def test_yolo_label_lines_give_boxes_inside_the_image_or_problems_naming_the_line(lines: list[str]) -> None:
    problems: list[str] = []
    labels = _yolo_labels(OneFile("\n".join(lines)), "labels/x.txt", ["a", "b"], 40, 30, problems=problems)
    for label in labels or ():
        box = label.box
        assert box is not None
        values = [box.x1, box.y1, box.x2, box.y2]
        assert all(v == v and abs(v) != float("inf") for v in values)  # finite: no NaN slips through
        assert -1 <= box.x1 < box.x2 <= 41 and -1 <= box.y1 < box.y2 <= 31
    assert all(p.startswith("labels/x.txt:") for p in problems)


RECORD_VALUE = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.integers()
)
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "image": RECORD_VALUE,
        "model_version": RECORD_VALUE,
        "score": RECORD_VALUE,
        "label": st.sampled_from(["a", "b", "zz"]),
        "boxes": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "label": st.sampled_from(["a", "b", "zz"]),
                    "xyxy": st.lists(RECORD_VALUE, max_size=5),
                    "score": RECORD_VALUE,
                },
            ),
            max_size=2,
        ),
    },
)


@FUZZ
@given(st.lists(st.one_of(RECORD.map(json.dumps), st.text(max_size=30)), max_size=4))
def test_predictions_files_give_finite_predictions_or_problems_naming_file_and_line(lines: list[str]) -> None:
    from crux.label.importer import ImportValidationError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preds.jsonl"
        path.write_text("\n".join(lines), errors="surrogatepass")
        try:
            predictions = read_predictions(path, SPEC)
        except ImportValidationError as exc:
            assert all(p.startswith(f"{path}:") for p in exc.problems)
            return
    for prediction in predictions.values():
        assert all(0.0 <= s <= 1.0 for s in (prediction.score, *prediction.label_scores))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_params_text_loads_or_is_a_config_error_naming_the_file(text: str) -> None:
    from crux.settings import load_context

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text, errors="surrogatepass")
        try:
            load_context(path)
        except ConfigError as exc:
            assert str(exc).startswith(str(path))


def _signed_pair(pointer_extra: dict[str, Any], manifest_extra: dict[str, Any]) -> tuple[bytes, bytes]:
    import hashlib

    from crux.ship.signing import canonical_json, sign

    manifest = canonical_json(sign({"line": "l", "version": 1, "files": {}, **manifest_extra}, KEY))
    pointer = {
        "format": "crux-pointer/1",
        "line": "l",
        "version": 1,
        "sequence": 1,
        "action": "publish",
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        **pointer_extra,
    }
    return canonical_json(sign(pointer, KEY)), manifest


IDENTITY = st.fixed_dictionaries(
    {},
    optional={
        "line": st.sampled_from(["l", "m", "", "l/.."]),
        "version": st.one_of(st.integers(0, 2), st.text(max_size=2)),
    },
)


@FUZZ
@given(IDENTITY, IDENTITY, st.binary(max_size=40), st.booleans())
def test_release_identity_accepts_only_the_expected_line_and_version(
    pointer_extra: dict[str, Any], manifest_extra: dict[str, Any], junk: bytes, corrupt: bool
) -> None:
    pointer, manifest = _signed_pair(pointer_extra, manifest_extra)
    if corrupt:
        pointer = pointer[: len(junk) % max(1, len(pointer))] + junk
    try:
        p, m = verify_release(pointer, manifest, [KEY.public_key()], "l")
    except ReleaseError:
        return
    assert p["line"] == m["line"] == "l"
    assert type(p["version"]) is type(m["version"]) is int and p["version"] == m["version"] >= 1


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_an_image_error(data: bytes) -> None:
    try:
        image = load_image(io.BytesIO(data), 1)
    except ImageError as exc:
        assert isinstance(exc, CruxError)
        return
    assert image.ndim == 3 and image.shape[2] == 1
