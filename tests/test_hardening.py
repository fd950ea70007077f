"""Hostile and broken clients, the HAProxy regtest way: raw bytes in, exact bytes and effects out.

Each case is sent on its own connection to a real proxy in front of a real simulated replica; the
replica's request counter proves what reached it. Framing the parser must reject (httptools,
the one we ship) closes the connection: no later byte on it is trusted.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_ai.settings import ConfigError, parse_settings
from haproxy_ai.settings.values import parse_duration, parse_size, parse_statuses

from .support import RunningProxy, Stack, wait_for


def _port(proxy: RunningProxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``; return everything answered and whether the proxy closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            # Closed while we were still sending: the kernel resets, and may drop the answer.
            return out or b"<reset>", True
    return out, True


def _requests(backend: Any) -> int:
    return int(httpx.get(backend.url + "/_stats", trust_env=False).json()["requests"])


@pytest.fixture
def guarded(stack: Stack) -> tuple[RunningProxy, Any]:
    backend = stack.backend()
    proxy = stack.proxy(
        [backend],
        limits={"max_header_count": 20, "max_header_bytes": "2KiB", "max_url_bytes": "1KiB"},
        timeouts={"client_header": "300ms", "client_body": "300ms"},
        health={"active": {"enabled": False}},
    )
    return proxy, backend


FRAMING = {
    "duplicate content-length": (
        b"POST /_echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "content-length and chunked": (
        b"POST /_echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "obfuscated transfer-encoding": b"POST /_echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding not ending in chunked": b"POST /_echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab",
    "bad chunk size": b"POST /_echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "CR inside a header value": b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "NUL inside a header value": b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "whitespace before the colon": b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "missing Host": b"GET /_echo HTTP/1.1\r\n\r\n",
    "two Host headers": b"GET /_echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "absolute-form target": b"GET http://evil.example/_echo HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "CONNECT": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
}


@pytest.mark.parametrize("case", list(FRAMING))
def test_ambiguous_framing_and_targets_get_400_close_and_reach_nothing(
    guarded: tuple[RunningProxy, Any], case: str
) -> None:
    proxy, backend = guarded
    before = _requests(backend)
    out, closed = _exchange(_port(proxy), FRAMING[case])
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert closed
    assert _requests(backend) == before


def test_asterisk_and_non_origin_targets_never_reach_a_backend(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, backend = guarded
    before = _requests(backend)
    out, _ = _exchange(_port(proxy), b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert _requests(backend) == before


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /_echo?" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /_echo HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(30)) + b"\r\n", b"431"),
        (b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", b"431"),
        # One field that never ends: refused once the head outgrows the caps, not buffered whole.
        (b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 200_000, b"431"),
    ],
    ids=["url", "header-count", "header-bytes", "unterminated-header"],
)
def test_oversized_requests_are_refused_before_reaching_a_backend(
    guarded: tuple[RunningProxy, Any], request_bytes: bytes, status: bytes
) -> None:
    proxy, backend = guarded
    before = _requests(backend)
    out, closed = _exchange(_port(proxy), request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status + b" ") or out == b"<reset>", out[:200]
    assert closed and _requests(backend) == before


def test_slow_headers_get_408_and_the_connection_closed(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, backend = guarded
    before = _requests(backend)
    started = time.monotonic()
    out, closed = _exchange(_port(proxy), b"GET /_echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert out.startswith(b"HTTP/1.1 408 ") and closed
    assert time.monotonic() - started < 4.0  # the 300 ms deadline, not the client's patience
    assert _requests(backend) == before


def test_a_silent_connection_is_closed(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, _ = guarded
    out, closed = _exchange(_port(proxy), b"")
    assert out == b"" and closed


def test_a_slow_body_gets_408_and_holds_no_upstream_connection(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, backend = guarded
    before = _requests(backend)
    out, closed = _exchange(_port(proxy), b"POST /_echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
    assert out.startswith(b"HTTP/1.1 408 ") and closed, out[:200]
    assert b"client_body" in out
    assert _requests(backend) == before


def test_keep_alive_requests_each_get_their_own_header_deadline(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, _ = guarded
    with socket.create_connection(("127.0.0.1", _port(proxy)), timeout=5) as s:
        for _ in range(3):
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length: " in head else 0
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += s.recv(65536)
            time.sleep(0.1)  # a pause shorter than the deadline between requests is fine


def test_well_behaved_clients_are_served_while_slowloris_connections_pile_up(
    guarded: tuple[RunningProxy, Any],
) -> None:
    proxy, _ = guarded
    port = _port(proxy)
    attackers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        for s in attackers:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=5) as c:
            for _ in range(20):
                assert c.get("/v1/models").status_code == 200

        def all_closed() -> bool:
            for s in attackers:
                s.settimeout(0.01)
                try:
                    if s.recv(65536) == b"":
                        continue
                except TimeoutError:
                    return False
                except OSError:
                    continue
            return True

        wait_for(all_closed, timeout=10)  # every one got its 408 and was closed
    finally:
        for s in attackers:
            s.close()


def test_forwarded_for_is_appended_and_trusted_only_from_configured_proxies(stack: Stack, tmp_path: Any) -> None:
    backend = stack.backend()
    spool = tmp_path / "spool"
    plain = stack.proxy([backend], mirror={"enabled": True, "spool_dir": str(spool / "a"), "fsync_interval": "20ms"})
    trusting = stack.proxy(
        [backend],
        listen={"trusted_proxies": ["127.0.0.0/8"]},
        mirror={"enabled": True, "spool_dir": str(spool / "b"), "fsync_interval": "20ms"},
    )
    from haproxy_ai.mirror.reader import iter_spool

    for proxy, directory in ((plain, spool / "a"), (trusting, spool / "b")):
        r = httpx.get(proxy.url + "/_echo", headers={"X-Forwarded-For": "203.0.113.9"}, trust_env=False)
        echoed = dict((k.lower(), v) for k, v in r.json()["headers"])
        assert echoed["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"  # appended either way
        wait_for(lambda d=directory: len(list(iter_spool(d))) == 1)
    assert next(iter(iter_spool(spool / "a")))["client"] == "127.0.0.1"  # a client cannot claim an address
    assert next(iter(iter_spool(spool / "b")))["client"] == "203.0.113.9"  # a trusted proxy can
    with pytest.raises(ConfigError, match=r"listen.trusted_proxies\[0\]"):
        parse_settings({"backends": ["http://a:1"], "listen": {"trusted_proxies": ["not-a-network"]}})


# -- property-based: the parsers never crash and never accept nonsense --------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_duration_parser_either_parses_or_says_why(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert value >= 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_parser_round_trips_units(number: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * scale)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True)))
def test_size_and_status_parsers_never_crash(value: Any) -> None:
    for parse in (parse_size, parse_statuses):
        try:
            parse(value)
        except ValueError as exc:
            assert str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["listen", "limits", "timeouts", "retry", "hedge", "mirror", "bogus"]),
        st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=8), st.integers(), st.booleans())),
        max_size=3,
    )
)
def test_config_parser_accepts_or_names_every_problem(data: dict[str, Any]) -> None:
    try:
        parse_settings({"backends": ["http://127.0.0.1:1"], **data})
    except ConfigError as exc:
        assert exc.issues and all(issue.path for issue in exc.issues)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        ),
        max_size=8,
    )
)
def test_raw_header_blocks_never_crash_the_listener(guarded_port: int, headers: list[tuple[str, str]]) -> None:
    block = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    out, _ = _exchange(guarded_port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + block + b"Connection: close\r\n\r\n")
    assert out[:12] in (b"HTTP/1.1 200", b"HTTP/1.1 400", b"HTTP/1.1 431"), out[:100]


@pytest.fixture(scope="module")
def guarded_port(loop_thread: Any) -> Any:
    stack = Stack(loop_thread)
    backend = stack.backend()
    proxy = stack.proxy([backend], health={"active": {"enabled": False}})
    yield _port(proxy)
    stack.close()


# -- broken backends ----------------------------------------------------------------------------

BROKEN = {
    "conflicting content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "CR in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "garbage status line": b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
    "not HTTP at all": b"SSH-2.0-OpenSSH_9.6\r\n",
    "bad chunk framing": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("upstream", ["aiohttp", "httpx"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_responses_from_a_backend_become_502(loop_thread: Any, stack: Stack, case: str, upstream: str) -> None:
    from .support import RawBackend

    raw = RawBackend(loop_thread, BROKEN[case]).start()
    try:
        proxy = stack.proxy(
            [{"url": raw.url}],
            upstream={"client": upstream},
            retry={"enabled": False},
            health={"active": {"enabled": False}, "passive": {"enabled": False}},
        )
        r = httpx.get(proxy.url + "/v1/models", trust_env=False, timeout=10)
        if case == "bad chunk framing" and r.status_code == 200:
            # Headers were fine, so they went out; the body then broke: the client must see an
            # incomplete response, never a complete-looking one.
            pytest.fail("a broken chunked body ended as a complete response")
        assert r.status_code == 502, (r.status_code, r.text)
        assert r.json()["error"]["type"] == "upstream_error"
    except httpx.RemoteProtocolError:
        assert case == "bad chunk framing"  # cut mid-body: the right outcome once headers were sent
    finally:
        raw.close()


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_the_replica_stops(loop_thread: Any, stack: Stack) -> None:
    import asyncio

    stopped = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A replica streaming 64 KiB events as fast as the proxy takes them.
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        event = b"data: " + b"x" * 65536 + b"\n\n"
        try:
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
        except (ConnectionError, OSError):
            stopped.set()  # the proxy closed the upstream connection: generation would stop
        finally:
            writer.close()

    async def start() -> asyncio.base_events.Server:
        return await asyncio.start_server(flood, "127.0.0.1", 0)

    server = loop_thread.run(start())
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = stack.proxy(
            [{"url": f"http://127.0.0.1:{port}"}],
            timeouts={"client_send": "500ms"},
            health={"active": {"enabled": False}},
        )
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", _port(proxy)))
            s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            # ... and never read: once the socket buffers fill, the proxy's send blocks.
            wait_for(stopped.is_set, timeout=20)
        metrics = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
        assert "haproxy_ai_truncated_responses_total 1.0" in metrics
    finally:
        loop_thread.loop.call_soon_threadsafe(server.close)


def test_sighup_reloads_under_load_lose_no_request(stack: Stack, tmp_path: Any) -> None:
    import signal
    import sys
    import threading

    import yaml

    from .support import clean_env, spawn

    backends = [stack.backend(name=f"r{i}") for i in range(3)]
    config = tmp_path / "haproxy-ai.yaml"

    def write(active: list[Any], weight: int) -> None:
        data = {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "backends": [{"url": b.url, "weight": weight} for b in active],
        }
        config.write_text(yaml.safe_dump(data))

    write(backends[:2], 1)
    env = clean_env({"PYTHONUNBUFFERED": "1"})
    with spawn([sys.executable, "-m", "haproxy_ai", "serve", "--config", str(config)], env) as proc:
        url = proc.expect(r"proxying (http://\S+) ->").group(1)
        statuses: list[int] = []
        done = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
                while not done.is_set():
                    statuses.append(c.get("/v1/models").status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            # Add a backend, reweight, drain-and-remove one, put it back: each while requests flow.
            for active, weight in ((backends, 1), (backends, 3), (backends[1:], 2), (backends, 1)):
                seen = len(statuses)
                write(active, weight)
                proc.send_signal(signal.SIGHUP)
                proc.expect(r"reload: ", timeout=10)
                wait_for(lambda n=seen: len(statuses) > n + 50, timeout=20)
        finally:
            done.set()
            for t in threads:
                t.join(15)
        proc.stop()
    assert len(statuses) > 200
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_the_data_port_never_serves_admin_routes(guarded: tuple[RunningProxy, Any]) -> None:
    proxy, _ = guarded
    for path in ("/admin/backends", "/admin/config", "/metrics", "/readyz", "/admin/"):
        r = httpx.get(proxy.url + path, trust_env=False)
        assert r.headers.get("x-haproxy-ai-backend"), path  # proxied to the replica like any path
        assert "haproxy_ai_requests_total" not in r.text and '"panic"' not in r.text


def test_hundreds_of_slow_clients_keep_memory_bounded_and_others_fast(stack: Stack, tmp_path: Any) -> None:
    import statistics
    import sys

    import yaml

    from .support import clean_env, spawn

    backend = stack.backend()
    config = tmp_path / "haproxy-ai.yaml"
    config.write_text(
        yaml.safe_dump({"listen": {"port": 0}, "admin": {"port": 0}, "backends": [backend.url], "health": {}})
    )
    with spawn([sys.executable, "-m", "haproxy_ai", "serve", "--config", str(config)], clean_env()) as proc:
        url = proc.expect(r"proxying (http://\S+) ->").group(1)
        port = int(url.rsplit(":", 1)[1])

        def rss() -> int:
            for line in open(f"/proc/{proc.popen.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        with httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
            for _ in range(50):
                c.get("/v1/models")
            base = rss()
            attackers = []
            try:
                for i in range(300):
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    # Each holds a request head just under the caps, never finished.
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad-%d: " % i + b"a" * 30000)
                    attackers.append(s)
                latencies = []
                for _ in range(100):
                    started = time.monotonic()
                    assert c.get("/v1/models").status_code == 200
                    latencies.append(time.monotonic() - started)
                grown = rss() - base
            finally:
                for s in attackers:
                    s.close()
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB with 300 slow clients"
    assert statistics.median(latencies) < 0.1, statistics.median(latencies)


@pytest.mark.parametrize("upstream", ["aiohttp", "httpx"])
def test_a_connection_that_sent_a_broken_response_is_never_reused(
    loop_thread: Any, stack: Stack, upstream: str
) -> None:
    import asyncio

    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keeps the connection open: the first answer on it is broken, any later one is fine.
        connections.append(1)
        answered = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if answered == 0:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                answered += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start() -> asyncio.base_events.Server:
        return await asyncio.start_server(serve, "127.0.0.1", 0)

    server = loop_thread.run(start())
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = stack.proxy(
            [{"url": f"http://127.0.0.1:{port}"}],
            upstream={"client": upstream},
            retry={"enabled": False},
            health={"active": {"enabled": False}, "passive": {"enabled": False}},
        )
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            assert c.get("/a").status_code == 502
            assert c.get("/b").status_code == 502  # a fresh connection, whose first answer is broken too
        assert len(connections) == 2
    finally:
        loop_thread.loop.call_soon_threadsafe(server.close)


def test_compressed_request_bodies_pass_through_raw(loop_thread: Any, stack: Stack) -> None:
    import gzip

    from .support import RawBackend

    raw = RawBackend(loop_thread, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").start()
    try:
        proxy = stack.proxy([{"url": raw.url}], health={"active": {"enabled": False}})
        body = gzip.compress(b'{"prompt": "' + b"x" * 10_000 + b'"}')
        r = httpx.post(
            proxy.url + "/v1/completions", content=body, headers={"Content-Encoding": "gzip"}, trust_env=False
        )
        assert r.status_code == 200
        (received,) = raw.requests
        head, _, forwarded = received.partition(b"\r\n\r\n")
        assert forwarded == body  # byte for byte: never decompressed on the way (no unbounded inflate)
        assert b"content-encoding: gzip" in head.lower()
    finally:
        raw.close()
