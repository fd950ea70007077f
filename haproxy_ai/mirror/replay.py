"""Re-send recorded requests to a target, at a bounded rate and concurrency, and summarize.

``plan_request`` turns a record into the request to send (or the reason to skip it);
``replay`` sends them with httpx and returns a ``ReplaySummary``. A dry run plans only: no
client is created and nothing touches the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

__all__ = [
    "REDACTED",
    "Plan",
    "ProgressLine",
    "ReplaySummary",
    "Skip",
    "check_target",
    "plan_request",
    "replay",
]

Record = dict[str, Any]
REDACTED = "[REDACTED]"
REPLAY_HEADER = "x-haproxy-ai-replay"

# Hop-by-hop headers (RFC 9110 7.6.1), plus what the client or the proxy derives per connection.
_DROP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "forwarded",
        REPLAY_HEADER,
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_target(url: str) -> str:
    """The target base URL without a trailing slash; ValueError unless ``http(s)://host[:port][/base]``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"--target {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--target {url!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"--target {url!r}: give only scheme, host, port and base path (no ?query or #fragment)")
    if parts.username or parts.password:
        raise ValueError("--target must not contain credentials; pass them with --header")
    del port
    return url.strip().rstrip("/")


def check_header(text: str) -> tuple[str, str]:
    """``Name: value`` -> (lowercased name, value); ValueError otherwise."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise ValueError(f"--header {text!r} is not 'Name: value'")
    if "\r" in value or "\n" in value:
        raise ValueError(f"--header {name}: the value must be one line")
    if name.lower() in ("content-length", "transfer-encoding"):
        raise ValueError(f"--header {name}: set from the recorded body, cannot be given")
    return name.lower(), value.strip()


# -- planning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    reason: str  # body_truncated, redacted, invalid_record


@dataclass(frozen=True)
class Plan:
    id: str
    method: str
    target: str  # path + "?" + query, as recorded
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    recorded_status: int | None


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def plan_request(
    record: Record,
    base_url: str,
    *,
    extra_headers: Iterable[tuple[str, str]] = (),
    allow_redacted: bool = False,
    marker: str = REDACTED,
) -> Plan | Skip:
    """What replaying ``record`` against ``base_url`` sends, or why it is skipped."""
    try:
        method = record["method"]
        path = record["path"]
        query = record.get("query") or ""
        request = record["request"]
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            return Skip("invalid_record")
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(query, str):
            return Skip("invalid_record")
        if not isinstance(request, dict):
            return Skip("invalid_record")
        if request.get("body_truncated"):
            return Skip("body_truncated")
        body_text = request.get("body")
        encoding = request.get("body_encoding") or "utf-8"
        if body_text is None:
            if request.get("bytes"):
                return Skip("body_truncated")  # the recorder kept none of a non-empty body
            body = b""
        elif encoding == "base64":
            body = base64.b64decode(body_text, validate=True)
        elif encoding == "utf-8":
            body = body_text.encode("utf-8")
        else:
            return Skip("invalid_record")
        if not allow_redacted and (marker in path or marker in query or marker.encode() in body):
            return Skip("redacted")
        recorded_headers = request.get("headers") or {}
        if not isinstance(recorded_headers, dict):
            return Skip("invalid_record")
    except (KeyError, TypeError, ValueError, binascii.Error):
        return Skip("invalid_record")

    extra = {name.lower(): value for name, value in extra_headers}
    connection_named = {
        token.strip().lower() for token in str(recorded_headers.get("connection", "")).split(",") if token.strip()
    }
    headers: list[tuple[bytes, bytes]] = []
    for name, value in recorded_headers.items():
        name = str(name).lower()
        value = str(value)
        if name in _DROP_HEADERS or name in connection_named or name.startswith("x-forwarded-"):
            continue
        if name in extra or marker in value or not _TOKEN.fullmatch(name):
            continue
        headers.append((name.encode("ascii"), _header_bytes(value)))
    for name, value in extra.items():
        headers.append((name.encode("ascii"), _header_bytes(value)))
    record_id = str(record.get("id", ""))
    headers.append((REPLAY_HEADER.encode(), _header_bytes(record_id)))
    target = path + (f"?{query}" if query else "")
    try:
        httpx.URL(base_url + target)
    except Exception:
        return Skip("invalid_record")
    status = record.get("status")
    return Plan(
        id=record_id,
        method=method,
        target=target,
        url=base_url + target,
        headers=headers,
        body=body,
        recorded_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
    )


# -- summary --------------------------------------------------------------------------------------


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def _error_kind(exc: BaseException) -> str:
    """``ConnectTimeout`` -> ``connect_timeout``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class ReplaySummary:
    target: str
    dry_run: bool = False
    records: int = 0  # records read from the source
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # 2xx/3xx/4xx/5xx/error
    same_status: int = 0
    different_status: int = 0
    status_changes: Counter[str] = field(default_factory=Counter)  # "200->500"
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by kind
    cancelled: int = 0  # in flight when interrupted
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, responses only
    duration: float = 0.0
    interrupted: bool = False
    source_error: str | None = None
    planned: list[dict[str, Any]] = field(default_factory=list)  # dry run: what would be sent

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def transport_errors(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies)
        result: dict[str, float | None] = {}
        for p in (50, 95, 99):
            value = _percentile(ordered, p)
            result[f"p{p}"] = None if value is None else round(value * 1000, 3)
        return result

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target": self.target,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "records": self.records,
            "sent": self.sent,
            "skipped": dict(sorted(self.skipped.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "same_status": self.same_status,
            "different_status": self.different_status,
            "status_changes": dict(self.status_changes.most_common()),
            "errors": dict(sorted(self.errors.items())),
            "cancelled": self.cancelled,
            "latency_ms": self.latency_ms(),
            "duration_s": round(self.duration, 3),
        }
        if self.source_error is not None:
            data["source_error"] = self.source_error
        if self.dry_run:
            data["planned"] = self.planned
        return data

    def render(self) -> str:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"

        title = "dry run" if self.dry_run else "replay"
        state = " (interrupted)" if self.interrupted else ""
        rows: list[tuple[str, str]] = [
            ("target", self.target),
            ("records read", str(self.records)),
        ]
        if self.dry_run:
            rows.append(("would send", str(len(self.planned))))
        else:
            rate = f" ({self.sent / self.duration:.1f}/s)" if self.duration > 0 and self.sent else ""
            rows.append(("sent", f"{self.sent}{rate}"))
        rows.append(("skipped", f"{sum(self.skipped.values())}  ({counts(self.skipped)})"))
        if not self.dry_run:
            rows.append(("responses", counts(Counter({k: v for k, v in self.outcomes.items() if k != "error"}))))
            changes = ", ".join(f"{k} {v}" for k, v in self.status_changes.most_common(5))
            rows.append(
                (
                    "vs recorded",
                    f"same {self.same_status}, different {self.different_status}"
                    + (f" ({changes})" if changes else ""),
                )
            )
            rows.append(("errors", f"{self.transport_errors}  ({counts(self.errors)})"))
            if self.cancelled:
                rows.append(("cancelled", str(self.cancelled)))
            lat = self.latency_ms()
            rows.append(
                (
                    "latency",
                    "  ".join(f"{k} {'-' if v is None else f'{v:.1f} ms'}" for k, v in lat.items()),
                )
            )
        rows.append(("duration", f"{self.duration:.2f} s"))
        if self.source_error:
            rows.append(("source error", self.source_error))
        width = max(len(name) for name, _ in rows)
        lines = [f"{title}{state}"] + [f"  {name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


# -- progress -------------------------------------------------------------------------------------


class ProgressLine:
    """A one-line progress display on a TTY, redrawn with ``\\r`` at most ``per_second`` times a
    second; silent when ``stream`` is not a TTY."""

    def __init__(self, stream: TextIO | None = None, per_second: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = 1.0 / per_second
        self._last = -math.inf
        self._started = time.monotonic()
        self._drawn = False

    def __call__(self, summary: ReplaySummary, total: int | None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        done = f"{summary.sent}/{total}" if total is not None else str(summary.sent)
        skipped = sum(summary.skipped.values())
        text = (
            f"replay: sent {done}  {summary.sent / elapsed:.1f}/s  "
            f"errors {summary.transport_errors}  skipped {skipped}  in flight {summary.sent - summary.completed}"
        )
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- sending --------------------------------------------------------------------------------------


async def _aiter(records: AsyncIterable[Record] | Iterable[Record]) -> AsyncIterator[Record]:
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
    else:
        for record in records:
            yield record


class _Pacer:
    """Start times at most ``rate`` per second, without bursts after a stall."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next > now:
            await asyncio.sleep(self._next - now)
            now = loop.time()
        self._next = max(self._next, now) + self.interval


async def replay(
    records: AsyncIterable[Record] | Iterable[Record],
    target: str,
    *,
    rate: float | None = None,
    concurrency: int = 8,
    dry_run: bool = False,
    extra_headers: Iterable[tuple[str, str]] = (),
    timeout: float = 60.0,  # noqa: ASYNC109 - per request (httpx), not a bound on the whole call
    progress: Callable[..., None] | None = None,
    allow_redacted: bool = False,
    stop: asyncio.Event | None = None,
    marker: str = REDACTED,
) -> ReplaySummary:
    """Send each replayable record's request to ``target`` and summarize what came back.

    Requests start at most ``rate`` per second (None: as fast as ``concurrency`` allows), with
    at most ``concurrency`` in flight; streamed responses are read to their end. ``timeout``
    bounds connecting and each wait for response bytes. Setting ``stop`` ends the run early:
    nothing more is sent, requests in flight are cancelled (counted in ``cancelled``) and the
    summary is returned with ``interrupted``. ``progress(summary, total)`` is called as the run
    advances (``total`` when ``records`` has a length). Errors reading ``records`` end the run
    and land in ``source_error``.
    """
    base = check_target(target)
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if rate is not None and (not math.isfinite(rate) or rate <= 0):
        raise ValueError("rate must be > 0")
    if not timeout > 0:
        raise ValueError("timeout must be > 0")
    extra = [check_header(f"{name}: {value}") for name, value in extra_headers]
    total = len(records) if isinstance(records, Sized) else None
    summary = ReplaySummary(target=base, dry_run=dry_run)
    loop = asyncio.get_running_loop()
    started = loop.time()

    def notify() -> None:
        if progress is not None:
            progress(summary, total)

    async def run(client: httpx.AsyncClient | None) -> None:
        slots = asyncio.Semaphore(concurrency)
        pacer = _Pacer(rate)
        in_flight: set[asyncio.Task[None]] = set()

        async def send(plan: Plan) -> None:
            assert client is not None
            began = loop.time()
            try:
                try:
                    request = client.build_request(plan.method, plan.url, headers=plan.headers, content=plan.body)
                    response = await client.send(request, stream=True)
                    try:
                        async for _chunk in response.aiter_raw():
                            pass
                    finally:
                        await response.aclose()
                except asyncio.CancelledError:
                    summary.cancelled += 1
                    raise
                except Exception as exc:
                    summary.errors[_error_kind(exc)] += 1
                    summary.outcomes["error"] += 1
                    return
                summary.latencies.append(loop.time() - began)
                summary.outcomes[_status_class(response.status_code)] += 1
                if plan.recorded_status is not None:
                    if plan.recorded_status == response.status_code:
                        summary.same_status += 1
                    else:
                        summary.different_status += 1
                        summary.status_changes[f"{plan.recorded_status}->{response.status_code}"] += 1
            finally:
                slots.release()
                notify()

        try:
            source = _aiter(records).__aiter__()
            while True:
                try:
                    record = await source.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    summary.source_error = str(exc) or type(exc).__name__
                    break
                summary.records += 1
                plan = plan_request(record, base, extra_headers=extra, allow_redacted=allow_redacted, marker=marker)
                if isinstance(plan, Skip):
                    summary.skipped[plan.reason] += 1
                    notify()
                    continue
                if client is None:
                    summary.planned.append(
                        {"id": plan.id, "method": plan.method, "path": plan.target, "body_bytes": len(plan.body)}
                    )
                    continue
                await slots.acquire()
                try:
                    await pacer.wait()
                except BaseException:
                    slots.release()
                    raise
                summary.sent += 1
                task = asyncio.create_task(send(plan))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                notify()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def supervised(client: httpx.AsyncClient | None) -> None:
        worker = asyncio.create_task(run(client))
        if stop is None:
            await worker
            return
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not worker.done():
                worker.cancel()
                summary.interrupted = True
                await asyncio.gather(worker, return_exceptions=True)
        if not summary.interrupted:
            worker.result()

    try:
        if dry_run:
            await supervised(None)
        else:
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(
                trust_env=False, timeout=httpx.Timeout(timeout), limits=limits, follow_redirects=False
            ) as client:
                # Send exactly the recorded headers: drop the client's own defaults.
                for name in ("accept", "accept-encoding", "user-agent"):
                    client.headers.pop(name, None)
                await supervised(client)
    finally:
        summary.duration = loop.time() - started
        if progress is not None:
            progress(summary, total)
    return summary
