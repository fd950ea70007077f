"""Reading mirrored records back (spool, file sink, PostgreSQL), ``haproxy-ai replay`` and ``haproxy-ai logs``.

Replays go to real servers on loopback ports: the simulated replica, whose /_stats counts exactly the
inference requests it received, and a raw scripted server that keeps every request's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from haproxy_ai.cli import main
from haproxy_ai.mirror.reader import Filters, iter_spool, mask_dsn, open_source, parse_time
from haproxy_ai.mirror.replay import ProgressLine, ReplaySummary, replay
from haproxy_ai.mirror.sinks.postgres import PostgresSink

from . import pg
from .pg import fresh_table
from .support import LoopThread, RawBackend, Stack, clean_env, spawn, wait_for

postgres_dsn = pg.postgres_dsn  # the fixture, bound by assignment (see tests/test_postgres_sink.py)

BASE = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]


def ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(
    i: int,
    *,
    method: str = "POST",
    path: str = CHAT,
    query: str = "",
    body: Any = None,
    raw_body: bytes | None = None,
    base64_body: bool = False,
    truncated: bool = False,
    headers: dict[str, str] | None = None,
    status: int = 200,
    backend: str | None = "replica-1",
    model: str | None = "fake-model",
    ended: str = "complete",
) -> dict[str, Any]:
    """A schema-1 record received ``i`` seconds after BASE; ``body`` is JSON-encoded unless ``raw_body``."""
    if raw_body is None:
        raw_body = b"" if body is None and method == "GET" else json.dumps(body or {"messages": MESSAGES}).encode()
    received = BASE + timedelta(seconds=i)
    return {
        "schema": 1,
        "id": f"{i:04d}{uuid.uuid4().hex[:12]}",
        "request_id": f"req-{i}",
        "instance": "host-a",
        "received_at": ts(received),
        "first_byte_at": ts(received + timedelta(milliseconds=3)),
        "done_at": ts(received + timedelta(milliseconds=12)),
        "latency_ms": 12.0,
        "ttfb_ms": 3.0,
        "client": "127.0.0.1",
        "method": method,
        "path": path,
        "query": query,
        "model": model,
        "status": status,
        "ended": ended,
        "backend": backend,
        "error": None,
        "attempts": [
            {
                "backend": backend,
                "outcome": "success",
                "status": status,
                "start_ms": 0.1,
                "headers_ms": 3.0,
                "end_ms": 12.0,
            }
        ],
        "request": {
            "headers": headers if headers is not None else {"content-type": "application/json"},
            "body": (base64.b64encode(raw_body).decode() if base64_body else raw_body.decode()) if raw_body else None,
            "body_encoding": "base64" if base64_body else "utf-8",
            "bytes": len(raw_body) + (1000 if truncated else 0),
            "body_truncated": truncated,
        },
        "response": {
            "headers": {"content-type": "application/json"},
            "body": "{}",
            "body_encoding": "utf-8",
            "bytes": 2,
            "body_truncated": False,
            "stream": False,
            "text": None,
            "usage": None,
        },
    }


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def write_spool(directory: Path, segments: list[tuple[int, str, bytes]]) -> Path:
    """Segments as the spool and file sink name them: kind ``jsonl`` (closed), ``gz`` or ``open``."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, kind, data in segments:
        suffix = {"jsonl": ".jsonl", "gz": ".jsonl.gz", "open": ".jsonl.open"}[kind]
        (directory / f"{number:020d}{suffix}").write_bytes(gzip.compress(data) if kind == "gz" else data)
    return directory


def spool_of(directory: Path, records: list[dict[str, Any]]) -> Path:
    """``records`` in one closed segment."""
    return write_spool(directory, [(1, "jsonl", b"".join(line(r) for r in records))])


@pytest.fixture
def mixed_spool(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A gz segment, a closed one with a corrupt line, and an open one ending in a partial line."""
    records = [make_record(i, status=s) for i, s in enumerate([200, 500, 429, 200, 503, 200])]
    write_spool(
        tmp_path / "spool",
        [
            (3, "jsonl", line(records[2]) + b'{"id": "broken\n' + line(records[3])),
            (1, "gz", line(records[0]) + line(records[1])),
            (4, "open", line(records[4]) + line(records[5]) + line(make_record(99))[:40]),
        ],
    )
    (tmp_path / "spool" / "checkpoint.pg.json").write_text('{"segment": 1, "offset": 0}')
    (tmp_path / "spool" / "LOCK").write_text("")
    return tmp_path / "spool", records


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- reader ---------------------------------------------------------------------------------------


def test_reader_order_partial_and_corrupt_lines(
    mixed_spool: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, records = mixed_spool
    reader = iter_spool(directory)
    assert [r["id"] for r in reader] == [r["id"] for r in records]
    assert reader.skipped == 1
    err = capsys.readouterr().err
    assert f"{directory / '00000000000000000003.jsonl'}:2: skipped a line that is not valid JSON" in err
    assert reader.position == (4, len(line(records[4]) + line(records[5])))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        iter_spool(directory / "missing")


def test_follow_continues_through_rotation(tmp_path: Path) -> None:
    first, second, third, fourth = (make_record(i) for i in range(4))
    directory = write_spool(tmp_path / "spool", [(1, "open", line(first) + line(second)[:25])])
    stop = threading.Event()
    seen: list[str] = []

    def consume() -> None:
        for record in iter_spool(directory, follow=True, poll=0.01, stop=stop):
            seen.append(record["id"])

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        wait_for(lambda: seen == [first["id"]])
        with (directory / "00000000000000000001.jsonl.open").open("ab") as f:
            f.write(line(second)[25:] + line(third))
        wait_for(lambda: len(seen) == 3)
        # Rotation: a last line, then the rename, then the next open segment.
        with (directory / "00000000000000000001.jsonl.open").open("ab") as f:
            f.write(line(fourth))
        (directory / "00000000000000000001.jsonl.open").rename(directory / "00000000000000000001.jsonl")
        fifth = make_record(5)
        (directory / "00000000000000000002.jsonl.open").write_bytes(line(fifth))
        wait_for(lambda: len(seen) == 5)
        assert seen == [r["id"] for r in (first, second, third, fourth, fifth)]
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_filters_select_by_status_time_backend_model_path_and_ending() -> None:
    records = [
        make_record(0, status=200, backend="replica-1", model="a"),
        make_record(10, status=502, backend="replica-2", model="b", ended="upstream_reset"),
        make_record(20, status=429, backend="replica-1", model="b", path="/v1/completions"),
        make_record(30, status=503, backend=None, model=None, method="GET", path="/v1/models"),
    ]

    def ids(filters: Filters) -> list[int]:
        return [records.index(r) for r in records if filters.matches(r)]

    assert ids(Filters.parse(status="5xx")) == [1, 3]
    assert ids(Filters.parse(status=["429", "500-502"])) == [1, 2]
    assert ids(Filters.parse(status="200,503")) == [0, 3]
    assert ids(Filters.parse(since=ts(BASE + timedelta(seconds=10)))) == [1, 2, 3]  # since is inclusive
    assert ids(Filters.parse(until=ts(BASE + timedelta(seconds=20)))) == [0, 1]  # until is exclusive
    assert ids(Filters.parse(since="2026-11-28T17:00:10+01:00", until="2026-11-28T16:00:30Z")) == [1, 2]
    assert ids(Filters.parse(backend="replica-1")) == [0, 2]
    assert ids(Filters.parse(model=["b"], backend=["replica-1", "replica-2"])) == [1, 2]
    assert ids(Filters.parse(path_prefix="/v1/c")) == [0, 1, 2]
    assert ids(Filters.parse(ended="upstream_reset,truncated")) == [1]
    assert ids(Filters()) == [0, 1, 2, 3]

    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "6x"}, "--status"),
        ({"ended": "exploded"}, "--ended: 'exploded' is not one of complete"),
        ({"path_prefix": "v1"}, "must start with /"),
        ({"since": "2026-11-28", "until": "2026-11-27"}, "must be before --until"),
        ({"until": "tomorrow"}, "--until: 'tomorrow' is not a time"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            Filters.parse(**kwargs)


def test_parse_time_forms_and_errors() -> None:
    now = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)
    assert parse_time("2026-11-28T16:00:00Z") == datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
    assert parse_time("2026-11-28T16:00:00.5z") == datetime(2026, 11, 28, 16, 0, 0, 500000, tzinfo=UTC)
    assert parse_time("2026-11-28T18:30:00+02:30") == datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
    assert parse_time("2026-11-28") == datetime(2026, 11, 28, tzinfo=UTC)
    assert parse_time("15m", now=now) == now - timedelta(minutes=15)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("1h30m ago", now=now) == now - timedelta(minutes=90)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("15m").tzinfo is UTC
    for text, message in [
        ("", "empty time"),
        ("2026-11-28T16:00:00", "no time zone: add Z"),
        ("2026-02-30", "not a valid date"),
        ("2026-11-28T25:00:00Z", "not a valid time"),
        ("15", "give an age a unit"),
        ("yesterday", "not a time: use RFC 3339"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_time(text, now=now)


def test_open_source_forms_and_masked_passwords(tmp_path: Path) -> None:
    assert open_source(f"spool:{tmp_path}").location == str(tmp_path)
    source = open_source("postgres:postgresql://app:pw@db:5432/logs#archive.requests")
    assert (source.kind, source.location, source.table) == (
        "postgres",
        "postgresql://app:pw@db:5432/logs",
        "archive.requests",
    )
    assert str(source) == "postgres:postgresql://app:***@db:5432/logs#archive.requests"
    assert open_source("postgresql://app@db/logs").table == "haproxy_ai_requests"
    assert open_source("postgres:host=db dbname=logs password=pw").location == "host=db dbname=logs password=pw"
    assert mask_dsn("host=db password='p w' user=app") == "host=db password=*** user=app"
    assert mask_dsn("postgres://app:p%40ss@db/x?sslmode=require&password=pw") == (
        "postgres://app:***@db/x?sslmode=require&password=***"
    )
    for spec, message in [
        ("mysql://app:pw@db/x", "unknown source type 'mysql'"),
        ("/var/spool", "has no type"),
        (f"spool:{tmp_path}/missing", "no such directory"),
        ("postgres:postgresql://db/x#bad-name", "not a table name"),
        ("postgres:", "needs a DSN"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            open_source(spec)
        assert "pw" not in str(info.value)


# -- replay ---------------------------------------------------------------------------------------


def replayable_set() -> list[dict[str, Any]]:
    stream_body = {"messages": MESSAGES, "stream": True}
    return [
        make_record(1),  # 200 -> 200
        make_record(2, body=stream_body),  # streamed, read to its end
        make_record(3, body={"messages": MESSAGES, "max_tokens": 0}, status=400),  # the replica says 400 again
        make_record(4, path="/v1/completions", body={"prompt": "hi"}, status=502),  # 502 -> 200
        make_record(5, truncated=True),
        make_record(6, body={"messages": MESSAGES, "user": "[REDACTED]"}),
        make_record(7, method="GET", path="/v1/models", query="key=[REDACTED]"),
        make_record(8, method="GET", path="/v1/models", headers={"authorization": "[REDACTED]"}),  # header dropped
        make_record(9, raw_body=json.dumps({"messages": MESSAGES}).encode(), base64_body=True),
    ]


def test_replay_sends_exactly_the_replayable_records(stack: Stack) -> None:
    backend = stack.backend(name="r1")
    summary = asyncio.run(
        replay(
            replayable_set(),
            backend.url,
            rate=None,
            concurrency=4,
            dry_run=False,
            extra_headers=[],
            timeout=10,
            progress=None,
        )
    )
    # Five inference requests (the GET /v1/models is answered but not counted by the replica).
    wait_for(lambda: backend.stats.completed + backend.stats.errors == 5)
    assert backend.stats.snapshot() | {"in_flight": 0} == {
        "requests": 5, "completed": 4, "errors": 1, "cancelled": 0, "resets": 0, "in_flight": 0,
    }  # fmt: skip
    assert summary.sent == 6 and summary.records == 9
    assert summary.skipped == {"body_truncated": 1, "redacted": 2}
    assert summary.outcomes == {"2xx": 5, "4xx": 1}
    assert (summary.same_status, summary.different_status) == (5, 1)
    assert summary.status_changes == {"502->200": 1}
    assert summary.transport_errors == 0 and not summary.interrupted
    data = summary.to_dict()
    assert data["latency_ms"]["p50"] is not None and data["latency_ms"]["p99"] >= data["latency_ms"]["p50"]
    assert "same 5, different 1 (502->200 1)" in summary.render()


def test_replay_request_headers_and_redacted_values(loop_thread: LoopThread) -> None:
    raw = RawBackend(loop_thread, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").start()
    try:
        recorded = {
            "content-type": "application/json",
            "authorization": "[REDACTED]",
            "x-api-key": "[REDACTED]",
            "cookie": "a=1; session=[REDACTED]",
            "host": "proxy.example",
            "content-length": "999",
            "x-forwarded-for": "10.0.0.1",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "user-agent": "OpenAI/Python 1.40",
            "x-request-id": "abc",
        }
        body = {"messages": MESSAGES, "user": "[REDACTED]"}
        records = [make_record(1, query="a=1&key=[REDACTED]", body=body, headers=recorded, status=201)]
        summary = asyncio.run(
            replay(
                records, raw.url + "/base/", rate=None, concurrency=1, dry_run=False, timeout=10, progress=None,
                extra_headers=[("Authorization", "Bearer replay-key")], allow_redacted=True,
            )
        )  # fmt: skip
        assert summary.sent == 1 and summary.same_status == 1
        head, _, sent_body = raw.requests[0].partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.lower(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines))
        assert request_line == f"POST /base{CHAT}?a=1&key=[REDACTED] HTTP/1.1"
        assert json.loads(sent_body) == body
        assert headers["content-length"] == str(len(sent_body))
        assert headers["host"] == f"127.0.0.1:{raw.port}"
        assert headers["authorization"] == "Bearer replay-key"  # replaced from --header
        assert headers["x-haproxy-ai-replay"] == records[0]["id"]
        assert headers["user-agent"] == "OpenAI/Python 1.40" and headers["x-request-id"] == "abc"
        assert not {"x-api-key", "cookie", "x-forwarded-for", "x-hop"} & set(headers)
        assert "accept-encoding" not in headers  # nothing the recorded client did not send
    finally:
        raw.close()


def test_rate_bounds_the_send_rate(stack: Stack) -> None:
    backend = stack.backend()
    records = [make_record(i) for i in range(6)]
    started = time.monotonic()
    summary = asyncio.run(
        replay(records, backend.url, rate=20, concurrency=8, dry_run=False, extra_headers=[], timeout=10, progress=None)
    )
    elapsed = time.monotonic() - started
    assert summary.sent == 6 and summary.outcomes == {"2xx": 6}
    assert elapsed >= (6 - 1) / 20 * 0.8
    assert summary.duration >= (6 - 1) / 20 * 0.8


def test_dry_run_sends_nothing(loop_thread: LoopThread) -> None:
    raw = RawBackend(loop_thread, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").start()
    try:
        records = replayable_set()
        summary = asyncio.run(
            replay(records, raw.url, rate=1, concurrency=1, dry_run=True, extra_headers=[], timeout=10, progress=None)
        )
        assert raw.requests == []
        assert summary.sent == 0 and summary.dry_run
        assert [p["id"] for p in summary.planned] == [records[i]["id"] for i in (0, 1, 2, 3, 7, 8)]
        assert summary.planned[4] == {"id": records[7]["id"], "method": "GET", "path": "/v1/models", "body_bytes": 0}
        assert summary.planned[0]["body_bytes"] == len(json.dumps({"messages": MESSAGES}))
    finally:
        raw.close()


def test_stop_cancels_in_flight_and_still_summarizes(stack: Stack) -> None:
    backend = stack.backend()
    backend.set_fault("hang")

    async def scenario() -> ReplaySummary:
        stop = asyncio.Event()
        task = asyncio.create_task(
            replay([make_record(i) for i in range(5)], backend.url, rate=None, concurrency=2, dry_run=False,
                   extra_headers=[], timeout=30, progress=None, stop=stop)
        )  # fmt: skip
        await asyncio.to_thread(wait_for, lambda: backend.stats.in_flight == 2)
        stop.set()
        return await asyncio.wait_for(task, 10)

    summary = asyncio.run(scenario())
    assert summary.interrupted and summary.sent == 2 and summary.cancelled == 2
    assert summary.transport_errors == 0
    assert "replay (interrupted)" in summary.render()


def test_progress_line_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    summary = ReplaySummary(target="http://x", sent=3)
    tty = Tty()
    bar = ProgressLine(tty)
    for _ in range(50):  # throttled: at most 10 redraws a second
        bar(summary, 10)
    bar.finish()
    assert tty.getvalue().count("\r") == 2 and "sent 3/10" in tty.getvalue()
    pipe = io.StringIO()
    ProgressLine(pipe)(summary, None, force=True)
    assert pipe.getvalue() == ""


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_replay_json_with_filters(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = stack.backend()
    records = replayable_set()
    directory = spool_of(tmp_path / "spool", records)
    code, out, err = run_cli(
        capsys, "replay", "--source", f"spool:{directory}", "--target", backend.url, "--status", "2xx",
        "--path-prefix", "/v1/chat", "--json", "--header", "Authorization: Bearer k", "--timeout", "10s",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["records"] == 5 and data["sent"] == 3 and data["skipped"] == {"body_truncated": 1, "redacted": 1}
    assert data["outcomes"] == {"2xx": 3} and data["same_status"] == 3
    wait_for(lambda: backend.stats.completed == 3)

    argv = ["replay", "--source", f"spool:{directory}", "--target", backend.url, "--dry-run", "--limit", "2"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    sizes = [len(records[i]["request"]["body"].encode()) for i in (0, 1)]
    assert out.splitlines()[:2] == [
        f"POST {CHAT}  {sizes[0]} bytes  (id {records[0]['id']})",
        f"POST {CHAT}  {sizes[1]} bytes  (id {records[1]['id']})",
    ]
    assert "dry run" in out and "would send    2" in out
    assert backend.stats.requests == 3


def test_cli_replay_transport_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    directory = spool_of(tmp_path / "spool", [make_record(1), make_record(2)])
    code, out, _ = run_cli(capsys, "replay", "--source", f"spool:{directory}", "--target", f"http://127.0.0.1:{port}")
    assert code == 1
    assert "errors        2  (connect_error 2)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--source", "spool:{spool}"], "haproxy-ai replay: --target URL is required"),
        (["replay", "--target", "{url}"], "haproxy-ai replay: --source is required"),
        (["replay", "--source", "spool:{spool}", "--target", "ftp://host/"], "must be an http:// or https:// URL"),
        (["replay", "--source", "spool:{spool}", "--target", "http://h/?a=1"], "no ?query"),
        (["replay", "--source", "spool:{spool}/nope", "--target", "{url}"], "no such directory"),
        (
            ["replay", "--source", "spool:{spool}", "--target", "{url}", "--since", "last week"],
            "--since: 'last week' is not a time",
        ),
        (["replay", "--source", "spool:{spool}", "--target", "{url}", "--status", "2xxx"], "--status: expected"),
        (["replay", "--source", "spool:{spool}", "--target", "{url}", "--rate", "0"], "--rate must be > 0"),
        (
            ["replay", "--source", "spool:{spool}", "--target", "{url}", "--concurrency", "many"],
            "--concurrency 'many' is not a whole number",
        ),
        (["replay", "--source", "spool:{spool}", "--target", "{url}", "--header", "NoColon"], "is not 'Name: value'"),
        (
            ["replay", "--source", "spool:{spool}", "--target", "{url}", "--timeout", "soon"],
            "--timeout: 'soon' is not a duration",
        ),
        (["replay", "--source", "spool:{spool}", "--target", "{url}", "--limit", "0"], "--limit must be >= 1"),
        (["logs"], "haproxy-ai logs: choose an action"),
        (["logs", "export"], "haproxy-ai logs export: --source is required"),
        (["logs", "export", "--source", "spool:{spool}", "--ended", "boom"], "--ended: 'boom' is not one of"),
        (["logs", "export", "--source", "spool:{spool}", "--output", "{spool}"], "is a directory"),
        (["logs", "tail", "--source", "postgres:postgresql://u:s3cretpw@127.0.0.1:1/db"], "must be spool:DIR"),
        (["logs", "tail", "--source", "spool:{spool}", "-n", "-1"], "-n must be >= 0"),
        (["replay", "--source", "mysql://u:s3cretpw@db/x", "--target", "{url}"], "unknown source type 'mysql'"),
        (["logs", "export", "--source", "alice:s3cretpw@db/x"], "unknown source type 'alice'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = stack.backend()
    directory = spool_of(tmp_path / "spool", [make_record(1)])
    argv = [a.format(spool=directory, url=backend.url) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("haproxy-ai ") and message in err, err
    assert "Traceback" not in err and "s3cretpw" not in err
    assert backend.stats.requests == 0


def test_cli_unreadable_postgres_source_masks_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://alice:s3cret%40pw@127.0.0.1:{port}/db"
    for argv in (
        ["replay", "--source", f"postgres:{dsn}", "--target", "http://127.0.0.1:9"],
        ["logs", "export", "--source", dsn],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1
        assert "cannot read records: postgres:postgresql://alice:***@127.0.0.1" in err
        assert "s3cret" not in err + out and "Traceback" not in err


def test_cli_logs_export_and_tail(
    mixed_spool: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, records = mixed_spool
    code, out, err = run_cli(capsys, "logs", "export", "--source", f"spool:{directory}", "--status", "5xx,429")
    assert code == 0
    lines = out.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [records[i]["id"] for i in (1, 2, 4)]
    assert lines[0] == json.dumps(records[1], separators=(",", ":"), ensure_ascii=False)  # compact, key order kept
    assert "haproxy-ai logs export: 3 records (1 invalid lines skipped)" in err

    output = tmp_path / "out.jsonl"
    code, out, err = run_cli(
        capsys, "logs", "export", "--source", f"spool:{directory}", "--limit", "2", "-o", str(output)
    )
    assert code == 0 and out == ""
    assert [json.loads(x) for x in output.read_text().splitlines()] == records[:2]
    assert f"2 records to {output}" in err

    code, out, _ = run_cli(capsys, "logs", "tail", "--source", f"spool:{directory}", "-n", "2", "--status", "200")
    assert code == 0
    assert [json.loads(x)["id"] for x in out.splitlines()] == [records[3]["id"], records[5]["id"]]
    code, out, _ = run_cli(capsys, "logs", "tail", "--source", f"spool:{directory}")
    assert len(out.splitlines()) == 6


def test_cli_logs_tail_follow_picks_up_new_records(tmp_path: Path) -> None:
    old, new = make_record(1), make_record(2, status=500)
    directory = write_spool(tmp_path / "spool", [(1, "open", line(make_record(0)) + line(old))])
    argv = [sys.executable, "-m", "haproxy_ai", "logs", "tail", "--source", f"spool:{directory}", "-n", "1", "-f"]
    with spawn(argv, clean_env({"PYTHONUNBUFFERED": "1"})) as proc:
        assert json.loads(proc.expect(r"^\{").string)["id"] == old["id"]
        with (directory / "00000000000000000001.jsonl.open").open("ab") as f:
            f.write(line(new))
        assert json.loads(proc.expect(r"^\{").string)["id"] == new["id"]
        assert proc.stop(signal.SIGTERM) == 0


def test_cli_replay_interrupted_prints_the_summary(stack: Stack, tmp_path: Path) -> None:
    backend = stack.backend()
    backend.set_fault("hang")
    directory = spool_of(tmp_path / "spool", [make_record(i) for i in range(3)])
    argv = [
        sys.executable,
        "-m",
        "haproxy_ai",
        "replay",
        "--source",
        f"spool:{directory}",
        "--target",
        backend.url,
        "--concurrency",
        "1",
    ]
    with spawn(argv, clean_env({"PYTHONUNBUFFERED": "1"})) as proc:
        wait_for(lambda: backend.stats.in_flight == 1, timeout=15)
        proc.send_signal(signal.SIGINT)
        proc.expect(r"replay \(interrupted\)")
        proc.expect(r"cancelled\s+1")
        assert proc.wait(15) == 130


def test_cli_export_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    directory = spool_of(tmp_path / "spool", [make_record(i) for i in range(1500)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "haproxy_ai", "logs", "export", "--source", f"spool:{directory}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["request_id"] == "req-0"
    proc.stdout.close()  # like `| head -1`
    assert proc.wait(15) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_postgres_source_export_and_replay(
    postgres_dsn: str, stack: Stack, loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    table = fresh_table("replay")
    records = [make_record(i, status=[200, 500][i % 2], backend=f"replica-{i % 3}") for i in range(12)]

    async def store() -> None:
        sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table)
        await sink.write([line(r)[:-1] for r in records])
        await sink.aclose()

    loop_thread.run(store())
    source = f"postgres:{postgres_dsn}#{table}"
    code, out, err = run_cli(
        capsys,
        "logs",
        "export",
        "--source",
        source,
        "--status",
        "200",
        "--since",
        ts(BASE + timedelta(seconds=2)),
        "--limit",
        "3",
    )
    assert code == 0, err
    expected = [r for r in records if r["status"] == 200 and r["received_at"] >= ts(BASE + timedelta(seconds=2))][:3]
    assert [json.loads(x) for x in out.splitlines()] == expected

    backend = stack.backend()
    code, out, err = run_cli(
        capsys,
        "replay",
        "--source",
        source,
        "--backend",
        "replica-1",
        "--status",
        "5xx",
        "--target",
        backend.url,
        "--json",
    )
    assert code == 0, err
    wanted = [r for r in records if r["backend"] == "replica-1" and r["status"] == 500]
    data = json.loads(out)
    assert data["sent"] == len(wanted) == 2 and data["status_changes"] == {"500->200": 2}
    wait_for(lambda: backend.stats.completed == 2)
