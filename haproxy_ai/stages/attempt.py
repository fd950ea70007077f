from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..backends import Backend
from ..clock import Clock
from ..context import AttemptRecord, RequestContext
from ..errors import ProxyError
from ..metrics import Metrics
from ..outcome import Outcome, classify_error, classify_status, retry_after_seconds
from ..types import OutcomeSink, ProxyRequest, UpstreamResponse
from ..upstream import AttemptTimeouts, Upstream

__all__ = ["Attempt"]


class Attempt:
    """The innermost handler: one attempt to one backend.

    Brackets the backend's in-flight count from send until the response body is closed (a
    streaming generation occupies the replica the whole time), feeds time-to-headers into its
    peak-EWMA, and classifies the attempt once into an ``Outcome`` that metrics and the
    passive health checker (``sink``) both consume.
    """

    def __init__(
        self,
        *,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        sink: OutcomeSink,
        first_byte: float,
        idle: float,
        stall_timeout: float | None,
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._metrics = metrics
        self._sink = sink
        self._timeouts = AttemptTimeouts(first_byte, idle)
        self._stall = stall_timeout

    async def __call__(self, request: ProxyRequest, ctx: RequestContext, backend: Backend) -> UpstreamResponse:
        clock = self._clock
        started = clock.monotonic()
        record = AttemptRecord(backend, started)
        ctx.attempts.append(record)
        stats = backend.stats
        stats.start()
        try:
            response = await self._upstream.send(backend, request, self._timeouts)
        except BaseException as exc:
            stats.finish()
            now = clock.monotonic()
            ctx.upstream_wait += now - started
            record.ended = now
            outcome = classify_error(exc) if isinstance(exc, ProxyError) else _cancelled(ctx)
            record.outcome = outcome
            self._metrics.attempt(backend, outcome, None, None)
            self._sink.record(backend, outcome)
            raise
        now = clock.monotonic()
        ctx.upstream_wait += now - started
        record.headers_at = now
        record.status = response.status
        stats.observe(now - started, now)
        return _TrackedResponse(response, record, ctx, self, clock)


class _TrackedResponse:
    """Wraps an upstream response so closing it settles the attempt exactly once, and watches
    the body for a stall (no bytes for ``stall_timeout``) with one re-armed timer."""

    __slots__ = (
        "_attempt",
        "_clock",
        "_closed",
        "_ctx",
        "_error",
        "_first_byte",
        "_inner",
        "_last_chunk",
        "_record",
        "_stall_handle",
        "_stalled",
        "headers",
        "status",
    )

    def __init__(
        self, inner: UpstreamResponse, record: AttemptRecord, ctx: RequestContext, attempt: Attempt, clock: Clock
    ) -> None:
        self._inner = inner
        self._record = record
        self._ctx = ctx
        self._attempt = attempt
        self._clock = clock
        self._closed = False
        self._error: ProxyError | None = None
        self._first_byte: float | None = None
        self._last_chunk = 0.0
        self._stalled = False
        self._stall_handle: asyncio.TimerHandle | None = None
        self.status = inner.status
        self.headers = inner.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        clock = self._clock
        stall = self._attempt._stall
        # Only open-ended bodies (streams: no Content-Length) are watched for stalls; a sized
        # body is bounded by the idle timeout and does not pay for a timer.
        if stall is not None and not _has_length(self.headers):
            self._last_chunk = clock.monotonic()
            self._stall_handle = asyncio.get_running_loop().call_later(stall, self._check_stall)
        try:
            async for chunk in self._inner.chunks():
                now = clock.monotonic()
                if self._first_byte is None:
                    self._first_byte = now - self._record.started
                self._last_chunk = now
                yield chunk
        except ProxyError as exc:
            self._error = exc
            raise
        finally:
            if self._stall_handle is not None:
                self._stall_handle.cancel()

    def _check_stall(self) -> None:
        stall = self._attempt._stall
        assert stall is not None
        silent = self._clock.monotonic() - self._last_chunk
        if silent >= stall:
            if not self._stalled:  # report each stalled attempt once
                self._stalled = True
                self._attempt._sink.stalled(self._record.backend)
            return
        self._stall_handle = asyncio.get_running_loop().call_later(stall - silent, self._check_stall)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        record = self._record
        try:
            await self._inner.aclose()
        finally:
            if self._stall_handle is not None:
                self._stall_handle.cancel()
            record.backend.stats.finish()
            record.ended = self._clock.monotonic()
            if self._error is not None:
                outcome = classify_error(self._error)
            elif self._ctx.client_gone or self._ctx.deadline_hit:
                outcome = _cancelled(self._ctx)
            else:
                outcome = classify_status(self.status)
            record.outcome = outcome
            attempt = self._attempt
            attempt._metrics.attempt(record.backend, outcome, self.status, self._first_byte)
            retry_after = None
            if self.status in (429, 503):
                retry_after = retry_after_seconds(self.headers, self._clock.time())
            attempt._sink.record(record.backend, outcome, first_byte=self._first_byte, retry_after=retry_after)


def _cancelled(ctx: RequestContext) -> Outcome:
    """Why an attempt was cut short from above: the request deadline, else the client left."""
    return Outcome.TOTAL_TIMEOUT if ctx.deadline_hit else Outcome.CLIENT_GONE


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(len(name) == 14 and name.lower() == b"content-length" for name, _ in headers)
