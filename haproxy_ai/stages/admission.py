from __future__ import annotations

from collections.abc import AsyncIterator

from ..clock import Clock
from ..context import RequestContext
from ..metrics import Metrics
from ..policies import PriorityWaitQueue
from ..types import Handler, ProxyRequest, UpstreamResponse
from ._queueing import wait_for_capacity

__all__ = ["Admission"]


class Admission:
    """The global in-flight limit: past ``max_in_flight`` a request waits in a priority queue
    (high first, then earliest deadline) and is shed with 503 + Retry-After when the queue is
    full (lowest priority first) or its wait exceeds ``queue_timeout``.

    A request holds its slot until its response body is closed, since a streaming generation
    occupies capacity the whole time.
    """

    def __init__(
        self,
        next: Handler,
        *,
        max_in_flight: int,
        queue: PriorityWaitQueue,
        queue_timeout: float,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._next = next
        self._max = max_in_flight
        self._queue = queue
        self._timeout = queue_timeout
        self._clock = clock
        self._metrics = metrics
        self.in_flight = 0
        # Slots handed to woken waiters that have not resumed yet: counted as taken, so a new
        # arrival cannot slip in between the hand-over and the waiter running.
        self._reserved = 0
        queue.on_unclaimed = self._unclaimed

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        if self.in_flight + self._reserved >= self._max or self._queue.depth:
            await self._wait_turn(ctx)
            self._reserved -= 1  # the turn handed to us
        self.in_flight += 1
        try:
            response = await self._next(request, ctx)
        except BaseException:
            self._release()
            raise
        return _Admitted(response, self)

    async def _wait_turn(self, ctx: RequestContext) -> None:
        await wait_for_capacity(
            self._queue,
            ctx,
            patience=self._timeout,
            clock=self._clock,
            metrics=self._metrics,
            what=f"{self._max} requests in flight",
        )

    def _release(self) -> None:
        self.in_flight -= 1
        if self._queue.wake_one():
            self._reserved += 1

    def _unclaimed(self) -> None:
        self._reserved -= 1


class _Admitted:
    __slots__ = ("_admission", "_closed", "_inner", "attempt", "headers", "status")

    def __init__(self, inner: UpstreamResponse, admission: Admission) -> None:
        self._inner = inner
        self._admission = admission
        self._closed = False
        self.attempt = inner.attempt
        self.status = inner.status
        self.headers = inner.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._inner.chunks()

    async def aclose(self, *, abandoned: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._inner.aclose(abandoned=abandoned)
        finally:
            self._admission._release()
