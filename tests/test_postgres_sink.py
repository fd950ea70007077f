"""The PostgreSQL sink against a real server: idempotent batch inserts, exact read-back, failures and recovery."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from haproxy_ai.mirror.sinks.base import SinkError
from haproxy_ai.mirror.sinks.postgres import MissingDriver, PostgresSink, read_records

from .pg import ThrowawayCluster, fresh_table
from .support import LoopThread

BASE = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
STATUSES = (200, 200, 500, 499, 429)
BACKENDS = ("replica-1", "replica-2", None)
MODELS = ("llama-3-8b", "mistral-7b", None)


def ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(i: int, **overrides: Any) -> dict[str, Any]:
    """A valid schema-1 record; status, backend, model and times vary with ``i``."""
    status = STATUSES[i % len(STATUSES)]
    backend = BACKENDS[i % len(BACKENDS)]
    model = MODELS[i % len(MODELS)]
    received = BASE + timedelta(seconds=i, microseconds=123456 + i)
    answered = status != 499
    request_body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"héllo {i} — 你好 🚀"}]})
    record: dict[str, Any] = {
        "schema": 1,
        "id": uuid.uuid4().hex,
        "request_id": f"req-{i}",
        "instance": "host-a",
        "received_at": ts(received),
        "first_byte_at": ts(received + timedelta(microseconds=3210)) if answered else None,
        "done_at": ts(received + timedelta(microseconds=12345)),
        "latency_ms": 12.345 + i,
        "ttfb_ms": 3.21 if answered else None,
        "client": "127.0.0.1" if i % 2 else None,
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": "a=1&key=[REDACTED]" if i % 2 else "",
        "model": model,
        "status": status,
        "ended": "complete" if answered else "client_aborted",
        "backend": backend,
        "error": None if status == 200 else f"upstream said {status}",
        "attempts": [
            {
                "backend": "replica-2",
                "outcome": "failure",
                "status": 503,
                "start_ms": 0.2,
                "headers_ms": 1.5,
                "end_ms": 2.0,
            },
            {
                "backend": backend,
                "outcome": "success",
                "status": status,
                "start_ms": 2.1,
                "headers_ms": None,
                "end_ms": None,
            },
        ],
        "request": {
            "headers": {"content-type": "application/json", "authorization": "[REDACTED]", "x-émoji": "✓"},
            "body": request_body.decode(),
            "body_encoding": "utf-8",
            "bytes": len(request_body),
            "body_truncated": False,
        },
        "response": {
            "headers": {"content-type": "text/event-stream"},
            "body": 'data: {"choices":[{"delta":{"content":"Grüße 👋"}}]}\n\ndata: [DONE]\n\n',
            "body_encoding": "utf-8",
            "bytes": 64,
            "body_truncated": i % 4 == 0,
            "stream": True,
            "text": "Grüße 👋",
            "usage": {"prompt_tokens": 5, "completion_tokens": i, "total_tokens": 5 + i},
        },
    }
    if i % 5 == 1:  # a binary body: it contains NUL, so the format says base64
        raw = b"\x00\x01\xffbinary\x00"
        record["request"].update(body=base64.b64encode(raw).decode(), body_encoding="base64", bytes=len(raw))
    record.update(overrides)
    return record


def lines(records: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def received(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["received_at"])


def in_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["received_at"], r["id"]))


async def rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
        return count
    finally:
        await conn.close()


async def read_all(dsn: str, table: str, **filters: Any) -> list[dict[str, Any]]:
    return [r async for r in read_records(dsn, table, **filters)]


@pytest.fixture
def run(loop_thread: LoopThread) -> Callable[..., Any]:
    """Runs a coroutine on the suite's (uvloop) loop thread, like the proxy runs the sink."""
    return lambda coro: loop_thread.run(coro, timeout=30)


def test_batch_is_stored_once_with_columns_and_indexes(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table()
    records = [make_record(i) for i in range(25)]
    sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table)

    async def scenario() -> None:
        await sink.write(lines(records))
        assert await rows(postgres_dsn, table) == 25
        # Redelivery after a crash: the same batch, and an overlapping one, add nothing.
        await sink.write(lines(records))
        await sink.write(lines([*records[10:], records[0]]))
        assert await rows(postgres_dsn, table) == 25

        conn = await asyncpg.connect(postgres_dsn)
        try:
            row = await conn.fetchrow(f'SELECT * FROM "{table}" WHERE id = $1', records[1]["id"])
            indexes = {
                r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", table)
            }
        finally:
            await conn.close()
        assert row["received_at"] == received(records[1])
        assert row["status"] == 200 and row["backend"] == "replica-2" and row["model"] == "mistral-7b"
        assert row["latency_ms"] == pytest.approx(13.345) and row["query"] == "a=1&key=[REDACTED]"
        assert orjson.loads(row["request"])["body_encoding"] == "base64"
        assert orjson.loads(row["response"])["text"] == "Grüße 👋"
        assert indexes >= {f"{table}_{c}_idx" for c in ("received_at", "status", "backend", "model")}
        await sink.aclose()

    run(scenario())


def test_existing_table_is_reused_and_missing_indexes_added(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table()

    async def scenario() -> None:
        first = PostgresSink(name="a", dsn=postgres_dsn, table=table)
        await first.write(lines([make_record(0)]))
        await first.aclose()
        # Someone drops an index; a new sink (a restarted proxy) finds the table and restores it.
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f'DROP INDEX "{table}_model_idx"')
            second = PostgresSink(name="b", dsn=postgres_dsn, table=table)
            await second.write(lines([make_record(1)]))
            await second.aclose()
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{table}_model_idx")
        finally:
            await conn.close()
        assert await rows(postgres_dsn, table) == 2

    run(scenario())


def test_long_table_name_gets_four_distinct_indexes(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table("long_" + "x" * 46)
    assert len(table) == 63

    async def scenario() -> None:
        sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table)
        await sink.write(lines([make_record(0)]))
        await sink.aclose()
        conn = await asyncpg.connect(postgres_dsn)
        try:
            names = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", table)
        finally:
            await conn.close()
        assert len(names) == 5  # primary key + four

    run(scenario())


def test_read_records_gives_back_the_records_with_filters(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table()
    records = [make_record(i) for i in range(30)]
    records.append(make_record(31, received_at=records[7]["received_at"]))  # a tie on received_at: id decides
    expected = in_order(records)

    async def scenario() -> None:
        sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table)
        await sink.write(lines(records[::-1]))  # insertion order does not matter
        await sink.aclose()

        everything = await read_all(postgres_dsn, table)
        assert everything == expected
        assert [list(r) for r in everything] == [list(r) for r in expected]  # key order of the format
        assert [list(r["response"]) for r in everything] == [list(r["response"]) for r in expected]
        assert all(isinstance(r["latency_ms"], float) for r in everything)

        since, until = BASE + timedelta(seconds=5), BASE + timedelta(seconds=12, microseconds=123468)
        assert await read_all(postgres_dsn, table, since=since, until=until) == [
            r for r in expected if since <= received(r) < until
        ]
        # until is exclusive, since inclusive: a bound equal to a record's time
        exact = received(records[12])
        assert records[12] not in await read_all(postgres_dsn, table, until=exact)
        assert (await read_all(postgres_dsn, table, since=exact))[0] == records[12]
        naive = (BASE + timedelta(seconds=20)).replace(tzinfo=None)  # naive means UTC
        assert await read_all(postgres_dsn, table, since=naive) == [
            r for r in expected if r["received_at"] >= ts(naive)
        ]
        assert await read_all(postgres_dsn, table, status=499) == [r for r in expected if r["status"] == 499]
        assert await read_all(postgres_dsn, table, backend="replica-1") == [
            r for r in expected if r["backend"] == "replica-1"
        ]
        assert await read_all(postgres_dsn, table, model="mistral-7b", status=200) == [
            r for r in expected if r["model"] == "mistral-7b" and r["status"] == 200
        ]
        assert await read_all(postgres_dsn, table, limit=4) == expected[:4]
        assert await read_all(postgres_dsn, table, limit=0) == []

        # Stopping early closes the cursor's connection cleanly.
        gen = read_records(postgres_dsn, table)
        assert await anext(gen) == expected[0]
        await gen.aclose()

    run(scenario())


def test_read_records_missing_table(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table("missing")
    with pytest.raises(SinkError, match="does not exist"):
        run(read_all(postgres_dsn, table))


def test_poison_records_do_not_block_their_batch(
    postgres_dsn: str, run: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    table = fresh_table()
    good = [make_record(i) for i in range(12)]
    nul = make_record(20)
    nul["response"]["text"] = "SECRET-TEXT\u0000after"  # (wrongly) a NUL in a string: jsonb refuses it
    nul["path"] = "/v1/\u0000x"  # and in a text column
    huge_model = make_record(
        21, model=base64.b64encode(os.urandom(12000)).decode()
    )  # incompressible: too big for an index
    wrong_type = make_record(22, status="200")  # not an integer: only a minimal row is possible
    no_id = make_record(23, id=None)
    batch = lines([*good[:5], nul, *good[5:9], huge_model, wrong_type, no_id, *good[9:]])
    batch.insert(3, b"{not json")

    async def scenario() -> list[dict[str, Any]]:
        sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table)
        with caplog.at_level(logging.WARNING, logger="haproxy_ai.mirror"):
            await sink.write(batch)
            await sink.write(batch)  # redelivered: still once each
        await sink.aclose()
        return await read_all(postgres_dsn, table)

    stored = {r["id"]: r for r in run(scenario())}
    assert len(stored) == len(good) + 3
    for record in good:
        assert stored[record["id"]] == record

    assert stored[nul["id"]]["response"]["text"] == "SECRET-TEXTafter"
    assert stored[nul["id"]]["path"] == "/v1/x"
    assert stored[nul["id"]]["request"] == nul["request"] and stored[nul["id"]]["error"] == nul["error"]
    assert stored[huge_model["id"]]["model"] == huge_model["model"][:512]
    assert stored[huge_model["id"]]["response"] == huge_model["response"]
    minimal = stored[wrong_type["id"]]
    assert minimal["error"] == "record could not be stored: DataError"
    assert minimal["status"] == 0 and minimal["received_at"] == wrong_type["received_at"]
    assert minimal["request"] == {} and minimal["attempts"] == []

    messages = [r.getMessage() for r in caplog.records if r.name == "haproxy_ai.mirror"]
    for record in (nul, huge_model, wrong_type):
        assert any(record["id"] in m for m in messages)
    assert not any("SECRET" in m or huge_model["model"][:40] in m for m in messages)


def test_server_down_then_back(pg_cluster: ThrowawayCluster, run: Callable[..., Any]) -> None:
    password = "CanaryPw123"
    dsn = f"postgresql://postgres:{password}@127.0.0.1:{pg_cluster.port}/postgres"  # trust auth ignores it
    table = fresh_table()
    first, second = [make_record(i) for i in range(10)], [make_record(i) for i in range(10, 20)]
    sink = PostgresSink(name="pg", dsn=dsn, table=table, connect_timeout=2.0, statement_timeout=2.0)
    run(sink.write(lines(first)))

    pg_cluster.stop()
    for _ in range(2):  # the dropped connection, then a refused reconnect
        started = time.monotonic()
        with pytest.raises(SinkError) as failure:
            run(sink.write(lines(second)))
        assert time.monotonic() - started < 3.0
        message = str(failure.value)
        assert "'pg'" in message and password not in message and dsn not in message and "127.0.0.1" not in message
        assert failure.value.__cause__ is None

    pg_cluster.start()
    run(sink.write(lines(first + second)))  # the same sink reconnects; the first batch is not duplicated
    assert run(rows(pg_cluster.dsn, table)) == 20
    assert run(read_all(pg_cluster.dsn, table)) == in_order(first + second)
    run(sink.aclose())


def test_statement_timeout_raises_and_recovers(postgres_dsn: str, run: Callable[..., Any]) -> None:
    table = fresh_table()

    async def scenario() -> None:
        sink = PostgresSink(name="pg", dsn=postgres_dsn, table=table, statement_timeout=0.3)
        await sink.write(lines([make_record(0)]))
        blocker = await asyncpg.connect(postgres_dsn)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            started = time.monotonic()
            with pytest.raises(SinkError, match="timed out"):
                await sink.write(lines([make_record(1)]))
            assert time.monotonic() - started < 2.0
            await tx.rollback()
        finally:
            await blocker.close()
        await sink.write(lines([make_record(1), make_record(2)]))
        await sink.aclose()
        assert await rows(postgres_dsn, table) == 3

    run(scenario())


def test_bad_table_name_is_refused() -> None:
    with pytest.raises(ValueError, match="identifier"):
        PostgresSink(name="pg", dsn="", table='x"; DROP TABLE y; --')


def test_missing_driver(monkeypatch: pytest.MonkeyPatch, run: Callable[..., Any]) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    with pytest.raises(MissingDriver, match=r"pip install 'haproxy-ai\[postgres\]'"):
        PostgresSink(name="pg", dsn="")
    with pytest.raises(MissingDriver):
        run(read_all("", "t"))
    # The package imports without the driver.
    code = "import sys; sys.modules['asyncpg'] = None; import haproxy_ai.mirror.sinks.postgres"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
