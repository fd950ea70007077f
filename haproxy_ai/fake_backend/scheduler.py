"""vLLM's scheduler in miniature: batch slots with a FIFO queue, and the prefix cache behind them.

A request that passed the fault stage asks for one of ``max_batch`` slots (0 = no limit) and
waits its turn; once it has one it is *running* until its response is written. The prefix cache
is consulted when a request is scheduled, not when it arrives, as in vLLM: a request that
queued behind an identical one finds its prefix already cached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from .cache import PrefixCache
from .options import FakeBackendOptions
from .stats import FakeStats

__all__ = ["Scheduler"]


class Scheduler:
    """Admits generations into the running batch and tracks what the KV cache holds.

    ``running`` and ``waiting`` mirror into ``stats`` on every change so tests can
    ``stats.wait_until`` on them. Use from the backend's event loop only.
    """

    def __init__(self, options: FakeBackendOptions, stats: FakeStats) -> None:
        self.cache = PrefixCache(options.prefix_block_chars, options.prefix_cache_chars)
        self._limit = options.max_batch
        self._stats = stats
        self.running = 0
        # Futures of queued requests, oldest first; a slot is handed to the head on release.
        self._queue: deque[asyncio.Future[None]] = deque()
        self._running_blocks = 0  # KV blocks held by running requests' prompts

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def kv_cache_usage(self) -> float:
        """Blocks held by running requests' prompts / capacity, capped at 1 — vLLM's
        ``1 - free / total``: prefix-cached blocks no running request holds are evictable, so
        they count as free, and a replica with a full but idle cache is not saturated."""
        capacity = self.cache.capacity
        if capacity == 0:
            return 1.0 if self._running_blocks else 0.0
        return min(1.0, self._running_blocks / capacity)

    @contextlib.asynccontextmanager
    async def generation(self, prompt_text: str) -> AsyncIterator[int]:
        """Hold a batch slot for the body of the ``async with``; yields the prompt's uncached
        characters, which prefill has to compute. Waits (FIFO) while the batch is full."""
        prompt = self.cache.split(prompt_text)
        await self._acquire()
        try:
            hits = self.cache.admit(prompt)
            self._stats._prefix_lookup(len(prompt.keys), hits)
            self._running_blocks += prompt.blocks
            try:
                yield self.cache.uncached_chars(prompt, hits)
            finally:
                self._running_blocks -= prompt.blocks
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._limit == 0 or (self.running < self._limit and not self._queue):
            self.running += 1
            self._changed()
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        self._changed()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a slot just as the client left: pass it on
            else:
                # _release may already have skipped and dropped our cancelled future.
                with contextlib.suppress(ValueError):
                    self._queue.remove(turn)
                self._changed()
            raise

    def _release(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight on: running is unchanged
                self._changed()
                return
        self.running -= 1
        self._changed()

    def _changed(self) -> None:
        self._stats._load(self.running, len(self._queue))
