from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crux.data.split import SplitError, assign_split, validate_ratios


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_ratios_are_validated() -> None:
    assert validate_ratios([0.7, 0.2, 0.1]) == (0.7, 0.2, 0.1)
    for bad in ([0.5, 0.5], [0.8, 0.3, -0.1], [0.5, 0.2, 0.2]):
        with pytest.raises(SplitError):
            validate_ratios(bad)


def test_split_proportions_follow_the_ratios() -> None:
    counts = Counter(assign_split(sha(n), (0.8, 0.1, 0.1)) for n in range(5000))
    assert 0.77 < counts["train"] / 5000 < 0.83
    assert 0.08 < counts["val"] / 5000 < 0.12
    assert 0.08 < counts["test"] / 5000 < 0.12


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=50, unique=True), st.lists(st.integers(0, 10**9)))
def test_adding_items_never_moves_an_existing_one(existing: list[int], added: list[int]) -> None:
    ratios = (0.7, 0.15, 0.15)
    before = {n: assign_split(sha(n), ratios) for n in existing}
    after = {n: assign_split(sha(n), ratios) for n in existing + added}
    assert all(after[n] == split for n, split in before.items())


def test_split_is_case_insensitive_and_depends_on_the_hash_only() -> None:
    h = sha(1)
    assert assign_split(h, (0.5, 0.25, 0.25)) == assign_split(h.upper(), (0.5, 0.25, 0.25))
    assert {assign_split(h, (1.0, 0.0, 0.0)), assign_split(h, (0.0, 0.0, 1.0))} == {"train", "test"}
