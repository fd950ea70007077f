"""The inference path: one chat or completions request through faults, latency and the answer.

Faults act on requests as they arrive, before the configured latency (``slow`` adds to it).
A request that gets past them is scheduled: it waits for a batch slot, then its time to first
token is the latency plus prefill of the prompt characters the prefix cache missed. Configured
errors (``error_rate``) are sent after that, like a replica that fails while working. Every
request ends in exactly one ``FakeStats`` outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import struct
import time

from aiohttp import web

from .faults import Fault, FaultSwitch
from .metrics import EngineMetrics
from .openai_format import BadRequest, Plan, error_response, full_body, plan_request, stream_events
from .options import FakeBackendOptions
from .scheduler import Scheduler
from .stats import FakeStats, Outcome

__all__ = ["InferenceHandler"]

# abort() drops whatever asyncio still buffers, so a stream-then-die reset first waits (at
# most this long) for the chunks it promised to reach the socket.
_FLUSH_TIMEOUT = 1.0


async def _abort(request: web.BaseRequest) -> None:
    """Reset the client's connection: flush what was written, then RST instead of FIN."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    # abort() discards asyncio's write buffer, which would eat the chunks a stream-then-die
    # reset promised. A zero high-water mark pauses the protocol while anything is buffered,
    # so drain() returns exactly when the buffer is empty.
    transport.set_write_buffer_limits(high=0)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_FLUSH_TIMEOUT):
            await request.writer.drain()
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST, so the peer sees "connection reset", not a clean EOF.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class InferenceHandler:
    """The aiohttp handlers for ``/v1/chat/completions`` and ``/v1/completions``.

    Owns the random number generator (seeded by ``options.seed``) and the response id counter;
    shares ``stats``, ``faults``, ``scheduler`` and ``engine`` with the ``FakeBackend`` that
    routes to it.
    """

    def __init__(
        self,
        options: FakeBackendOptions,
        stats: FakeStats,
        faults: FaultSwitch,
        scheduler: Scheduler,
        engine: EngineMetrics,
    ) -> None:
        self._options = options
        self._stats = stats
        self._faults = faults
        self._scheduler = scheduler
        self._engine = engine
        self._rng = random.Random(options.seed)
        self._ids = itertools.count(1)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def _handle(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self._stats._started()
        # Anything that escapes without an outcome is the client leaving (CancelledError from
        # handler_cancellation) or a write to a dead transport; both mean cancelled.
        outcome: Outcome = "cancelled"
        try:
            outcome, response = await self._serve(request, chat)
            if outcome == "errors" and not response.prepared:
                # Send it here rather than leave it to aiohttp, so a client that is already
                # gone is counted as cancelled, not as having received the error.
                await response.prepare(request)
                await response.write_eof()
            return response
        except ConnectionError:
            # aiohttp raises ClientConnectionResetError (a ConnectionResetError) when writing to
            # a closed transport. Returning a throwaway response lets aiohttp drop the
            # connection quietly instead of logging "Error handling request".
            return web.Response(status=499)
        except Exception:
            outcome = "errors"  # aiohttp answers 500
            raise
        finally:
            self._stats._finished(outcome)

    async def _serve(self, request: web.Request, chat: bool) -> tuple[Outcome, web.StreamResponse]:
        arrived = asyncio.get_running_loop().time()
        body = await request.read()
        # Draw every random number up front so a seeded run's sequence does not depend on
        # which faults or bodies came along.
        r_tail, r_jitter, r_error = self._rng.random(), self._rng.random(), self._rng.random()
        try:
            try:
                payload = json.loads(body)
            except ValueError:  # includes UnicodeDecodeError
                raise BadRequest("request body is not valid JSON", "invalid_json") from None
            plan = plan_request(payload, chat, self._options)
        except BadRequest as exc:
            return "errors", error_response(400, str(exc), code=exc.code)

        fault = self._faults.take()
        if fault.mode == "hang":
            # Never answer; the client's disconnect (or stop()) cancels us.
            await asyncio.get_running_loop().create_future()
        if fault.mode == "error":
            return "errors", error_response(fault.status, "injected fault: error")
        if fault.mode == "retry_after":
            seconds = f"{fault.seconds:g}"  # integral values print as "1", as HTTP expects
            return "errors", error_response(
                fault.status,
                "injected fault: retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": seconds},
            )
        if fault.mode == "reset" and fault.after_chunks == 0:
            await _abort(request)
            return "resets", web.Response(status=499)  # never sent: the transport is gone

        options = self._options
        if r_tail < options.tail_fraction:
            delay = options.tail_latency
        else:
            delay = options.latency + options.jitter * r_jitter
        if fault.mode == "slow":
            delay += fault.latency
        async with self._scheduler.generation(plan.prompt_text) as uncached_chars:
            delay += options.prefill_per_kchar * uncached_chars / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            if r_error < options.error_rate:
                return "errors", error_response(options.error_status, "injected error (error_rate)")
            self._engine.first_token(
                asyncio.get_running_loop().time() - arrived, plan.prompt_tokens, plan.completion_tokens
            )
            return await self._respond(request, plan, fault, chat)

    async def _respond(
        self, request: web.Request, plan: Plan, fault: Fault, chat: bool
    ) -> tuple[Outcome, web.StreamResponse]:
        """Send the answer (or the start of it, for a ``reset`` fault) while holding a batch slot."""
        reset_after = fault.after_chunks if fault.mode == "reset" else None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-fake{next(self._ids):06d}"
        created = int(time.time())
        if plan.stream:
            return await self._stream(request, plan, stream_events(plan, rid, created), reset_after)

        data = json.dumps(full_body(plan, rid, created)).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        if reset_after is not None:
            # A non-streamed answer cut off mid-body: headers and half the JSON, then RST.
            await response.write(data[: len(data) // 2])
            await _abort(request)
            return "resets", response
        await response.write(data)
        await response.write_eof()
        return "completed", response

    async def _stream(
        self, request: web.Request, plan: Plan, events: list[bytes], reset_after: int | None
    ) -> tuple[Outcome, web.StreamResponse]:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        interval = self._options.chunk_interval
        for i, event in enumerate(events):
            if reset_after is not None and i == reset_after:
                await _abort(request)
                return "resets", response
            if interval > 0 and 0 < i < plan.completion_tokens:
                await asyncio.sleep(interval)
            # One write per event: each becomes its own HTTP chunk on the wire, so a proxy
            # sees tokens arrive one by one rather than in a final burst.
            await response.write(event)
        if reset_after is not None:
            # after_chunks >= all events: still die before the terminating zero-length chunk,
            # so the client sees a truncated body rather than a clean end.
            await _abort(request)
            return "resets", response
        await response.write_eof()
        return "completed", response
