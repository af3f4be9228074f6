"""The requests a load test sends: lines of a text file, in a seeded random order, a few texts per request."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    """Non-blank lines of ``path`` (UTF-8), at most ``limit``."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} has no non-blank lines")
    return lines[:limit] if limit else lines


class Workload:
    """An endless stream of requests (lists of texts) drawn from ``lines`` without replacement, then reshuffled."""

    def __init__(self, lines: list[str], texts_per_request: int = 1, seed: int = 0) -> None:
        if texts_per_request < 1:
            raise ValueError("texts_per_request must be >= 1")
        self.lines, self.texts_per_request = lines, texts_per_request
        self._rng = random.Random(seed)

    def __iter__(self) -> Iterator[list[str]]:
        while True:
            order = list(self.lines)
            self._rng.shuffle(order)
            for start in range(0, len(order) - self.texts_per_request + 1, self.texts_per_request):
                yield order[start : start + self.texts_per_request]

    def once(self) -> list[list[str]]:
        """Every line exactly once, in file order (for runs that must translate the same sentences as a baseline)."""
        n = self.texts_per_request
        return [self.lines[i : i + n] for i in range(0, len(self.lines), n)]
