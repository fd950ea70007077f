from __future__ import annotations

from collections.abc import AsyncIterator

from ..clock import Clock
from ..context import RequestContext
from ..errors import Overloaded
from ..metrics import Metrics
from ..policies import PriorityWaitQueue, QueueTimeout, Shed
from ..types import Handler, ProxyRequest, UpstreamResponse

__all__ = ["Admission"]

_NAMES = ("high", "normal", "low")


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
        started = self._clock.monotonic()
        name = _NAMES[ctx.priority]
        try:
            await self._queue.wait(ctx.priority, ctx.deadline, min(self._timeout, max(ctx.deadline - started, 0.0)))
        except Shed:
            self._metrics.shed.labels(name, "queue_full").inc()
            raise Overloaded(f"overloaded: {name}-priority request shed (queue full)") from None
        except QueueTimeout:
            self._metrics.shed.labels(name, "queue_timeout").inc()
            raise Overloaded(f"overloaded: no capacity within {self._timeout:g}s") from None
        finally:
            self._metrics.queue_wait.observe(self._clock.monotonic() - started)

    def _release(self) -> None:
        self.in_flight -= 1
        if self._queue.wake_one():
            self._reserved += 1

    def _unclaimed(self) -> None:
        self._reserved -= 1


class _Admitted:
    __slots__ = ("_admission", "_closed", "_inner", "headers", "status")

    def __init__(self, inner: UpstreamResponse, admission: Admission) -> None:
        self._inner = inner
        self._admission = admission
        self._closed = False
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
