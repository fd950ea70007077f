"""The simulated replica's engine model: batch slots and queue, prefix cache, vLLM-style /metrics.

Like tests/test_fake_backend.py, each test hosts a ``FakeBackend`` on an ephemeral loopback port
on its own event loop and talks to it over HTTP. Cache behaviour is asserted on exact block
counters in ``/_stats`` and ``/metrics``; load states are awaited by polling ``/metrics`` with a
deadline. Requests that must stay running wait on a 30 s chunk interval they never reach: the
test releases them by closing the connection.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from haproxy_ai.fake_backend import FakeBackendOptions, add_arguments, options_from_args
from haproxy_ai.fake_backend.cache import PrefixCache

from .test_fake_backend import run, running, stats

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
USAGE_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")
# Far longer than any test: a stream with this chunk interval stays running until we hang up.
HOLD = "30s"


async def metrics(session: aiohttp.ClientSession, model: str = "fake-model") -> dict[str, float]:
    """The samples of ``GET /metrics`` labelled with ``model``, by sample name."""
    async with session.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels == {"model_name": model}
    }


async def poll_metrics(
    session: aiohttp.ClientSession, expected: dict[str, float], within: float = 3.0
) -> dict[str, float]:
    """GET /metrics until every sample in ``expected`` has its value (as a scraper would see
    it); fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        current = await metrics(session)
        if all(current.get(name) == value for name, value in expected.items()):
            return current
        if loop.time() > deadline:
            raise AssertionError(f"metrics never matched {expected}: {current}")
        await asyncio.sleep(0.01)


async def complete(session: aiohttp.ClientSession, prompt: str | list[str]) -> str:
    """POST a completion; returns the response id, which the backend numbers in serving order."""
    async with session.post(COMPLETIONS, json={"prompt": prompt}) as r:
        assert r.status == 200, await r.text()
        rid: str = (await r.json())["id"]
        return rid


async def chat(session: aiohttp.ClientSession, messages: list[dict[str, Any]]) -> None:
    async with session.post(CHAT, json={"messages": messages}) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def cache_counters(session: aiohttp.ClientSession) -> tuple[int, int]:
    """(queries, hits) from /_stats, checked against the same counters in /metrics."""
    current = await stats(session)
    exposed = await metrics(session)
    counters = (current["prefix_cache_queries"], current["prefix_cache_hits"])
    assert counters == tuple(exposed[name] for name in CACHE_COUNTERS)
    return counters


@asynccontextmanager
async def held_stream(session: aiohttp.ClientSession, prompt: str) -> AsyncIterator[None]:
    """A streamed completion that holds its batch slot (the backend must run with
    ``chunk_interval=HOLD``) until the block exits and the connection is dropped."""
    async with session.post(COMPLETIONS, json={"prompt": prompt, "stream": True}) as r:
        assert r.status == 200
        await r.content.readline()  # the first event: the request has its slot
        yield
        r.close()  # cancels the backend's handler, which frees the slot


def text(seed: str, chars: int) -> str:
    """``chars`` characters that share no prefix with text made from another ``seed``."""
    return (seed * chars)[:chars]


# ---------------------------------------------------------------------------------------------
# /metrics format.


def test_metrics_are_vllm_prometheus_text_with_model_label() -> None:
    async def body() -> None:
        async with running(model="llama-test") as (_, s):
            async with s.get("/metrics") as r:
                assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                exposition = await r.text()
            families = {f.name: f for f in text_string_to_metric_families(exposition)}
            for name in (*LOAD_GAUGES, *USAGE_GAUGES):
                assert families[name].type == "gauge"
                [sample] = families[name].samples
                assert (sample.name, sample.labels, sample.value) == (name, {"model_name": "llama-test"}, 0.0)
            for name in CACHE_COUNTERS:
                family = families[name.removesuffix("_total")]
                assert family.type == "counter"
                [sample] = family.samples
                assert (sample.name, sample.labels, sample.value) == (name, {"model_name": "llama-test"}, 0.0)
            # HELP/TYPE lines as prometheus_client (and so vLLM) writes them.
            assert "# TYPE vllm:num_requests_waiting gauge\n" in exposition
            assert "# TYPE vllm:prefix_cache_hits_total counter\n" in exposition
            assert "# HELP vllm:kv_cache_usage_perc " in exposition
            # Metrics a scraper must skip past: a histogram and a label-only info gauge.
            ttft = families["vllm:time_to_first_token_seconds"]
            assert ttft.type == "histogram"
            names = {sample.name for sample in ttft.samples}
            assert names == {f"vllm:time_to_first_token_seconds{suffix}" for suffix in ("_bucket", "_sum", "_count")}
            assert any(sample.labels.get("le") == "+Inf" for sample in ttft.samples)
            [info] = families["vllm:cache_config_info"].samples
            assert info.labels["block_size"] == "64" and info.labels["num_gpu_blocks"] == str(200_000 // 64)

            await complete(s, "one two three")
            after = await metrics(s, "llama-test")
            assert after["vllm:time_to_first_token_seconds_count"] == 1.0
            assert after["vllm:prompt_tokens_total"] == 3.0 and after["vllm:generation_tokens_total"] == 16.0

    run(body)


# ---------------------------------------------------------------------------------------------
# Batch slots and the queue.


def test_max_batch_queues_and_metrics_follow_the_load() -> None:
    async def body() -> None:
        async with running(max_batch=1, chunk_interval=HOLD, tokens=2) as (_, s):
            async with held_stream(s, "first"):
                await poll_metrics(s, {"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 0})
                second = asyncio.create_task(complete(s, "second"))
                await poll_metrics(s, {"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 1})
                current = await stats(s)
                assert (current["running"], current["waiting"], current["in_flight"]) == (1, 1, 2)
                assert not second.done()
            await second  # the slot passed on: the queued request ran and completed
            await poll_metrics(s, {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0})
            current = await stats(s)
            assert (current["completed"], current["cancelled"], current["running"], current["waiting"]) == (1, 1, 0, 0)

    run(body)


def test_queue_is_fifo_and_a_client_leaving_the_queue_frees_its_place() -> None:
    async def body() -> None:
        async with running(max_batch=1, chunk_interval=HOLD, tokens=2) as (backend, s):
            async with held_stream(s, "holder"):  # served first: cmpl-fake000001
                leaver = asyncio.create_task(complete(s, "leaver"))
                await poll_metrics(s, {"vllm:num_requests_waiting": 1})
                first = asyncio.create_task(complete(s, "first"))
                await poll_metrics(s, {"vllm:num_requests_waiting": 2})
                second = asyncio.create_task(complete(s, "second"))
                await poll_metrics(s, {"vllm:num_requests_waiting": 3})
                leaver.cancel()  # the client gives up while queued
                with pytest.raises(asyncio.CancelledError):
                    await leaver
                await backend.stats.wait_until(lambda st: st.cancelled == 1)
                await poll_metrics(s, {"vllm:num_requests_waiting": 2, "vllm:num_requests_running": 1})
            # Ids are handed out once a request holds a slot, so they record the serving order.
            assert await asyncio.gather(first, second) == ["cmpl-fake000002", "cmpl-fake000003"]
            await poll_metrics(s, {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0})
            current = await stats(s)
            assert (current["completed"], current["cancelled"]) == (2, 2)

    run(body)


def test_faulted_requests_never_run_or_query_the_cache() -> None:
    async def body() -> None:
        async with running(max_batch=1, prefix_block_chars=4) as (backend, s):
            backend.set_fault("error", count=1)
            async with s.post(COMPLETIONS, json={"prompt": text("a", 40)}) as r:
                assert r.status == 500
            assert await cache_counters(s) == (0, 0)
            await complete(s, text("a", 40))
            assert await cache_counters(s) == (10, 0)

    run(body)


# ---------------------------------------------------------------------------------------------
# Prefix cache.


def test_repeated_prompt_hits_every_full_block_and_a_different_one_none() -> None:
    async def body() -> None:
        async with running(prefix_block_chars=16) as (_, s):
            prompt = text("0123456789", 100)  # 6 full blocks and a partial one, never cached
            await complete(s, prompt)
            assert await cache_counters(s) == (6, 0)
            await complete(s, prompt)
            assert await cache_counters(s) == (12, 6)
            await complete(s, "X" + prompt[1:])  # differs in the first block, so in every block
            assert await cache_counters(s) == (18, 6)
            # A list prompt is joined: the same text hits as one string would.
            await complete(s, [prompt[:50], prompt[50:]])
            assert await cache_counters(s) == (24, 12)

    run(body)


def test_extended_conversation_hits_only_on_the_shared_prefix() -> None:
    async def body() -> None:
        block = 16
        async with running(prefix_block_chars=block) as (_, s):
            system = {"role": "system", "content": "You are a careful assistant. " * 3}
            first = [system, {"role": "user", "content": "What is a prefix cache, in one paragraph?"}]
            await chat(s, first)
            first_text = "".join(m["role"] + m["content"] for m in first)
            first_blocks = len(first_text) // block
            assert await cache_counters(s) == (first_blocks, 0)

            # The next turn resends the whole history, so every cached block of it hits.
            extended = [*first, {"role": "assistant", "content": "It reuses KV."}, {"role": "user", "content": "More?"}]
            extended_text = "".join(m["role"] + m["content"] for m in extended)
            await chat(s, extended)
            queries, hits = first_blocks + len(extended_text) // block, first_blocks
            assert await cache_counters(s) == (queries, hits)

            # Same system prompt, another question: hits stop at the block where they differ.
            other = [system, {"role": "user", "content": "Something else entirely, please."}]
            other_text = "".join(m["role"] + m["content"] for m in other)
            shared = len("system" + system["content"] + "user")  # then "What..." vs "Something..."
            assert first_text[:shared] == other_text[:shared] and first_text[shared] != other_text[shared]
            await chat(s, other)
            queries += len(other_text) // block
            hits += shared // block
            assert await cache_counters(s) == (queries, hits)
            assert shared // block < first_blocks

            # Content as a list of text parts is the same text as a string.
            as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in other]
            await chat(s, as_parts)
            assert await cache_counters(s) == (queries + len(other_text) // block, hits + len(other_text) // block)

    run(body)


def test_lru_evicts_the_least_recently_used_blocks() -> None:
    async def body() -> None:
        # Room for 4 blocks of 10; each prompt is 2 blocks.
        async with running(prefix_block_chars=10, prefix_cache_chars=45) as (_, s):
            a, b, c = text("a", 20), text("b", 20), text("c", 20)
            await complete(s, a)
            await complete(s, b)  # cache full: a, b
            await complete(s, a)  # a hits and becomes the most recent
            assert await cache_counters(s) == (6, 2)
            await complete(s, c)  # evicts b, the least recently used
            assert (await stats(s))["prefix_cache_blocks"] == 4
            await complete(s, a)
            assert await cache_counters(s) == (10, 4)
            await complete(s, b)
            assert await cache_counters(s) == (12, 4)

    run(body)


def test_kv_cache_usage_counts_blocks_held_by_running_requests_and_stays_at_most_one() -> None:
    async def body() -> None:
        # 10 blocks of 10 characters.
        async with running(prefix_block_chars=10, prefix_cache_chars=100, chunk_interval=HOLD, tokens=2) as (_, s):
            # Cached blocks that no running request holds are evictable: free, as in vLLM.
            await complete(s, text("a", 30))
            await complete(s, text("b", 30))
            await poll_metrics(s, {"vllm:num_requests_running": 0, **dict.fromkeys(USAGE_GAUGES, 0.0)})
            assert (await stats(s))["prefix_cache_blocks"] == 6
            # A running 25-character prompt holds 3 blocks, its partial last one included.
            async with held_stream(s, text("c", 25)):
                await poll_metrics(s, {"vllm:num_requests_running": 1, **dict.fromkeys(USAGE_GAUGES, 0.3)})
                assert (await stats(s))["kv_cache_usage"] == 0.3
            await poll_metrics(s, {"vllm:num_requests_running": 0, **dict.fromkeys(USAGE_GAUGES, 0.0)})
            # A running prompt longer than the whole cache: the gauge stops at 1.
            async with held_stream(s, text("d", 500)):
                await poll_metrics(s, {"vllm:num_requests_running": 1, **dict.fromkeys(USAGE_GAUGES, 1.0)})
            assert (await stats(s))["prefix_cache_blocks"] == 10

    run(body)


def test_prefill_time_depends_on_uncached_characters() -> None:
    async def body() -> None:
        # 400 uncached characters cost 0.4 s; a repeat has none left to prefill.
        async with running(prefix_block_chars=50, prefill_per_kchar="1s") as (_, s):
            loop = asyncio.get_running_loop()
            prompt = text("prefill", 400)
            started = loop.time()
            await complete(s, prompt)
            cold = loop.time() - started
            started = loop.time()
            await complete(s, prompt)
            warm = loop.time() - started
            assert cold >= 0.39
            assert warm < cold / 2  # generous: the warm request has no delay at all

    run(body)


def test_stats_reset_zeroes_cache_counters_but_not_the_load_or_metrics() -> None:
    async def body() -> None:
        async with running(prefix_block_chars=4) as (_, s):
            await complete(s, text("a", 8))
            await complete(s, text("a", 8))
            async with s.post("/_stats/reset") as r:
                current = await r.json()
            assert (current["prefix_cache_queries"], current["prefix_cache_hits"]) == (0, 0)
            assert current["prefix_cache_blocks"] == 2  # the cache itself stays warm
            exposed = await metrics(s)  # Prometheus counters never go back
            assert tuple(exposed[name] for name in CACHE_COUNTERS) == (4.0, 2.0)

    run(body)


def test_prefix_cache_unit() -> None:
    cache = PrefixCache(block_chars=4, capacity_chars=8)
    prompt = cache.split("abcdefghij")
    assert (len(prompt.keys), prompt.chars, prompt.blocks) == (2, 10, 3)
    # Chained keys: the same block text after a different prefix is a different block.
    assert cache.split("xxxxefgh").keys[1] != prompt.keys[1]
    assert cache.split("abcdefgh").keys == prompt.keys
    assert cache.admit(prompt) == 0 and cache.admit(prompt) == 2
    assert cache.uncached_chars(prompt, 2) == 2
    # Longer than the cache: only its last blocks fit, so its first block misses next time.
    long = cache.split("0123456789ab")
    assert cache.admit(long) == 0 and cache.blocks == 2
    assert cache.admit(long) == 0
    assert (cache.queries, cache.hits) == (10, 2)
    assert PrefixCache(block_chars=4, capacity_chars=0).admit(prompt) == 0


# ---------------------------------------------------------------------------------------------
# Options.


def parse(*argv: str) -> FakeBackendOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


def test_engine_options_defaults_and_flags() -> None:
    defaults = FakeBackendOptions()
    assert (defaults.max_batch, defaults.prefill_per_kchar) == (0, 0.0)
    assert (defaults.prefix_block_chars, defaults.prefix_cache_chars) == (64, 200_000)
    options = parse(
        "--max-batch", "4", "--prefill-per-kchar", "5ms", "--prefix-block-chars", "16", "--prefix-cache-chars", "0"
    )
    assert (options.max_batch, options.prefill_per_kchar) == (4, 0.005)
    assert (options.prefix_block_chars, options.prefix_cache_chars) == (16, 0)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--max-batch", "-1"], "--max-batch"),
        (["--max-batch", "two"], "--max-batch"),
        (["--prefill-per-kchar", "-1"], "--prefill-per-kchar"),
        (["--prefix-block-chars", "0"], "--prefix-block-chars"),
        (["--prefix-cache-chars", "-64"], "--prefix-cache-chars"),
    ],
)
def test_engine_flags_reject_bad_values(argv: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=f"^{flag}: "):
        parse(*argv)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prefill_per_kchar", -1, "non-negative duration"),
        ("prefix_block_chars", 0, "must be at least 1, got 0"),
        ("max_batch", -2, "must be 0 or more, got -2"),
        ("prefix_cache_chars", -1, "must be 0 or more, got -1"),
        ("max_batch", True, "expected an integer, got a boolean"),
    ],
)
def test_engine_options_validate_with_clear_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^FakeBackendOptions.{field}: .*{message}"):
        FakeBackendOptions(**{field: value})  # type: ignore[arg-type]
