"""The request path end to end: real proxy, real simulated replicas, ephemeral loopback ports.

Every test here runs against both upstream client implementations (aiohttp and httpx).
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from .support import RawBackend, Stack, client, raw_request, wait_for


def _proxy(stack: Stack, upstream_client: str, backends: list, **sections):  # type: ignore[no-untyped-def]
    sections.setdefault("upstream", {})["client"] = upstream_client
    return stack.proxy(backends, **sections)


def _read_cut_stream(proxy, payload: dict) -> list[str]:  # type: ignore[no-untyped-def]
    """Read an SSE stream that must end abnormally (an incomplete chunked body); return its lines."""
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError), client(proxy.url) as c:
        with c.stream("POST", "/v1/chat/completions", json=payload) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                received.append(line)
    assert "data: [DONE]" not in received  # never a made-up end
    return received


def _stats(backend) -> dict:  # type: ignore[no-untyped-def]
    return httpx.get(backend.url + "/_stats", trust_env=False).json()


def test_methods_paths_queries_bodies_and_headers_pass_through(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    with client(proxy.url) as c:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            body = b"" if method in ("GET", "OPTIONS") else b"\x00binary\xffbody " + method.encode()
            r = c.request(
                method,
                "/_echo/v1?x=1&y=%20z&y=2",
                content=body,
                headers=[("X-Custom", "one"), ("X-Custom", "two"), ("Authorization", "Bearer sk-test")],
            )
            assert r.status_code == 200, r.text
            echo = r.json()
            assert echo["method"] == method
            assert echo["path"] == "/_echo/v1?x=1&y=%20z&y=2"
            assert echo["body"].encode("latin-1") == body
            headers = [(k.lower(), v) for k, v in echo["headers"]]
            assert [v for k, v in headers if k == "x-custom"] == ["one", "two"]
            assert ("authorization", "Bearer sk-test") in headers
            assert dict(headers)["host"] == f"127.0.0.1:{backend.port}"


def test_request_target_is_forwarded_byte_for_byte(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    port = int(proxy.url.rsplit(":", 1)[1])
    # No normalisation that could differ from the replica's: dot-segments, encoded slashes,
    # odd escapes and empty query parameters pass through as received.
    for target in (b"/_echo/a%2Fb/../c/./d?x=1&y=%20z&y=2", b"/_echo//double", b"/_echo/%7Euser?a=%zz&&b"):
        raw = raw_request(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw
        assert json.loads(body)["path"] == target.decode()


def test_forwarding_headers_and_request_id(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend(name="r1")
    proxy = _proxy(stack, upstream_client, [{"url": backend.url, "name": "r1"}])
    with client(proxy.url) as c:
        r = c.get("/_echo", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-Id": "req-abc.123"})
        echo = dict((k.lower(), v) for k, v in r.json()["headers"])
        assert echo["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert echo["x-forwarded-proto"] == "http"
        assert echo["x-forwarded-host"] == proxy.url.removeprefix("http://")
        assert echo["x-request-id"] == "req-abc.123"
        assert r.headers["x-request-id"] == "req-abc.123"
        assert r.headers["x-haproxy-ai-backend"] == "r1"
        timing = r.headers["server-timing"]
        assert timing.startswith("proxy;dur=") and "upstream;dur=" in timing

        generated = c.get("/_echo", headers={"X-Request-Id": "bad id with spaces"})
        rid = generated.headers["x-request-id"]
        assert rid != "bad id with spaces" and len(rid) == 32
        assert dict((k.lower(), v) for k, v in generated.json()["headers"])["x-request-id"] == rid


def test_backend_header_can_be_turned_off(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend], upstream={"backend_header": False, "server_timing": False})
    r = httpx.get(proxy.url + "/_echo", trust_env=False)
    assert "x-haproxy-ai-backend" not in r.headers
    assert "server-timing" not in r.headers


def test_hop_by_hop_request_headers_are_stripped(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    port = int(proxy.url.rsplit(":", 1)[1])
    raw = raw_request(
        port,
        b"GET /_echo HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    names = {k.lower() for k, _ in json.loads(body)["headers"]}
    assert "x-end-to-end" in names
    for hop in ("connection", "x-secret-hop", "keep-alive", "te", "upgrade", "proxy-authorization", "proxy-connection"):
        assert hop not in names, hop


def test_hop_by_hop_response_headers_are_stripped(stack: Stack, upstream_client: str) -> None:
    body = b'{"ok": true}'
    raw = RawBackend(
        stack.loop,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=9\r\nProxy-Authenticate: Basic\r\n"
        b"Trailer: X-T\r\nX-Kept: yes\r\n\r\n%s" % (len(body), body),
    ).start()
    try:
        proxy = _proxy(stack, upstream_client, [raw])
        r = httpx.get(proxy.url + "/anything", trust_env=False)
        assert r.status_code == 200 and r.content == body
        assert r.headers["x-kept"] == "yes"
        for hop in ("x-hop", "keep-alive", "proxy-authenticate", "trailer"):
            assert hop not in r.headers, hop
    finally:
        raw.close()


def test_sse_stream_arrives_incrementally(stack: Stack, upstream_client: str) -> None:
    # 20 chunks 100 ms apart: if the proxy buffered, the first event could not arrive while
    # the replica is still generating.
    backend = stack.backend(tokens=20, chunk_interval=0.1)
    proxy = _proxy(stack, upstream_client, [backend])
    payload = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with client(proxy.url) as c, c.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        stats = _stats(backend)
        assert stats["completed"] == 0 and stats["in_flight"] == 1, stats
        events = [first] + [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 21
    wait_for(lambda: _stats(backend)["completed"] == 1)


def test_client_disconnect_mid_stream_cancels_upstream(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend(tokens=200, chunk_interval=0.05)
    proxy = _proxy(stack, upstream_client, [backend])
    payload = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with client(proxy.url) as c, c.stream("POST", "/v1/chat/completions", json=payload) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    # The client is gone after the first event; the replica must see it within moments.
    wait_for(lambda: _stats(backend)["cancelled"] == 1)
    stats = _stats(backend)
    assert stats["completed"] == 0 and stats["in_flight"] == 0
    wait_for(lambda: proxy.proxy.registry.snapshot().backends[0].stats.inflight == 0)
    metrics = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    assert "haproxy_ai_client_disconnects_total 1.0" in metrics


def test_client_disconnect_before_headers_cancels_upstream(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    backend.set_fault("hang")
    proxy = _proxy(stack, upstream_client, [backend])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"}, timeout=0.3, trust_env=False)
    wait_for(lambda: _stats(backend)["cancelled"] == 1)
    assert 'outcome="client_gone"' in httpx.get(proxy.admin_url + "/metrics", trust_env=False).text


def test_request_body_over_limit_gets_413_and_reaches_no_backend(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend], limits={"max_request_body": "1KiB"})
    with client(proxy.url) as c:
        ok = c.post("/_echo", content=b"x" * 1024)
        assert ok.status_code == 200 and ok.json()["body_len"] == 1024
        r = c.post("/v1/completions", content=b"x" * 1025)
        assert r.status_code == 413
        error = r.json()["error"]
        assert error["code"] == "request_body_too_large" and error["request_id"] == r.headers["x-request-id"]
        # Chunked (no Content-Length): refused as soon as the running total passes the cap.
        r = c.post("/v1/completions", content=iter([b"y" * 600, b"y" * 600]))
        assert r.status_code == 413
    # Declared too large: refused before any body byte is sent.
    port = int(proxy.url.rsplit(":", 1)[1])
    raw = raw_request(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 413")
    assert _stats(backend)["requests"] == 0


def test_connect_refused_is_502_json(stack: Stack, upstream_client: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = _proxy(stack, upstream_client, [{"url": f"http://127.0.0.1:{port}", "name": "dead"}])
    r = httpx.post(proxy.url + "/v1/chat/completions", json={}, trust_env=False)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_connect_failed" and error["type"] == "upstream_error"
    assert "dead" in error["message"]
    assert r.headers["x-haproxy-ai-backend"] == "dead"


def test_reset_before_headers_is_502(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    backend.set_fault("reset")
    proxy = _proxy(stack, upstream_client, [backend])
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"}, trust_env=False)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_reset"


def test_first_byte_timeout_is_504(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    backend.set_fault("hang")
    proxy = _proxy(stack, upstream_client, [backend], timeouts={"first_byte": "200ms"})
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"}, trust_env=False)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_first_byte_timeout"
    attempts = int(r.headers["x-haproxy-ai-attempts"])  # retried (same backend: the only one)
    assert attempts == 3
    wait_for(lambda: _stats(backend)["cancelled"] == attempts)


def test_total_timeout_is_504(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    backend.set_fault("hang")
    proxy = _proxy(stack, upstream_client, [backend], timeouts={"total": "200ms"})
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"}, trust_env=False)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "request_timeout"


def test_total_deadline_mid_stream_truncates_and_cancels(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend(tokens=100, chunk_interval=0.05)
    proxy = _proxy(stack, upstream_client, [backend], timeouts={"total": "400ms"})
    received = _read_cut_stream(proxy, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    events = [line for line in received if line.startswith("data: ")]
    assert 0 < len(events) < 100
    wait_for(lambda: _stats(backend)["cancelled"] == 1)
    metrics = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    assert 'outcome="total_timeout"' in metrics


def test_idle_timeout_mid_stream_truncates_never_completes(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend(tokens=5, chunk_interval=2.0)
    proxy = _proxy(stack, upstream_client, [backend], timeouts={"idle": "200ms"})
    _read_cut_stream(proxy, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    wait_for(lambda: _stats(backend)["cancelled"] == 1)
    assert "haproxy_ai_truncated_responses_total 1.0" in httpx.get(proxy.admin_url + "/metrics", trust_env=False).text


def test_backend_dying_mid_stream_gives_an_abnormal_end(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend(tokens=10)
    backend.set_fault("reset", after_chunks=3)
    proxy = _proxy(stack, upstream_client, [backend])
    received = _read_cut_stream(proxy, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    events = [line for line in received if line.startswith("data: ")]
    assert len(events) == 3  # every byte the replica sent, then an abnormal end


def test_no_routable_backend_is_503_with_retry_after(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [{"url": backend.url, "name": "only"}])
    stack.call(proxy.proxy.health.disable, "only")
    r = httpx.get(proxy.url + "/v1/models", trust_env=False)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "no_backend_available"
    assert httpx.get(proxy.admin_url + "/readyz", trust_env=False).status_code == 503


def test_round_robin_weights_hold_exactly(stack: Stack, upstream_client: str) -> None:
    backends = [stack.backend() for _ in range(3)]
    proxy = _proxy(
        stack,
        upstream_client,
        [{"url": b.url, "name": f"b{i}", "weight": i + 1} for i, b in enumerate(backends)],
        balancer={"type": "round_robin"},
    )
    counts = {"b0": 0, "b1": 0, "b2": 0}
    with client(proxy.url) as c:
        for _ in range(60):
            counts[c.get("/v1/models").headers["x-haproxy-ai-backend"]] += 1
    assert counts == {"b0": 10, "b1": 20, "b2": 30}


def test_p2c_follows_weights_when_load_is_equal(stack: Stack, upstream_client: str) -> None:
    backends = [stack.backend() for _ in range(2)]
    proxy = _proxy(
        stack,
        upstream_client,
        [
            {"url": backends[0].url, "name": "light", "weight": 1},
            {"url": backends[1].url, "name": "heavy", "weight": 3},
        ],
        balancer={"type": "p2c", "cost_tolerance": 1e6},  # latency noise must not decide: only the weighted draw
    )
    counts = {"light": 0, "heavy": 0}
    with client(proxy.url) as c:
        for _ in range(400):
            counts[c.get("/v1/models").headers["x-haproxy-ai-backend"]] += 1
    share = counts["heavy"] / 400
    assert 0.68 < share < 0.82, counts  # expected 0.75; 5 sigma is +-0.11


def test_openai_sdk_through_the_proxy(stack: Stack, upstream_client: str) -> None:
    openai = pytest.importorskip("openai")
    backend = stack.backend(tokens=8, model="fake-model")
    proxy = _proxy(stack, upstream_client, [backend])
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    completion = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    stream = sdk.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == completion.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 8


def test_openai_sdk_sees_proxy_errors(stack: Stack, upstream_client: str) -> None:
    openai = pytest.importorskip("openai")
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [{"url": backend.url, "name": "only"}])
    stack.call(proxy.proxy.health.disable, "only")
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert "no routable backend" in str(info.value)


def test_absolute_form_and_connect_never_reach_other_hosts(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    port = int(proxy.url.rsplit(":", 1)[1])
    # A forward-proxy request: refused (it never reaches any host, ours included).
    raw = raw_request(port, b"GET http://127.0.0.2:1/_echo?q=1 HTTP/1.1\r\nHost: 127.0.0.2:1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400"), raw[:100]
    raw = raw_request(port, b"CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: 127.0.0.2:443\r\n\r\n")
    assert raw.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"405")
    raw = raw_request(port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert _stats(backend)["requests"] == 0


def test_metrics_and_admin_endpoints(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [{"url": backend.url, "name": "only"}])
    with client(proxy.url) as c:
        for _ in range(3):
            assert c.post("/v1/completions", json={"prompt": "x"}).status_code == 200
    with client(proxy.admin_url) as admin:
        metrics = admin.get("/metrics").text
        assert 'haproxy_ai_requests_total{code="200",pool="default"} 3.0' in metrics
        assert 'haproxy_ai_upstream_attempts_total{backend="only",outcome="success",pool="default"} 3.0' in metrics
        assert "haproxy_ai_proxy_overhead_seconds_count 3.0" in metrics
        assert 'haproxy_ai_backend_inflight{backend="only",pool="default"} 0.0' in metrics
        rows = admin.get("/admin/backends").json()["backends"]
        assert rows[0]["name"] == "only" and rows[0]["requests"] == 3 and rows[0]["routable"] is True
        assert admin.get("/healthz").status_code == 200
        wait_for(lambda: admin.get("/readyz").status_code == 200)  # after a first passing probe
        assert admin.get("/admin/config").json()["backends"][0]["name"] == "only"


def test_compressed_bodies_pass_through_raw(stack: Stack, upstream_client: str) -> None:
    import gzip

    body = gzip.compress(b'{"text": "' + b"token " * 200 + b'"}')
    raw = RawBackend(
        stack.loop,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    ).start()
    try:
        proxy = _proxy(stack, upstream_client, [raw])
        with client(proxy.url) as c, c.stream("GET", "/x", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["content-encoding"] == "gzip"
            assert r.headers["content-length"] == str(len(body))
            assert b"".join(r.iter_raw()) == body  # the exact compressed bytes, never decoded
        assert b"accept-encoding: gzip" in raw.requests[0].lower()
    finally:
        raw.close()


def test_head_and_bodyless_responses(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    with client(proxy.url) as c:
        r = c.head("/_echo")
        assert r.status_code == 200 and r.content == b""
        assert int(r.headers["content-length"]) > 0
        assert c.get("/v1/models").status_code == 200  # the connection is still usable


def test_malformed_http_is_400_from_the_server_layer(stack: Stack, upstream_client: str) -> None:
    backend = stack.backend()
    proxy = _proxy(stack, upstream_client, [backend])
    port = int(proxy.url.rsplit(":", 1)[1])
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"\x16\x03\x01\x02\x00\x01"):
        raw = raw_request(port, garbage)
        assert raw.startswith(b"HTTP/1.1 400"), raw
    assert _stats(backend)["requests"] == 0
    assert httpx.get(proxy.url + "/v1/models", trust_env=False).status_code == 200
