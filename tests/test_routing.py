"""Routing between pools end to end: real proxies, real simulated replicas serving different
models, the official openai client, ephemeral loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from haproxy_ai.mirror.reader import iter_spool
from haproxy_ai.settings import ConfigError, parse_settings

from .support import RawBackend, RunningProxy, Stack, client, wait_for

_QUIET = {"active": {"enabled": False}}


def chat(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2, **extra}


def two_pools(stack: Stack, **routing: Any) -> tuple[RunningProxy, dict[str, list[str]]]:
    """Pool `llama` (two replicas of llama-3-8b) and pool `qwen` (one of qwen-2-7b), models
    discovered from the replicas."""
    llama = [stack.backend(model="llama-3-8b", name=f"l{i}") for i in range(2)]
    qwen = [stack.backend(model="qwen-2-7b", name="q0")]
    pools = {
        "llama": {"backends": [{"url": b.url, "name": f"llama-{i}"} for i, b in enumerate(llama)]},
        "qwen": {"backends": [{"url": qwen[0].url, "name": "qwen-0"}]},
    }
    proxy = stack.proxy([], pools=pools, routing=routing, health=_QUIET)
    wait_for(lambda: discovered(proxy) == {"llama": ["llama-3-8b"], "qwen": ["qwen-2-7b"]})
    return proxy, {"llama": ["llama-0", "llama-1"], "qwen": ["qwen-0"]}


def discovered(proxy: RunningProxy) -> dict[str, list[str]]:
    pools = httpx.get(proxy.admin_url + "/admin/pools", trust_env=False).json()["pools"]
    return {p["name"]: p["models"]["models"] for p in pools}


def samples(proxy: RunningProxy, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(proxy.admin_url + "/metrics", trust_env=False).text
    out = {}
    for f in text_string_to_metric_families(text):
        if f.name == family:
            for s in f.samples:
                if s.name.endswith("_total"):
                    out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_requests_go_to_the_pool_that_serves_their_model(stack: Stack) -> None:
    proxy, names = two_pools(stack)
    with client(proxy.url) as c:
        for model, pool in (("llama-3-8b", "llama"), ("qwen-2-7b", "qwen")) * 3:
            r = c.post("/v1/chat/completions", json=chat(model))
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model  # answered by a replica that serves it
            assert r.headers["x-haproxy-ai-backend"] in names[pool]
    routed = samples(proxy, "haproxy_ai_routed_requests")
    assert routed == {(("by", "model"), ("pool", "llama")): 3.0, (("by", "model"), ("pool", "qwen")): 3.0}
    codes = samples(proxy, "haproxy_ai_requests")
    assert codes[(("code", "200"), ("pool", "llama"))] == 3.0
    assert codes[(("code", "200"), ("pool", "qwen"))] == 3.0


def test_unknown_model_is_a_404_in_openai_format_listing_the_models(stack: Stack) -> None:
    proxy, _ = two_pools(stack)
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("gpt-9"), trust_env=False)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert error["available_models"] == ["llama-3-8b", "qwen-2-7b"]
    assert "gpt-9" in error["message"] and "llama-3-8b, qwen-2-7b" in error["message"]
    assert "x-haproxy-ai-backend" not in r.headers  # no replica was asked
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert samples(proxy, "haproxy_ai_unknown_model_requests") == {(): 2.0}


def test_v1_models_is_the_union_of_the_pools(stack: Stack) -> None:
    proxy, _ = two_pools(stack)
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["llama-3-8b", "qwen-2-7b"]
    assert sdk.models.retrieve("qwen-2-7b").owned_by == "haproxy-ai-fake"  # the replica's own object
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")
    head = httpx.head(proxy.url + "/v1/models", trust_env=False)
    assert head.status_code == 200 and head.content == b""


def test_routes_match_path_method_header_and_model_globs_first_match_wins(stack: Stack) -> None:
    proxy, names = two_pools(
        stack,
        routes=[
            {"headers": {"x-tenant": "gold*"}, "path_prefix": "/v1/chat", "pool": "qwen"},
            {"model": ["llama-*"], "methods": ["POST"], "pool": "llama"},
            {"path_prefix": "/v1/embeddings", "pool": "qwen"},
        ],
        models={"gpt-4o": "llama"},
    )

    def backend_for(path: str, body: dict[str, Any], **headers: str) -> str:
        r = httpx.post(proxy.url + path, json=body, headers=headers, trust_env=False)
        return str(r.headers.get("x-haproxy-ai-backend"))

    # The header route comes first, so it beats the model route.
    assert backend_for("/v1/chat/completions", chat("llama-3-8b"), **{"X-Tenant": "gold-eu"}) in names["qwen"]
    assert backend_for("/v1/chat/completions", chat("llama-3-8b"), **{"X-Tenant": "silver"}) in names["llama"]
    # A path route sends a body without a model to its pool.
    assert backend_for("/v1/embeddings", {"input": "x"}) in names["qwen"]
    # The model map is an alias: gpt-4o is served by the llama pool.
    assert backend_for("/v1/chat/completions", chat("gpt-4o")) in names["llama"]
    routed = samples(proxy, "haproxy_ai_routed_requests")
    assert routed[(("by", "route"), ("pool", "qwen"))] == 2.0
    assert routed[(("by", "route"), ("pool", "llama"))] == 1.0
    assert routed[(("by", "model_map"), ("pool", "llama"))] == 1.0


def test_requests_without_a_model_go_to_the_default_pool(stack: Stack) -> None:
    proxy, names = two_pools(stack, default_pool="qwen")
    r = httpx.get(proxy.url + "/health", trust_env=False)
    assert r.status_code == 200 and r.headers["x-haproxy-ai-backend"] in names["qwen"]
    r = httpx.post(proxy.url + "/v1/completions", content=b"not json", trust_env=False)
    assert r.headers["x-haproxy-ai-backend"] in names["qwen"]


def test_unknown_model_default_sends_it_on(stack: Stack) -> None:
    proxy, names = two_pools(stack, unknown_model="default", default_pool="llama")
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("gpt-9"), trust_env=False)
    # The replica answers for itself (the simulated one serves whatever it is asked for).
    assert r.headers["x-haproxy-ai-backend"] in names["llama"]


def test_no_false_404_while_a_pools_model_list_is_unknown(stack: Stack) -> None:
    llama = stack.backend(model="llama-3-8b")
    with socket.socket() as s:  # a port nobody listens on: the pool's list cannot be fetched
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proxy = stack.proxy(
        [],
        pools={"llama": {"backends": [{"url": llama.url, "name": "l"}]}, "dark": {"backends": [{"url": dead}]}},
        health=_QUIET,
        retry={"enabled": False},
    )
    wait_for(lambda: discovered(proxy)["llama"] == ["llama-3-8b"])
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("llama-3-8b"), trust_env=False)
    assert r.status_code == 200
    # "mistral" may be what the dark pool serves: it is not refused, it goes to the default pool.
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("mistral"), trust_env=False)
    assert r.status_code != 404 and r.headers["x-haproxy-ai-backend"] == "l"
    fetches = samples(proxy, "haproxy_ai_model_list_fetches")
    assert fetches[(("pool", "dark"), ("result", "failure"))] >= 1


def test_declared_models_route_without_asking_the_replicas(stack: Stack) -> None:
    a, b = stack.backend(model="served-a"), stack.backend(model="served-b")
    proxy = stack.proxy(
        [],
        pools={
            "a": {"backends": [{"url": a.url, "name": "a"}], "models": ["alias-a"], "discover_models": False},
            "b": {"backends": [{"url": b.url, "name": "b"}], "models": ["alias-b"], "discover_models": False},
        },
        health=_QUIET,
    )
    assert discovered(proxy) == {"a": ["alias-a"], "b": ["alias-b"]}
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("alias-b"), trust_env=False)
    assert r.headers["x-haproxy-ai-backend"] == "b"
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat("x"), trust_env=False).status_code == 404
    models = httpx.get(proxy.url + "/v1/models", trust_env=False).json()
    assert [(m["id"], m["owned_by"]) for m in models["data"]] == [("alias-a", "a"), ("alias-b", "b")]


def test_retries_and_health_stay_inside_the_pool(stack: Stack) -> None:
    qwen = stack.backend(model="qwen-2-7b")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proxy = stack.proxy(
        [],
        pools={
            "llama": {
                "backends": [{"url": dead, "name": "llama-dead"}],
                "models": ["llama-3-8b"],
                "discover_models": False,
                "health": {"passive": {"consecutive_failures": 1}},
            },
            "qwen": {"backends": [{"url": qwen.url, "name": "qwen-0"}], "models": ["qwen-2-7b"]},
        },
        health=_QUIET,
    )
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("llama-3-8b"), trust_env=False)
    # The llama pool's only replica is down: the request fails there and is never retried on
    # the healthy replica of another model's pool.
    assert r.status_code in (502, 503) and r.headers.get("x-haproxy-ai-backend") in (None, "llama-dead")
    ok = httpx.post(proxy.url + "/v1/chat/completions", json=chat("qwen-2-7b"), trust_env=False)
    assert ok.status_code == 200 and ok.headers["x-haproxy-ai-backend"] == "qwen-0"
    listed = httpx.get(proxy.admin_url + "/admin/backends", trust_env=False).json()["backends"]
    backends = {b["name"]: b for b in listed}
    assert backends["llama-dead"]["pool"] == "llama" and backends["llama-dead"]["state"] == "ejected"
    assert backends["qwen-0"]["pool"] == "qwen" and backends["qwen-0"]["state"] == "healthy"
    # Panic mode and readiness are per pool: the qwen pool still serves, so the proxy is ready.
    assert httpx.get(proxy.admin_url + "/readyz", trust_env=False).status_code == 200
    report = httpx.get(proxy.admin_url + "/admin/availability", trust_env=False).json()
    assert set(report["pools"]) == {"llama", "qwen"}  # each pool's own model, next to the fleet's
    assert report["pools"]["qwen"]["n"] == 1 and report["pool"]["n"] == 2
    attempts = samples(proxy, "haproxy_ai_upstream_attempts")
    assert {dict(labels)["backend"]: dict(labels)["pool"] for labels in attempts} == {
        "llama-dead": "llama",
        "qwen-0": "qwen",
    }


def test_single_pool_config_stays_transparent(stack: Stack) -> None:
    """Without `pools`, /v1/models is the replica's own answer and no body is inspected."""
    backend = stack.backend(model="only-model")
    proxy = stack.proxy([backend], health=_QUIET)
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("anything"), trust_env=False)
    assert r.status_code == 200
    models = httpx.get(proxy.url + "/v1/models", trust_env=False)
    assert models.headers["x-haproxy-ai-backend"]  # proxied, not answered by the proxy
    assert [m["id"] for m in models.json()["data"]] == ["only-model"]
    pools = httpx.get(proxy.admin_url + "/admin/pools", trust_env=False).json()
    assert pools["routed"] is False and [p["name"] for p in pools["pools"]] == ["default"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"routes": [{"pool": "b"}]}}, "unknown pool 'b'"),
        ({"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"routes": [{"model": "x"}]}}, "pool: is required"),
        ({"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"models": {"m": "z"}}}, "unknown pool 'z'"),
        ({"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"default_pool": "q"}}, "unknown pool 'q'"),
        ({"pools": {"a": {"backends": ["http://h:1"]}, "b": {"backends": ["http://h:1"]}}}, "unique across pools"),
        ({"pools": {"a": {}}}, "a pool needs at least one backend"),
        ({"pools": {"a b": {"backends": ["http://h:1"]}}}, "use letters, digits"),
        ({"pools": {"a": {"backends": ["http://h:1"]}}, "backends": ["http://h:2"]}, "either top-level"),
        ({"backends": ["http://h:1"], "routing": {"default_pool": "a"}}, "routing: needs `pools`"),
        ({"pools": {"a": {"backends": ["http://h:1"], "balancer": {"type": "hashh"}}}}, "pools.a.balancer.type"),
        (
            {"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"routes": [{"pool": "a", "path_prefix": "v1"}]}},
            "must start with '/'",
        ),
        (
            {"pools": {"a": {"backends": ["http://h:1"]}}, "routing": {"routes": [{"pool": "a", "headers": "x"}]}},
            "must be a mapping",
        ),
        ({"pools": ["a"]}, "must be a mapping of pool names"),
    ],
)
def test_routing_config_errors_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    assert message in str(caught.value)


def test_pools_inherit_top_level_sections_and_override_them() -> None:
    settings = parse_settings(
        {
            "retry": {"attempts": 5},
            "health": {"passive": {"consecutive_failures": 7}},
            "limits": {"backend_max_in_flight": 4},
            "pools": {
                "a": {"backends": ["http://h:1"], "retry": {"attempts": 2}, "balancer": {"type": "hash"}},
                "b": {"backends": ["http://h:2"], "backend_max_in_flight": 9},
            },
        }
    )
    a, b = settings.pools
    assert (a.retry.attempts, b.retry.attempts) == (2, 5)
    assert a.health.passive.consecutive_failures == b.health.passive.consecutive_failures == 7
    assert (a.balancer.type, b.balancer.type) == ("hash", "p2c")
    assert (a.backend_max_in_flight, b.backend_max_in_flight) == (4, 9)


# -- regressions: bad inputs and odd fleets -----------------------------------------------------


def test_a_body_too_large_to_parse_is_still_routed_by_its_model(stack: Stack) -> None:
    proxy, names = two_pools(stack)
    # Over the 1 MiB parse limit, "model" last (as the openai SDK orders keys) and a decoy
    # "model" inside a message's text.
    padding = "x" * (1024 * 1024)
    body = {"messages": [{"role": "user", "content": f'say "model": "llama-3-8b" {padding}'}], "model": "qwen-2-7b"}
    r = httpx.post(proxy.url + "/v1/chat/completions", json=body, trust_env=False, timeout=30)
    # (The simulated replica refuses bodies over 1 MiB itself: what matters is who was asked.)
    assert r.headers["x-haproxy-ai-backend"] in names["qwen"]
    unknown = dict(body, model="gpt-9")
    assert httpx.post(proxy.url + "/v1/chat/completions", json=unknown, trust_env=False).status_code == 404


def test_percent_encoded_paths_match_routes_as_the_replica_reads_them(stack: Stack) -> None:
    proxy, names = two_pools(stack, routes=[{"path_prefix": "/_echo", "pool": "qwen"}])
    r = httpx.get(proxy.url + "/_%65cho/x", trust_env=False)
    assert r.headers["x-haproxy-ai-backend"] in names["qwen"]


def test_a_replica_answering_nonsense_to_v1_models_breaks_nothing(stack: Stack) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
    odd = RawBackend(stack.loop, head + b"content-length: %d\r\n\r\n" % len(nested) + nested).start()
    try:
        good = stack.backend(model="llama-3-8b")
        proxy = stack.proxy(
            [],
            pools={"llama": {"backends": [{"url": good.url, "name": "l"}]}, "odd": {"backends": [{"url": odd.url}]}},
            health=_QUIET,
        )
        wait_for(lambda: discovered(proxy)["llama"] == ["llama-3-8b"])  # the good pool's list is not lost
        for _ in range(5):
            r = httpx.get(proxy.url + "/v1/models", trust_env=False)
            assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["llama-3-8b"]
        # The odd pool's list is unknown, so unknown models are not refused on partial data,
        # and 5 clients asking for /v1/models did not make 5 more fetches from it.
        fetches = samples(proxy, "haproxy_ai_model_list_fetches")[(("pool", "odd"), ("result", "failure"))]
        assert fetches <= 2
    finally:
        odd.close()


def test_pools_that_neither_list_nor_declare_models_keep_the_catalog_open(stack: Stack) -> None:
    a = stack.backend(model="m-a")
    proxy = stack.proxy([], pools={"a": {"backends": [{"url": a.url, "name": "a"}], "discover_models": False}})
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("anything"), trust_env=False)
    assert r.status_code == 200 and r.headers["x-haproxy-ai-backend"] == "a"  # not "404: available: none"


def test_ready_when_a_pool_that_does_not_probe_has_a_routable_backend(stack: Stack) -> None:
    a = stack.backend(model="m-a")
    proxy = stack.proxy(
        [],
        pools={"a": {"backends": [{"url": a.url, "name": "a"}], "health": {"active": {"enabled": False}}}},
    )  # top-level health.active stays on; the only pool turned it off
    r = httpx.get(proxy.admin_url + "/readyz", trust_env=False)
    assert r.status_code == 200 and "pool(s) a" in r.text


def test_reload_does_not_move_backends_between_pools_or_change_pool_policies(stack: Stack) -> None:
    a, b = stack.backend(model="m-a"), stack.backend(model="m-b")
    pools = {"a": {"backends": [{"url": a.url, "name": "x"}]}, "b": {"backends": [{"url": b.url, "name": "y"}]}}
    proxy = stack.proxy([], pools=pools, health=_QUIET)
    b_grows = {"backends": [{"url": b.url, "name": "y"}, {"url": a.url, "name": "x"}]}
    moved = stack.settings([], pools={"a": {"backends": [{"url": a.url, "name": "z"}]}, "b": b_grows}, health=_QUIET)
    result = stack.call(proxy.proxy.reload, moved)
    assert "pools" in result["restart_required"] and result["added"] == []
    assert proxy.proxy.health.get("x").backend.pool == "a"
    rebalanced = stack.settings([], pools={**pools, "b": {**pools["b"], "balancer": {"type": "hash"}}}, health=_QUIET)
    result = stack.call(proxy.proxy.reload, rebalanced)
    assert result["restart_required"] == ["pools"]
    listed = httpx.get(proxy.admin_url + "/admin/pools", trust_env=False).json()["pools"]
    assert [p["balancer"] for p in listed] == ["p2c", "p2c"]  # what runs, not what was refused


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {
                "pools": {"a": {"backends": ["http://h:1"]}},
                "routing": {"routes": [{"pool": "a", "headers": {"x-c": True}}]},
            },
            "quote True in YAML",
        ),
        ({"backends": ["http://h:1"], "scrape": {"interval": "2s"}}, "scrape.stale_after: must be longer"),
        (
            {"pools": {"a": {"backends": ["http://h:1"], "scrape": {"stale_after": "100ms"}}}},
            "pools.a.scrape.stale_after",
        ),
    ],
)
def test_more_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    assert message in str(caught.value)


def test_routed_streams_and_their_mirror_records(stack: Stack, tmp_path: Path) -> None:
    llama = stack.backend(model="llama-3-8b", tokens=5)
    qwen = stack.backend(model="qwen-2-7b", tokens=5)
    spool = tmp_path / "spool"
    proxy = stack.proxy(
        [],
        pools={
            "llama": {"backends": [{"url": llama.url, "name": "llama-0"}]},
            "qwen": {"backends": [{"url": qwen.url, "name": "qwen-0"}]},
        },
        health=_QUIET,
        mirror={"enabled": True, "spool_dir": str(spool)},
    )
    wait_for(lambda: discovered(proxy) == {"llama": ["llama-3-8b"], "qwen": ["qwen-2-7b"]})
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-routing-secret-0123456789abcdef", max_retries=0)
    for model in ("qwen-2-7b", "llama-3-8b"):
        stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text  # streamed through the routed pool
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(list(iter_spool(spool))) == 3)
    records = {r["model"]: r for r in iter_spool(spool)}
    assert records["qwen-2-7b"]["backend"] == "qwen-0" and records["llama-3-8b"]["backend"] == "llama-0"
    assert records["qwen-2-7b"]["response"]["stream"] and records["qwen-2-7b"]["response"]["text"]
    assert records["gpt-9"]["status"] == 404 and records["gpt-9"]["backend"] is None
    assert "sk-routing-secret" not in spool.joinpath(next(p.name for p in spool.glob("*.jsonl*"))).read_text()
