"""Mirroring into a real PostgreSQL: rows per request, outages, SIGKILL, and a canary secret."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from haproxy_ai.mirror.reader import iter_spool

from .pg import ThrowawayCluster, fresh_table
from .support import ChildProcess, Stack, clean_env, client, spawn, wait_for


def query(dsn: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return list(await conn.fetch(sql))
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()

    return asyncio.run(run())


def row_count(dsn: str, table: str) -> int:
    rows = query(dsn, f'SELECT count(*) AS n, count(DISTINCT id) AS d FROM "{table}"')
    if not rows:
        return 0
    assert rows[0]["n"] == rows[0]["d"], "duplicate rows"
    return int(rows[0]["n"])


def sink(dsn: str, table: str) -> dict[str, Any]:
    return {"type": "postgres", "dsn": dsn, "table": table, "max_backoff": "200ms", "connect_timeout": "1s"}


def chat(i: int) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": f"question {i}"}]}


def test_n_requests_make_n_rows_with_authorization_redacted(stack: Stack, tmp_path: Path, postgres_dsn: str) -> None:
    table = fresh_table("mirror")
    backend = stack.backend(name="r1")
    proxy = stack.proxy(
        [{"url": backend.url, "name": "r1"}],
        mirror={"enabled": True, "spool_dir": str(tmp_path / "spool"), "sinks": [sink(postgres_dsn, table)]},
    )
    with client(proxy.url) as c:
        for i in range(25):
            r = c.post("/v1/chat/completions", json=chat(i), headers={"Authorization": f"Bearer secret-token-{i:04d}"})
            assert r.status_code == 200
    wait_for(lambda: row_count(postgres_dsn, table) == 25, timeout=15)
    rows = query(
        postgres_dsn,
        f"SELECT status, backend, model, request->'headers'->>'authorization' AS auth, request FROM \"{table}\" "
        "ORDER BY received_at",
    )
    assert {(r["status"], r["backend"], r["model"], r["auth"]) for r in rows} == {
        (200, "r1", "fake-model", "[REDACTED]")
    }
    assert [json.loads(json.loads(r["request"])["body"])["messages"][0]["content"] for r in rows] == [
        f"question {i}" for i in range(25)
    ]
    assert not any("secret-token" in str(r) for r in query(postgres_dsn, f'SELECT t::text FROM "{table}" t'))


def test_postgres_down_mid_run_loses_nothing_and_duplicates_nothing(
    stack: Stack, tmp_path: Path, pg_cluster: ThrowawayCluster
) -> None:
    table = fresh_table("outage")
    dsn = pg_cluster.dsn
    backend = stack.backend()
    proxy = stack.proxy(
        [backend], mirror={"enabled": True, "spool_dir": str(tmp_path / "spool"), "sinks": [sink(dsn, table)]}
    )
    registry = proxy.proxy.metrics.registry
    with client(proxy.url) as c:
        for i in range(10):
            assert c.post("/v1/chat/completions", json=chat(i)).status_code == 200
        wait_for(lambda: row_count(dsn, table) == 10, timeout=15)
        pg_cluster.stop()
        for i in range(10, 30):
            # The database being down never reaches the clients.
            assert c.post("/v1/chat/completions", json=chat(i)).status_code == 200
    wait_for(lambda: registry.get_sample_value("haproxy_ai_mirror_sink_pending", {"sink": "postgres"}) == 20)
    wait_for(lambda: registry.get_sample_value("haproxy_ai_mirror_sink_up", {"sink": "postgres"}) == 0)
    pg_cluster.start()
    wait_for(lambda: row_count(dsn, table) == 30, timeout=20)
    contents = [
        json.loads(json.loads(r["request"])["body"])["messages"][0]["content"]
        for r in query(dsn, f'SELECT request FROM "{table}" ORDER BY received_at')
    ]
    assert contents == [f"question {i}" for i in range(30)]  # in order
    wait_for(lambda: registry.get_sample_value("haproxy_ai_mirror_sink_pending", {"sink": "postgres"}) == 0)
    assert registry.get_sample_value("haproxy_ai_mirror_records_shipped_total", {"sink": "postgres"}) == 30


def _serve(config: Path) -> Any:
    return spawn(
        [sys.executable, "-m", "haproxy_ai", "serve", "--config", str(config), "--log-level", "debug"],
        clean_env({"PYTHONUNBUFFERED": "1"}),
    )


def _addresses(proc: ChildProcess) -> tuple[str, str]:
    url = proc.expect(r"proxying (http://\S+) ->").group(1)
    admin = proc.expect(r"admin on (http://\S+) ").group(1)
    return url, admin


def test_records_spooled_before_sigkill_reach_postgres_after_restart(
    stack: Stack, tmp_path: Path, pg_cluster: ThrowawayCluster
) -> None:
    table = fresh_table("killed")
    backend = stack.backend()
    config = tmp_path / "haproxy-ai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0},
                "admin": {"port": 0},
                "backends": [backend.url],
                "mirror": {
                    "enabled": True,
                    "spool_dir": str(tmp_path / "spool"),
                    "sinks": [sink(pg_cluster.dsn, table)],
                },
            }
        )
    )
    pg_cluster.stop()  # nothing can ship: every record stays in the spool
    with _serve(config) as proc:
        url, admin = _addresses(proc)
        with client(url) as c:
            for i in range(25):
                assert c.post("/v1/chat/completions", json=chat(i)).status_code == 200

        def spooled() -> int:
            return int(httpx.get(admin + "/admin/mirror", trust_env=False).json()["records"]["spooled"])

        wait_for(lambda: spooled() == 25)
        proc.popen.kill()  # SIGKILL: no drain, no flush, no checkpoint
        proc.popen.wait(10)
    assert sum(1 for _ in iter_spool(tmp_path / "spool")) == 25
    pg_cluster.start()
    with _serve(config) as proc:
        _addresses(proc)
        wait_for(lambda: row_count(pg_cluster.dsn, table) == 25, timeout=20)
        proc.stop()


def test_a_canary_secret_appears_nowhere(stack: Stack, tmp_path: Path, postgres_dsn: str) -> None:
    canary = "sk-canary" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))
    table = fresh_table("canary")
    backend = stack.backend()
    config = tmp_path / "haproxy-ai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0, "access_log": True},
                "admin": {"port": 0},
                "backends": [backend.url],
                "mirror": {
                    "enabled": True,
                    "spool_dir": str(tmp_path / "spool"),
                    "sinks": [sink(postgres_dsn, table), {"type": "file", "dir": str(tmp_path / "backup")}],
                    "segment_max_age": "100ms",
                    "redact": {"body_fields": ["user", "metadata.*"]},
                },
            }
        )
    )
    headers = {
        "Authorization": f"Bearer {canary}",
        "X-Api-Key": canary,
        "Api-Key": canary,
        "Cookie": f"session={canary}",
        "X-Custom": f"prefix {canary} suffix",
        "User-Agent": f"agent/{canary}",
        "X-Request-Id": canary,
        "X-Request-Timeout": canary,
    }
    params = {"key": canary, "api_key": canary, "q": canary, "token": canary}
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"my key is {canary}"}],
        "user": canary,
        "metadata": {"note": canary, "nested": {"deep": canary}},
    }
    with _serve(config) as proc:
        url, admin = _addresses(proc)
        with client(url) as c:
            echoed = c.post("/_echo/v1", params=params, json=body, headers=headers)
            assert canary in echoed.text  # the secret really went through the proxy
            assert c.post("/v1/chat/completions", params=params, json=body, headers=headers).status_code == 200
            assert c.get(f"/v1/{canary}/models", headers=headers).status_code == 404
            assert c.post("/v1/chat/completions", content=b"{" * 20_000_000, headers=headers).status_code == 413
        wait_for(lambda: row_count(postgres_dsn, table) == 4, timeout=15)
        wait_for(lambda: len(list((tmp_path / "backup").glob("*.gz"))) > 0, timeout=15)
        outputs = {
            path: httpx.get(admin + path, trust_env=False, timeout=5).text
            for path in (
                "/admin/mirror/records?limit=100",
                "/admin/mirror",
                "/admin/config",
                "/admin/backends",
                "/admin/stats",
                f"/admin/backends/{canary}",
                "/metrics",
            )
        }
        assert json.loads(outputs["/admin/mirror/records?limit=100"])["records"]
        proc.stop()
    logs = proc.output()
    assert "POST /v1/chat/completions" in logs  # the access log was on
    rows = query(postgres_dsn, f'SELECT t::text AS row FROM "{table}" t')
    assert len(rows) == 4
    spool_bytes = b"".join(p.read_bytes() for p in (tmp_path / "spool").glob("*.jsonl*"))
    backup = "\n".join(json.dumps(r) for r in iter_spool(tmp_path / "backup"))
    places = {
        "table": "\n".join(r["row"] for r in rows),
        "spool": spool_bytes.decode(),
        "backup": backup,
        "logs": logs,
        **outputs,
    }
    leaked = [name for name, text in places.items() if canary in text or canary[3:] in text]
    assert leaked == []
    record = next(r for r in iter_spool(tmp_path / "backup") if r["path"] == "/v1/chat/completions")
    assert record["request"]["headers"]["x-custom"] == "prefix [REDACTED] suffix"
    assert json.loads(record["request"]["body"])["user"] == "[REDACTED]"
