"""Hedging policy: when a slow first attempt earns a second one, and when hedging must stop.

Pure and synchronous: the hedge stage owns the racing, the cancelling and the metrics.
"""

from __future__ import annotations

import math

from ..clock import Clock
from ..settings import HedgeSettings
from .budget import _WindowCounts

__all__ = ["BrownoutGuard", "HedgeDelay"]


class HedgeDelay:
    """When to send a hedge: a fixed delay, or a percentile of recent time-to-first-byte samples.

    With ``delay: pNN`` a request hedges only when it is slower than NN% of recent requests,
    so the extra load stays near (100 - NN)% whatever the model's normal latency is.
    """

    __slots__ = (
        "_cached",
        "_clock",
        "_computed_at",
        "_fixed",
        "_min_delay",
        "_min_samples",
        "_next",
        "_percentile",
        "_refresh",
        "_samples",
        "_seen",
        "_size",
    )

    def __init__(self, settings: HedgeSettings, clock: Clock, *, size: int = 512, refresh: float = 1.0) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        kind, value = settings.delay
        self._clock = clock
        self._min_delay = settings.min_delay
        self._min_samples = settings.min_samples
        self._fixed: float | None = value if kind == "fixed" else None
        self._percentile = value
        self._refresh = refresh
        self._size = size
        self._samples: list[float] = []  # ring buffer: grows to `size`, then `_next` is the oldest
        self._next = 0
        self._seen = 0
        self._cached: float | None = None
        self._computed_at = -math.inf

    def observe(self, first_byte: float) -> None:
        """Record a finished attempt's time to first body byte (first token for streams), in seconds.

        O(1). Negative, NaN and infinite values are ignored: one bad sample must not pin the
        percentile. In fixed mode nothing is kept, as nothing would read it.
        """
        if self._fixed is not None or not 0.0 <= first_byte < math.inf:
            return
        self._seen += 1
        if len(self._samples) < self._size:
            self._samples.append(first_byte)
            return
        self._samples[self._next] = first_byte
        self._next = (self._next + 1) % self._size

    def delay(self) -> float | None:
        """Seconds to wait for a first byte before hedging; None means "do not hedge yet".

        Called on the hot path of every hedgeable request, so it is O(1) except for one
        O(size log size) recompute at most every ``refresh`` seconds of clock time; between
        recomputes it returns the cached value even if new samples arrived.
        Fixed mode: ``max(fixed, min_delay)``. Percentile mode: None until ``min_samples``
        samples were observed, then ``max(min_delay, pNN of the last size samples)``.
        """
        if self._fixed is not None:
            return max(self._fixed, self._min_delay)
        if self._seen < self._min_samples or not self._samples:
            return None
        now = self._clock.monotonic()
        if self._cached is None or now - self._computed_at >= self._refresh:
            self._cached = max(self._min_delay, _nearest_rank(sorted(self._samples), self._percentile))
            self._computed_at = now
        return self._cached


def _nearest_rank(ordered: list[float], percentile: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least ``percentile``% of the
    samples at or below it. Always a value that was actually observed."""
    rank = math.ceil(percentile / 100.0 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


_REQUESTS = 0
_WOULD_HEDGE = 1


class BrownoutGuard:
    """Stops hedging while most requests would hedge: a slow fleet must not get 2x load.

    Hedging helps when a few replicas are slow; when the whole fleet is slow, every request
    hedging only doubles the load on it. The window is time buckets, as in ``Budget``.
    """

    __slots__ = ("_clock", "_counts", "_min_requests", "_threshold")

    def __init__(self, settings: HedgeSettings, clock: Clock, *, window: float = 10.0, min_requests: int = 20) -> None:
        self._clock = clock
        self._threshold = settings.brownout_threshold
        self._min_requests = min_requests
        self._counts = _WindowCounts(window, 10, fields=2)

    def record(self, would_hedge: bool) -> None:
        """Record one request that was eligible for hedging: did its first byte take longer
        than the hedge delay? Record it whether or not a hedge was actually sent (the guard
        itself, or the budget, may have stopped it), or the guard could never switch back on.
        O(1)."""
        now = self._clock.monotonic()
        self._counts.add(now, _REQUESTS)
        if would_hedge:
            self._counts.add(now, _WOULD_HEDGE)

    def allows(self) -> bool:
        """Whether hedging is allowed now. False while, over the window, at least
        ``min_requests`` were recorded and the would-hedge fraction exceeds
        ``brownout_threshold``. O(1); no side effects beyond ageing old buckets."""
        requests, would_hedge = self._counts.totals(self._clock.monotonic())
        return requests < self._min_requests or would_hedge <= self._threshold * requests
