"""Active probes against real servers on loopback: the fake replica and tiny raw TCP servers.

Each test runs its own event loop (``asyncio.run``), bounded so a regression fails instead of
hanging. Waiting is done on events or by polling with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest

from haproxy_ai.backends.backend import Backend
from haproxy_ai.clock import FakeClock, SystemClock
from haproxy_ai.fake_backend import FakeBackend, FakeBackendOptions
from haproxy_ai.health.probe import MAX_BODY, Prober, ProbeResult, next_delay, probe_once
from haproxy_ai.settings import ActiveCheckSettings

SECRET = "Bearer s3cret-token"


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``test`` on a fresh loop, bounded so a regression fails instead of hanging."""

    async def bounded() -> None:
        async with asyncio.timeout(5):
            await test()

    asyncio.run(bounded())


@asynccontextmanager
async def fake(**options: Any) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend(FakeBackendOptions(**options))
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()


@asynccontextmanager
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not sit between the test and loopback.
    # The header stands in for a secret that must never show up in a probe's detail.
    async with httpx.AsyncClient(trust_env=False, headers={"authorization": SECRET}) as c:
        yield c


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A bare TCP server on an ephemeral loopback port running ``handler`` per connection;
    yields its ``http://`` URL. Open connections are closed at exit so nothing lingers."""
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


def silent(accepted: asyncio.Event) -> Handler:
    """Accepts, reads the request, never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read(65536)
        await asyncio.Event().wait()

    return handle


def answering(response: bytes, then_hang: bool = False) -> Handler:
    """Reads the request head and writes ``response`` (optionally keeping the socket open)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        if then_hang:
            await asyncio.Event().wait()
        writer.close()

    return handle


def refused_url() -> str:
    """A loopback URL nobody listens on: bind an ephemeral port, then free it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def checks(**overrides: Any) -> ActiveCheckSettings:
    return replace(ActiveCheckSettings(timeout=1.0), **overrides)


async def probe(url: str, settings: ActiveCheckSettings | None = None, **overrides: Any) -> ProbeResult:
    async with client() as c:
        return await probe_once(c, Backend("b", url), settings or checks(**overrides), SystemClock())


def assert_clean(result: ProbeResult) -> None:
    assert result.duration >= 0
    assert "s3cret" not in result.detail


# -- next_delay -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "fast_interval", "jitter", "fast", "low", "high"),
    [
        (2.0, 0.5, 0.0, False, 2.0, 2.0),
        (2.0, 0.5, 0.0, True, 0.5, 0.5),
        (2.0, 0.5, 0.5, False, 1.0, 3.0),
        (2.0, 0.5, 0.5, True, 0.25, 0.75),
        (0.01, 0.002, 0.1, True, 0.0018, 0.0022),
        # jitter 1 can draw u = -1; the delay still never drops below 1 ms.
        (0.5, 0.1, 1.0, False, 0.001, 1.0),
    ],
)
def test_next_delay_bounds(
    interval: float, fast_interval: float, jitter: float, fast: bool, low: float, high: float
) -> None:
    settings = checks(interval=interval, fast_interval=fast_interval, jitter=jitter)
    rng = random.Random(1234)
    delays = [next_delay(settings, fast=fast, rng=rng) for _ in range(2000)]
    assert all(low - 1e-12 <= d <= high + 1e-12 for d in delays)
    assert min(delays) >= 0.001
    if jitter:
        # Really jittered, and spread over most of the range.
        spread = high - max(low, 0.001)
        assert max(delays) - min(delays) > 0.8 * spread


def test_next_delay_floor_at_1ms() -> None:
    class Lowest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    settings = checks(interval=0.5, jitter=1.0)
    assert next_delay(settings, fast=False, rng=Lowest()) == 0.001


def test_next_delay_is_deterministic_for_a_seed() -> None:
    settings = checks(jitter=0.3)
    first = [next_delay(settings, fast=i % 2 == 0, rng=r) for r in [random.Random(7)] for i in range(20)]
    second = [next_delay(settings, fast=i % 2 == 0, rng=r) for r in [random.Random(7)] for i in range(20)]
    assert first == second


# -- probe_once against the fake replica ------------------------------------------------------


def test_healthy_backend_passes() -> None:
    async def body() -> None:
        async with fake() as b:
            result = await probe(b.url)
        assert result == ProbeResult(True, 200, "200", result.duration, result.at)
        assert_clean(result)

    run(body)


@pytest.mark.parametrize("status", [500, 503])
def test_error_fault_fails_with_status(status: int) -> None:
    async def body() -> None:
        async with fake() as b:
            b.set_fault("error", status=status)
            result = await probe(b.url)
        assert not result.ok
        assert result.status == status
        assert result.detail == f"status {status} not expected"
        assert_clean(result)

    run(body)


@pytest.mark.parametrize(
    ("ranges", "fault_status", "ok"),
    [
        (((500, 599),), 500, True),  # expecting 5xx makes the error fault pass
        (((200, 299),), 500, False),
        (((200, 204), (503, 503)), 503, True),  # any of several ranges
        (((200, 204), (503, 503)), 502, False),
        (((500, 599),), None, False),  # ... and a healthy 200 then fails
    ],
)
def test_expected_status_ranges(ranges: tuple[tuple[int, int], ...], fault_status: int | None, ok: bool) -> None:
    async def body() -> None:
        async with fake() as b:
            if fault_status is not None:
                b.set_fault("error", status=fault_status)
            result = await probe(b.url, expected_statuses=ranges)
        assert result.ok is ok
        assert result.status == (fault_status or 200)

    run(body)


@pytest.mark.parametrize(
    ("needle", "ok", "detail"),
    [
        ("", True, "200"),
        ('"status"', True, "200"),
        ("ok", True, "200"),
        ("ready", False, "body lacks 'ready'"),
    ],
)
def test_body_contains(needle: str, ok: bool, detail: str) -> None:
    async def body() -> None:
        async with fake() as b:
            result = await probe(b.url, body_contains=needle)
        assert (result.ok, result.status, result.detail) == (ok, 200, detail)

    run(body)


@pytest.mark.parametrize(
    ("served", "wanted", "ok", "detail"),
    [
        ("llama", "llama", True, "200"),
        ("llama", "mistral", False, "model 'mistral' not listed"),
        ("llama-70b", "llama", False, "model 'llama' not listed"),  # exact id, not a prefix
    ],
)
def test_model_check(served: str, wanted: str, ok: bool, detail: str) -> None:
    async def body() -> None:
        async with fake(model=served) as b:
            # `path` is ignored when `model` is set; a bogus one proves /v1/models is used.
            result = await probe(b.url, model=wanted, path="/nowhere")
        assert (result.ok, result.status, result.detail) == (ok, 200, detail)

    run(body)


def test_model_check_follows_status() -> None:
    async def body() -> None:
        async with raw_server(answering(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")) as url:
            result = await probe(url, model="llama")
        assert (result.ok, result.status, result.detail) == (False, 503, "status 503 not expected")

    run(body)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"not json", "invalid JSON from /v1/models"),
        (b"\xff\xfe{", "invalid JSON from /v1/models"),
        (b'{"object": "list"}', "no 'data' list in /v1/models"),
        (b"[1, 2]", "no 'data' list in /v1/models"),
        (b'{"data": [1, {"name": "llama"}, {"id": "other"}]}', "model 'llama' not listed"),
    ],
)
def test_model_check_bad_bodies(payload: bytes, detail: str) -> None:
    async def body() -> None:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        async with raw_server(answering(response)) as url:
            result = await probe(url, model="llama")
        assert (result.ok, result.status, result.detail) == (False, 200, detail)

    run(body)


def test_method_and_base_path_are_used() -> None:
    async def body() -> None:
        async with fake() as b:
            # /_echo reflects the request: the probe must send POST to base path + probe path.
            result = await probe(f"{b.url}/_echo", method="POST", path="/probe", body_contains='"/_echo/probe"')
            assert (result.ok, result.detail) == (True, "200")
            result = await probe(f"{b.url}/_echo", method="POST", path="/probe", body_contains='"GET"')
            assert (result.ok, result.detail) == (False, "body lacks '\"GET\"'")
            head = await probe(b.url, method="HEAD")
            assert (head.ok, head.status) == (True, 200)

    run(body)


def test_hang_fault_does_not_fail_health() -> None:
    """Model servers lie: a hung inference path still answers /health, and a probe says so."""

    async def body() -> None:
        async with fake() as b:
            b.set_fault("hang")
            result = await probe(b.url)
        assert result.ok

    run(body)


# -- probe_once: network failures ---------------------------------------------------------------


def test_timeout_when_server_never_answers() -> None:
    async def body() -> None:
        accepted = asyncio.Event()
        async with raw_server(silent(accepted)) as url:
            result = await probe(url, timeout=0.2)
        assert accepted.is_set()
        assert (result.ok, result.status, result.detail) == (False, None, "timeout after 0.2s")
        assert 0.15 <= result.duration < 1.0
        assert_clean(result)

    run(body)


def test_timeout_bounds_the_whole_probe_including_body() -> None:
    async def body() -> None:
        # Headers arrive at once, the body never ends: only the overall bound can stop this.
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart"
        async with raw_server(answering(head, then_hang=True)) as url:
            result = await probe(url, timeout=0.2)
        assert (result.ok, result.detail) == (False, "timeout after 0.2s")
        assert result.duration < 1.0

    run(body)


def test_body_read_stops_at_cap() -> None:
    async def body() -> None:
        # Promises 10 MB, sends 2 x the cap of filler, then stalls. Reading stops at the cap, so
        # the probe ends well before its timeout and judges what it has.
        filler = b"x" * (2 * MAX_BODY)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"
        async with raw_server(answering(head + filler, then_hang=True)) as url:
            result = await probe(url, timeout=1.5, body_contains="needle")
        assert (result.ok, result.status, result.detail) == (False, 200, "body lacks 'needle'")
        assert result.duration < 1.0

    run(body)


def test_connect_refused() -> None:
    async def body() -> None:
        result = await probe(refused_url())
        assert not result.ok
        assert result.status is None
        assert result.detail.startswith("connect failed: ")
        assert_clean(result)

    run(body)


def test_garbage_response_is_an_error_not_an_exception() -> None:
    async def body() -> None:
        async with raw_server(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as url:
            result = await probe(url)
        assert (result.ok, result.status) == (False, None)
        assert result.detail.startswith("error: ")
        assert_clean(result)

    run(body)


def test_connection_closed_before_response() -> None:
    async def body() -> None:
        async with raw_server(answering(b"")) as url:
            result = await probe(url)
        assert (result.ok, result.status) == (False, None)
        assert result.detail.startswith("error: ")

    run(body)


def test_times_come_from_the_given_clock() -> None:
    async def body() -> None:
        clock = FakeClock()
        async with fake() as b, client() as c:
            result = await probe_once(c, Backend("b", b.url), checks(), clock)
        assert result.ok
        assert result.duration == 0.0  # the fake clock did not move
        assert result.at == clock.time()

    run(body)


def test_cancellation_propagates() -> None:
    async def body() -> None:
        accepted = asyncio.Event()
        async with raw_server(silent(accepted)) as url, client() as c:
            task = asyncio.create_task(probe_once(c, Backend("b", url), checks(timeout=30.0), SystemClock()))
            await accepted.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()

    run(body)


# -- Prober -------------------------------------------------------------------------------------


class Collector:
    """A ``report`` callback that records results and wakes waiters; can be told to raise."""

    def __init__(self, fail: bool = False) -> None:
        self.results: list[tuple[Backend, ProbeResult]] = []
        self.fail = fail
        self._changed = asyncio.Event()

    def __call__(self, backend: Backend, result: ProbeResult) -> None:
        self.results.append((backend, result))
        self._changed.set()
        if self.fail:
            raise RuntimeError("report is broken")

    async def wait_for(self, count: int, within: float = 1.5) -> None:
        async with asyncio.timeout(within):
            while len(self.results) < count:
                self._changed.clear()
                await self._changed.wait()


def prober(
    backend: Backend, c: httpx.AsyncClient, report: Collector, *, fast: bool = False, **overrides: Any
) -> Prober:
    settings = checks(**{"interval": 0.01, "fast_interval": 0.01, "jitter": 0.0, "timeout": 0.5, **overrides})
    return Prober(
        backend,
        settings,
        client=c,
        report=report,
        fast=lambda: fast,
        rng=random.Random(1),
        clock=SystemClock(),
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_prober_reports_repeatedly_and_stops_on_cancel() -> None:
    async def body() -> None:
        async with fake() as b, client() as c:
            backend = Backend("b", b.url)
            report = Collector()
            task = asyncio.create_task(prober(backend, c, report).run())
            await report.wait_for(3)
            await stop(task)
        assert all(be is backend for be, _ in report.results)
        assert all(r.ok and r.detail == "200" for _, r in report.results)

    run(body)


def test_prober_follows_backend_going_down_and_up() -> None:
    async def body() -> None:
        async with fake() as b, client() as c:
            report = Collector()
            task = asyncio.create_task(prober(Backend("b", b.url), c, report).run())
            await report.wait_for(1)
            b.set_fault("error", status=503)
            seen = len(report.results)
            await report.wait_for(seen + 2)  # the first may have been in flight already
            assert not report.results[-1][1].ok
            b.set_fault("ok")
            seen = len(report.results)
            await report.wait_for(seen + 2)
            assert report.results[-1][1].ok
            await stop(task)

    run(body)


def test_prober_survives_a_raising_report(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with fake() as b, client() as c:
            report = Collector(fail=True)
            task = asyncio.create_task(prober(Backend("b", b.url), c, report).run())
            await report.wait_for(3)
            assert not task.done()
            await stop(task)

    with caplog.at_level(logging.ERROR, logger="haproxy_ai.health.probe"):
        run(body)
    # The log redaction filter (installed by any proxy in this process) keeps the traceback as
    # redacted text only.
    failures = [
        r
        for r in caplog.records
        if (r.exc_info and isinstance(r.exc_info[1], RuntimeError))
        or "RuntimeError: report is broken" in (r.exc_text or "")
    ]
    assert len(failures) >= 3


def test_prober_uses_fast_interval_when_told() -> None:
    async def body() -> None:
        async with fake() as b, client() as c:
            # A 30 s normal interval: only the fast one can produce several reports in time.
            report = Collector()
            task = asyncio.create_task(prober(Backend("b", b.url), c, report, fast=True, interval=30.0).run())
            await report.wait_for(3)
            await stop(task)

    run(body)


def test_prober_initial_delay_is_bounded_by_interval_times_jitter() -> None:
    async def body() -> None:
        async with fake() as b, client() as c:
            # interval 30 s but jitter 0.001: the first probe starts within 30 ms, then the
            # fast interval takes over.
            report = Collector()
            p = prober(Backend("b", b.url), c, report, fast=True, interval=30.0, jitter=0.001)
            task = asyncio.create_task(p.run())
            await report.wait_for(2)
            await stop(task)

    run(body)


def test_prober_keeps_probing_an_unreachable_backend() -> None:
    async def body() -> None:
        async with client() as c:
            report = Collector()
            task = asyncio.create_task(prober(Backend("b", refused_url()), c, report).run())
            await report.wait_for(3)
            await stop(task)
        assert all(not r.ok and r.detail.startswith("connect failed") for _, r in report.results)

    run(body)


def test_prober_cancel_during_probe() -> None:
    async def body() -> None:
        accepted = asyncio.Event()
        async with raw_server(silent(accepted)) as url, client() as c:
            report = Collector()
            task = asyncio.create_task(prober(Backend("b", url), c, report, timeout=30.0).run())
            await accepted.wait()
            await stop(task)
        assert report.results == []

    run(body)
