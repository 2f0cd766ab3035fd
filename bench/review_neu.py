"""Benchmark: does the review queue find wrong labels? Flip 5% of NEU's labels at random, rank, count.

Copies NEU-DET's 1,440 images into a temporary folder as a classification dataset version (each image
labelled with its file name's defect class, as `make demo` does), flips the class of a random 5% of them to
another class (seeded), then runs the review ranking of `crux review` — K-fold cross-validated
probabilities from image features, cleanlab's `find_label_issues` — and reports precision and recall of the
flipped images in the queue and in the top 5% and 10% of the ranking (the queue, then the other images by
label quality). The shared data is only read. Prints the figures and writes bench/results/review_neu.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/review_neu.py [--neu ../shared/datasets/neu-det] [--flip 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "review_neu.json")
    args = parser.parse_args()

    import numpy as np

    from crux.data.manifest import ItemLabel, ManifestItem
    from crux.data.store import sha256_file
    from crux.label.review import build_queue, cross_val_source, label_issues

    classes = [line.strip() for line in (args.neu / "classes.txt").read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crux-review-bench-") as tmp:
        data = Path(tmp)
        items = []
        for n, src in enumerate(sorted((args.neu / "images").glob("*.jpg"))):
            cls = next(c for c in sorted(classes, key=len, reverse=True) if src.stem.startswith(c + "_"))
            rel = f"images/{src.name}"
            (data / "images").mkdir(exist_ok=True)
            shutil.copy(src, data / rel)  # a copy: the shared dataset is never written
            items.append(
                ManifestItem(sha256_file(data / rel), n + 1, rel, 200, 200, src.name, "train", (ItemLabel(cls),))
            )
        flipped = set(rng.sample(range(len(items)), round(args.flip * len(items))))
        for k in flipped:
            true = items[k].labels[0].cls
            wrong = rng.choice([c for c in classes if c != true])
            items[k] = ManifestItem(**{**items[k].__dict__, "labels": (ItemLabel(wrong),)})
        flipped_ids = {items[k].task_id for k in flipped}

        t0 = time.perf_counter()
        source = cross_val_source(data, len(classes), folds=args.folds, seed=args.seed)
        queue = build_queue(items, classes, threshold=1.0, probabilities=source)
        elapsed = time.perf_counter() - t0
        # The full ranking: the queue, then every other image by cleanlab's label quality (lowest first).
        labels = np.array([classes.index(i.labels[0].cls) for i in items])
        probs, _ = source(items, labels)
        _, quality = label_issues(labels, probs)
        accuracy = float((probs.argmax(axis=1) == labels).mean())
        in_queue = [e.task_id for e in queue]
        rest = [items[k].task_id for k in np.argsort(quality, kind="stable") if items[k].task_id not in set(in_queue)]
        ranking = in_queue + rest

    def at(ids: list[int]) -> dict[str, float | int]:
        hits = len(set(ids) & flipped_ids)
        return {
            "items": len(ids),
            "flipped_found": hits,
            "precision": round(hits / len(ids), 4) if ids else 0.0,
            "recall": round(hits / len(flipped_ids), 4),
        }

    result = {
        "dataset": "NEU-DET as classification (file-name classes)",
        "images": len(items),
        "flipped": len(flipped_ids),
        "flip_share": args.flip,
        "seed": args.seed,
        "folds": args.folds,
        "cv_accuracy_vs_noisy_labels": round(accuracy, 4),
        "queue": at(in_queue),
        "top_5pct": at(ranking[: round(0.05 * len(ranking))]),
        "top_10pct": at(ranking[: round(0.10 * len(ranking))]),
        "seconds": round(elapsed, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
