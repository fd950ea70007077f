from __future__ import annotations

import random

from ..backends import Backend, Registry
from ..balancers import Balancer
from ..context import RequestContext
from ..errors import NoBackendAvailable
from ..types import ProxyRequest, UpstreamResponse

__all__ = ["BackendHandler", "Balance"]

from collections.abc import Awaitable, Callable

BackendHandler = Callable[[ProxyRequest, RequestContext, Backend], Awaitable[UpstreamResponse]]


class Balance:
    """Pick a backend from the current snapshot (avoiding ones this request already tried, when
    another is left) and hand the request to ``next`` for that backend."""

    def __init__(self, next: BackendHandler, *, registry: Registry, balancer: Balancer, rng: random.Random) -> None:
        self._next = next
        self._registry = registry
        self._balancer = balancer
        self._rng = rng

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        snapshot = self._registry.snapshot()
        candidates, weights = snapshot.routable, snapshot.weights
        tried = ctx.tried if ctx.attempts else ()
        backend = self._balancer.pick(candidates, weights, tried, self._rng)
        if backend is None and tried:
            backend = self._balancer.pick(candidates, weights, (), self._rng)
        if backend is None:
            raise NoBackendAvailable(f"no routable backend ({len(snapshot.backends)} configured, none available)")
        return await self._next(request, ctx, backend)
