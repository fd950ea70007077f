"""The router stage and the fleet's bookkeeping without a network: what the router keeps of a
request's body, and metrics of a removed backend staying removed."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from haproxy_ai.app import Proxy
from haproxy_ai.backends import ReplicaLoad
from haproxy_ai.clock import FakeClock
from haproxy_ai.context import RequestContext
from haproxy_ai.errors import UnknownModel
from haproxy_ai.metrics import Metrics
from haproxy_ai.routing import MAX_PARSE, ModelCatalog, PoolModels, Router, RouteTable, affinity_key
from haproxy_ai.settings import parse_settings
from haproxy_ai.types import ProxyRequest


def _request(body: dict[str, Any] | bytes) -> ProxyRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return ProxyRequest("POST", "/v1/chat/completions", [("content-type", "application/json")], raw)


def _router(**routing: Any) -> tuple[Router, dict[str, RequestContext]]:
    settings = parse_settings(
        {
            "pools": {
                "chat": {"backends": ["http://h:1"], "models": ["chat-m"], "discover_models": False},
                "keyed": {
                    "backends": ["http://h:2"],
                    "models": ["keyed-m"],
                    "discover_models": False,
                    "balancer": {"type": "hash", "hash_key": "prompt"},
                },
            },
            "routing": routing,
        }
    )
    seen: dict[str, RequestContext] = {}

    def pool(name: str) -> Any:
        async def handle(request: ProxyRequest, ctx: RequestContext) -> Any:
            seen[name] = ctx
            if name == "keyed":
                affinity_key(request, ctx, "prompt", 64)
            return name

        return handle

    clock = FakeClock()
    catalog = ModelCatalog(
        [PoolModels(p.name, p.models, p.discover_models, lambda: ()) for p in settings.pools],
        settings.routing,
        clock=clock,
        metrics=Metrics(),
    )
    router = Router(
        {"chat": pool("chat"), "keyed": pool("keyed")},
        table=RouteTable(settings.routing),
        catalog=catalog,
        default_pool="chat",
        reject_unknown=True,
        metrics=Metrics(),
        prompt_keyed=frozenset({"keyed"}),
    )
    return router, seen


def _ctx() -> RequestContext:
    return RequestContext("r", 0.0, 1e9)


def test_the_parsed_body_is_dropped_once_routing_and_the_key_are_done() -> None:
    router, seen = _router()
    body = {"model": "chat-m", "messages": [{"role": "user", "content": "hello"}]}
    assert asyncio.run(router(_request(body), _ctx())) == "chat"  # type: ignore[comparison-overlap]
    assert seen["chat"].body_parsed and seen["chat"].body_doc is None  # not held while streaming
    assert asyncio.run(router(_request(dict(body, model="keyed-m")), _ctx())) == "keyed"  # type: ignore[comparison-overlap]
    assert seen["keyed"].affinity == b"user:hello\n" and seen["keyed"].body_doc is None


def test_large_bodies_are_scanned_not_parsed_and_get_no_prompt_key() -> None:
    router, _ = _router()
    big = b'{"messages":[{"role":"user","content":"' + b"y" * MAX_PARSE + b'"}],"model":"keyed-m"}'
    ctx = _ctx()
    assert asyncio.run(router(_request(big), ctx)) == "keyed"  # type: ignore[comparison-overlap]
    assert ctx.body_doc is None and ctx.affinity is None  # the fallback balancer picks
    try:
        asyncio.run(router(_request(big.replace(b"keyed-m", b"nope")), _ctx()))
    except UnknownModel as exc:
        assert exc.available == ["chat-m", "keyed-m"]
    else:
        raise AssertionError("an unknown model in a large body must be refused too")


def test_a_removed_backends_scrape_result_does_not_bring_its_series_back() -> None:
    settings = parse_settings(
        {
            "backends": [{"url": "http://h:1", "name": "a"}, {"url": "http://h:2", "name": "b"}],
            "scrape": {"enabled": True},
        }
    )
    proxy = Proxy(settings, clock=FakeClock())
    pool = proxy.fleet.pools["default"]
    gone = pool.health.get("b").backend
    load = ReplicaLoad(at=0.0, waiting=3.0, running=1.0, kv_cache=0.5)
    pool._scraped(gone, load, None)
    waiting = {"pool": "default", "backend": "b"}
    assert proxy.metrics.registry.get_sample_value("haproxy_ai_replica_waiting", waiting) == 3.0
    pool.health.reconfigure(settings.backends[:1], 10.0)
    pool.health.tick()  # idle, so retired at once
    assert proxy.metrics.registry.get_sample_value("haproxy_ai_replica_waiting", waiting) is None
    pool._scraped(gone, load, None)  # a scrape that was in flight when it was removed
    assert proxy.metrics.registry.get_sample_value("haproxy_ai_replica_waiting", waiting) is None
