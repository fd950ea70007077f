"""One mirror record per request: what the hot path captures, and how it becomes a JSON line.

The request path only fills an ``Exchange`` (references and counters, no copies, no parsing);
``encode`` turns it into the redacted JSON record in the spool writer, off the request's
critical path. The record format (schema 1) is documented in README ("Record format").
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

if TYPE_CHECKING:
    from ..context import AttemptRecord
    from .redact import Redactor

log = logging.getLogger("haproxy_ai.mirror")

__all__ = ["ENDED", "NATIVE", "SCHEMA_VERSION", "Exchange", "RecordEncoder", "encode", "format_time", "parse_sse"]


# The common case in C (_fastrecord.c, built by setup.py where a C compiler is available): the
# same bytes as the Python path below, for a fraction of the CPU, and the Exchange the request
# path fills. HAPROXY_AI_NO_NATIVE=1 turns both off.
def _load_native() -> Any:
    if os.environ.get("HAPROXY_AI_NO_NATIVE") == "1":
        return None
    try:
        from . import _fastrecord
    except ImportError:  # built without a C compiler: the Python path does everything
        return None
    return _fastrecord


_native = _load_native()
_NativeEncoder = _native.Encoder if _native is not None else None
NATIVE = _native is not None

SCHEMA_VERSION = 1
ENDED = ("complete", "client_aborted", "upstream_reset", "truncated")
_NO_ATTEMPTS: list[AttemptRecord] = []


class Exchange:
    """A request/response pair as the proxy saw it, captured cheaply on the request path.

    Times are the injected clock's monotonic seconds, except ``received_wall`` (epoch seconds),
    which the writer derives from ``received`` when it encodes the record (the C encoder without
    setting it): no wall-clock read per request.
    The response body is kept up to ``cap`` bytes; later chunks are only counted, except the
    last few, which usually carry a stream's ``usage``.
    """

    __slots__ = (
        "attempts",
        "backend",
        "body_cap",
        "chunks",
        "client",
        "done",
        "ended",
        "error",
        "first_byte",
        "id",
        "kept",
        "method",
        "query",
        "raw_path",
        "received",
        "received_wall",
        "request_body",
        "request_headers",
        "request_id",
        "response_bytes",
        "response_headers",
        "status",
        "tail",
    )

    def __init__(
        self,
        record_id: str,
        received: float,
        method: str,
        raw_path: bytes,
        query: bytes,
        request_headers: Sequence[tuple[bytes, bytes]],
        client: str | None,
        body_cap: int,
    ) -> None:
        self.id = record_id
        self.request_id = ""
        self.received = received
        self.received_wall = 0.0
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.request_headers = request_headers
        self.client = client
        self.body_cap = body_cap
        self.request_body = b""
        self.status = 0
        self.response_headers: Sequence[tuple[bytes, bytes]] = ()
        self.first_byte: float | None = None
        self.done = received
        self.chunks: list[bytes] = []
        self.kept = 0
        self.tail: list[bytes] = []
        self.response_bytes = 0
        self.ended = "complete"
        self.error: str | None = None
        self.backend: str | None = None
        self.attempts: list[AttemptRecord] = _NO_ATTEMPTS

    def add(self, chunk: bytes) -> None:
        """Count a response body chunk sent to the client, keeping it while under the cap."""
        self.response_bytes += len(chunk)
        if self.kept < self.body_cap:
            self.chunks.append(chunk)
            self.kept += len(chunk)
        else:
            tail = self.tail
            tail.append(chunk)
            if len(tail) > 4:
                del tail[0]

    def respond(self, status: int, headers: Sequence[tuple[bytes, bytes]], first_byte: float) -> None:
        self.status = status
        self.response_headers = headers
        self.first_byte = first_byte


PyExchange = Exchange  # the Python class, also where the C one is used (tests hold them to the same records)
if _native is not None:
    # The same attributes, constructor and methods, in C: cheaper to create and fill on the
    # request path, and the encoder reads its fields directly.
    Exchange = _native.Exchange  # type: ignore[misc]


# The last whole second formatted -- [its start in epoch seconds, "YYYY-MM-DDTHH:MM:SS."] -- and
# three-digit groups: a record's three timestamps cost a subtraction, an int and two lookups each.
_second: list[Any] = [0.0, "1970-01-01T00:00:00."]
_DIGITS = tuple(f"{i:03d}" for i in range(1000))


def _in_second(epoch: float) -> int:
    """Microseconds of ``epoch`` into the cached second, after moving the cache to it if needed."""
    micros = int((epoch - _second[0]) * 1_000_000 + 0.5)
    if 0 <= micros < 1_000_000:
        return micros
    seconds, micros = divmod(int(epoch * 1_000_000 + 0.5), 1_000_000)
    _second[0], _second[1] = float(seconds), time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
    return micros


def _stamp(micros: int) -> str:
    """The cached second plus ``micros`` (0 <= micros < 1,000,000), RFC 3339 UTC."""
    return f"{_second[1]}{_DIGITS[micros // 1000]}{_DIGITS[micros % 1000]}Z"


def format_time(epoch: float) -> str:
    """RFC 3339 UTC with microseconds: ``2026-11-28T16:00:00.123456Z``."""
    return _stamp(_in_second(epoch))


_NO_BODY: tuple[str | None, str, bool] = (None, "utf-8", False)


def _body(raw: bytes, cap: int, redactor: Redactor) -> tuple[str | None, str, bool]:
    """(text, encoding, truncated) for a body kept up to ``cap`` bytes, redacted."""
    if len(raw) <= cap:  # the common case, inline: whole, UTF-8, no NUL
        try:
            text = redactor.body_text(raw.decode("utf-8"))
        except UnicodeDecodeError:
            pass
        else:
            if "\x00" not in text:
                return (text, "utf-8", False) if raw else _NO_BODY
    truncated = len(raw) > cap
    if truncated:
        raw = raw[:cap]
    if not raw:
        return (None if not truncated else "", "utf-8", truncated)
    decoded = _utf8(raw, truncated)
    if decoded is None:  # binary: kept exactly
        return base64.b64encode(raw).decode("ascii"), "base64", truncated
    text = redactor.body_text(decoded)
    if "\x00" in text:  # text PostgreSQL's jsonb cannot hold: the (redacted) bytes exactly
        return base64.b64encode(text.encode("utf-8")).decode("ascii"), "base64", truncated
    return text, "utf-8", truncated


def _utf8(raw: bytes, truncated: bool) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cap can cut a multi-byte character in half: drop the partial character only.
        if truncated and exc.start >= len(raw) - 3:
            try:
                return raw[: exc.start].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None


def parse_sse(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """Assemble an OpenAI-style event stream: (completion text, usage) where parsable.

    Chat streams carry ``choices[0].delta.content``; completion streams ``choices[0].text``.
    Events that are not JSON (``[DONE]``, comments, a cut-off last event) are skipped.
    """
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    seen = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        choices = event.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                parts.append(piece)
                seen = True
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
    return ("".join(parts) if seen else None), usage


def _model(body: bytes) -> str | None:
    # Only JSON object bodies that name a model; parse failures are normal (non-JSON uploads).
    if b'"model"' not in body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


class _Attempt(msgspec.Struct, gc=False):
    backend: str
    outcome: Any
    status: int | None
    start_ms: float
    headers_ms: float | None
    end_ms: float | None


class _Message(msgspec.Struct, gc=False):  # the record's "request"; "response" adds to it
    headers: dict[str, str]
    body: str | None
    body_encoding: str
    bytes: int
    body_truncated: bool


class _Response(_Message, gc=False):
    stream: bool
    text: str | None
    usage: Any


class _Record(msgspec.Struct, gc=False):
    schema: int
    id: str
    request_id: str
    instance: str
    received_at: str
    first_byte_at: str | None
    done_at: str
    latency_ms: float
    ttfb_ms: float | None
    client: str | None
    method: str
    path: str
    query: str
    model: str | None
    status: int
    ended: str
    backend: str | None
    error: str | None
    attempts: list[_Attempt]
    request: _Message
    response: _Response


_ENCODER = msgspec.json.Encoder()


def _attempts(exchange: Exchange) -> list[_Attempt]:
    # Offsets in ms rounded to the microsecond: (x * 1e6 + 0.5) // 1 is int(x * 1e6 + 0.5) for the
    # non-negative offsets here, as a float, without a call (it divides by 1000 to the same float).
    start = exchange.received
    out = []
    for attempt in exchange.attempts:
        headers_at, ended = attempt.headers_at, attempt.ended
        out.append(
            _Attempt(
                attempt.backend.name,
                attempt.outcome,
                attempt.status,
                ((attempt.started - start) * 1_000_000 + 0.5) // 1 / 1000,
                ((headers_at - start) * 1_000_000 + 0.5) // 1 / 1000 if headers_at else None,
                ((ended - start) * 1_000_000 + 0.5) // 1 / 1000 if ended else None,
            )
        )
    return out


def build(exchange: Exchange, redactor: Redactor, instance: str, request_cap: int) -> _Record:
    """The redacted record (schema 1) for a finished exchange.

    Runs once per request on the event loop, so the common cases are written out inline (one
    function call costs about as much as formatting a timestamp)."""
    ex = exchange
    wall = ex.received_wall
    received = ex.received
    first_byte = ex.first_byte
    chunks = ex.chunks
    response_raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    response_headers = redactor.headers(ex.response_headers)
    stream = response_headers.get("content-type", "").lower().startswith("text/event-stream")
    text = usage = None
    split_secret = False
    if stream:
        text, usage = parse_sse(response_raw + b"".join(ex.tail) if ex.tail else response_raw)
        if text is not None:
            redacted = redactor.text(text)
            split_secret = redacted != text  # checked against the raw events below
            text = redacted
        if usage is not None:
            usage = redactor.json(usage)
    request_body = ex.request_body
    request_text, request_encoding, request_truncated = (
        _body(request_body, request_cap, redactor) if request_body else _NO_BODY
    )
    response_text, response_encoding, _ = _body(response_raw, len(response_raw), redactor)
    if split_secret and response_text and response_encoding == "utf-8":
        # Each event is redacted on its own: a secret the model streamed in pieces, too short to
        # match one by one, would still be spelled by the raw events. Then they are not kept.
        again, _ = parse_sse(response_text.encode("utf-8"))
        if again is not None and redactor.text(again) != again:
            response_text = redactor.replacement
    query = ex.query
    # Timestamps: microseconds into the cached second, then the two later ones from durations.
    at = int((wall - _second[0]) * 1_000_000 + 0.5)
    if not 0 <= at < 1_000_000:
        at = _in_second(wall)
    prefix = _second[1]
    received_at = f"{prefix}{_DIGITS[at // 1000]}{_DIGITS[at % 1000]}Z"
    latency = int((ex.done - received) * 1_000_000 + 0.5)
    done = at + latency
    if done < 1_000_000:
        done_at = f"{prefix}{_DIGITS[done // 1000]}{_DIGITS[done % 1000]}Z"
    else:
        done_at = format_time(wall + latency / 1_000_000)
    first_byte_at = ttfb_ms = None
    if first_byte is not None:
        ttfb = int((first_byte - received) * 1_000_000 + 0.5)
        ttfb_ms = ttfb / 1000
        first = at + ttfb
        if first < 1_000_000:
            first_byte_at = f"{prefix}{_DIGITS[first // 1000]}{_DIGITS[first % 1000]}Z"
        else:
            first_byte_at = format_time(wall + ttfb / 1_000_000)
    return _Record(
        SCHEMA_VERSION,
        ex.id,
        ex.request_id,
        instance,
        received_at,
        first_byte_at,
        done_at,
        latency / 1000,
        ttfb_ms,
        ex.client,
        ex.method,
        redactor.latin1_text(ex.raw_path),
        redactor.query(query.decode("latin-1")) if query else "",
        _model(request_body) if b'"model"' in request_body else None,
        ex.status,
        ex.ended,
        ex.backend,
        redactor.message(ex.error) if ex.error is not None else None,
        _attempts(ex) if ex.attempts else [],
        _Message(
            redactor.headers(ex.request_headers), request_text, request_encoding, len(request_body), request_truncated
        ),
        _Response(
            response_headers,
            response_text,
            response_encoding,
            ex.response_bytes,
            ex.response_bytes > ex.kept,
            stream,
            text,
            usage,
        ),
    )


class RecordEncoder:
    """Finished exchanges to JSON lines for one mirror: the C encoder for the records it can
    prove need no redaction work (keeping each header field's finished JSON text), the Python
    path (``build``) for the rest. ``on_error`` is called for a record neither can encode (a bug,
    logged; the record is dropped, never the mirror)."""

    __slots__ = ("_fallback", "_instance", "_native", "_offset", "_redactor", "_request_cap", "on_error")

    def __init__(
        self, redactor: Redactor, instance: str, request_cap: int, on_error: Callable[[], None] | None = None
    ) -> None:
        self._redactor = redactor
        self._instance = instance
        self._request_cap = request_cap
        self._offset = 0.0
        self.on_error = on_error
        caches = redactor.native_caches
        self._native = (
            _NativeEncoder(*caches, instance, _second, request_cap, _model, int.from_bytes(os.urandom(8), "little"))
            if caches is not None and _NativeEncoder is not None
            else None
        )
        self._fallback = self._python_line

    @property
    def native(self) -> bool:
        """Whether the C encoder takes the common records."""
        return self._native is not None

    def line(self, exchange: Exchange) -> bytes:
        """One exchange's record line (its ``received_wall`` set), without the newline; raises
        what the Python path raises for an exchange it cannot encode."""
        if self._native is not None:
            line: bytes | None = self._native.line(exchange)
            if line is not None:
                return line
        return self._python(exchange)

    def batch(self, exchanges: list[Exchange], lines: list[bytes], wall_offset: float) -> int:
        """Append each exchange's line to ``lines`` in order, receipt times being ``received +
        wall_offset``; returns the bytes appended minus those the exchanges held (request body
        and kept response), for the memory queue's byte count."""
        self._offset = wall_offset
        if self._native is not None:
            change: int = self._native.batch(exchanges, lines, wall_offset, self._fallback)
            return change
        change = 0
        for exchange in exchanges:
            change -= len(exchange.request_body) + exchange.kept
            line = self._python_line(exchange)
            if line is not None:
                lines.append(line)
                change += len(line)
        return change

    def _python(self, exchange: Exchange) -> bytes:
        return _ENCODER.encode(build(exchange, self._redactor, self._instance, self._request_cap))

    def _python_line(self, exchange: Exchange) -> bytes | None:
        """A batch's Python path: the line, or None (reported) for a record it cannot encode."""
        exchange.received_wall = exchange.received + self._offset
        try:
            return self._python(exchange)
        except Exception as exc:  # a bug, never a reason to stop mirroring
            log.error("mirror: cannot encode record %s: %s", exchange.id, type(exc).__name__)
            if self.on_error is not None:
                self.on_error()
            return None


def encode(exchange: Exchange, redactor: Redactor, instance: str, request_cap: int) -> bytes:
    """The record as one JSON line, without the newline (``received_wall`` set)."""
    return RecordEncoder(redactor, instance, request_cap).line(exchange)
