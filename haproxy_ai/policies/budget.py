"""Retry and hedge budgets: extra attempts are capped to a fraction of recent requests.

Without a budget, retries multiply load exactly when the fleet is failing (every request
becomes ``attempts`` requests), which turns a partial outage into a full one.
"""

from __future__ import annotations

import math

from ..clock import Clock
from ..settings import BudgetSettings

__all__ = ["Budget"]

# Float products such as 0.1 * 30 land a hair below the whole number they mean; without this
# slack a budget that should allow exactly one more spend would refuse it.
_EPSILON = 1e-9


class _WindowCounts:
    """A few counters summed over a sliding time window, in constant memory.

    Time is cut into ``buckets`` aligned buckets of ``window / buckets`` seconds. One extra
    bucket is kept so a bucket counts until *all* of it is older than ``window``: an event
    ages out between ``window`` and ``window + window / buckets`` seconds after it happened,
    never earlier. For budgets that errs toward fewer extra attempts, never more.

    Running totals are kept so reads are O(1); the ring is swept only when the clock has
    moved into a new bucket (amortised O(1), at most ``buckets + 1`` slots per sweep).
    """

    __slots__ = ("_bucket_len", "_head", "_slots", "_totals")

    def __init__(self, window: float, buckets: int, fields: int) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self._bucket_len = window / buckets
        self._slots = [[0] * fields for _ in range(buckets + 1)]
        self._totals = [0] * fields
        self._head: int | None = None  # index of the newest bucket seen; None before the first event

    def _roll(self, now: float) -> int:
        current = math.floor(now / self._bucket_len)
        head = self._head
        if head is None or current - head >= len(self._slots):
            # First use, or everything has aged out: start over without sweeping slot by slot.
            for slot in self._slots:
                slot[:] = [0] * len(slot)
            self._totals = [0] * len(self._totals)
            self._head = current
            return current
        if current <= head:  # same bucket (or a clock that did not move): nothing ages out
            return head
        size = len(self._slots)
        for index in range(head + 1, current + 1):
            slot = self._slots[index % size]
            for field, count in enumerate(slot):
                self._totals[field] -= count
                slot[field] = 0
        self._head = current
        return current

    def add(self, now: float, field: int, count: int = 1) -> None:
        head = self._roll(now)
        self._slots[head % len(self._slots)][field] += count
        self._totals[field] += count

    def totals(self, now: float) -> list[int]:
        """The counters over the window ending at ``now``; a copy the caller may keep."""
        self._roll(now)
        return list(self._totals)


_DEPOSITS = 0
_SPENT = 1


class Budget:
    """Sliding-window budget (Linkerd's retry budget): spends <= ratio x deposits in the last
    ``window`` seconds + min_per_second x window.

    One instance is shared by all requests of one kind (retries, or hedges). Call ``deposit``
    once per original request and ``try_spend`` once per extra attempt you are about to send.
    Both are O(1), synchronous, and never block or do I/O.

    Deposits and spends age out together (see ``_WindowCounts``: between ``window`` and
    ``window + window / buckets`` seconds after they happened), so the ratio holds over any
    window; ``min_per_second`` lets a quiet service still retry its rare failures.
    """

    __slots__ = ("_clock", "_counts", "_floor", "_ratio")

    def __init__(self, settings: BudgetSettings, clock: Clock, *, buckets: int = 10) -> None:
        self._clock = clock
        self._ratio = settings.ratio
        self._floor = settings.min_per_second * settings.window
        self._counts = _WindowCounts(settings.window, buckets, fields=2)

    def deposit(self) -> None:
        """Record one original request (not a retry or hedge: those would fund themselves)."""
        self._counts.add(self._clock.monotonic(), _DEPOSITS)

    def try_spend(self) -> bool:
        """Take one extra attempt from the budget.

        True means the attempt is allowed and has been counted. False means the budget is
        exhausted and nothing was recorded, so a refused caller costs the budget nothing.
        Call it only once the attempt is otherwise certain to be sent.
        """
        now = self._clock.monotonic()
        if self._available(now) + _EPSILON < 1.0:
            return False
        self._counts.add(now, _SPENT)
        return True

    def available(self) -> float:
        """How many extra attempts could be spent right now (fractional; for metrics and admin).

        ``try_spend`` succeeds exactly when this is at least 1 (give or take float rounding).
        Never negative.
        """
        return max(self._available(self._clock.monotonic()), 0.0)

    def _available(self, now: float) -> float:
        deposits, spent = self._counts.totals(now)
        return self._ratio * deposits + self._floor - spent
