"""Power of two choices over in-flight requests and peak-EWMA latency (the default)."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from ..backends import Backend

__all__ = ["PeakEwmaP2C"]


class PeakEwmaP2C:
    """Draw two distinct candidates with probability proportional to weight, then keep the
    first unless the second is clearly less loaded.

    Load cost is ``ewma_ttfb * (inflight + 1)`` (linkerd/Finagle). Because the first draw is
    already weight-proportional and wins whenever the two costs are within ``cost_tolerance``
    of each other, traffic follows the weights while replicas are equally loaded, and shifts
    away from a replica as soon as it queues or slows down. A backend with no latency sample
    yet borrows the other's, so only in-flight counts decide until both have been measured.
    """

    def __init__(self, *, cost_tolerance: float = 0.2) -> None:
        self._keep_first = 1.0 + cost_tolerance

    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        if exclude:
            pairs = [(b, w) for b, w in zip(candidates, weights, strict=True) if b not in exclude]
            candidates = [b for b, _ in pairs]
            weights = [w for _, w in pairs]
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        i = _weighted_draw(weights, rng, -1)
        j = _weighted_draw(weights, rng, i)
        first, second = candidates[i], candidates[j]
        a, b = first.stats, second.stats
        ewma_a = a.ewma if a.ewma is not None else b.ewma
        ewma_b = b.ewma if b.ewma is not None else a.ewma
        # A tiny floor keeps in-flight meaningful when latencies are ~0 or unknown.
        cost_a = ((ewma_a or 0.0) + 1e-4) * (a.inflight + 1)
        cost_b = ((ewma_b or 0.0) + 1e-4) * (b.inflight + 1)
        return first if cost_a <= cost_b * self._keep_first else second


def _weighted_draw(weights: Sequence[float], rng: random.Random, skip: int) -> int:
    total = 0.0
    for i, weight in enumerate(weights):
        if i != skip:
            total += weight
    point = rng.random() * total
    chosen = -1
    for i, weight in enumerate(weights):
        if i == skip:
            continue
        chosen = i
        point -= weight
        if point < 0:
            return i
    return chosen
