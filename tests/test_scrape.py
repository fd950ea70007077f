"""Scraping replica metrics: the text-format parser (pure) and the scraper against real HTTP
servers on loopback.

Each async test runs its own event loop (``asyncio.run``), bounded so a regression fails
instead of hanging. Waiting is done on events or by polling with a deadline, never by fixed
sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from haproxy_ai.backends import Backend, ReplicaLoad
from haproxy_ai.clock import FakeClock, SystemClock
from haproxy_ai.health import MetricsScraper, parse_replica_load
from haproxy_ai.settings import ScrapeSettings

DEFAULTS = ScrapeSettings()
WAITING, RUNNING, KV = DEFAULTS.waiting_metrics, DEFAULTS.running_metrics, DEFAULTS.kv_cache_metrics

LLAMA = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'
# A label value with a brace, a space, an escaped quote and an escaped backslash in it.
WEIRD = r'model_name="lora } x \"quoted\" {a=\"b\"} \\"'

VLLM_PAGE = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12093.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{LLAMA}}} 3.0
vllm:num_requests_running{{engine="0",{WEIRD}}} 1.0
vllm:num_requests_running{{engine="1",{LLAMA}}} NaN
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{LLAMA}}} 2.0
vllm:num_requests_waiting{{engine="0",{WEIRD}}} 5 1712345678000
# HELP vllm:num_requests_waiting_by_reason Waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{{engine="0",{LLAMA},reason="capacity"}} 40.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",{LLAMA}}} 0.42
vllm:kv_cache_usage_perc{{engine="1",{LLAMA}}} 0.61
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage (deprecated name).
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{engine="0",{LLAMA}}} 0.3
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",{LLAMA}}} 123456.0
# HELP vllm:request_params_n Histogram of the n request parameter.
# TYPE vllm:request_params_n histogram
vllm:request_params_n_bucket{{engine="0",le="1.0",{LLAMA}}} 10.0
vllm:request_params_n_bucket{{engine="0",le="+Inf",{LLAMA}}} 10.0
vllm:request_params_n_count{{engine="0",{LLAMA}}} 10.0
vllm:request_params_n_sum{{engine="0",{LLAMA}}} 10.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",{LLAMA}}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",{LLAMA}}} 8.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",{LLAMA}}} 10.0
vllm:time_to_first_token_seconds_count{{engine="0",{LLAMA}}} 10.0
vllm:time_to_first_token_seconds_sum{{engine="0",{LLAMA}}} 2.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",note="vllm:num_requests_waiting 99"}} 1.0
"""

TGI_PAGE = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 12000
# TYPE tgi_queue_size_bucket histogram
tgi_request_queue_duration_bucket{le="0.01"} 3
tgi_request_queue_duration_bucket{le="+Inf"} 5
tgi_request_count 42
"""


def test_parses_a_vllm_page() -> None:
    # Waiting: 2 + 5 (the timestamped sample); running: 3 + 1, the NaN sample skipped;
    # KV cache: the largest sample of both names.
    assert parse_replica_load(VLLM_PAGE, WAITING, RUNNING, KV) == (7.0, 4.0, 0.61)


def test_agrees_with_the_reference_parser() -> None:
    """prometheus_client's parser (too slow for the scrape loop) reads the same numbers."""
    samples = [s for family in text_string_to_metric_families(VLLM_PAGE) for s in family.samples]
    labels = {s.labels["model_name"] for s in samples if "model_name" in s.labels}
    assert 'lora } x "quoted" {a="b"} \\' in labels

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == name and not math.isnan(s.value))

    waiting, running, _ = parse_replica_load(VLLM_PAGE, WAITING, RUNNING, KV)
    assert waiting == total("vllm:num_requests_waiting")
    assert running == total("vllm:num_requests_running")


def test_parses_a_tgi_page() -> None:
    assert parse_replica_load(TGI_PAGE, WAITING, RUNNING, KV) == (4.0, 6.0, None)


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        ("empty page", "", None),
        ("only comments", "# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\n", None),
        ("commented-out sample", "# vllm:num_requests_waiting 5\n", None),
        ("longer name: _total", "vllm:num_requests_waiting_total 5\n", None),
        ("longer name: _bucket", 'vllm:num_requests_waiting_bucket{le="1"} 3\n', None),
        ("longer name, no separator", "vllm:num_requests_waitingx 5\n", None),
        ("name in the middle of a line", "xvllm:num_requests_waiting 5\n", None),
        ("first line, no trailing newline", "vllm:num_requests_waiting 5", 5.0),
        ("tab and CRLF", "a 1\r\nvllm:num_requests_waiting\t5\r\n", 5.0),
        ("empty label set", "vllm:num_requests_waiting{} 2\n", 2.0),
        ("timestamp ignored", "vllm:num_requests_waiting 1 1712345678000\n", 1.0),
        ("escaped backslash ends the value", 'vllm:num_requests_waiting{a="\\\\"} 3\n', 3.0),
        ("escaped newline in a value", 'vllm:num_requests_waiting{a="x\\ny"} 3\n', 3.0),
        ("+Inf is not a queue length", "vllm:num_requests_waiting +Inf\n", None),
        ("-Inf is not a queue length", "vllm:num_requests_waiting -Inf\n", None),
        ("negative is not a queue length", 'vllm:num_requests_waiting{a="1"} -9\nvllm:num_requests_waiting 2\n', 2.0),
        ("NaN only", "vllm:num_requests_waiting NaN\n", None),
        ("NaN skipped, rest summed", 'vllm:num_requests_waiting{a="1"} NaN\nvllm:num_requests_waiting 2\n', 2.0),
        ("unparsable value", "vllm:num_requests_waiting abc\n", None),
        ("no value", "vllm:num_requests_waiting\n", None),
        ("unterminated label value", 'vllm:num_requests_waiting{a="open} 4\nvllm:num_requests_waiting 1\n', 1.0),
        ("both engines' names summed", "vllm:num_requests_waiting 2\ntgi_queue_size 3\n", 5.0),
        ("exponent", "vllm:num_requests_waiting 1.5e1\n", 15.0),
    ],
)
def test_waiting_edge_cases(case: str, text: str, expected: float | None) -> None:
    assert parse_replica_load(text, WAITING, RUNNING, KV)[0] == expected, case


def test_no_configured_names_present() -> None:
    page = "# TYPE ollama_up gauge\nollama_up 1\nprocess_cpu_seconds_total 3.5\n"
    assert parse_replica_load(page, WAITING, RUNNING, KV) == (None, None, None)


def test_a_large_page_with_many_models() -> None:
    lines = []
    for model in range(300):
        label = f'model_name="m{model}"'
        for le in ("0.01", "0.1", "1", "10", "+Inf"):
            lines.append(f'vllm:e2e_request_latency_seconds_bucket{{le="{le}",{label}}} {model}')
        lines.append(f"vllm:num_requests_waiting{{{label}}} 1")
        lines.append(f"vllm:num_requests_waiting_total{{{label}}} 1000")
        lines.append(f"vllm:kv_cache_usage_perc{{{label}}} {model / 1000}")
    page = "\n".join(lines) + "\n"
    assert parse_replica_load(page, WAITING, RUNNING, KV) == (300.0, None, 0.299)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.integers(min_value=0, max_value=1000)),
        min_size=1,
        max_size=5,
    )
)
def test_any_label_value_parses(samples: list[tuple[str, int]]) -> None:
    page = "".join(f'vllm:num_requests_waiting{{x="{_escape(label)}",y="1"}} {n}\n' for label, n in samples)
    assert parse_replica_load(page, WAITING, RUNNING, KV)[0] == sum(n for _, n in samples)


# --- the scraper against real servers -------------------------------------------------------


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``test`` on a fresh loop, bounded so a regression fails instead of hanging."""

    async def bounded() -> None:
        async with asyncio.timeout(10):
            await test()

    asyncio.run(bounded())


@dataclass
class Replica:
    """A scripted replica: ``GET /replica/metrics`` answers ``text`` with ``status``, or hangs
    until released when ``hang`` is set. ``on_request`` runs when a request arrives."""

    text: str = VLLM_PAGE
    status: int = 200
    hang: bool = False
    requests: int = 0
    on_request: Callable[[], None] | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.on_request is not None:
            self.on_request()
        if self.hang:
            await self.release.wait()
        return web.Response(text=self.text, status=self.status, content_type="text/plain")


@asynccontextmanager
async def serve(replica: Replica) -> AsyncIterator[str]:
    """Serves ``replica`` on an ephemeral loopback port; yields the backend URL."""
    app = web.Application()
    app.router.add_get("/replica/metrics", replica.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/replica"
    finally:
        replica.release.set()
        await runner.cleanup()


def refused_url() -> str:
    """A loopback URL nobody listens on: bind an ephemeral port, then free it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/replica"


FAST = ScrapeSettings(enabled=True, timeout=0.3, interval=0.01)
Result = tuple[str, ReplicaLoad | None, str | None]


def test_scrape_once_writes_the_load() -> None:
    async def main() -> None:
        clock = FakeClock()
        replica = Replica()
        results: list[Result] = []
        async with serve(replica) as url:
            backend = Backend("vllm-0", url)
            backend.stats.inflight = 2
            # A request the proxy sends while the scrape is on its way is not in the page.
            replica.on_request = backend.stats.start
            scraper = MetricsScraper(
                lambda: [backend],
                FAST,
                clock=clock,
                on_result=lambda b, load, error: results.append((b.name, load, error)),
            )
            try:
                await scraper.scrape_once()
                assert backend.stats.load == ReplicaLoad(clock.monotonic(), 7.0, 4.0, 0.61, inflight_at_scrape=2)
                assert backend.stats.inflight == 3

                replica.text = TGI_PAGE
                replica.on_request = None
                clock.advance(0.25)
                await scraper.scrape_once()
                assert backend.stats.load == ReplicaLoad(clock.monotonic(), 4.0, 6.0, None, inflight_at_scrape=3)
            finally:
                await scraper.stop()
        assert [(name, error) for name, _, error in results] == [("vllm-0", None), ("vllm-0", None)]
        assert [load for _, load, _ in results] == [
            ReplicaLoad(1000.0, 7.0, 4.0, 0.61, 2),
            ReplicaLoad(1000.25, 4.0, 6.0, None, 3),
        ]

    run(main)


def test_failures_clear_the_load() -> None:
    async def main() -> None:
        clock = FakeClock()
        replicas = {
            "ok": Replica(),
            "error": Replica(status=500),
            "hang": Replica(hang=True),
            "no-metrics": Replica(text="# TYPE ollama_up gauge\nollama_up 1\n"),
        }
        results: dict[str, Result] = {}
        async with (
            serve(replicas["ok"]) as ok,
            serve(replicas["error"]) as error,
            serve(replicas["hang"]) as hang,
            serve(replicas["no-metrics"]) as empty,
        ):
            backends = [
                Backend("ok", ok),
                Backend("error", error),
                Backend("hang", hang),
                Backend("no-metrics", empty),
                Backend("refused", refused_url()),
            ]
            for b in backends:
                b.stats.load = ReplicaLoad(clock.monotonic(), 0.0, 0.0, 0.0)  # an earlier good scrape
            async with httpx.AsyncClient(trust_env=False) as client:
                scraper = MetricsScraper(
                    lambda: backends,
                    FAST,
                    clock=clock,
                    client=client,
                    on_result=lambda b, load, err: results.__setitem__(b.name, (b.name, load, err)),
                )
                await scraper.scrape_once()  # concurrent: the hang costs one timeout, not more
                await scraper.stop()
                assert not client.is_closed  # a client it was given is left open

        loads = {b.name: b.stats.load for b in backends}
        assert loads["ok"] is not None and loads["ok"].waiting == 7.0
        assert all(loads[name] is None for name in ("error", "hang", "no-metrics", "refused"))
        errors = {name: err for name, (_, _, err) in results.items()}
        assert errors["ok"] is None
        assert errors["error"] == "status 500"
        assert errors["hang"] == "timeout after 0.3s"
        assert errors["no-metrics"] == (
            "none of the expected metrics in /metrics: vllm:num_requests_waiting, tgi_queue_size, "
            "vllm:num_requests_running, tgi_batch_current_size, vllm:kv_cache_usage_perc, vllm:gpu_cache_usage_perc"
        )
        assert errors["refused"] is not None and errors["refused"].startswith("connect failed")
        assert all(results[name][1] is None for name in errors if name != "ok")

    run(main)


def test_failures_are_logged_once_per_state_change(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        replica = Replica(status=503)
        async with serve(replica) as url:
            backend = Backend("vllm-1", url)
            scraper = MetricsScraper(lambda: [backend], FAST, clock=FakeClock())
            try:
                for _ in range(3):
                    await scraper.scrape_once()
                replica.status = 200
                for _ in range(3):
                    await scraper.scrape_once()
                replica.status = 503
                await scraper.scrape_once()
            finally:
                await scraper.stop()
        assert replica.requests == 7

    with caplog.at_level(logging.INFO, logger="haproxy_ai.health.scrape"):
        run(main)
    messages = [r.getMessage() for r in caplog.records if r.name == "haproxy_ai.health.scrape"]
    assert messages == [
        "metrics scrape of backend vllm-1 failing: status 503 (counted as saturated until a scrape succeeds)",
        "metrics scrape of backend vllm-1 recovered",
        "metrics scrape of backend vllm-1 failing: status 503 (counted as saturated until a scrape succeeds)",
    ]


class Results:
    """An ``on_result`` callback that records every call and lets a test wait for a condition
    on them (woken by each call, no polling)."""

    def __init__(self) -> None:
        self.calls: list[Result] = []
        self._changed = asyncio.Event()

    def __call__(self, backend: Backend, load: ReplicaLoad | None, error: str | None) -> None:
        self.calls.append((backend.name, load, error))
        self._changed.set()

    def count(self, name: str) -> int:
        return sum(1 for called, _, _ in self.calls if called == name)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        # Bounded by run()'s timeout.
        while not condition():
            self._changed.clear()
            await self._changed.wait()


def test_the_loop_follows_the_backends_and_a_hang_delays_nobody_else() -> None:
    async def main() -> None:
        ok, hung = Replica(), Replica(hang=True)
        results = Results()
        settings = replace(FAST, timeout=5.0)  # the hung scrape stays pending for the whole test
        async with serve(ok) as ok_url, serve(hung) as hung_url:
            current = [Backend("hung", hung_url), Backend("ok", ok_url)]
            scraper = MetricsScraper(lambda: current, settings, clock=SystemClock(), on_result=results)
            await scraper.start()
            await scraper.start()  # idempotent
            try:
                await results.wait_for(lambda: results.count("ok") >= 5)
                assert hung.requests == 1  # not re-sent while its scrape is still pending
                assert current[1].stats.load is not None
                late = Backend("late", ok_url)
                current.append(late)
                await results.wait_for(lambda: results.count("late") >= 1)
                assert late.stats.load is not None
            finally:
                await scraper.stop()
            assert scraper._client is None  # the client it created is closed and dropped
        assert results.count("hung") == 0  # cancelled by stop(), never reported

    run(main)


class Failing(Results):
    def __call__(self, backend: Backend, load: ReplicaLoad | None, error: str | None) -> None:
        super().__call__(backend, load, error)
        raise RuntimeError("metrics exporter bug")


def test_a_failing_callback_does_not_stop_scraping(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        results = Failing()
        async with serve(Replica()) as url:
            backend = Backend("vllm-2", url)
            scraper = MetricsScraper(lambda: [backend], FAST, clock=SystemClock(), on_result=results)
            await scraper.start()
            try:
                await results.wait_for(lambda: len(results.calls) >= 3)
            finally:
                await scraper.stop()
            assert backend.stats.load is not None

    with caplog.at_level(logging.ERROR, logger="haproxy_ai.health.scrape"):
        run(main)
    assert [r.getMessage() for r in caplog.records] == ["metrics scrape on_result callback failed (logged once)"]
