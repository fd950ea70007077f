"""Health checking end to end: real replicas, real probes, the admin API, reload."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import Stack, client, wait_for
from .test_cli import _env, _expect, _spawn

FAST_PROBES = {"interval": "50ms", "fast_interval": "20ms", "timeout": "200ms", "rise": 1, "fall": 2, "jitter": 0}


def _state(admin_url: str, name: str, token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{admin_url}/admin/backends/{name}", headers=headers, trust_env=False).json()


def _backend_of(c: httpx.Client, path: str = "/v1/models") -> str:
    r = c.get(path)
    assert r.status_code == 200, r.text
    return r.headers["x-haproxy-ai-backend"]


def _stats(backend: Any) -> dict[str, Any]:
    return httpx.get(backend.url + "/_stats", trust_env=False).json()


def _named(backends: list[Any]) -> list[dict[str, Any]]:
    return [{"url": b.url, "name": f"b{i}"} for i, b in enumerate(backends)]


def test_killed_replica_is_marked_down_by_probes_and_avoided(stack: Stack) -> None:
    backends = [stack.backend() for _ in range(3)]
    proxy = stack.proxy(_named(backends), health={"active": FAST_PROBES, "slow_start": "0s"})
    stack.loop.run(backends[1].stop())
    wait_for(lambda: _state(proxy.admin_url, "b1")["state"] == "unhealthy")
    state = _state(proxy.admin_url, "b1")
    assert state["last_probe"]["ok"] is False and "connect failed" in state["last_probe"]["detail"]
    assert state["history"][-1]["to"] == "unhealthy"
    with client(proxy.url) as c:
        assert {_backend_of(c) for _ in range(30)} == {"b0", "b2"}


def test_failing_replica_is_ejected_passively_then_readmitted(stack: Stack) -> None:
    backends = [stack.backend() for _ in range(3)]
    proxy = stack.proxy(
        _named(backends),
        balancer={"type": "round_robin"},
        health={
            "active": {"enabled": False},
            "passive": {"consecutive_failures": 3, "base_ejection_time": "300ms"},
            "slow_start": "0s",
        },
    )
    backends[0].set_fault("error", status=500)
    with client(proxy.url) as c:
        statuses = [c.post("/v1/completions", json={"prompt": "x"}).status_code for _ in range(9)]
        assert statuses == [200] * 9  # each 500 was retried elsewhere
        assert _stats(backends[0])["errors"] == 3  # b0's three failures, then it is ejected
        state = _state(proxy.admin_url, "b0")
        assert state["state"] == "ejected" and state["ejections"] == 1
        assert "consecutive_failures" in state["cause"]
        assert all(c.post("/v1/completions", json={"prompt": "x"}).status_code == 200 for _ in range(6))
        backends[0].set_fault("ok")
        wait_for(lambda: _state(proxy.admin_url, "b0")["state"] == "healthy")
        assert "b0" in {_backend_of(c) for _ in range(6)}


def test_hung_engine_that_passes_probes_is_caught_by_passive_detection(stack: Stack) -> None:
    # vLLM's /health answers 200 while its engine hangs: the probe passes, live traffic fails.
    backends = [stack.backend() for _ in range(2)]
    proxy = stack.proxy(
        _named(backends),
        balancer={"type": "round_robin"},
        timeouts={"first_byte": "150ms"},
        health={"active": FAST_PROBES, "passive": {"consecutive_failures": 2, "base_ejection_time": "30s"}},
    )
    backends[1].set_fault("hang")
    with client(proxy.url) as c:
        for _ in range(4):
            c.post("/v1/completions", json={"prompt": "x"})
        state = _state(proxy.admin_url, "b1")
        assert state["state"] == "ejected", state
        wait_for(lambda: (_state(proxy.admin_url, "b1")["last_probe"] or {}).get("ok") is True)
        assert _state(proxy.admin_url, "b1")["state"] == "ejected"  # a passing probe does not lift it
        assert all(c.post("/v1/completions", json={"prompt": "x"}).status_code == 200 for _ in range(5))


def test_retry_after_puts_a_replica_in_cooldown_not_ejection(stack: Stack) -> None:
    backends = [stack.backend() for _ in range(2)]
    proxy = stack.proxy(_named(backends), balancer={"type": "round_robin"}, health={"active": {"enabled": False}})
    backends[0].set_fault("retry_after", seconds=30, count=1)
    with client(proxy.url) as c:
        first = [c.post("/v1/completions", json={"prompt": "x"}) for _ in range(2)]
        assert sorted(r.status_code for r in first) == [200, 429]
        state = _state(proxy.admin_url, "b0")
        assert state["state"] == "cooldown" and state["ejections"] == 0 and state["cooldown_for_s"] > 25
        assert {_backend_of(c) for _ in range(6)} == {"b1"}


def test_drained_backend_finishes_its_stream_and_gets_nothing_new(stack: Stack) -> None:
    backends = [stack.backend(tokens=20, chunk_interval=0.05), stack.backend()]
    proxy = stack.proxy(
        _named(backends), balancer={"type": "round_robin"}, health={"active": {"enabled": False}, "slow_start": "0s"}
    )
    payload = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with client(proxy.url) as c, client(proxy.admin_url) as admin:
        with c.stream("POST", "/v1/chat/completions", json=payload) as r:
            assert r.headers["x-haproxy-ai-backend"] == "b0"
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            drained = admin.post("/admin/backends/b0/drain").json()
            assert drained["state"] == "draining" and drained["in_flight"] == 1
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert {_backend_of(c) for _ in range(6)} == {"b1"}
        assert admin.get("/admin/backends/b0").json()["in_flight"] == 0
        assert admin.post("/admin/backends/b0/enable").json()["state"] == "healthy"
        assert "b0" in {_backend_of(c) for _ in range(4)}


def test_admin_api_token_errors_and_weights(stack: Stack) -> None:
    backends = [stack.backend() for _ in range(2)]
    proxy = stack.proxy(
        _named(backends),
        balancer={"type": "round_robin"},
        admin={"token": "s3cret-token"},
        health={"active": {"enabled": False}, "slow_start": "0s"},
    )
    with httpx.Client(base_url=proxy.admin_url, trust_env=False) as admin:
        assert admin.get("/admin/backends").status_code == 401
        assert admin.get("/admin/backends").headers["www-authenticate"].startswith("Bearer")
        assert admin.post("/admin/backends/b0/drain").status_code == 401
        assert admin.get("/admin/backends", headers={"authorization": "Bearer wrong"}).status_code == 403
        assert admin.get("/healthz").status_code == 200
        assert admin.get("/readyz").status_code == 200  # active checks are off here: ready at once
        assert admin.get("/metrics").status_code == 200
        admin.headers["authorization"] = "Bearer s3cret-token"
        listing = admin.get("/admin/backends").json()
        assert [b["name"] for b in listing["backends"]] == ["b0", "b1"]
        assert "s3cret" not in admin.get("/admin/config").text
        missing = admin.post("/admin/backends/nope/drain")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_backend"
        assert admin.get("/admin/backends/b0/drain").status_code == 405  # GET never changes state
        assert admin.put("/admin/backends/b0/weight", content=b"{bad").status_code == 400
        assert admin.put("/admin/backends/b0/weight", json={"weight": 0}).status_code == 400
        assert admin.put("/admin/backends/b0/weight", json={"weight": "3"}).status_code == 400
        assert admin.put("/admin/backends/b0/weight", json={"weight": 3}).json()["effective_weight"] == 3
    with client(proxy.url) as c:
        counts = {"b0": 0, "b1": 0}
        for _ in range(40):
            counts[_backend_of(c)] += 1
    assert counts == {"b0": 30, "b1": 10}


def test_metrics_parse_and_cover_health(stack: Stack) -> None:
    backends = [stack.backend() for _ in range(2)]
    proxy = stack.proxy(_named(backends), health={"active": FAST_PROBES})
    wait_for(lambda: _state(proxy.admin_url, "b0")["last_probe"] is not None)
    with client(proxy.url) as c:
        _backend_of(c)
    text = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "haproxy_ai_backend_state",
        "haproxy_ai_backend_up",
        "haproxy_ai_health_probes",
        "haproxy_ai_backend_inflight",
        "haproxy_ai_backend_weight",
        "haproxy_ai_upstream_attempts",
        "haproxy_ai_backend_responses",
        "haproxy_ai_upstream_ttfb_seconds",
        "haproxy_ai_request_duration_seconds",
        "haproxy_ai_panic_mode",
    ):
        assert name in families, name
    up = {s.labels["backend"]: s.value for s in families["haproxy_ai_backend_up"].samples}
    assert up == {"b0": 1.0, "b1": 1.0}
    states = [s for s in families["haproxy_ai_backend_state"].samples if s.value == 1.0]
    assert {(s.labels["backend"], s.labels["state"]) for s in states} == {("b0", "healthy"), ("b1", "healthy")}


def test_stalled_stream_counts_against_the_replica(stack: Stack) -> None:
    backend = stack.backend(tokens=3, chunk_interval=0.4)
    proxy = stack.proxy(
        [{"url": backend.url, "name": "slowpoke"}],
        health={"active": {"enabled": False}, "passive": {"stall_timeout": "100ms"}},
    )
    payload = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with client(proxy.url) as c, c.stream("POST", "/v1/chat/completions", json=payload) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"  # a stall is reported, the stream itself is not cut
    metrics = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    stalls = [f for f in text_string_to_metric_families(metrics) if f.name == "haproxy_ai_stream_stalls"]
    assert [(s.labels, s.value) for s in stalls[0].samples if s.name.endswith("_total")] == [
        ({"pool": "default", "backend": "slowpoke"}, 1.0)
    ]


def test_reload_via_admin_rejects_bad_config_and_applies_good_one(stack: Stack, tmp_path: Path) -> None:
    backends = [stack.backend() for _ in range(3)]
    cfg = tmp_path / "proxy.yaml"

    def write(names: list[int], weight: int = 1) -> None:
        items = [{"url": backends[i].url, "name": f"b{i}", "weight": weight} for i in names]
        health = {"active": {"enabled": False}, "slow_start": "0s"}
        cfg.write_text(json.dumps({"backends": items, "balancer": {"type": "round_robin"}, "health": health}))

    from haproxy_ai.settings import load_settings

    write([0, 1])
    settings = load_settings(cfg, environ={})
    proxy = stack.proxy_for(settings, reloader=lambda: load_settings(cfg, environ={}))
    with httpx.Client(base_url=proxy.admin_url, trust_env=False) as admin, client(proxy.url) as c:
        cfg.write_text("backends: [{url: 'http://127.0.0.1:1', weight: 0}]\n")
        bad = admin.post("/admin/reload")
        assert bad.status_code == 400
        assert any("backends[0].weight: must be > 0" in i for i in bad.json()["error"]["issues"])
        assert {_backend_of(c) for _ in range(10)} == {"b0", "b1"}
        write([1, 2], weight=2)
        changes = admin.post("/admin/reload").json()
        assert changes["added"] == ["b2"] and changes["removed"] == ["b0"] and changes["reweighted"] == ["b1"]
        assert changes["restart_required"] == []
        assert {_backend_of(c) for _ in range(10)} == {"b1", "b2"}
        wait_for(lambda: [b["name"] for b in admin.get("/admin/backends").json()["backends"]] == ["b1", "b2"])


def test_sighup_reload_adds_and_removes_backends_under_traffic(tmp_path: Path) -> None:
    with (
        _spawn("fake-backend", "--port", "0", "--name", "r1", "--latency", "0.01") as r1,
        _spawn("fake-backend", "--port", "0", "--name", "r2", "--latency", "0.01") as r2,
    ):
        url1 = _expect(r1, r"serving (http://\S+)").group(1)
        url2 = _expect(r2, r"serving (http://\S+)").group(1)
        cfg = tmp_path / "proxy.yaml"
        cfg.write_text(f"backends: [{{url: '{url1}', name: r1}}]\nhealth: {{slow_start: 0s}}\n")
        with _spawn("serve", "--config", str(cfg), "--port", "0", "--admin-port", "0", env=_env()) as proxy:
            url = _expect(proxy, r"proxying (http://\S+)").group(1)
            admin = _expect(proxy, r"admin on (http://\S+) ").group(1)
            seen: set[str] = set()
            failures: list[Any] = []
            stop = threading.Event()

            def traffic() -> None:
                with client(url) as c:
                    while not stop.is_set():
                        r = c.post("/v1/completions", json={"prompt": "x"})
                        if r.status_code != 200:
                            failures.append((r.status_code, r.text))
                        seen.add(r.headers.get("x-haproxy-ai-backend", "?"))

            worker = threading.Thread(target=traffic)
            worker.start()
            try:
                wait_for(lambda: "r1" in seen)
                cfg.write_text(f"backends: [{{url: '{url2}', name: r2}}]\nhealth: {{slow_start: 0s}}\n")
                proxy.send_signal(signal.SIGHUP)
                wait_for(lambda: "r2" in seen)
                names = lambda: [b["name"] for b in httpx.get(admin + "/admin/backends").json()["backends"]]  # noqa: E731
                wait_for(lambda: names() == ["r2"])
                seen.clear()
                wait_for(lambda: len(seen) > 0)
            finally:
                stop.set()
                worker.join(10)
            assert not failures, failures[:3]
            assert seen == {"r2"}
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(15) == 0


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ({"active": {"path": "health"}}, "health.active.path: must be an absolute path"),
        ({"active": {"fall": 0}}, "health.active.fall: must be >= 1"),
        ({"active": {"expected_statuses": "7xx"}}, "health.active.expected_statuses:"),
        ({"passive": {"max_ejection_percent": 150}}, "health.passive.max_ejection_percent: must be <= 100"),
        ({"panic_threshold": 2}, "health.panic_threshold: must be <= 1"),
        ({"slow_start": "soon"}, "health.slow_start:"),
        ({"pasive": {}}, "health.pasive: unknown key (did you mean 'passive'?)"),
    ],
)
def test_health_config_errors(health: dict[str, Any], message: str) -> None:
    from haproxy_ai.settings import ConfigError, parse_settings

    with pytest.raises(ConfigError) as info:
        parse_settings({"backends": ["http://a:1"], "health": health})
    assert message in str(info.value)


def test_admin_on_public_address_needs_a_token() -> None:
    from haproxy_ai.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"admin.token: required when the admin listener is not on loopback"):
        load_settings(None, {"backend": ["http://a:1"], "admin_host": "0.0.0.0"}, environ={})
    settings = load_settings(
        None, {"backend": ["http://a:1"], "admin_host": "0.0.0.0"}, environ={"HAPROXY_AI_ADMIN_TOKEN": "t"}
    )
    assert settings.admin.token == "t"
