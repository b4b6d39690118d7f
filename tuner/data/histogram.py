"""Token lengths grouped into bins for a histogram (the Data tab's plot)."""

from __future__ import annotations

import math


def length_histogram(lengths: list[int], max_bins: int = 16) -> list[tuple[str, int]]:
    """(label, count) per bin of equal, round width covering 0..max(lengths); empty for no lengths."""
    if not lengths:
        return []
    top = max(lengths)
    raw = max(1.0, (top + 1) / max_bins)
    magnitude = 10 ** math.floor(math.log10(raw))
    width = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    width = int(max(1, width))
    counts = [0] * (top // width + 1)
    for length in lengths:
        counts[length // width] += 1
    digits = len(str(len(counts) * width - 1))
    # zero-padded, so that the labels sort as text in the order of the numbers (plots sort them as text)
    return [(f"{i * width:0{digits}d}–{(i + 1) * width - 1:0{digits}d}", count) for i, count in enumerate(counts)]
