"""Where a label came from: imported from a dataset, drawn by a person, a model pre-annotation accepted
unchanged, or one a person edited — and the mix of these per class.

Label Studio links an annotation made from a pre-annotation to it (`parent_prediction`); imported labels are
credited to a dedicated member account, the import identity, instead of the admin who ran the import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crux.kinds import LabelError, get_kind

if TYPE_CHECKING:
    from crux.data.manifest import ManifestItem

# The Label Studio account `crux import` credits imported labels to, so that a dataset tells labels taken over
# from elsewhere from labels a person drew or checked (provenance "imported"). No password: never a login.
IMPORT_IDENTITY = "import@crux.local"


def _comparable(kind_name: str, results: Any, width: int, height: int) -> Any:
    """What must be equal for an annotation to be its prediction unchanged: the labels (boxes to 0.01 px)."""
    if kind_name == "segment":  # masks: the regions' values as exported, without ids, scores and origins
        return sorted(
            repr(sorted((k, v) for k, v in (r.get("value") or {}).items())) for r in results if isinstance(r, Mapping)
        )
    labels = get_kind(kind_name).from_results(results, width, height)
    return sorted((lb.cls, tuple(round(v, 2) for v in lb.box.as_list()) if lb.box else ()) for lb in labels)


def _parent_id(annotation: Mapping[str, Any]) -> Any:
    parent = annotation.get("parent_prediction")
    return parent.get("id") if isinstance(parent, Mapping) else parent


def parent_prediction(annotation: Mapping[str, Any], predictions: Any) -> Mapping[str, Any] | None:
    """The pre-annotation an annotation was made from, when the export still holds it (the dataset keeps it so that
    `crux project restore` can put back the prediction and the link that tell "accepted" from "edited")."""
    parent = _parent_id(annotation)
    if parent is None:
        return None
    return next((p for p in predictions or () if isinstance(p, Mapping) and p.get("id") == parent), None)


def annotation_provenance(
    kind_name: str, annotation: Mapping[str, Any], annotator: str, predictions: Any, width: int, height: int
) -> str:
    """imported | human | accepted | edited (see crux.data.manifest.PROVENANCES).

    Label Studio links an annotation made from a pre-annotation to it (`parent_prediction`); one whose labels
    equal the prediction's was accepted unchanged, else a person edited it.
    """
    if annotator == IMPORT_IDENTITY:
        # Label Studio records who last saved an annotation (`updated_by`); an import leaves it empty, so an
        # imported label a person has since changed and saved is theirs to answer for: edited.
        return "imported" if annotation.get("updated_by") is None else "edited"
    if _parent_id(annotation) is None:
        return "human"
    prediction = parent_prediction(annotation, predictions)
    if prediction is None:  # deleted since, or exported by id only: a person submitted it, changed or not
        return "edited"
    try:
        same = _comparable(kind_name, annotation.get("result") or [], width, height) == _comparable(
            kind_name, prediction.get("result") or [], width, height
        )
    except (KeyError, TypeError, ValueError, LabelError, ZeroDivisionError, AttributeError, OverflowError):
        same = False
    return "accepted" if same else "edited"


def provenance_mix(items: Sequence[ManifestItem], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """class → provenance → images (an image counts for each of its classes; "unknown": older manifests)."""
    from crux.data.manifest import PROVENANCES

    mix = {cls: dict.fromkeys((*PROVENANCES, "unknown"), 0) for cls in classes}
    for item in items:
        for cls in item.classes or ("(no label)",):
            row = mix.setdefault(cls, dict.fromkeys((*PROVENANCES, "unknown"), 0))
            key = item.provenance or "unknown"
            row[key] = row.get(key, 0) + 1
    return mix


def mix_to_markdown(mix: Mapping[str, Mapping[str, int]]) -> str:
    """A per-class table of where labels came from; columns that are all zero are left out."""
    from crux.data.manifest import PROVENANCES

    columns = [p for p in (*PROVENANCES, "unknown") if any(row.get(p) for row in mix.values())]
    if not columns:
        return ""
    lines = ["| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for cls, row in mix.items():
        lines.append(f"| {cls} | " + " | ".join(str(row.get(p, 0)) for p in columns) + " |")
    return "\n".join(lines) + "\n"


def provenance_markdown(mix: Mapping[str, Mapping[str, int]]) -> str:
    """The mix as a titled Markdown section for `crux data diff` / `crux data check` ("" when empty)."""
    table = mix_to_markdown(mix)
    return f"\n### Where the labels came from (images per class)\n\n{table}" if table else ""
