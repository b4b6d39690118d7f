"""Seeded train/test split."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


def split_records(records: Sequence[T], test_ratio: float = 0.1, seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, test) after a seeded shuffle.

    test gets round(n * ratio) records, at least one when the ratio is above 0; train keeps at least one.
    """
    if not 0 <= test_ratio < 1:
        raise ValueError(f"test_ratio must be at least 0 and below 1, got {test_ratio}")
    if not records:
        raise ValueError("there are no records to split")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    test_size = round(len(shuffled) * test_ratio)
    if test_ratio > 0:
        test_size = max(test_size, 1)
    test_size = min(test_size, len(shuffled) - 1)
    return shuffled[test_size:], shuffled[:test_size]
