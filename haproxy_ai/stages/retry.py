from __future__ import annotations

import asyncio

from ..backends import Registry
from ..clock import Clock
from ..context import RequestContext
from ..errors import ProxyError
from ..metrics import Metrics
from ..outcome import classify_error, classify_status, retry_after_seconds
from ..policies import Budget, RetryPolicy
from ..types import Handler, ProxyRequest, UpstreamResponse

__all__ = ["Retry"]


class Retry:
    """Replays a failed attempt on another backend, under a budget.

    Runs only before anything reached the client: the stage returns response headers to the
    app, so a failure while streaming a body is never replayed (it is the app's to truncate).
    Each retry re-enters the stages below (hedge, balance), which avoid backends this request
    already tried. A response with a retryable status is returned as is when no retry is
    allowed, so the client sees the replica's own error rather than a made-up one.
    """

    def __init__(
        self,
        next: Handler,
        *,
        policy: RetryPolicy,
        budget: Budget,
        registry: Registry,
        clock: Clock,
        metrics: Metrics,
        max_wait: float = 60.0,
        pool: str = "default",
    ) -> None:
        self._pool = pool  # metrics label
        self._next = next
        self._max_wait = max_wait  # never hold a request longer than this for one Retry-After
        self._policy = policy
        self._budget = budget
        self._registry = registry
        self._clock = clock
        self._metrics = metrics

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        policy = self._policy
        self._budget.deposit()
        while True:
            response: UpstreamResponse | None = None
            error: ProxyError | None = None
            try:
                response = await self._next(request, ctx)
            except ProxyError as exc:
                error = exc
            if response is not None:
                status = response.status
                outcome = classify_status(status)
                if policy.condition(outcome, status) is None:
                    return response  # the common path: nothing to retry
                retry_after = (
                    retry_after_seconds(response.headers, self._clock.time()) if status in (429, 503) else None
                )
            else:
                assert error is not None
                status, outcome, retry_after = None, classify_error(error), None
            now = self._clock.monotonic()
            decision = policy.decide(
                outcome=outcome,
                status=status,
                attempts_made=len(ctx.attempts),
                method=request.method,
                opt_out=ctx.opt_out,
                replayable=True,  # bodies are buffered up to the cap; larger ones were refused with 413
                remaining=ctx.deadline - now,
                retry_after=retry_after,
                budget=self._budget,
            )
            delay = decision.delay
            if decision.retry and retry_after is not None and not self._untried_left(ctx):
                # Only backends already tried are left, and this one asked for a pause: wait it
                # out if the deadline (and max_wait) allows, else hand the client the replica's answer.
                if retry_after >= min(ctx.deadline - now, self._max_wait):
                    decision = decision.__class__(False, 0.0, "deadline")
                else:
                    delay = max(delay, retry_after)
            if not decision.retry:
                if decision.reason == "budget_exhausted":
                    self._metrics.retry_budget_exhausted.labels(self._pool).inc()
                if response is not None:
                    return response
                assert error is not None
                raise error
            self._metrics.retries.labels(self._pool, decision.reason).inc()
            if response is not None:
                await response.aclose(abandoned=True)
            if delay > 0:
                await asyncio.sleep(delay)

    def _untried_left(self, ctx: RequestContext) -> bool:
        return self._registry.snapshot().has_untried({a.backend for a in ctx.attempts})
