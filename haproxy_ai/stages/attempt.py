from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable

from ..backends import Backend
from ..clock import Clock
from ..context import AttemptRecord, RequestContext
from ..errors import ProxyError
from ..metrics import Metrics
from ..outcome import Outcome, classify_error, classify_status, retry_after_seconds
from ..types import OutcomeSink, ProxyRequest, UpstreamResponse, content_length
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
        forward_deadline_header: str = "",
        on_first_byte: Callable[[float], None] | None = None,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._metrics = metrics
        self._sink = sink
        self._first_byte_timeout = first_byte
        self._idle = idle
        self._timeouts = AttemptTimeouts(first_byte, idle)
        self._stall = stall_timeout
        self._forward = forward_deadline_header
        self._on_first_byte = on_first_byte
        self._on_finish = on_finish

    async def __call__(self, request: ProxyRequest, ctx: RequestContext, backend: Backend) -> UpstreamResponse:
        clock = self._clock
        started = clock.monotonic()
        record = AttemptRecord(backend, started)
        ctx.attempts.append(record)
        timeouts = self._timeouts
        remaining = ctx.deadline - started
        if remaining < self._first_byte_timeout:
            # The request's deadline is split across attempts: this one may wait only for what is left.
            timeouts = AttemptTimeouts(max(remaining, 0.001), self._idle)
        if self._forward and remaining != math.inf:
            request = dataclasses.replace(request, headers=[*request.headers, (self._forward, f"{remaining:.3f}")])
        stats = backend.stats
        stats.start()
        try:
            response = await self._upstream.send(backend, request, timeouts)
        except BaseException as exc:
            stats.finish()
            if self._on_finish is not None:
                self._on_finish()
            record.ended = clock.monotonic()
            outcome = classify_error(exc) if isinstance(exc, ProxyError) else _cancelled(ctx)
            record.outcome = outcome
            self._metrics.attempt(backend, outcome, None, None)
            self._sink.record(backend, outcome)
            raise
        now = clock.monotonic()
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
        "attempt",
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
        self._last_chunk: float | None = 0.0
        self._stalled = False
        self.attempt: AttemptRecord | None = record
        self._stall_handle: asyncio.TimerHandle | None = None
        self.status = inner.status
        self.headers = inner.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        clock = self._clock
        stall = self._attempt._stall
        # Only open-ended bodies (streams: no Content-Length) are watched for stalls; a sized
        # body is bounded by the idle timeout and does not pay for a timer.
        if stall is not None and content_length(self.headers) is None:
            self._last_chunk = clock.monotonic()
            self._stall_handle = asyncio.get_running_loop().call_later(stall, self._check_stall)
        watching = self._stall_handle is not None
        try:
            async for chunk in self._inner.chunks():
                if self._first_byte is None:
                    self._first_byte = clock.monotonic() - self._record.started
                    if self._attempt._on_first_byte is not None:
                        self._attempt._on_first_byte(self._first_byte)
                if not watching:
                    yield chunk
                    continue
                # Silence is measured only while waiting on the replica: the time the client
                # takes to want the next chunk is not the replica stalling.
                self._last_chunk = None
                yield chunk
                self._last_chunk = clock.monotonic()
        except ProxyError as exc:
            self._error = exc
            raise
        finally:
            if self._stall_handle is not None:
                self._stall_handle.cancel()

    def _check_stall(self) -> None:
        stall = self._attempt._stall
        assert stall is not None
        if self._last_chunk is None:  # the client is busy with the last chunk: not a stall
            self._stall_handle = asyncio.get_running_loop().call_later(stall, self._check_stall)
            return
        silent = self._clock.monotonic() - self._last_chunk
        if silent >= stall:
            if not self._stalled:  # report each stalled attempt once
                self._stalled = True
                self._attempt._sink.stalled(self._record.backend)
            return
        self._stall_handle = asyncio.get_running_loop().call_later(stall - silent, self._check_stall)

    async def aclose(self, *, abandoned: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        record = self._record
        try:
            await self._inner.aclose(abandoned=abandoned)
        finally:
            if self._stall_handle is not None:
                self._stall_handle.cancel()
            record.backend.stats.finish()
            if self._attempt._on_finish is not None:
                self._attempt._on_finish()
            record.ended = self._clock.monotonic()
            if abandoned and self.status < 400:
                outcome = Outcome.CANCELLED  # lost a hedge race: says nothing about the backend
            elif self._error is not None:
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
            if not (self._stalled and outcome.is_failure):  # a stall was already reported for this attempt
                attempt._sink.record(record.backend, outcome, first_byte=self._first_byte, retry_after=retry_after)


def _cancelled(ctx: RequestContext) -> Outcome:
    """Why an attempt was cut short from above: the request deadline, the client leaving, or
    else the proxy itself (a hedge that lost the race)."""
    if ctx.deadline_hit:
        return Outcome.TOTAL_TIMEOUT
    return Outcome.CLIENT_GONE if ctx.client_gone else Outcome.CANCELLED
