"""Stable train/val/test assignment from the image content hash.

The split of an image depends only on its own sha256 and the ratios, never on which other images
exist, so adding or removing items never moves an existing one: the test split stays a frozen
yardstick that all models are compared on. Duplicated images (same bytes under two tasks) land in
the same split, which keeps them from leaking between train and test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from crux.data.manifest import SPLITS
from crux.errors import CruxError

# A salt that versions the assignment rule: changing it would reshuffle every dataset.
_SALT = b"crux-split-v1:"


class SplitError(CruxError, ValueError):
    pass


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise SplitError(f"split ratios are (train, val, test), got {list(ratios)!r}")
    train, val, test = (float(r) for r in ratios)
    if min(train, val, test) < 0:
        raise SplitError(f"split ratios must not be negative, got {list(ratios)!r}")
    if abs(train + val + test - 1.0) > 1e-6:
        raise SplitError(f"split ratios must sum to 1, got {list(ratios)!r} (sum {train + val + test})")
    return (train, val, test)


def unit_interval(sha256: str) -> float:
    """A uniform number in [0, 1) derived from the image hash (salted so it is independent of the store path)."""
    digest = hashlib.sha256(_SALT + sha256.lower().encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(sha256: str, ratios: Sequence[float]) -> str:
    train, val, _ = validate_ratios(ratios)
    u = unit_interval(sha256)
    if u < train:
        return SPLITS[0]
    if u < train + val:
        return SPLITS[1]
    return SPLITS[2]
