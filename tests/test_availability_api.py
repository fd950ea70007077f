"""The availability model as served: /admin/availability, /admin/history, gauges and the CLI agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from .support import Stack, client, wait_for


def _admin(proxy: Any, path: str) -> Any:
    return httpx.get(proxy.admin_url + path, trust_env=False).json()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haproxy_ai", "availability", *args], capture_output=True, text=True, timeout=30
    )


def _proxy_with_one_outage(stack: Stack) -> Any:
    backends = [stack.backend() for _ in range(2)]
    proxy = stack.proxy(
        [{"url": b.url, "name": f"b{i}"} for i, b in enumerate(backends)],
        balancer={"type": "round_robin"},
        retry={"enabled": False},
        health={
            "active": {"enabled": False},
            "passive": {"consecutive_failures": 2, "base_ejection_time": "200ms"},
            "slow_start": "0s",
        },
        availability={"min_healthy": 1},
    )
    backends[0].set_fault("error", status=500)
    with client(proxy.url) as c:
        for _ in range(4):
            c.post("/v1/completions", json={"prompt": "x"})
    backends[0].set_fault("ok")
    state = lambda: _admin(proxy, "/admin/backends/b0")  # noqa: E731
    wait_for(lambda: state()["state"] == "healthy" and len(state()["history"]) == 2)
    return proxy


def test_endpoint_counts_the_outage_and_exports_gauges(stack: Stack) -> None:
    proxy = _proxy_with_one_outage(stack)
    wait_for(lambda: _admin(proxy, "/admin/availability")["backends"]["b0"]["repairs"] == 1)  # the 1 s report cache
    report = _admin(proxy, "/admin/availability")
    b0, b1 = report["backends"]["b0"], report["backends"]["b1"]
    assert (b0["failures"], b0["repairs"]) == (1, 1)
    assert (b1["failures"], b1["repairs"]) == (0, 0)
    assert 0.0 < b0["down_s"] < 5 and b0["observed_availability"] < 1.0
    pool = report["pool"]
    assert pool["n"] == 2 and report["k_min"] == 1
    assert 0.0 < pool["p_at_least_k"] <= 1.0
    assert pool["observed_fraction_at_least_k"] == 1.0  # b1 was up throughout
    metrics = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    assert "haproxy_ai_availability_pool " in metrics and "haproxy_ai_availability_replicas_needed " in metrics


def test_cli_and_endpoint_agree(stack: Stack, tmp_path: Path) -> None:
    proxy = _proxy_with_one_outage(stack)
    wait_for(lambda: _admin(proxy, "/admin/availability")["backends"]["b0"]["repairs"] == 1)
    served = _admin(proxy, "/admin/availability")

    online = _cli("--admin", proxy.admin_url, "--json")
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout)["pool"]["n"] == served["pool"]["n"]

    history = _admin(proxy, "/admin/history")
    export = tmp_path / "history.json"
    export.write_text(json.dumps(history))
    offline = _cli("--history", str(export), "--min-healthy", "1", "--json")
    assert offline.returncode == 0, offline.stderr
    # The proxy's report as of the export's moment is the same computation over the same data.
    as_of = _admin(proxy, f"/admin/availability?at={history['now']!r}")
    assert json.loads(offline.stdout) == as_of
    assert as_of["backends"]["b0"]["failures"] == served["backends"]["b0"]["failures"] == 1

    table = _cli("--history", str(export))
    assert table.returncode == 0
    assert "MTBF" in table.stdout and "b0" in table.stdout and "replicas needed" in table.stdout


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    for args in (
        ("--history", str(bad)),
        ("--history", str(tmp_path / "missing.json")),
        ("--admin", "http://127.0.0.1:1"),
        ("--history", str(bad), "--min-healthy", "0"),
    ):
        out = _cli(*args)
        assert out.returncode != 0, args
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert _cli().returncode == 2  # one source is required


def test_history_and_availability_need_the_token(stack: Stack) -> None:
    backend = stack.backend()
    proxy = stack.proxy([backend], admin={"token": "s3cret"}, health={"active": {"enabled": False}})
    for path in ("/admin/availability", "/admin/history", "/admin/stats"):
        assert httpx.get(proxy.admin_url + path, trust_env=False).status_code == 401
    ok = httpx.get(proxy.admin_url + "/admin/stats", headers={"authorization": "Bearer s3cret"}, trust_env=False)
    assert ok.status_code == 200 and set(ok.json()) >= {"requests", "retries", "hedges", "shed"}
    denied = _cli("--admin", proxy.admin_url)
    assert denied.returncode == 1 and "token" in denied.stderr
