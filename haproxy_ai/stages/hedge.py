from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..backends import Registry
from ..clock import Clock
from ..context import RequestContext
from ..metrics import Metrics
from ..outcome import classify_status
from ..policies import BrownoutGuard, Budget, HedgeDelay, RetryPolicy
from ..types import Handler, ProxyRequest, UpstreamResponse

__all__ = ["Hedge"]


class Hedge:
    """If the first attempt has produced no body byte (for a stream: no first token) after the
    hedge delay, send the same request to another backend; the first usable answer wins and the
    others are cancelled, closing their connections so those replicas stop generating.

    Attempts race on the first body byte, not on headers: inference servers send stream headers
    at once and the first token much later. The winner is committed to (nothing reaches the
    client before this stage returns). A response with a retryable status is not "usable": the
    race goes on, and if every attempt fails the last answer or error goes to the retry stage.
    Hedges count as attempts and see the same tried-backends set as retries.
    """

    def __init__(
        self,
        next: Handler,
        *,
        methods: frozenset[str],
        max_hedges: int,
        delay: HedgeDelay,
        guard: BrownoutGuard,
        budget: Budget,
        retry_policy: RetryPolicy,
        registry: Registry,
        clock: Clock,
        metrics: Metrics,
        pool: str = "default",
    ) -> None:
        self._pool = pool  # metrics label
        self._next = next
        self._methods = methods
        self._max_hedges = max_hedges
        self._delay = delay
        self._guard = guard
        self._budget = budget
        self._retry_policy = retry_policy
        self._registry = registry
        self._clock = clock
        self._metrics = metrics

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        if ctx.opt_out or request.method not in self._methods:
            return await self._next(request, ctx)
        delay = self._delay.delay()
        first_race = not ctx.hedge_seen
        if first_race:  # once per request, not once per retry of it
            ctx.hedge_seen = True
            self._budget.deposit()
        if delay is None:  # not enough first-byte samples yet to know what "slow" is
            return await self._next(request, ctx)
        tasks = [asyncio.ensure_future(self._to_first_byte(request, ctx))]
        hedges_left = self._max_hedges
        winner: _Peeked | None = None
        fallback: _Peeked | None = None
        returned: _Peeked | None = None
        last_error: BaseException | None = None
        would_hedge: bool | None = None
        try:
            while winner is None:
                pending = [t for t in tasks if not t.done()]
                if not pending:
                    break  # every attempt answered or failed without a winner
                timeout = delay if hedges_left > 0 else None
                done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the delay passed without a first byte: hedge
                    if would_hedge is None:
                        would_hedge = True
                        if first_race:
                            self._guard.record(would_hedge=True)
                    if self._may_hedge(ctx):
                        hedges_left -= 1
                        self._metrics.hedges.labels(self._pool, "fired").inc()
                        tasks.append(asyncio.ensure_future(self._to_first_byte(request, ctx)))
                    else:
                        hedges_left = 0  # not for this request: just wait for what is in flight
                    continue
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        last_error = exc
                        continue
                    peeked = task.result()
                    if winner is None and self._usable(peeked.status):
                        winner = peeked
                        if task is not tasks[0]:
                            self._metrics.hedges.labels(self._pool, "won").inc()
                    elif fallback is None:
                        fallback = peeked
            if would_hedge is None and first_race:
                self._guard.record(would_hedge=False)
            returned = winner if winner is not None else fallback
            if returned is None:
                assert last_error is not None
                raise last_error
            return returned
        finally:
            # Everything not handed out is closed here, on every path (a cancellation included):
            # losers still waiting are cancelled (their connections close, so those replicas stop
            # generating) and answers that lost, or were superseded, are closed.
            losers = [t for t in tasks if not t.done()]
            for task in losers:
                task.cancel()
                self._metrics.hedges.labels(self._pool, "cancelled").inc()
            try:
                if losers:
                    await asyncio.wait(losers)  # raises nothing of theirs
            except asyncio.CancelledError:
                # We were cancelled while cleaning up: what we meant to return goes nowhere now.
                if returned is not None:
                    await returned.aclose(abandoned=True)
                raise
            finally:
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is None:
                        peeked = task.result()
                        if peeked is not returned:
                            await peeked.aclose(abandoned=True)

    def _usable(self, status: int) -> bool:
        return self._retry_policy.condition(classify_status(status), status) is None

    def _may_hedge(self, ctx: RequestContext, *, spend: bool = True) -> bool:
        if not self._registry.snapshot().has_untried({a.backend for a in ctx.attempts}):
            return False
        if not self._guard.allows():
            self._metrics.hedges.labels(self._pool, "brownout").inc()
            return False
        if spend and not self._budget.try_spend():
            self._metrics.hedges.labels(self._pool, "budget_exhausted").inc()
            return False
        return True

    async def _to_first_byte(self, request: ProxyRequest, ctx: RequestContext) -> _Peeked:
        response = await self._next(request, ctx)
        iterator = response.chunks().__aiter__()
        try:
            first = await anext(iterator, b"")
        except asyncio.CancelledError:
            # Cancelled by the race (not by the client or the deadline): a loser, not a failure.
            await response.aclose(abandoned=not (ctx.client_gone or ctx.deadline_hit))
            raise
        except BaseException:
            await response.aclose()
            raise
        return _Peeked(response, iterator, first)


class _Peeked:
    """A response whose first body chunk was already read (to decide the race)."""

    __slots__ = ("_first", "_inner", "_iterator", "attempt", "headers", "status")

    def __init__(self, inner: UpstreamResponse, iterator: AsyncIterator[bytes], first: bytes) -> None:
        self._inner = inner
        self._iterator = iterator
        self._first = first
        self.attempt = inner.attempt
        self.status = inner.status
        self.headers = inner.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
            async for chunk in self._iterator:
                yield chunk

    async def aclose(self, *, abandoned: bool = False) -> None:
        await self._inner.aclose(abandoned=abandoned)
