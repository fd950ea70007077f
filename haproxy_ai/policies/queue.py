"""A bounded priority wait queue for admission control: who gets the next free slot.

The queue knows nothing about capacity. The admission stage calls ``wake_one`` when a slot
frees up, and a waiter whose ``wait`` returns takes the slot itself.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable

__all__ = ["PRIORITIES", "PriorityWaitQueue", "QueueTimeout", "Shed"]

PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}  # lower number = served first

_NAMES = {number: name for name, number in PRIORITIES.items()}

# Rebuild the heaps when dead entries (woken, timed out, cancelled, shed) outnumber live ones
# by this much, so a queue that is rarely woken does not grow without bound.
_COMPACT_SLACK = 64


class Shed(Exception):
    """The request was dropped from (or refused by) a full queue."""

    priority: str

    def __init__(self, priority: str) -> None:
        super().__init__(f"{priority}-priority request shed: the wait queue is full")
        self.priority = priority


class QueueTimeout(Exception):
    """The request waited ``timeout`` seconds without getting a turn."""


# (priority, deadline, seq, future). seq is unique, so tuple comparison never reaches the
# future (which does not support ordering).
_Entry = tuple[int, float, int, "asyncio.Future[None]"]
# The same entry keyed for a min-heap that pops the *worst* entry first.
_WorstKey = tuple[int, float, int, _Entry]


class PriorityWaitQueue:
    """Requests waiting for capacity, served by priority, then earliest deadline, then arrival.

    Bounded: when a newcomer finds it full, the worst entry (lowest priority, then latest
    deadline, then newest) is shed — which may be the newcomer itself.

    Two heaps with lazy deletion: a best-first heap for ``wake_one`` and a worst-first heap for
    eviction. An entry is live while its future is pending; dead entries are dropped when they
    reach a heap's top or when the heaps are compacted. Every operation is O(log n) amortised.
    Single event loop only (not thread-safe), like the rest of asyncio.
    """

    __slots__ = ("_best", "_by_priority", "_live", "_max_size", "_seq", "_worst", "on_unclaimed")

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        self._max_size = max_size
        self._best: list[_Entry] = []
        self._worst: list[_WorstKey] = []
        self._live = 0
        self._by_priority: dict[int, int] = {}
        self._seq = 0
        # Called when a turn handed out by wake_one() comes back unused (its waiter was cancelled
        # before resuming) and nobody else waits: a caller that reserved capacity for the turn
        # takes the reservation back here.
        self.on_unclaimed: Callable[[], None] | None = None

    @property
    def depth(self) -> int:
        """Requests waiting now (woken, timed-out, cancelled and shed ones excluded)."""
        return self._live

    def depth_by_priority(self) -> dict[int, int]:
        """Waiting requests per priority number: every priority in ``PRIORITIES`` (zeros
        included, so gauges fall back to 0) plus any other number that has waiters. A copy."""
        depths = dict.fromkeys(PRIORITIES.values(), 0)
        depths.update((priority, count) for priority, count in self._by_priority.items() if count)
        return depths

    # The timeout is a parameter (not the caller's asyncio.timeout) because expiring inside the
    # queue is what keeps a timeout from racing a wake_one() and losing the turn.
    async def wait(self, priority: int, deadline: float, timeout: float) -> None:  # noqa: ASYNC109
        """Suspend until ``wake_one`` picks this waiter; returning means "take the free slot".

        ``priority`` is a ``PRIORITIES`` value; ``deadline`` is an absolute monotonic time
        used only to order waiters of equal priority (``math.inf`` sorts last).

        Raises ``Shed`` when the queue is full and this is the worst entry, at once, or when a
        better newcomer evicts it later (``max_size`` 0 refuses every call). Raises
        ``QueueTimeout`` after ``timeout`` seconds without a turn. Either way, and on
        cancellation, the entry is gone from the queue when this returns or raises. If the
        task is cancelled just after being woken, the turn is passed to the next waiter
        rather than lost.
        """
        if self._live >= self._max_size:
            self._shed_for(priority, deadline)  # raises Shed if the newcomer is the worst
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        seq = self._seq
        self._seq += 1
        entry: _Entry = (priority, deadline, seq, future)
        heapq.heappush(self._best, entry)
        heapq.heappush(self._worst, (-priority, -deadline, -seq, entry))
        self._live += 1
        self._by_priority[priority] = self._by_priority.get(priority, 0) + 1
        self._maybe_compact()
        # A timer that fails the future rather than asyncio.wait_for: a timeout that cancels
        # the task could race a wake_one() and lose the turn; this way the future has exactly
        # one outcome, decided on the loop thread.
        timer = loop.call_later(timeout, self._expire, entry) if math.isfinite(timeout) else None
        try:
            await future
        except asyncio.CancelledError:
            if not future.done():  # defensive: the task is normally cancelled through the future
                future.cancel()
            if future.cancelled():
                self._forget(entry)
            elif future.exception() is None:
                # Woken, then cancelled before it could resume: hand the turn on, or the slot
                # the caller freed would sit idle while others wait.
                if not self.wake_one() and self.on_unclaimed is not None:
                    self.on_unclaimed()
            # else: shed or timed out already (and counted then); the cancellation wins.
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def wake_one(self) -> bool:
        """Hand a turn to the best waiter. True if one was woken; False when nobody waits.

        Synchronous and O(log n) amortised. Entries already resolved (timed out, cancelled,
        shed) are skipped, so they never swallow a turn.
        """
        while self._best:
            entry = heapq.heappop(self._best)
            future = entry[3]
            if future.done():
                continue
            future.set_result(None)
            self._forget(entry)
            return True
        return False

    def _shed_for(self, priority: int, deadline: float) -> None:
        """Make room for a newcomer in a full queue, or raise ``Shed`` if it is the worst."""
        worst = self._peek_worst()
        # The newcomer is newest, so on equal priority and deadline it is the one shed.
        if worst is None or (priority, deadline) >= (worst[0], worst[1]):
            raise Shed(_NAMES.get(priority, str(priority)))
        heapq.heappop(self._worst)
        worst[3].set_exception(Shed(_NAMES.get(worst[0], str(worst[0]))))
        self._forget(worst)

    def _peek_worst(self) -> _Entry | None:
        while self._worst:
            entry = self._worst[0][3]
            if not entry[3].done():
                return entry
            heapq.heappop(self._worst)
        return None

    def _expire(self, entry: _Entry) -> None:
        future = entry[3]
        if not future.done():
            future.set_exception(QueueTimeout(f"no turn within the queue timeout (priority {entry[0]})"))
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        """Uncount an entry whose future was just resolved; call exactly once per entry."""
        self._live -= 1
        self._by_priority[entry[0]] -= 1

    def _maybe_compact(self) -> None:
        if len(self._best) + len(self._worst) <= 4 * self._live + _COMPACT_SLACK:
            return
        self._best = [entry for entry in self._best if not entry[3].done()]
        heapq.heapify(self._best)
        self._worst = [key for key in self._worst if not key[3][3].done()]
        heapq.heapify(self._worst)
