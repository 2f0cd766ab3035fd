"""Dataset health checks: what a reviewer or a training run should know before trusting a version.

Each finding has a severity: "error" (the dataset is wrong: missing image, impossible box, unknown class)
or "warning" (worth a look: duplicates, tiny boxes, rare classes, annotator conflicts). `crux data check`
exits 1 on errors only.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.config import HealthOptions
from crux.data.manifest import SPLITS, ClassesInfo, ManifestItem


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    code: str
    message: str
    task_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "severity": self.severity, "task_ids": list(self.task_ids)}


def inside(root: Path, rel: str) -> Path | None:
    """`root / rel` when it stays inside `root` after resolving `..` and symlinks, else None."""
    if not rel or os.path.isabs(rel):
        return None
    base = root.resolve()
    path = (base / rel).resolve()
    return path if path.is_relative_to(base) else None


def dhash(path: Path, size: int = 8) -> int:
    """Difference hash: 64 bits of "is this pixel brighter than its right neighbour" on a 9x8 thumbnail."""
    import numpy as np
    from PIL import Image

    from crux.postprocess import open_image

    with open_image(path) as img:
        small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def near_duplicate_pairs(hashes: dict[str, int], max_bits: int) -> list[tuple[str, str, int]]:
    """Pairs of distinct images whose hashes differ in at most `max_bits` bits (vectorised, chunked)."""
    import numpy as np

    keys = sorted(hashes)
    if len(keys) < 2:
        return []
    values = np.array([hashes[k] for k in keys], dtype=np.uint64)
    pairs = []
    popcount = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    chunk = 256 if popcount is not None else 32  # bounds memory at 10,000+ images
    for start in range(0, len(keys), chunk):
        block = values[start : start + chunk]
        xor = block[:, None] ^ values[None, :]
        if popcount is not None:
            dist = popcount(xor)
        else:
            dist = np.unpackbits(xor.view(np.uint8), axis=-1).reshape(len(block), len(keys), 64).sum(axis=-1)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c > i:
                pairs.append((keys[i], keys[c], int(dist[r, c])))
    return pairs


def check_dataset(
    root: Path,
    items: Sequence[ManifestItem],
    info: ClassesInfo,
    options: HealthOptions | None = None,
) -> list[Finding]:
    """All findings for the dataset folder `root` (images are looked up there), errors first."""
    opt = options or HealthOptions()
    findings: list[Finding] = []

    def add(severity: str, code: str, message: str, ids: Sequence[int]) -> None:
        if ids:
            findings.append(Finding(severity, code, message, tuple(sorted(set(ids)))))

    # Manifest paths are data, not trusted: one that leaves the dataset folder (`../../etc/passwd`, an absolute
    # path, a symlink out) is an error and is never opened, hashed or decoded below.
    escaping = [i.task_id for i in items if inside(root, i.image) is None or (i.mask and inside(root, i.mask) is None)]
    add("error", "path_outside_dataset", "image or mask path(s) leading outside the dataset folder", escaping)
    items = [i for i in items if i.task_id not in set(escaping)]

    missing = [i.task_id for i in items if not (root / i.image).is_file()]
    add("error", "missing_image", f"{len(missing)} image(s) missing from the store", missing)
    if opt.verify_hashes:  # what `prepare` refuses: an image whose bytes are not the ones the manifest vouches for
        from crux.data.store import sha256_file

        edited = [i.task_id for i in items if (root / i.image).is_file() and sha256_file(root / i.image) != i.sha256]
        add("error", "sha256_mismatch", "image(s) whose bytes do not match their sha256 (corrupt or edited)", edited)
    bad_split = [i.task_id for i in items if i.split not in SPLITS]
    add("error", "unknown_split", f"item(s) whose split is not one of {', '.join(SPLITS)}", bad_split)
    seen_ids: dict[int, int] = defaultdict(int)
    for item in items:
        seen_ids[item.task_id] += 1
    repeated = [t for t, n in seen_ids.items() if n > 1]
    add("error", "duplicate_item", "task id(s) listed more than once in the manifest", repeated)

    known = set(info.classes)
    unknown: dict[str, list[int]] = defaultdict(list)
    for item in items:
        for label in item.labels:
            if label.cls not in known:
                unknown[label.cls].append(item.task_id)
    for cls, ids in sorted(unknown.items()):
        add("error", "unknown_class", f"class {cls!r} is not in classes.json", ids)

    masked = _geometry(info.kind) == "mask" or any(i.mask is not None for i in items)
    if masked:
        findings.extend(_mask_findings(root, items, info, opt))

    degenerate, outside, tiny, multi, non_finite = [], [], [], [], []
    for item in items:
        boxes = [lb.box for lb in item.labels if lb.box is not None]
        if _geometry(info.kind) == "image" and len(item.classes) > 1:
            multi.append(item.task_id)
        for x1, y1, x2, y2 in boxes:
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):  # NaN passes every comparison below
                non_finite.append(item.task_id)
                continue
            if x2 <= x1 or y2 <= y1:
                degenerate.append(item.task_id)
                continue
            tol = opt.bounds_tolerance_px
            if x1 < -tol or y1 < -tol or x2 > item.width + tol or y2 > item.height + tol:
                outside.append(item.task_id)
            # Segmentation regions are judged by their pixels (specks), not by their boxes.
            if not masked and (x2 - x1 < opt.tiny_box_px or y2 - y1 < opt.tiny_box_px):
                tiny.append(item.task_id)
    add("error", "non_finite_box", "box(es) with NaN or infinite coordinates", non_finite)
    add("error", "degenerate_box", "box(es) with zero or negative width or height", degenerate)
    add("error", "box_out_of_bounds", "box(es) reaching outside the image", outside)
    add("warning", "tiny_box", f"box(es) smaller than {opt.tiny_box_px:g} px", tiny)
    add("error", "multiple_classes", "classification item(s) with more than one class", multi)

    empty = [i.task_id for i in items if not i.classes]
    if _geometry(info.kind) == "image":  # classify and anomaly: every item needs its whole-image class
        add("error", "empty_labels", f"{len(empty)} classification item(s) without a class", empty)
    elif masked:
        add("warning", "empty_labels", f"{len(empty)} image(s) without any region or verdict", empty)
    else:
        # A detection image without boxes is a valid negative, but often a forgotten one.
        add("warning", "empty_labels", f"{len(empty)} image(s) without any box", empty)

    conflicted = [i.task_id for i in items if i.conflicted]
    add("warning", "conflicted", f"{len(conflicted)} item(s) where annotators disagree", conflicted)

    per_class: dict[str, int] = dict.fromkeys(info.classes, 0)
    for item in items:
        for cls in item.classes:
            if cls in per_class:  # unknown classes are reported above
                per_class[cls] += 1
    for cls, n in per_class.items():
        if n < opt.min_class_count:
            findings.append(
                Finding("warning", "rare_class", f"class {cls!r} has {n} image(s), fewer than {opt.min_class_count}")
            )

    by_sha: dict[str, list[ManifestItem]] = defaultdict(list)
    for item in items:
        by_sha[item.sha256].append(item)
    for sha, group in sorted(by_sha.items()):
        if len(group) > 1:
            differ = len({tuple(sorted(i.labels)) for i in group}) > 1
            add(
                "warning",
                "exact_duplicate",
                f"the same image ({sha[:12]}) under {len(group)} tasks" + (" with different labels" if differ else ""),
                [i.task_id for i in group],
            )

    if opt.near_duplicates:
        present = {sha: root / g[0].image for sha, g in by_sha.items() if (root / g[0].image).is_file()}
        hashes = {}
        for sha, path in present.items():
            try:
                hashes[sha] = dhash(path)
            except (OSError, ValueError):  # ImageError too: unreadable or over the pixel limit
                findings.append(Finding("error", "corrupt_image", f"{path.name} does not decode", ()))
        for a, b, bits in near_duplicate_pairs(hashes, opt.near_duplicate_bits):
            ids = [i.task_id for i in by_sha[a]] + [i.task_id for i in by_sha[b]]
            add("warning", "near_duplicate", f"near-duplicate images ({bits} of 64 dHash bits differ)", ids)

    return sorted(findings, key=lambda f: (f.severity != "error", f.code, f.task_ids))


def _mask_findings(root: Path, items: Sequence[ManifestItem], info: ClassesInfo, opt: HealthOptions) -> list[Finding]:
    """Segmentation: each item's class mask exists, fits its image, names known classes and agrees with the
    verdict (NG items paint something, OK items nothing); connected regions below `speck_px` are flagged."""
    import numpy as np

    from crux.masks import MaskError, component_sizes, decode_png

    findings: list[Finding] = []
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    ok_index = info.classes.index(info.ok_class) + 1 if info.ok_class in info.classes else None
    for item in items:
        if item.mask is None:
            groups[("error", "missing_mask", "segment item(s) without a mask in the manifest")].append(item.task_id)
            continue
        path = root / item.mask
        try:
            mask = decode_png(path.read_bytes())
        except (OSError, MaskError) as exc:
            if isinstance(exc, FileNotFoundError):
                groups[("error", "missing_mask", "mask file(s) missing from the dataset")].append(item.task_id)
            else:
                groups[("error", "corrupt_mask", "mask file(s) that are not 8-bit class-mask PNGs")].append(
                    item.task_id
                )
            continue
        if mask.shape != (item.height, item.width):
            groups[("error", "mask_size", "mask(s) of another size than their image")].append(item.task_id)
            continue
        values = [int(v) for v in np.unique(mask) if v]
        if any(v > len(info.classes) for v in values):
            groups[("error", "unknown_class", "mask pixel value(s) that name no class in classes.json")].append(
                item.task_id
            )
        if ok_index is not None and ok_index in values:
            groups[("error", "ok_pixels", f"mask(s) painting the OK class {info.ok_class!r}")].append(item.task_id)
        painted = bool(values)
        if item.verdict is not None and info.ok_class is not None:
            if item.verdict != info.ok_class and not painted:
                groups[("warning", "ng_empty_mask", "NG item(s) whose mask marks no defect pixel")].append(item.task_id)
            if item.verdict == info.ok_class and painted:
                groups[("warning", "ok_with_mask", f"{info.ok_class} item(s) whose mask marks defect pixels")].append(
                    item.task_id
                )
        if painted and opt.speck_px > 0:
            for v in values:
                if any(size < opt.speck_px for size in component_sizes(mask == v)):
                    groups[("warning", "speck", f"mask region(s) smaller than {opt.speck_px} px")].append(item.task_id)
                    break
    for (severity, code, message), ids in sorted(groups.items()):
        findings.append(Finding(severity, code, message, tuple(sorted(set(ids)))))
    return findings


def _geometry(kind: str) -> str:
    from crux.kinds import KINDS

    return KINDS[kind].geometry if kind in KINDS else "image"


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def findings_to_text(findings: Sequence[Finding], max_ids: int = 20) -> str:
    if not findings:
        return "No findings.\n"
    lines = []
    for f in findings:
        ids = ""
        if f.task_ids:
            shown = ", ".join(str(t) for t in f.task_ids[:max_ids])
            more = f" … +{len(f.task_ids) - max_ids}" if len(f.task_ids) > max_ids else ""
            ids = f" [tasks {shown}{more}]"
        lines.append(f"{f.severity.upper():7} {f.code}: {f.message}{ids}")
    return "\n".join(lines) + "\n"
