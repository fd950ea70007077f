"""Exact counters of a fake replica's inference requests (the body of ``GET /_stats``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["FakeStats", "Outcome"]

# How one inference request ended; each is also the name of the FakeStats counter it bumps.
Outcome = Literal["completed", "errors", "cancelled", "resets"]


@dataclass(eq=False)
class FakeStats:
    """Live counters of inference requests (chat and completions only).

    ``requests`` counts arrivals; each then ends in exactly one of ``completed`` (whole response
    handed to the socket), ``errors`` (an error status was sent, including 400s for bad bodies),
    ``cancelled`` (the client went away, or ``stop()`` cut it off) or ``resets`` (a ``reset``
    fault aborted the connection). ``in_flight`` is a gauge and survives ``reset()``.

    The engine model (``Scheduler``) adds the gauges ``running`` (holding a batch slot) and
    ``waiting`` (queued for one), which also survive ``reset()``, and the counters
    ``prefix_cache_queries`` and ``prefix_cache_hits``, in blocks. Requests stopped by a fault
    before the engine never run and never query the cache.
    Mutate only from the backend's event loop.
    """

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    resets: int = 0
    in_flight: int = 0
    running: int = 0
    waiting: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, init=False, repr=False)

    def snapshot(self) -> dict[str, int]:
        """The request counters as a plain dict (the start of the ``GET /_stats`` body)."""
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "resets": self.resets,
            "in_flight": self.in_flight,
        }

    def engine_snapshot(self) -> dict[str, int]:
        """The engine model's gauges and counters; ``GET /_stats`` adds them after ``snapshot()``.

        Kept out of ``snapshot()`` so callers comparing the request counters as a whole dict
        keep working."""
        return {
            "running": self.running,
            "waiting": self.waiting,
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
        }

    def reset(self) -> None:
        """Zero the cumulative counters (not the gauges ``in_flight``, ``running`` and
        ``waiting``, which count live requests)."""
        self.requests = self.completed = self.cancelled = self.errors = self.resets = 0
        self.prefix_cache_queries = self.prefix_cache_hits = 0
        self._notify()

    async def wait_until(self, predicate: Callable[[FakeStats], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checking on every counter change.

        Never times out by itself: wrap it, e.g. ``async with asyncio.timeout(2): ...``.
        """
        loop = asyncio.get_running_loop()
        while not predicate(self):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _started(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self._notify()

    def _finished(self, outcome: Outcome) -> None:
        self.in_flight -= 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        self._notify()

    def _load(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting
        self._notify()

    def _prefix_lookup(self, queries: int, hits: int) -> None:
        self.prefix_cache_queries += queries
        self.prefix_cache_hits += hits
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
