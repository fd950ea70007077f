from __future__ import annotations

from collections.abc import AsyncIterator

from ..backends import Backend
from ..clock import Clock
from ..context import AttemptRecord, RequestContext
from ..errors import ProxyError
from ..metrics import Metrics
from ..outcome import Outcome, classify_error, classify_status
from ..types import ProxyRequest, UpstreamResponse
from ..upstream import AttemptTimeouts, Upstream

__all__ = ["Attempt"]


class Attempt:
    """The innermost handler: one attempt to one backend.

    Brackets the backend's in-flight count from send until the response body is closed (a
    streaming generation occupies the replica the whole time), feeds time-to-headers into its
    peak-EWMA, and classifies the attempt once into an ``Outcome`` for metrics (and, later,
    retries and passive health).
    """

    def __init__(self, *, upstream: Upstream, clock: Clock, metrics: Metrics, first_byte: float, idle: float) -> None:
        self._upstream = upstream
        self._clock = clock
        self._metrics = metrics
        self._timeouts = AttemptTimeouts(first_byte, idle)

    async def __call__(self, request: ProxyRequest, ctx: RequestContext, backend: Backend) -> UpstreamResponse:
        clock = self._clock
        started = clock.monotonic()
        record = AttemptRecord(backend, started)
        ctx.attempts.append(record)
        stats = backend.stats
        stats.start()
        timeouts = self._timeouts
        try:
            response = await self._upstream.send(backend, request, timeouts)
        except BaseException as exc:
            stats.finish()
            now = clock.monotonic()
            ctx.upstream_wait += now - started
            record.ended = now
            record.outcome = classify_error(exc) if isinstance(exc, ProxyError) else _cancelled(ctx)
            self._metrics.attempt(backend, record.outcome, None)
            raise
        now = clock.monotonic()
        ctx.upstream_wait += now - started
        record.headers_at = now
        record.status = response.status
        stats.observe(now - started, now)
        return _TrackedResponse(response, record, ctx, self._metrics, clock)


class _TrackedResponse:
    """Wraps an upstream response so closing it settles the attempt exactly once."""

    __slots__ = ("_clock", "_closed", "_ctx", "_error", "_inner", "_metrics", "_record", "headers", "status")

    def __init__(
        self, inner: UpstreamResponse, record: AttemptRecord, ctx: RequestContext, metrics: Metrics, clock: Clock
    ) -> None:
        self._inner = inner
        self._ctx = ctx
        self._record = record
        self._metrics = metrics
        self._clock = clock
        self._closed = False
        self._error: ProxyError | None = None
        self.status = inner.status
        self.headers = inner.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner.chunks():
                yield chunk
        except ProxyError as exc:
            self._error = exc
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        record = self._record
        try:
            await self._inner.aclose()
        finally:
            record.backend.stats.finish()
            record.ended = self._clock.monotonic()
            if self._error is not None:
                record.outcome = classify_error(self._error)
            elif self._ctx.client_gone or self._ctx.deadline_hit:
                record.outcome = _cancelled(self._ctx)
            else:
                record.outcome = classify_status(self.status)
            assert record.headers_at is not None
            self._metrics.attempt(record.backend, record.outcome, record.headers_at - record.started)


def _cancelled(ctx: RequestContext) -> Outcome:
    """Why an attempt was cut short from above: the request deadline, else the client left."""
    return Outcome.TOTAL_TIMEOUT if ctx.deadline_hit else Outcome.CLIENT_GONE
