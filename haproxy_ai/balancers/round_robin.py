"""Smooth weighted round robin (nginx): exact weight proportions, interleaved, deterministic."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from weakref import WeakKeyDictionary

from ..backends import Backend

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """Each pick adds every candidate's weight to its running score, takes the highest, and
    subtracts the total from the winner. Over any window of sum(weights) picks each backend is
    chosen exactly ``weight`` times, and a heavy backend's turns are spread out, not bunched."""

    def __init__(self) -> None:
        self._current: WeakKeyDictionary[Backend, float] = WeakKeyDictionary()

    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        best: Backend | None = None
        best_score = 0.0
        total = 0.0
        current = self._current
        for backend, weight in zip(candidates, weights, strict=True):
            if exclude and backend in exclude:
                continue
            score = current.get(backend, 0.0) + weight
            current[backend] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = backend, score
        if best is not None:
            current[best] = best_score - total
        return best
