"""The simulated replica itself: OpenAI wire format, faults, exact counters, CLI options.

Each test runs its own event loop (``asyncio.run``) hosting a ``FakeBackend`` on an ephemeral
loopback port and talks to it as an external client would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from haproxy_ai.fake_backend import (
    FakeBackend,
    FakeBackendOptions,
    add_arguments,
    options_from_args,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``test`` on a fresh loop, bounded so a regression fails instead of hanging."""

    async def bounded() -> None:
        async with asyncio.timeout(10):
            await test()

    asyncio.run(bounded())


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[FakeBackend, aiohttp.ClientSession]]:
    backend = FakeBackend(FakeBackendOptions(**options))
    await backend.start()
    try:
        async with aiohttp.ClientSession(base_url=backend.url) as session:
            yield backend, session
    finally:
        await backend.stop()


async def stats(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("/_stats") as r:
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result


async def poll_stats(
    session: aiohttp.ClientSession, predicate: Callable[[dict[str, Any]], bool], within: float = 2.0
) -> dict[str, Any]:
    """GET /_stats until ``predicate`` holds (as a test of a proxy would); fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        current = await stats(session)
        if predicate(current):
            return current
        if loop.time() > deadline:
            raise AssertionError(f"stats never matched: {current}")
        await asyncio.sleep(0.01)


async def set_fault(session: aiohttp.ClientSession, **body: Any) -> None:
    async with session.post("/_fault", json=body) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["fault"] == body["mode"]


def sse_data(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


# ---------------------------------------------------------------------------------------------
# Wire format.


def test_models_list_and_health() -> None:
    async def body() -> None:
        async with running(model="llama-test") as (_, s):
            async with s.get("/v1/models") as r:
                models = await r.json()
            assert models["object"] == "list"
            [entry] = models["data"]
            assert entry["id"] == "llama-test" and entry["object"] == "model"
            assert entry["owned_by"] == "haproxy-ai-fake" and isinstance(entry["created"], int)
            async with s.get("/health") as r:
                assert r.status == 200 and await r.json() == {"status": "ok"}

    run(body)


def test_chat_non_stream_has_content_and_usage() -> None:
    async def body() -> None:
        async with running(tokens=5, name="replica-a") as (_, s):
            async with s.post(CHAT, json={"model": "asked-for", "messages": MESSAGES}) as r:
                assert r.status == 200
                assert r.headers["x-fake-backend"] == "replica-a"
                data = await r.json()
            assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
            assert data["model"] == "asked-for"
            [choice] = data["choices"]
            assert choice["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4"}
            assert choice["finish_reason"] == "stop"
            assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}

            # max_tokens below the configured count truncates, like a real model hitting the cap.
            async with s.post(COMPLETIONS, json={"prompt": "a b c", "max_tokens": 2}) as r:
                data = await r.json()
            assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
            assert data["model"] == "fake-model"
            assert data["choices"][0]["text"] == "tok0 tok1"
            assert data["choices"][0]["finish_reason"] == "length"
            assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            assert await stats(s) == {
                "requests": 2,
                "completed": 2,
                "cancelled": 0,
                "errors": 0,
                "resets": 0,
                "in_flight": 0,
                # The engine model's keys (tests/test_fake_backend_cache.py): both prompts are
                # shorter than one 64-character block, so nothing was cacheable.
                "running": 0,
                "waiting": 0,
                "prefix_cache_queries": 0,
                "prefix_cache_hits": 0,
                "prefix_cache_blocks": 0,
                "kv_cache_usage": 0.0,
                "fault": "ok",
            }

    run(body)


def test_invalid_body_is_400_openai_error() -> None:
    async def body() -> None:
        async with running() as (_, s):
            for payload in (b"{not json", b"[1, 2]", b'{"stream": "yes"}', b'{"max_tokens": 0}'):
                async with s.post(CHAT, data=payload, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400, payload
                    error = (await r.json())["error"]
                    assert error["type"] == "invalid_request_error" and error["message"] and error["code"]
            current = await stats(s)
            assert current["requests"] == 4 and current["errors"] == 4 and current["completed"] == 0

    run(body)


def test_stream_arrives_as_separate_events_then_usage_and_done() -> None:
    async def body() -> None:
        async with running(tokens=3, chunk_interval=0.05) as (backend, s):
            payload = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
            async with s.post(CHAT, json=payload) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                first = await r.content.readany()
                # Written and flushed per event: the first read cannot already hold the end.
                assert len(sse_data(first)) == 1 and b"[DONE]" not in first
                assert backend.stats.completed == 0 and backend.stats.in_flight == 1
                raw = first + await r.content.read()
            events = sse_data(raw)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert len(chunks) == 3 + 1 + 1  # tokens, finish chunk, usage chunk
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "tok0"}
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:4])
            assert text == "tok0 tok1 tok2"
            assert chunks[3]["choices"][0]["finish_reason"] == "stop"
            assert chunks[4]["choices"] == []
            assert chunks[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
            await poll_stats(s, lambda st: st["completed"] == 1 and st["in_flight"] == 0)

    run(body)


def test_openai_sdk_streaming_and_non_streaming() -> None:
    async def body() -> None:
        async with running(tokens=4, model="sdk-model") as (backend, _):
            sdk = AsyncOpenAI(base_url=backend.url + "/v1", api_key="unused", max_retries=0)
            try:
                models = await sdk.models.list()
                assert [m.id for m in models.data] == ["sdk-model"]
                completion = await sdk.chat.completions.create(model="sdk-model", messages=MESSAGES)
                assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3"
                assert completion.usage is not None and completion.usage.completion_tokens == 4
                stream = await sdk.chat.completions.create(
                    model="sdk-model",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                pieces: list[str] = []
                usage = None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                    usage = chunk.usage or usage
                assert "".join(pieces) == "tok0 tok1 tok2 tok3" and len(pieces) == 4
                assert usage is not None and usage.total_tokens == usage.prompt_tokens + 4
                legacy = await sdk.completions.create(model="sdk-model", prompt="hi", max_tokens=2)
                assert legacy.choices[0].text == "tok0 tok1" and legacy.choices[0].finish_reason == "length"
                legacy_stream = await sdk.completions.create(model="sdk-model", prompt="hi", stream=True)
                assert "".join([c.choices[0].text async for c in legacy_stream]) == "tok0 tok1 tok2 tok3"
            finally:
                await sdk.close()
            assert backend.stats.completed == 4

    run(body)


async def raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` verbatim (clients would normalise the path) and read the reply until
    the server closes; returns (head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        reply = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_echo_reflects_raw_path_headers_and_body() -> None:
    async def body() -> None:
        async with running() as (backend, s):
            head, raw = await raw_exchange(
                backend.port,
                b"PUT /_echo/a%2Fb/../c?x=1&y=%20z&y=2 HTTP/1.1\r\nHost: h\r\nX-First: 1\r\n"
                b"x-MiXeD-Case: Value\r\nX-Last: z\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                b"\xffbody",
            )
            assert head.startswith(b"HTTP/1.1 200")
            echo = json.loads(raw)
            assert echo["method"] == "PUT"
            assert echo["path"] == "/_echo/a%2Fb/../c?x=1&y=%20z&y=2"
            assert echo["query"] == "x=1&y=%20z&y=2"
            assert echo["body"] == "\xffbody" and echo["body_len"] == 5
            assert echo["headers"] == [
                ["Host", "h"],
                ["X-First", "1"],
                ["x-MiXeD-Case", "Value"],
                ["X-Last", "z"],
                ["Content-Length", "5"],
                ["Connection", "close"],
            ]
            async with s.get("/_echo") as r:
                echo = await r.json()
                assert echo["method"] == "GET" and echo["path"] == "/_echo" and echo["body_len"] == 0
            assert (await stats(s))["requests"] == 0  # not an inference request

    run(body)


# ---------------------------------------------------------------------------------------------
# Faults.


def test_error_fault_and_health_follows_it() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="error", status=503)
            async with s.post(CHAT, json={"messages": MESSAGES}) as r:
                assert r.status == 503
                error = (await r.json())["error"]
                assert error["type"] == "server_error" and "fault" in error["message"]
            async with s.get("/health") as r:
                assert r.status == 503
            # Test hooks are never faulted.
            async with s.get("/_echo") as r:
                assert r.status == 200
            current = await stats(s)
            assert current["errors"] == 1 and current["fault"] == "error"
            await set_fault(s, mode="ok")
            async with s.post(CHAT, json={}) as r:
                assert r.status == 200

    run(body)


def test_retry_after_fault() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="retry_after")
            async with s.post(COMPLETIONS, json={"prompt": "x"}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["type"] == "rate_limit_error"
            await set_fault(s, mode="retry_after", status=503, seconds=7)
            async with s.post(COMPLETIONS, json={"prompt": "x"}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "7"

    run(body)


def test_fault_count_reverts_to_ok() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="error", count=2)
            statuses = []
            for _ in range(3):
                async with s.post(CHAT, json={}) as r:
                    statuses.append(r.status)
            assert statuses == [500, 500, 200]
            current = await stats(s)
            assert current["fault"] == "ok"
            assert (current["requests"], current["errors"], current["completed"]) == (3, 2, 1)

    run(body)


def test_slow_fault_delays_headers() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="slow", latency="150ms", count=1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with s.post(CHAT, json={}) as r:
                assert r.status == 200
            assert loop.time() - started >= 0.15

    run(body)


def test_hang_then_client_timeout_counts_cancelled() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="hang")
            with pytest.raises(asyncio.TimeoutError):
                async with s.post(CHAT, json={}, timeout=aiohttp.ClientTimeout(total=0.2)):
                    pass
            current = await poll_stats(s, lambda st: st["cancelled"] == 1)
            assert current["completed"] == 0 and current["in_flight"] == 0 and current["errors"] == 0
            async with s.get("/health") as r:  # replicas lie: still "healthy"
                assert r.status == 200

    run(body)


def test_abandoned_stream_counts_cancelled_not_completed() -> None:
    async def body() -> None:
        async with running(tokens=100, chunk_interval=0.02) as (_, s):
            async with s.post(CHAT, json={"stream": True}) as r:
                assert sse_data(await r.content.readany())
                r.close()  # drop the connection mid-stream
            current = await poll_stats(s, lambda st: st["cancelled"] == 1)
            assert current["completed"] == 0 and current["in_flight"] == 0

    run(body)


def test_reset_before_headers_is_a_connection_error() -> None:
    async def body() -> None:
        async with running() as (_, s):
            await set_fault(s, mode="reset", count=1)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with s.post(CHAT, json={}):
                    pass
            current = await stats(s)
            assert current["resets"] == 1 and current["cancelled"] == 0
            async with s.post(CHAT, json={}) as r:  # count=1: the next one is fine
                assert r.status == 200

    run(body)


def test_reset_after_chunks_delivers_them_then_dies() -> None:
    async def body() -> None:
        async with running(tokens=10) as (backend, s):
            backend.set_fault("reset", after_chunks=2)
            received = b""
            with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                async with s.post(CHAT, json={"stream": True}) as r:
                    assert r.status == 200
                    while chunk := await r.content.readany():
                        received += chunk
            events = sse_data(received)
            assert len(events) == 2 and "[DONE]" not in events
            assert backend.stats.resets == 1 and backend.stats.completed == 0

    run(body)


def test_invalid_fault_is_400() -> None:
    async def body() -> None:
        async with running() as (backend, s):
            bad: list[Any] = [
                {"mode": "explode"},
                {"mode": "error", "status": 200},
                {"mode": "error", "latency": 1},
                {"mode": "reset", "after_chunks": -1},
                {"mode": "hang", "count": 0},
                {"mode": "slow", "latency": "soon"},
                {"status": 500},
                [1],
            ]
            for payload in bad:
                async with s.post("/_fault", json=payload) as r:
                    assert r.status == 400, payload
                    assert (await r.json())["error"]["message"]
            async with s.post("/_fault", data=b"nope") as r:
                assert r.status == 400
            assert backend.fault == "ok"
            with pytest.raises(ValueError, match="unknown fault mode"):
                backend.set_fault("explode")

    run(body)


def test_error_rate_is_seeded_and_reproducible() -> None:
    async def statuses(seed: int) -> list[int]:
        async with running(error_rate=0.5, error_status=502, seed=seed) as (_, s):
            result = []
            for _ in range(12):
                async with s.post(COMPLETIONS, json={}) as r:
                    result.append(r.status)
            return result

    async def body() -> None:
        first, second = await statuses(7), await statuses(7)
        assert first == second and set(first) == {200, 502}

    run(body)


def test_stop_does_not_hang_on_a_hung_request() -> None:
    async def body() -> None:
        backend = FakeBackend()
        await backend.start()
        backend.set_fault("hang")
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.post(backend.url + CHAT, json={}))
            async with asyncio.timeout(2):
                await backend.stats.wait_until(lambda st: st.in_flight == 1)
            async with asyncio.timeout(2):
                await backend.stop()
            with pytest.raises(aiohttp.ClientConnectionError):
                await request
        assert backend.stats.cancelled == 1 and backend.stats.in_flight == 0

    run(body)


# ---------------------------------------------------------------------------------------------
# Command-line options.


def parse(*argv: str) -> FakeBackendOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


def test_options_from_args_parses_durations_and_defaults() -> None:
    assert parse() == FakeBackendOptions()
    options = parse("--latency", "50ms", "--jitter", "0.01", "--tail-latency", "2s", "--tokens", "3", "--seed", "9")
    assert (options.latency, options.jitter, options.tail_latency) == (0.05, 0.01, 2.0)
    assert options.tokens == 3 and options.seed == 9
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--error-rate", "1.5"], "--error-rate"),
        (["--tail-fraction", "-0.1"], "--tail-fraction"),
        (["--error-rate", "nan"], "--error-rate"),
        (["--error-status", "600"], "--error-status"),
        (["--error-status", "abc"], "--error-status"),
        (["--tokens", "0"], "--tokens"),
        (["--latency", "-1"], "--latency"),
        (["--chunk-interval", "fast"], "--chunk-interval"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_options_from_args_rejects_bad_values(argv: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=f"^{flag}: "):
        parse(*argv)


def test_options_dataclass_validates_too() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        FakeBackendOptions(error_rate=2.0)
