from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from ..backends import Backend, Registry
from ..balancers import Balancer
from ..clock import Clock
from ..context import RequestContext
from ..errors import NoBackendAvailable
from ..metrics import Metrics
from ..policies import PriorityWaitQueue
from ..types import ProxyRequest, UpstreamResponse
from ._queueing import wait_for_capacity

__all__ = ["BackendHandler", "Balance"]

BackendHandler = Callable[[ProxyRequest, RequestContext, Backend], Awaitable[UpstreamResponse]]


class Balance:
    """Pick a backend from the current snapshot, avoiding ones this request already tried when
    another is left, and hand the request to ``next`` for that backend.

    With ``max_per_backend`` (HAProxy's maxconn), backends at their limit are skipped; when all
    routable backends are full the request waits in a priority queue for a slot (``notify`` is
    called whenever an attempt ends) and is shed with 503 when the queue is full or too slow.
    """

    def __init__(
        self,
        next: BackendHandler,
        *,
        registry: Registry,
        balancer: Balancer,
        rng: random.Random,
        max_per_backend: int = 0,
        queue: PriorityWaitQueue | None = None,
        queue_timeout: float = 10.0,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        key_of: Callable[[ProxyRequest, RequestContext], bytes | None] | None = None,
    ) -> None:
        self._next = next
        self._key_of = key_of  # the affinity key, for a hash balancer
        self._registry = registry
        self._balancer = balancer
        self._rng = rng
        self._max = max_per_backend
        self._queue = queue
        self._queue_timeout = queue_timeout
        self._clock = clock
        self._metrics = metrics

    def notify(self) -> None:
        """An attempt ended somewhere: a waiting request may find a free slot now."""
        if self._queue is not None and self._queue.depth:
            self._queue.wake_one()

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        waited = False
        key = self._key_of(request, ctx) if self._key_of is not None else None
        while True:
            snapshot = self._registry.snapshot()
            candidates, weights = snapshot.routable, snapshot.weights
            if not candidates:
                raise NoBackendAvailable(f"no routable backend ({len(snapshot.backends)} configured, none available)")
            if self._max:
                if self._queue is not None and self._queue.depth and not waited and not ctx.attempts:
                    await self._wait(ctx)  # first come, first served: join the queue behind others
                    waited = True
                    continue
                limit = self._max
                free = [(b, w) for b, w in zip(candidates, weights, strict=True) if b.stats.inflight < limit]
                candidates, weights = tuple(b for b, _ in free), tuple(w for _, w in free)
            backend = self._pick(candidates, weights, ctx, key)
            if backend is not None:
                return await self._next(request, ctx, backend)
            await self._wait(ctx)  # every routable backend is at its limit
            waited = True

    def _pick(
        self, candidates: tuple[Backend, ...], weights: tuple[float, ...], ctx: RequestContext, key: bytes | None
    ) -> Backend | None:
        tried = ctx.tried if ctx.attempts else ()
        backend = self._balancer.pick(candidates, weights, tried, self._rng, key)
        if backend is None and tried:
            backend = self._balancer.pick(candidates, weights, (), self._rng, key)
        return backend

    async def _wait(self, ctx: RequestContext) -> None:
        assert self._queue is not None and self._clock is not None and self._metrics is not None
        await wait_for_capacity(
            self._queue,
            ctx,
            patience=self._queue_timeout,
            clock=self._clock,
            metrics=self._metrics,
            what=f"every backend at its limit of {self._max}",
        )
