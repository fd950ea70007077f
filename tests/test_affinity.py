"""Affinity and load-aware picks through the real proxy: sessions and conversations stay on one
replica, few keys move when a replica joins, the load bound holds, the owner's death fails
over, and the load-aware balancer steers away from a replica whose own queue grows."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

import httpx
import openai

from .support import RawBackend, RunningProxy, Stack, client, wait_for

_QUIET = {"active": {"enabled": False}}


def backend_of(r: httpx.Response) -> str:
    return r.headers["x-haproxy-ai-backend"]


def hash_proxy(stack: Stack, n: int, **balancer: Any) -> tuple[RunningProxy, list[Any]]:
    backends = [stack.backend(name=f"r{i}") for i in range(n)]
    proxy = stack.proxy(
        [{"url": b.url, "name": f"r{i}"} for i, b in enumerate(backends)],
        balancer={"type": "hash", **balancer},
        health={**_QUIET, "slow_start": 0},
    )
    return proxy, backends


def owners(proxy: RunningProxy, sessions: list[str]) -> dict[str, str]:
    with client(proxy.url) as c:
        return {s: backend_of(c.get("/health", headers={"x-session-id": s})) for s in sessions}


def test_a_session_stays_on_one_replica_and_sessions_spread(stack: Stack) -> None:
    proxy, _ = hash_proxy(stack, 4)
    sessions = [f"session-{i}" for i in range(40)]
    first = owners(proxy, sessions)
    for _ in range(2):
        assert owners(proxy, sessions) == first
    spread = collections.Counter(first.values())
    assert len(spread) == 4 and min(spread.values()) >= 3, spread
    # Requests without the key are balanced by the fallback (p2c), not all sent to one replica.
    with client(proxy.url) as c:
        keyless = {backend_of(c.get("/health")) for _ in range(40)}
    assert len(keyless) >= 3


def test_a_conversation_keeps_its_replica_by_prompt_prefix(stack: Stack) -> None:
    proxy, _ = hash_proxy(stack, 4, hash_key="prompt", hash_prefix_chars=200)
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    placed: dict[int, set[str]] = {}
    for conversation in range(12):
        messages: list[Any] = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Question number {conversation}: what is {conversation} squared?"},
        ]
        seen = set()
        for turn in range(4):
            raw = sdk.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=3)
            seen.add(raw.headers["x-haproxy-ai-backend"])
            answer = raw.parse().choices[0].message.content
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"and turn {turn}?"}]
        placed[conversation] = seen
    assert all(len(seen) == 1 for seen in placed.values()), placed
    assert len({next(iter(s)) for s in placed.values()}) >= 3  # different conversations spread


def test_adding_a_replica_moves_about_one_in_n_keys_and_only_to_it(stack: Stack) -> None:
    proxy, _ = hash_proxy(stack, 4)
    sessions = [f"user-{i}" for i in range(250)]
    before = owners(proxy, sessions)
    extra = stack.backend(name="r4")
    settings = proxy.proxy.settings
    grown = dataclasses.replace(
        settings,
        backends=(*settings.backends, dataclasses.replace(settings.backends[0], url=extra.url, name="r4")),
    )
    changes = stack.call(proxy.proxy.reload, grown)
    assert changes["added"] == ["r4"]
    after = owners(proxy, sessions)
    moved = [s for s in sessions if before[s] != after[s]]
    assert all(after[s] == "r4" for s in moved)  # nothing reshuffles between the old replicas
    assert 0.12 <= len(moved) / len(sessions) <= 0.30, len(moved)


def test_the_load_bound_spills_a_hot_key_to_its_next_replica(stack: Stack) -> None:
    backends = [stack.backend(name=f"r{i}", latency=1.0) for i in range(4)]
    proxy = stack.proxy(
        [{"url": b.url, "name": f"r{i}"} for i, b in enumerate(backends)],
        balancer={"type": "hash", "hash_balance_factor": 1.25},
        health=_QUIET,
    )

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=10) as c:
            rs = await asyncio.gather(
                *(c.post("/v1/chat/completions", json=chat_body(), headers={"x-session-id": "hot"}) for _ in range(12))
            )
        return [backend_of(r) for r in rs]

    placed = collections.Counter(asyncio.run(burst()))
    # 12 concurrent requests, 4 replicas: none may hold more than ceil(1.25 * 12 / 4) = 4.
    assert max(placed.values()) <= 4, placed
    assert len(placed) >= 3, placed
    # With the burst over, the key is back on its one owner.
    assert len({backend_of(httpx.get(proxy.url + "/health", headers={"x-session-id": "hot"})) for _ in range(5)}) == 1


def test_when_the_owner_dies_its_sessions_fail_over_and_stay_together(stack: Stack) -> None:
    proxy, backends = hash_proxy(stack, 3)
    sessions = [f"s{i}" for i in range(30)]
    before = owners(proxy, sessions)
    victim = before["s0"]
    stack.loop.run(backends[int(victim[1:])].stop())
    with client(proxy.url) as c:
        # The first request of each orphaned session fails over (retry on the next owner)
        # without an error reaching the client.
        after = {}
        for s in sessions:
            r = c.get("/health", headers={"x-session-id": s})
            assert r.status_code == 200
            after[s] = backend_of(r)
        again = {s: backend_of(c.get("/health", headers={"x-session-id": s})) for s in sessions}
    assert victim not in after.values()
    assert all(after[s] == before[s] for s in sessions if before[s] != victim)  # the others stay put
    assert again == after  # orphans settle on their next owner
    wait_for(lambda: proxy.proxy.health.get(victim).state.value == "ejected")


def test_load_aware_steers_away_from_a_replica_whose_queue_grows(stack: Stack) -> None:
    backends = [stack.backend(name=f"r{i}", max_batch=1, chunk_interval=0.01) for i in range(3)]
    proxy = stack.proxy(
        [{"url": b.url, "name": f"r{i}"} for i, b in enumerate(backends)],
        balancer={"type": "load_aware"},
        scrape={"enabled": True, "interval": "50ms", "stale_after": "2s"},
        health=_QUIET,
    )
    busy = backends[0]
    long_stream = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400, "stream": True}

    async def occupy() -> None:
        # Other clients of replica r0 (not through this proxy) fill its batch and its queue.
        async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
            await asyncio.gather(*(c.post(busy.url + "/v1/chat/completions", json=long_stream) for _ in range(4)))

    task = stack.loop.run(_start(occupy()))
    try:

        def waiting(name: str) -> float:
            value = proxy.proxy.metrics.registry.get_sample_value(
                "haproxy_ai_replica_waiting", {"pool": "default", "backend": name}
            )
            return value or 0.0

        wait_for(lambda: waiting("r0") >= 2)  # the proxy has scraped r0's queue
        with client(proxy.url) as c:
            placed = [backend_of(c.post("/v1/chat/completions", json=chat_body())) for _ in range(15)]
        assert "r0" not in placed and set(placed) == {"r1", "r2"}, placed
    finally:
        stack.loop.run(_cancel(task))


def test_a_replica_without_usable_metrics_counts_as_saturated(stack: Stack) -> None:
    """Metrics that cannot be read are not trusted to be low: with scraping on, a replica whose
    /metrics has none of the gauges gets no traffic while another replica has fresh metrics;
    with scraping off, the same pair shares the traffic."""
    opaque = RawBackend(stack.loop, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").start()
    try:
        good = stack.backend(name="good")
        pair = [{"url": opaque.url, "name": "opaque"}, {"url": good.url, "name": "good"}]
        scraped = stack.proxy(
            pair, balancer={"type": "load_aware"}, scrape={"enabled": True, "interval": "50ms"}, health=_QUIET
        )
        wait_for(lambda: scraped.proxy.registry.snapshot().backends[1].stats.load is not None)
        with client(scraped.url) as c:
            assert {backend_of(c.get("/health")) for _ in range(12)} == {"good"}
        unscraped = stack.proxy(pair, balancer={"type": "load_aware"}, health=_QUIET)
        with client(unscraped.url) as c:
            assert {backend_of(c.get("/health")) for _ in range(12)} == {"opaque", "good"}
    finally:
        opaque.close()


def chat_body() -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def _start(coro: Any) -> asyncio.Task[None]:
    return asyncio.ensure_future(coro)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, httpx.HTTPError):
        pass
