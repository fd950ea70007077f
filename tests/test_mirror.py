"""Mirroring end to end: real proxy, real replicas, the spool on disk, the official openai client."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from haproxy_ai.app import Proxy
from haproxy_ai.mirror import record
from haproxy_ai.mirror.reader import iter_spool
from haproxy_ai.mirror.spool import SpoolError

from .support import RunningProxy, Stack, clean_env, client, spawn, wait_for


def mirror_config(spool: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "spool_dir": str(spool), "fsync_interval": "20ms", **extra}


def spooled(spool: Path) -> list[dict[str, Any]]:
    return list(iter_spool(spool))


def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.proxy.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def counts(proxy: RunningProxy) -> dict[str, Any]:
    status = httpx.get(proxy.admin_url + "/admin/mirror", timeout=5, trust_env=False).json()
    return status


def test_every_request_gets_one_record_with_secrets_redacted(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend(name="r1")
    proxy = stack.proxy([{"url": backend.url, "name": "r1"}], mirror=mirror_config(tmp_path / "spool"))
    with client(proxy.url) as c:
        for i in range(20):
            r = c.post(
                f"/v1/chat/completions?trace={i}",
                json={"model": "fake-model", "messages": [{"role": "user", "content": f"hello {i}"}]},
                headers={"Authorization": "Bearer not-a-real-key-123456", "X-Request-Id": f"req-{i}"},
            )
            assert r.status_code == 200
        assert c.get("/does-not-exist").status_code == 404
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 21)
    records = spooled(tmp_path / "spool")
    assert len({r["id"] for r in records}) == 21
    chats = [r for r in records if r["path"] == "/v1/chat/completions"]
    assert [r["request_id"] for r in chats] == [f"req-{i}" for i in range(20)]  # in order
    first = chats[0]
    assert first["schema"] == 1 and first["method"] == "POST" and first["query"] == "trace=0"
    assert first["status"] == 200 and first["ended"] == "complete" and first["backend"] == "r1"
    assert first["model"] == "fake-model"
    assert first["request"]["headers"]["authorization"] == "[REDACTED]"
    assert json.loads(first["request"]["body"])["messages"][0]["content"] == "hello 0"
    assert json.loads(first["response"]["body"])["choices"][0]["message"]["content"]
    assert first["response"]["bytes"] == len(first["response"]["body"].encode())
    assert first["attempts"][0]["backend"] == "r1" and first["attempts"][0]["outcome"] == "success"
    assert first["received_at"] <= first["first_byte_at"] <= first["done_at"]
    assert first["ttfb_ms"] <= first["latency_ms"]
    assert any(r["status"] == 404 for r in records)
    # The invariant, once idle: enqueued = spooled + dropped.
    status = counts(proxy)
    assert status["records"]["enqueued"] == status["records"]["spooled"] == 21
    assert sum(status["records"]["dropped"].values()) == 0
    assert status["encoder"] == ("c" if record.NATIVE else "python")


def test_a_streamed_response_is_captured_whole(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend(tokens=40)
    proxy = stack.proxy([backend], mirror=mirror_config(tmp_path / "spool"))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test-0000000000000000000000", max_retries=0)
    stream = oai.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            text += event.choices[0].delta.content
        if event.usage:
            usage = event.usage
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 1)
    (record,) = spooled(tmp_path / "spool")
    response = record["response"]
    assert response["stream"] is True and record["ended"] == "complete"
    assert response["text"] == text and text
    assert response["body"].rstrip().endswith("data: [DONE]")
    assert response["bytes"] == len(response["body"].encode()) and not response["body_truncated"]
    assert usage is not None and response["usage"]["completion_tokens"] == usage.completion_tokens
    assert record["request"]["headers"]["authorization"] == "[REDACTED]"


def test_client_abort_and_errors_are_recorded_with_how_they_ended(stack: Stack, tmp_path: Path) -> None:
    slow = stack.backend(tokens=200, chunk_interval=0.05)
    proxy = stack.proxy([slow], mirror=mirror_config(tmp_path / "spool"), limits={"max_request_body": 100})
    with client(proxy.url) as c:
        assert c.post("/v1/chat/completions", content=b"x" * 200).status_code == 413
        with c.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as r:
            for _ in r.iter_bytes():
                break  # leave after the first chunk
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 2, timeout=10)
    by_status = {r["status"]: r for r in spooled(tmp_path / "spool")}
    assert by_status[413]["ended"] == "complete" and "exceeds" in by_status[413]["error"]
    assert json.loads(by_status[413]["response"]["body"])["error"]["code"]
    aborted = by_status[200]
    assert aborted["ended"] == "client_aborted"
    assert 0 < aborted["response"]["bytes"]


def test_upstream_reset_mid_stream_is_recorded(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend(tokens=50, chunk_interval=0.01)
    proxy = stack.proxy([backend], mirror=mirror_config(tmp_path / "spool"))
    backend.set_fault("reset", after_chunks=3)  # a few chunks, then the replica resets the connection
    with client(proxy.url) as c:
        with c.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-haproxy-ai-no-retry": "1"},
        ) as r:
            with pytest.raises(httpx.HTTPError):
                for _ in r.iter_bytes():
                    pass
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 1)
    (record,) = spooled(tmp_path / "spool")
    assert record["ended"] == "upstream_reset" and record["status"] == 200
    assert "data: [DONE]" not in record["response"]["body"]


def test_sampling_and_path_filters(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy(
        [backend], mirror=mirror_config(tmp_path / "spool", paths=["/v1/"], exclude_paths=["/v1/models"])
    )
    with client(proxy.url) as c:
        c.get("/v1/models")
        c.get("/health")
        c.post("/v1/completions", json={"model": "m", "prompt": "x"})
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 1)
    assert spooled(tmp_path / "spool")[0]["path"] == "/v1/completions"
    assert metric(proxy, "haproxy_ai_mirror_records_skipped_total", reason="path") == 2

    none = stack.proxy([backend], mirror=mirror_config(tmp_path / "none", sample_rate=0))
    with client(none.url) as c:
        for _ in range(5):
            c.get("/v1/models")
    assert metric(none, "haproxy_ai_mirror_records_skipped_total", reason="sampled") == 5
    assert spooled(tmp_path / "none") == []


def test_queue_full_drops_are_counted_and_nothing_else_is_lost(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy([backend], mirror=mirror_config(tmp_path / "spool", queue_size=5))
    mirror = proxy.proxy.mirror
    assert mirror is not None
    # A stalled disk: the spool's one thread is busy until released.
    release = threading.Event()
    assert mirror._executor is not None
    mirror._executor.submit(release.wait, 30)
    with client(proxy.url) as c:
        for _ in range(30):
            assert c.get("/v1/models").status_code == 200  # requests never wait for the mirror
    dropped = metric(proxy, "haproxy_ai_mirror_records_dropped_total", reason="queue_full")
    assert 0 < dropped <= 30 - 5  # the queue held 5; the stalled writer may hold a few more
    release.set()
    wait_for(lambda: metric(proxy, "haproxy_ai_mirror_records_spooled_total") + dropped == 30)
    assert len(spooled(tmp_path / "spool")) == 30 - dropped


def test_block_mode_waits_instead_of_dropping(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy([backend], mirror=mirror_config(tmp_path / "spool", queue_size=2, on_queue_full="block"))
    mirror = proxy.proxy.mirror
    assert mirror is not None and mirror._executor is not None
    release = threading.Event()
    mirror._executor.submit(release.wait, 30)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=30) as c:
            responses = await asyncio.gather(*(c.get("/v1/models") for _ in range(10)))
        return [r.status_code for r in responses]

    done: list[list[int]] = []
    thread = threading.Thread(target=lambda: done.append(asyncio.run(burst())))
    thread.start()
    wait_for(lambda: mirror.queued() == 2)
    release.set()
    thread.join(30)
    assert done == [[200] * 10]
    wait_for(lambda: len(spooled(tmp_path / "spool")) == 10)
    assert metric(proxy, "haproxy_ai_mirror_records_dropped_total", reason="queue_full") == 0


def test_spool_full_drops_are_counted(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy(
        [backend],
        mirror=mirror_config(tmp_path / "spool", spool_max_bytes="64KiB", segment_max_bytes="8KiB"),
    )
    with client(proxy.url) as c:
        for i in range(60):
            c.post("/_echo", content=b"p" * 2000 + str(i).encode())

    def accounted() -> float:
        return metric(proxy, "haproxy_ai_mirror_records_spooled_total") + metric(
            proxy, "haproxy_ai_mirror_records_dropped_total", reason="spool_full"
        )

    wait_for(lambda: accounted() == 60)  # every record is either spooled or counted as dropped
    spooled_count = metric(proxy, "haproxy_ai_mirror_records_spooled_total")
    assert metric(proxy, "haproxy_ai_mirror_records_dropped_total", reason="spool_full") > 0
    assert len(spooled(tmp_path / "spool")) == spooled_count
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.jsonl*")) <= 64 * 1024


def test_file_sink_receives_compressed_closed_segments(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy(
        [backend],
        mirror=mirror_config(
            tmp_path / "spool",
            segment_max_age="50ms",
            sinks=[{"type": "file", "dir": str(tmp_path / "backup"), "max_backoff": "100ms"}],
        ),
    )
    with client(proxy.url) as c:
        for _ in range(7):
            c.get("/v1/models")
    wait_for(lambda: metric(proxy, "haproxy_ai_mirror_records_shipped_total", sink="file") == 7, timeout=10)
    copies = sorted((tmp_path / "backup").glob("*.jsonl.gz"))
    lines = [line for p in copies for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert len(lines) == 7 and len({json.loads(line)["id"] for line in lines}) == 7
    assert [r["id"] for r in iter_spool(tmp_path / "backup")] == [json.loads(line)["id"] for line in lines]
    # Delivered segments leave the spool.
    wait_for(lambda: not list((tmp_path / "spool").glob("*.jsonl")))


def test_admin_shows_mirror_status_and_recent_records(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    proxy = stack.proxy([backend], mirror=mirror_config(tmp_path / "spool"))
    with client(proxy.url) as c:
        c.get("/v1/models", params={"api_key": "visible-if-broken"})
    wait_for(lambda: counts(proxy)["records"]["spooled"] == 1)
    recent = httpx.get(proxy.admin_url + "/admin/mirror/records?limit=5", trust_env=False).json()["records"]
    assert recent[0]["query"] == "api_key=[REDACTED]"
    bad = httpx.get(proxy.admin_url + "/admin/mirror/records?limit=abc", trust_env=False)
    assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]
    off = stack.proxy([backend])
    assert httpx.get(off.admin_url + "/admin/mirror", trust_env=False).json() == {"enabled": False}


def test_an_unusable_spool_stops_the_start_with_a_clear_error(stack: Stack, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proxy = Proxy(stack.settings([], mirror=mirror_config(blocker / "spool")))
    with pytest.raises(SpoolError, match=r"cannot use spool directory .*: Not a directory"):
        stack.loop.run(proxy.startup())
    assert not proxy.started


def test_sigterm_with_open_streams_leaves_exactly_one_record_per_request(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend(tokens=2000, chunk_interval=0.01)  # a 20 s stream: it outlives the grace
    config = tmp_path / "haproxy-ai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0, "shutdown_grace": "1s"},
                "admin": {"port": 0},
                "backends": [backend.url],
                "mirror": mirror_config(tmp_path / "spool"),
            }
        )
    )
    env = clean_env({"PYTHONUNBUFFERED": "1"})
    with spawn([sys.executable, "-m", "haproxy_ai", "serve", "--config", str(config)], env) as proc:
        url = proc.expect(r"proxying (http://\S+) ->").group(1)
        with client(url) as c:
            for i in range(5):
                assert c.get("/v1/models", headers={"x-request-id": f"done-{i}"}).status_code == 200
        streams = [
            httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "long"}]},
                headers={"x-request-id": f"open-{i}"},
                timeout=30,
                trust_env=False,
            )
            for i in range(3)
        ]
        chunks = [s.__enter__().iter_bytes() for s in streams]
        for it in chunks:
            next(it)  # each stream is flowing
        proc.send_signal(signal.SIGTERM)
        for it in chunks:
            with pytest.raises(httpx.HTTPError):  # cut when the grace ran out: never a clean end
                for _ in it:
                    pass
        assert proc.wait(20) == 0
        for s in streams:
            with contextlib.suppress(Exception):
                s.__exit__(None, None, None)
    records = spooled(tmp_path / "spool")
    by_id = {r["request_id"]: r for r in records}
    assert len(records) == len(by_id) == 8  # one each, none lost, none twice
    assert {by_id[f"done-{i}"]["ended"] for i in range(5)} == {"complete"}
    for i in range(3):
        cut = by_id[f"open-{i}"]
        assert cut["ended"] == "truncated" and cut["status"] == 200, cut
        assert "data: [DONE]" not in cut["response"]["body"]


def test_the_writer_takes_a_batch_before_a_small_queue_fills(tmp_path: Path) -> None:
    # The writer lingers so that writes are few and large, but not while a small queue fills up:
    # with queue_size 8 it takes the lines once 4 are encoded, without waiting for the linger.
    from prometheus_client import CollectorRegistry

    from haproxy_ai.clock import SystemClock
    from haproxy_ai.mirror.service import Mirror
    from haproxy_ai.settings import MirrorSettings

    async def scenario() -> tuple[int, int, list[int]]:
        settings = MirrorSettings(enabled=True, spool_dir=str(tmp_path / "spool"), queue_size=8)
        clock = SystemClock()
        mirror = Mirror(settings, registry=CollectorRegistry(), clock=clock)
        await mirror.start()
        release = threading.Event()
        assert mirror._executor is not None
        stalled = mirror._executor.submit(release.wait, 30)  # the spool thread is busy: writes wait
        taken = []
        try:
            for _ in range(4):
                exchange = mirror.begin(clock.monotonic(), "GET", b"/v1/models", b"", [(b"host", b"h")], None)
                assert exchange is not None
                exchange.respond(200, [(b"content-type", b"application/json")], exchange.received)
                assert mirror.offer(exchange)
                for _turn in range(3):  # the encode callback, then the writer's turn
                    await asyncio.sleep(0)
                taken.append(len(mirror._lines))
        finally:
            release.set()
            stalled.result(30)
            await mirror.close()
        return mirror.queued(), len(spooled(tmp_path / "spool")), taken

    queued, stored, taken = asyncio.run(scenario())
    assert taken == [1, 2, 3, 0]  # the fourth line woke the writer, which took all four
    assert (queued, stored) == (0, 4)
