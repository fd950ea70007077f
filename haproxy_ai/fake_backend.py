"""A simulated OpenAI-compatible inference replica, for tests, demos and load tests.

``FakeBackend`` serves ``/v1/chat/completions``, ``/v1/completions`` (streaming and not),
``/v1/models`` and ``/health`` with configurable latency, jitter, tail latency, error rate and
token count, plus test hooks:

* ``/_fault`` (or ``FakeBackend.set_fault``) switches on a failure mode: ``ok``, ``error``,
  ``hang``, ``slow``, ``reset`` and ``retry_after``, optionally for the next ``count``
  inference requests only.
* ``/_stats`` reports exact counters. Every inference request ends in exactly one of
  ``completed``, ``errors``, ``cancelled`` or ``resets``, so between resets of the counters
  ``requests == completed + errors + cancelled + resets + in_flight``.
* ``/_echo`` reflects the request line, headers (original order and case) and body, to check
  that a proxy passes requests through untouched.

Faults act on inference requests as they arrive, before the configured latency (``slow``
adds to it). Configured errors (``error_rate``) are sent after the latency, like a replica
that fails while working. ``/_fault``, ``/_stats`` and ``/_echo`` are never faulted; ``/health``
keeps answering 200 except in ``error`` mode, because real model servers report healthy while
their inference path is stuck.

Run one from a shell with ``python -m haproxy_ai.fake_backend --port 8001 --latency 50ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from aiohttp import web

from .settings import parse_duration

__all__ = [
    "FAULT_MODES",
    "FakeBackend",
    "FakeBackendOptions",
    "FakeStats",
    "add_arguments",
    "main",
    "options_from_args",
    "serve_forever",
]

FAULT_MODES: Final = ("ok", "error", "hang", "slow", "reset", "retry_after")

# Bound how long stop() waits for a handler after cancelling it; cancellation is immediate
# in practice, this is only a backstop against a handler that swallows it.
_SHUTDOWN_TIMEOUT = 1.0
# abort() drops whatever asyncio still buffers, so a stream-then-die reset first waits (at
# most this long) for the chunks it promised to reach the socket.
_FLUSH_TIMEOUT = 1.0


# ---------------------------------------------------------------------------------------------
# Options and their validation (shared by the dataclass and the command line).

_Kind = Literal["str", "duration", "rate", "status", "tokens", "seed"]

_KINDS: Final[dict[str, _Kind]] = {
    "model": "str",
    "latency": "duration",
    "jitter": "duration",
    "tail_fraction": "rate",
    "tail_latency": "duration",
    "error_rate": "rate",
    "error_status": "status",
    "tokens": "tokens",
    "chunk_interval": "duration",
    "seed": "seed",
    "name": "str",
}


def _to_int(value: object) -> int:
    """An int from an int, an integral float or a decimal string; never from a bool."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _convert(kind: _Kind, value: object) -> Any:
    """Parse and check one option value; ValueError says what is wrong (without the name)."""
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    if kind == "duration":
        return parse_duration(value)
    if kind == "rate":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number between 0 and 1, got {value!r}")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"expected a number between 0 and 1, got {value!r}") from None
        if not 0.0 <= rate <= 1.0:  # also rejects NaN
            raise ValueError(f"must be between 0 and 1, got {value!r}")
        return rate
    if kind == "status":
        status = _to_int(value)
        if not 100 <= status <= 599:
            raise ValueError(f"must be an HTTP status between 100 and 599, got {status}")
        return status
    if kind == "tokens":
        tokens = _to_int(value)
        if tokens < 1:
            raise ValueError(f"must be at least 1, got {tokens}")
        return tokens
    # seed
    return None if value is None else _to_int(value)


@dataclass(frozen=True)
class FakeBackendOptions:
    """How a fake replica behaves. Invalid values raise ValueError on construction."""

    model: str = "fake-model"
    latency: float = 0.0  # seconds before response headers (time to first token)
    jitter: float = 0.0  # uniform extra 0..jitter seconds added to latency
    tail_fraction: float = 0.0  # fraction of requests that get tail_latency instead
    tail_latency: float = 0.0
    error_rate: float = 0.0  # fraction of inference requests answered with error_status
    error_status: int = 500
    tokens: int = 16  # completion tokens per response
    chunk_interval: float = 0.0  # seconds between SSE chunks when streaming
    seed: int | None = None  # RNG seed, for reproducible runs
    name: str = ""  # replica name, echoed in a response header x-fake-backend

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                _convert(_KINDS[f.name], getattr(self, f.name))
            except ValueError as exc:
                raise ValueError(f"FakeBackendOptions.{f.name}: {exc}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_HELP: Final[dict[str, str]] = {
    "model": "model id served and echoed when a request names none",
    "latency": "delay before response headers (time to first token), e.g. 0.05 or 50ms",
    "jitter": "uniform random extra delay, 0..JITTER, added to --latency",
    "tail_fraction": "fraction (0..1) of requests delayed by --tail-latency instead",
    "tail_latency": "delay for the tail fraction of requests",
    "error_rate": "fraction (0..1) of inference requests answered with --error-status",
    "error_status": "HTTP status of injected errors",
    "tokens": "completion tokens per response (requests' max_tokens may cap it)",
    "chunk_interval": "delay between streamed tokens",
    "seed": "random seed, for reproducible latency and error sequences",
    "name": "replica name sent in the x-fake-backend header (default: host:port)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host``, ``--port`` and one flag per ``FakeBackendOptions`` field to ``parser``.

    Option values stay raw strings here; ``options_from_args`` parses and validates them so
    its errors can name the flag (durations accept ``0.05``, ``50ms``, ``2s``).
    """
    defaults = FakeBackendOptions()
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="listen port, 0 = any (default: %(default)s)")
    for f in fields(FakeBackendOptions):
        default = getattr(defaults, f.name)
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=default,
            metavar=f.name.upper(),
            help=f"{_HELP[f.name]} (default: {default!r})",
        )


def options_from_args(args: argparse.Namespace) -> FakeBackendOptions:
    """Build validated options from parsed arguments; missing attributes take the defaults.

    Raises ValueError whose message starts with the offending flag, e.g.
    ``--error-rate: must be between 0 and 1, got '1.5'``.
    """
    defaults = FakeBackendOptions()
    values: dict[str, Any] = {}
    for f in fields(FakeBackendOptions):
        raw = getattr(args, f.name, getattr(defaults, f.name))
        try:
            values[f.name] = _convert(_KINDS[f.name], raw)
        except ValueError as exc:
            raise ValueError(f"{_flag(f.name)}: {exc}") from None
    return FakeBackendOptions(**values)


# ---------------------------------------------------------------------------------------------
# Counters.


_Outcome = Literal["completed", "errors", "cancelled", "resets"]


@dataclass(eq=False)
class FakeStats:
    """Live counters of inference requests (chat and completions only).

    ``requests`` counts arrivals; each then ends in exactly one of ``completed`` (whole response
    handed to the socket), ``errors`` (an error status was sent, including 400s for bad bodies),
    ``cancelled`` (the client went away, or ``stop()`` cut it off) or ``resets`` (a ``reset``
    fault aborted the connection). ``in_flight`` is a gauge and survives ``reset()``.
    Mutate only from the backend's event loop.
    """

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    resets: int = 0
    in_flight: int = 0
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, init=False, repr=False)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict (the body of ``GET /_stats`` minus fault state)."""
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "resets": self.resets,
            "in_flight": self.in_flight,
        }

    def reset(self) -> None:
        """Zero the cumulative counters (not ``in_flight``, which counts live requests)."""
        self.requests = self.completed = self.cancelled = self.errors = self.resets = 0
        self._notify()

    async def wait_until(self, predicate: Callable[[FakeStats], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checking on every counter change.

        Never times out by itself: wrap it, e.g. ``async with asyncio.timeout(2): ...``.
        """
        loop = asyncio.get_running_loop()
        while not predicate(self):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _started(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self._notify()

    def _finished(self, outcome: _Outcome) -> None:
        self.in_flight -= 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


# ---------------------------------------------------------------------------------------------
# Faults.


@dataclass(frozen=True)
class _Fault:
    mode: str = "ok"
    status: int = 500
    latency: float = 5.0
    after_chunks: int = 0
    seconds: float = 1.0

    def describe(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.mode in ("error", "retry_after"):
            params["status"] = self.status
        if self.mode == "slow":
            params["latency"] = self.latency
        if self.mode == "reset":
            params["after_chunks"] = self.after_chunks
        if self.mode == "retry_after":
            params["seconds"] = self.seconds
        return params


_OK_FAULT: Final = _Fault()
_FAULT_PARAMS: Final[dict[str, frozenset[str]]] = {
    "ok": frozenset(),
    "error": frozenset({"status", "count"}),
    "hang": frozenset({"count"}),
    "slow": frozenset({"latency", "count"}),
    "reset": frozenset({"after_chunks", "count"}),
    "retry_after": frozenset({"status", "seconds", "count"}),
}


def _parse_fault(mode: object, params: dict[str, Any]) -> tuple[_Fault, int | None]:
    """Validate a fault request; returns the fault and how many requests it lasts (None = until
    changed). ValueError messages are meant for the person who sent the request."""
    if not isinstance(mode, str) or mode not in _FAULT_PARAMS:
        raise ValueError(f"unknown fault mode {mode!r}; expected one of {', '.join(FAULT_MODES)}")
    unknown = sorted(set(params) - _FAULT_PARAMS[mode])
    if unknown:
        allowed = ", ".join(sorted(_FAULT_PARAMS[mode])) or "none"
        raise ValueError(f"fault {mode!r} takes no parameter {', '.join(unknown)} (allowed: {allowed})")

    def get_int(name: str, default: int, low: int, high: int) -> int:
        if name not in params:
            return default
        value = params[name]
        # Strict on the wire: 2.5 requests or "3" chunks is a typo worth reporting.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        return value

    def get_duration(name: str, default: float) -> float:
        if name not in params:
            return default
        try:
            return parse_duration(params[name])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    count = get_int("count", 0, 1, 2**31) if "count" in params else None
    default_status = 429 if mode == "retry_after" else 500
    fault = _Fault(
        mode=mode,
        # Faults model failures, so only error statuses make sense here.
        status=get_int("status", default_status, 400, 599),
        latency=get_duration("latency", 5.0),
        after_chunks=get_int("after_chunks", 0, 0, 2**31),
        seconds=get_duration("seconds", 1.0),
    )
    return fault, count


# ---------------------------------------------------------------------------------------------
# Response bodies.


class _BadRequest(Exception):
    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An OpenAI-style error; statuses that forbid a body (1xx, 204, 304) get none."""
    if status < 200 or status in (204, 304):
        return web.Response(status=status, headers=headers)
    body = {"error": {"message": message, "type": _error_type(status), "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _count_words(value: object) -> int:
    """A deterministic stand-in for tokenisation: words in strings, one per int token id."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        # Chat messages and content parts: only the text matters.
        return sum(_count_words(value.get(key)) for key in ("content", "text"))
    return 0


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_SSE_DONE: Final = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class _Plan:
    """What one valid inference request asked for."""

    chat: bool
    model: str
    stream: bool
    include_usage: bool
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def token_text(self, i: int) -> str:
        # Stream pieces concatenate to exactly the non-stream content.
        return f"tok{i}" if i == 0 else f" tok{i}"


def _plan(payload: object, chat: bool, options: FakeBackendOptions) -> _Plan:
    if not isinstance(payload, dict):
        raise _BadRequest("request body must be a JSON object", "invalid_json")
    stream = payload.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean")
    stream_options = payload.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _BadRequest("'stream_options' must be an object")
        include_usage = stream_options.get("include_usage") is True
    limit: object = None
    for key in ("max_completion_tokens", "max_tokens"):  # the newer chat name wins
        if payload.get(key) is not None:
            limit = payload[key]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise _BadRequest(f"'{key}' must be a positive integer")
            break
    completion_tokens = options.tokens
    finish_reason = "stop"
    if isinstance(limit, int) and limit < options.tokens:
        completion_tokens, finish_reason = limit, "length"
    model = payload.get("model")
    return _Plan(
        chat=chat,
        model=model if isinstance(model, str) and model else options.model,
        stream=stream,
        include_usage=stream and include_usage,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        prompt_tokens=_count_words(payload.get("messages" if chat else "prompt")),
    )


def _full_body(plan: _Plan, rid: str, created: int) -> dict[str, Any]:
    content = "".join(plan.token_text(i) for i in range(plan.completion_tokens))
    choice: dict[str, Any]
    if plan.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
    else:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": rid,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": [choice],
        "usage": plan.usage,
    }


def _stream_events(plan: _Plan, rid: str, created: int) -> list[bytes]:
    """Every SSE event of a streamed answer, in order: one per token, the finish chunk, the
    usage chunk if asked for, then ``[DONE]``."""
    base: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
    }
    if plan.include_usage:
        base["usage"] = None  # as OpenAI does: only the extra last chunk carries usage

    def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
        choice: dict[str, Any]
        if plan.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    events = [chunk(plan.token_text(i), None, first=i == 0) for i in range(plan.completion_tokens)]
    events.append(chunk(None, plan.finish_reason))
    if plan.include_usage:
        events.append(_sse({**base, "choices": [], "usage": plan.usage}))
    events.append(_SSE_DONE)
    return events


# ---------------------------------------------------------------------------------------------
# The server.


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


class FakeBackend:
    """One simulated replica. ``start()`` it inside a running event loop; ``stop()`` when done.

    Call its coroutines on the event loop it runs on; ``set_fault`` and reading ``stats`` are
    also fine from another thread (tests often drive a backend on a background loop).
    """

    def __init__(self, options: FakeBackendOptions = FakeBackendOptions()) -> None:
        self.options = options
        self.stats = FakeStats()
        self._rng = random.Random(options.seed)
        self._ids = itertools.count(1)
        self._created = int(time.time())
        # (fault, requests left or None = until changed), swapped as one attribute so a test
        # thread calling set_fault() never leaves a half-updated pair for the loop to read.
        self._fault_slot: tuple[_Fault, int | None] = (_OK_FAULT, None)
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        self._label = options.name

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind ``host:port`` (0 = an ephemeral port, see ``port``/``url``) and start serving."""
        if self._runner is not None:
            raise RuntimeError("FakeBackend is already started")
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_route("*", "/_echo", self._echo)
        app.router.add_route("*", "/_echo/{tail:.*}", self._echo)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_post("/_stats/reset", self._reset_stats)
        app.router.add_get("/_fault", self._get_fault)
        app.router.add_post("/_fault", self._post_fault)
        app.on_response_prepare.append(self._stamp)

        # Our own socket rather than TCPSite: "localhost" with port 0 could otherwise bind IPv4
        # and IPv6 on two different ephemeral ports, and we must report exactly one.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
        # handler_cancellation: a client disconnect cancels its handler, which is how
        # `cancelled` is counted. shutdown_timeout: stop() must not wait on a hung request.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = sock.getsockname()[1]
        self._label = self.options.name or f"{host}:{self._port}"

    async def stop(self) -> None:
        """Stop listening and drop every open connection now (in-flight requests count as
        cancelled). Safe to call twice or before ``start()``."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        if server is not None:
            for conn in server.connections:
                # Aborting fires connection_lost, which (handler_cancellation) cancels a hung
                # handler at once; a graceful close would wait for it.
                if conn.transport is not None:
                    conn.transport.abort()
        await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port; valid after ``start()``."""
        if not self._port:
            raise RuntimeError("FakeBackend is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener, without a trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def name(self) -> str:
        """The x-fake-backend header value: ``options.name``, else ``host:port``."""
        return self._label

    # -- faults ---------------------------------------------------------------------------------

    @property
    def fault(self) -> str:
        """The current fault mode (``ok`` when none)."""
        return self._fault_slot[0].mode

    def set_fault(self, mode: str, **params: Any) -> None:
        """Switch fault mode, exactly like ``POST /_fault``. Raises ValueError if invalid.

        ``count=N`` limits the fault to the next N inference requests, then it reverts to ``ok``.
        Takes effect for requests that arrive afterwards; safe to call from another thread.
        """
        fault, count = _parse_fault(mode, params)
        self._fault_slot = (_OK_FAULT if fault.mode == "ok" else fault, count)

    def _take_fault(self) -> _Fault:
        fault, left = self._fault_slot
        if left is not None:
            self._fault_slot = (fault, left - 1) if left > 1 else (_OK_FAULT, None)
        return fault

    def _fault_state(self) -> dict[str, Any]:
        fault, left = self._fault_slot
        return {"fault": fault.mode, "params": fault.describe(), "remaining": left}

    # -- handlers -------------------------------------------------------------------------------

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-fake-backend"] = self._label

    async def _health(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault_slot[0]
        if fault.mode == "error":
            return _error_response(fault.status, "injected fault: error")
        return web.json_response({"status": "ok"})

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.options.model,
            "object": "model",
            "created": self._created,
            "owned_by": "haproxy-ai-fake",
        }

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [self._model_object()]})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["model"] != self.options.model:
            return _error_response(
                404, f"The model {request.match_info['model']!r} does not exist", code="model_not_found"
            )
        return web.json_response(self._model_object())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, chat=False)

    async def _inference(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.stats._started()
        # Anything that escapes without an outcome is the client leaving (CancelledError from
        # handler_cancellation) or a write to a dead transport; both mean cancelled.
        outcome: _Outcome = "cancelled"
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
            self.stats._finished(outcome)

    async def _serve(self, request: web.Request, chat: bool) -> tuple[_Outcome, web.StreamResponse]:
        body = await request.read()
        # Draw every random number up front so a seeded run's sequence does not depend on
        # which faults or bodies came along.
        r_tail, r_jitter, r_error = self._rng.random(), self._rng.random(), self._rng.random()
        try:
            try:
                payload = json.loads(body)
            except ValueError:  # includes UnicodeDecodeError
                raise _BadRequest("request body is not valid JSON", "invalid_json") from None
            plan = _plan(payload, chat, self.options)
        except _BadRequest as exc:
            return "errors", _error_response(400, str(exc), code=exc.code)

        fault = self._take_fault()
        if fault.mode == "hang":
            # Never answer; the client's disconnect (or stop()) cancels us.
            await asyncio.get_running_loop().create_future()
        if fault.mode == "error":
            return "errors", _error_response(fault.status, "injected fault: error")
        if fault.mode == "retry_after":
            seconds = f"{fault.seconds:g}"  # integral values print as "1", as HTTP expects
            return "errors", _error_response(
                fault.status,
                "injected fault: retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": seconds},
            )
        if fault.mode == "reset" and fault.after_chunks == 0:
            await _abort(request)
            return "resets", web.Response(status=499)  # never sent: the transport is gone

        options = self.options
        if r_tail < options.tail_fraction:
            delay = options.tail_latency
        else:
            delay = options.latency + options.jitter * r_jitter
        if fault.mode == "slow":
            delay += fault.latency
        if delay > 0:
            await asyncio.sleep(delay)
        if r_error < options.error_rate:
            return "errors", _error_response(options.error_status, "injected error (error_rate)")

        reset_after = fault.after_chunks if fault.mode == "reset" else None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-fake{next(self._ids):06d}"
        created = int(time.time())
        if plan.stream:
            return await self._stream(request, plan, _stream_events(plan, rid, created), reset_after)

        data = json.dumps(_full_body(plan, rid, created)).encode()
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
        self, request: web.Request, plan: _Plan, events: list[bytes], reset_after: int | None
    ) -> tuple[_Outcome, web.StreamResponse]:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        interval = self.options.chunk_interval
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

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path
        return web.json_response(
            {
                "method": request.method,
                "path": raw_path,
                "query": raw_path.partition("?")[2],
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body": body.decode("latin-1"),
                "body_len": len(body),
            }
        )

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({**self.stats.snapshot(), "fault": self.fault})

    async def _reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.stats.reset()
        return web.json_response({**self.stats.snapshot(), "fault": self.fault})

    async def _get_fault(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._fault_state())

    async def _post_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return _error_response(400, 'body must be a JSON object like {"mode": "error"}', code="invalid_json")
        if not isinstance(payload, dict) or "mode" not in payload:
            return _error_response(400, "body must be a JSON object with a 'mode' key", code="invalid_fault")
        params = {k: v for k, v in payload.items() if k != "mode"}
        try:
            self.set_fault(payload["mode"], **params)
        except ValueError as exc:
            return _error_response(400, str(exc), code="invalid_fault")
        return web.json_response(self._fault_state())


# ---------------------------------------------------------------------------------------------
# Running standalone.


async def serve_forever(
    options: FakeBackendOptions,
    host: str,
    port: int,
    ready: Callable[[FakeBackend], None] | None = None,
) -> None:
    """Serve until cancelled, then stop the backend. ``ready(backend)`` is called once listening."""
    backend = FakeBackend(options)
    await backend.start(host, port)
    try:
        if ready is not None:
            ready(backend)
        await asyncio.Event().wait()
    finally:
        await backend.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m haproxy_ai.fake_backend [flags]``: serve one fake replica until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m haproxy_ai.fake_backend", description="A fake OpenAI-compatible inference replica."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    def ready(backend: FakeBackend) -> None:
        print(f"fake backend {backend.name!r} serving {options.model!r} on {backend.url}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(options, args.host, args.port, ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
