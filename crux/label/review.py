"""The review queue: the images of a dataset version most worth a second look, and a Label Studio view of them.

Two sources, low agreement first:

1. images two or more annotators labelled differently (item agreement below the project's threshold, from
   the manifest: crux.data.agreement);
2. suspected label errors: images whose given class a model, on images it did NOT train on, confidently
   contradicts — cleanlab's `find_label_issues` (confident learning) on out-of-sample predicted probabilities,
   ranked by cleanlab's self-confidence label quality (lowest first).

Out-of-sample probabilities come from K-fold cross-validation of a small scikit-learn model on image
features computed here (intensity, gradient-orientation and local-binary-pattern histograms: seconds on a
CPU, no weights to download), or from the production model (`--model`): then only its val/test images are
out-of-sample, and the train images are left out of the ranking.

Label Studio Community has no review workflow (Enterprise), so the queue becomes a Data Manager tab of the
project filtered to the queued task ids, which a reviewer opens with one link; a fix is a new annotation,
the latest one wins, and the next snapshot's diff lists the image as relabelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from crux.data.manifest import ManifestItem


class ReviewError(CruxError, ValueError):
    """The review queue cannot be built (too few images or classes, unreadable image, bad option)."""


VIEW_TITLE = "CRUX review queue"


@dataclass(frozen=True)
class QueueEntry:
    rank: int
    task_id: int
    sha256: str
    original_name: str
    reason: str  # "low agreement" | "suspected label error"
    given: str
    suggested: str | None  # the model's class, for suspected label errors
    quality: float  # 0..1, lower = more suspicious (agreement, or cleanlab's label quality)

    def to_json(self) -> dict[str, Any]:
        return {
            "given": self.given,
            "original_name": self.original_name,
            "quality": round(self.quality, 4),
            "rank": self.rank,
            "reason": self.reason,
            "sha256": self.sha256,
            "suggested": self.suggested,
            "task_id": self.task_id,
        }


# --------------------------------------------------------------------------------------------------
# Out-of-sample predicted probabilities


def image_features(path: Path) -> NDArray[Any]:
    """A fixed-length texture description of one image: what separates surface defects without a CNN."""
    import cv2
    import numpy as np

    from crux.postprocess import open_image

    with open_image(path, name=str(path)) as image:
        gray: NDArray[Any] = np.asarray(image.convert("L"), dtype=np.uint8)
    gray = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_AREA)
    f = gray.astype(np.float32) / 255.0
    feats = [np.histogram(f, bins=16, range=(0, 1))[0] / f.size, [f.mean(), f.std()]]
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    # Gradient-orientation histograms over a 4x4 grid of cells (HOG without block normalisation).
    for cy in range(4):
        for cx in range(4):
            cell = (slice(32 * cy, 32 * cy + 32), slice(32 * cx, 32 * cx + 32))
            hist = np.histogram(angle[cell], bins=8, range=(0, np.pi), weights=magnitude[cell])[0]
            feats.append(hist / (hist.sum() + 1e-6))
    feats.append([magnitude.mean(), magnitude.std()])
    # Local binary patterns (8 neighbours, radius 1) at two scales: the texture of crazing vs pitting vs scale.
    for scale in (1, 2):
        g = gray[::scale, ::scale].astype(np.int16)
        centre = g[1:-1, 1:-1]
        code = np.zeros_like(centre, dtype=np.uint8)
        shifts = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
        for bit, (dy, dx) in enumerate(shifts):
            neighbour = g[dy : dy + centre.shape[0], dx : dx + centre.shape[1]]
            code |= (neighbour >= centre).astype(np.uint8) << np.uint8(bit)
        feats.append(np.bincount(code.ravel(), minlength=256) / code.size)
    return np.concatenate([np.asarray(x, dtype=np.float32).ravel() for x in feats])


def cross_val_probabilities(
    features: NDArray[Any], labels: NDArray[Any], n_classes: int, folds: int = 5, seed: int = 0
) -> NDArray[Any]:
    """Out-of-sample class probabilities of every image: each fold is predicted by a model fit on the others."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    if len(present) < 2:
        raise ReviewError("suspected label errors need at least two classes with labelled images")
    folds = int(min(folds, present.min()))
    if folds < 2:
        raise ReviewError(
            "suspected label errors need at least 2 images of every labelled class for cross-validation; "
            f"counts per class: {counts.tolist()}"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")
    # Classes absent from the labels get no column from scikit-learn; put columns back in class order.
    full = np.zeros((len(labels), n_classes), dtype=np.float64)
    full[:, np.flatnonzero(counts > 0)] = probs
    return full


def label_issues(labels: NDArray[Any], pred_probs: NDArray[Any]) -> tuple[list[int], NDArray[Any]]:
    """cleanlab: indices of suspected label errors (most suspicious first) and every image's label quality."""
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    pred_probs = np.clip(pred_probs, 1e-6, 1.0)
    pred_probs = pred_probs / pred_probs.sum(axis=1, keepdims=True)
    issues = find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    return [int(i) for i in issues], quality


# --------------------------------------------------------------------------------------------------
# The queue


def _given_class(item: ManifestItem) -> str | None:
    if item.verdict is not None:
        return item.verdict
    classes = sorted({lb.cls for lb in item.labels})
    return classes[0] if len(classes) == 1 else None


def build_queue(
    items: Sequence[ManifestItem],
    classes: Sequence[str],
    *,
    threshold: float,
    probabilities: Callable[[list[ManifestItem], NDArray[Any]], tuple[NDArray[Any], NDArray[Any]]] | None,
    limit: int | None = None,
) -> list[QueueEntry]:
    """Low-agreement items (worst first), then cleanlab's suspected label errors (most suspicious first).

    `probabilities(items, labels)` returns (pred_probs, usable): out-of-sample class probabilities for the
    single-class items given, and a boolean mask of the rows that are out-of-sample. None: agreement only.
    """
    import numpy as np

    from crux.data.agreement import check_fraction

    threshold = check_fraction("threshold", threshold)
    if limit is not None and limit < 1:
        raise ReviewError(f"--top {limit}: give a positive number of queue entries")
    entries: list[QueueEntry] = []
    low = sorted(
        (i for i in items if i.agreement is not None and i.agreement < threshold),
        key=lambda i: (i.agreement, i.task_id),
    )
    for item in low:
        entries.append(
            QueueEntry(
                0,
                item.task_id,
                item.sha256,
                item.original_name,
                "low agreement",
                _given_class(item) or ",".join(item.classes),
                None,
                float(item.agreement or 0.0),
            )
        )
    if probabilities is not None:
        index = {c: i for i, c in enumerate(classes)}
        seen = {e.task_id for e in entries}
        candidates = [i for i in items if i.task_id not in seen and _given_class(i) in index and not i.conflicted]
        if candidates:
            labels = np.array([index[_given_class(i) or ""] for i in candidates], dtype=np.int64)
            pred_probs, usable = probabilities(candidates, labels)
            rows = np.flatnonzero(usable)
            if len(rows):
                issues, quality = label_issues(labels[rows], pred_probs[rows])
                for k in issues:
                    item = candidates[rows[k]]
                    entries.append(
                        QueueEntry(
                            0,
                            item.task_id,
                            item.sha256,
                            item.original_name,
                            "suspected label error",
                            classes[labels[rows[k]]],
                            classes[int(np.argmax(pred_probs[rows[k]]))],
                            float(quality[k]),
                        )
                    )
    entries = entries[:limit] if limit is not None else entries
    return [
        QueueEntry(n + 1, e.task_id, e.sha256, e.original_name, e.reason, e.given, e.suggested, e.quality)
        for n, e in enumerate(entries)
    ]


def cross_val_source(
    data_dir: Path, n_classes: int, folds: int = 5, seed: int = 0
) -> Callable[[list[ManifestItem], NDArray[Any]], tuple[NDArray[Any], NDArray[Any]]]:
    """Probabilities by K-fold cross-validation on image features: every image is out-of-sample."""
    import numpy as np

    def probabilities(items: list[ManifestItem], labels: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        try:
            features = np.stack([image_features(data_dir / item.image) for item in items])
        except OSError as exc:
            raise ReviewError(f"cannot read an image of {data_dir}: {exc} (dvc pull?)") from exc
        return cross_val_probabilities(features, labels, n_classes, folds, seed), np.ones(len(items), dtype=bool)

    return probabilities


def model_source(
    data_dir: Path, model: Any, classes: Sequence[str]
) -> Callable[[list[ManifestItem], NDArray[Any]], tuple[NDArray[Any], NDArray[Any]]]:
    """Probabilities of a (production) model; only its val/test images are out-of-sample, so only they rank."""
    import numpy as np

    if list(model.classes) != list(classes):
        raise ReviewError(f"the model's classes {list(model.classes)} are not the dataset's {list(classes)}")

    def probabilities(items: list[ManifestItem], labels: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        usable = np.array([item.split != "train" for item in items], dtype=bool)
        probs = np.zeros((len(items), len(classes)), dtype=np.float64)
        for row in np.flatnonzero(usable):
            result = model.predict_file(data_dir / items[row].image)
            if result.probs is None:
                raise ReviewError("the model gives no class probabilities (a classification model is needed)")
            probs[row] = result.probs
        return probs, usable

    return probabilities


# --------------------------------------------------------------------------------------------------
# Label Studio view


def publish_view(client: Any, project_id: int, task_ids: Sequence[int], title: str = VIEW_TITLE) -> int:
    """A Data Manager tab of the project showing exactly `task_ids` (replacing CRUX's previous queue tab)."""
    data = {
        "title": title,
        "filters": {
            "conjunction": "or",
            "items": [
                {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(t)} for t in task_ids
            ]
            # An empty queue shows nothing rather than every task.
            or [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": -1}],
        },
    }
    for view in client.views.list(project=project_id):
        if (view.data or {}).get("title") == title:
            client.views.update(id=view.id, project=project_id, data=data)
            return int(view.id)
    return int(client.views.create(project=project_id, data=data).id)


def view_url(public_url: str, project_id: int, view_id: int) -> str:
    return f"{public_url.rstrip('/')}/projects/{project_id}/data?tab={view_id}"


def queue_to_markdown(entries: Sequence[QueueEntry], link: str | None) -> str:
    lines = [f"## Review queue: {len(entries)} item(s)", ""]
    if link:
        lines += [f"Open in Label Studio: {link}", ""]
    lines += ["| # | task | image | why | given | model says | quality |", "|---:|---:|---|---|---|---|---:|"]
    for e in entries:
        lines.append(
            f"| {e.rank} | {e.task_id} | {e.original_name} | {e.reason} | {e.given} | {e.suggested or '—'} | "
            f"{e.quality:.3f} |"
        )
    return "\n".join(lines) + "\n"
