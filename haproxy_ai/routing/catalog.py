"""The model catalog: which models each pool serves, declared in config or fetched from the
replicas' ``GET /v1/models``, and the union the proxy answers ``GET /v1/models`` with.

Routing reads the catalog synchronously (``pool_for``), never waiting on a fetch: a refresher
task keeps it current. Fetched lists live in a ``cachetools.TTLCache`` on the proxy's clock,
so a list older than ``routing.models_refresh`` counts as stale and ``/v1/models`` refetches
it; routing keeps using the last list it saw until a fetch replaces it, because a replica
that is briefly unreachable has not stopped serving its model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from cachetools import TTLCache

from ..backends import Backend
from ..clock import Clock
from ..metrics import Metrics
from ..settings import RoutingSettings

__all__ = ["ModelCatalog", "PoolModels"]

log = logging.getLogger("haproxy_ai.routing")

_RETRY_UNKNOWN = 2.0  # seconds between fetches of a pool whose list could not be had
_MAX_MODELS = 10_000  # per replica answer; a longer list is cut
_MAX_ANSWER = 8 * 1024 * 1024  # bytes of one /v1/models answer; a larger one counts as failed
# A replica that answers these has no model list to give (an embeddings or rerank server): it is
# reachable, so its pool's list is known, and empty.
_NO_LIST = frozenset({404, 405, 501})


@dataclass(frozen=True, slots=True)
class PoolModels:
    """What the catalog needs to know about a pool."""

    name: str
    declared: tuple[str, ...]
    discover: bool
    backends: Callable[[], Sequence[Backend]]  # replicas to ask, routable ones first


class ModelCatalog:
    def __init__(
        self,
        pools: Sequence[PoolModels],
        routing: RoutingSettings,
        *,
        clock: Clock,
        metrics: Metrics,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._pools = tuple(pools)
        self._refresh = routing.models_refresh
        self._timeout = routing.models_timeout
        self._clock = clock
        self._metrics = metrics
        self._client = client
        self._own_client = client is None
        self._fresh: TTLCache[str, tuple[dict[str, Any], ...]] = TTLCache(
            maxsize=max(len(self._pools), 1), ttl=self._refresh, timer=clock.monotonic
        )
        self._last: dict[str, tuple[dict[str, Any], ...]] = {}
        self._attempted: dict[str, float] = {}  # pool -> when its last fetch started
        self._index: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._rebuild()

    # -- reading (synchronous, for the request path) ---------------------------------------------

    def pool_for(self, model: str) -> str | None:
        """The pool serving ``model``; the first pool in config order when several list it."""
        return self._index.get(model)

    @property
    def complete(self) -> bool:
        """Whether every pool's list is known: only then may an unknown model be refused.

        A pool that neither declares models nor discovers them could serve anything, so it
        keeps the catalog open (unknown models go to the default pool) rather than having
        every request with a model refused."""
        return all(p.name in self._last if p.discover else bool(p.declared) for p in self._pools)

    def model_ids(self) -> list[str]:
        return sorted(self._index)

    def models(self) -> list[dict[str, Any]]:
        """The union of every pool's models, as OpenAI model objects (first pool wins a tie)."""
        seen: dict[str, dict[str, Any]] = {}
        for pool in self._pools:
            for item in self._objects(pool):
                seen.setdefault(item["id"], item)
        return [seen[k] for k in sorted(seen)]

    def model(self, model_id: str) -> dict[str, Any] | None:
        pool = self._index.get(model_id)
        if pool is None:
            return None
        for p in self._pools:
            if p.name == pool:
                return next((m for m in self._objects(p) if m["id"] == model_id), None)
        return None

    def describe(self) -> dict[str, Any]:
        """Per pool: its models, whether fetched, and whether the list is fresh (admin view)."""
        return {
            p.name: {
                "models": [m["id"] for m in self._objects(p)],
                "declared": list(p.declared),
                "discovered": p.name in self._last if p.discover else None,
                "fresh": p.name in self._fresh if p.discover else None,
            }
            for p in self._pools
        }

    def _objects(self, pool: PoolModels) -> list[dict[str, Any]]:
        items = [{"id": m, "object": "model", "created": 0, "owned_by": pool.name} for m in pool.declared]
        known = {m["id"] for m in items}
        for item in self._last.get(pool.name, ()):
            if item["id"] not in known:
                items.append(item)
                known.add(item["id"])
        return items

    def _rebuild(self) -> None:
        index: dict[str, str] = {}
        for pool in self._pools:
            for item in self._objects(pool):
                owner = index.setdefault(item["id"], pool.name)
                if owner != pool.name and self._task is not None:
                    log.debug("model %r is served by pools %r and %r; %r gets it", item["id"], owner, pool.name, owner)
        self._index = index

    # -- fetching --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        if any(p.discover for p in self._pools):
            self._task = asyncio.create_task(self._run(), name="model-catalog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the refresher must outlive any one bad answer
                log.exception("model list refresh failed")
            await asyncio.sleep(self._refresh / 2 if self.complete else _RETRY_UNKNOWN)

    async def refresh(self, *, only_stale: bool = True) -> None:
        """Fetch the lists of pools that are stale (or all); concurrent callers share one fetch."""
        async with self._lock:
            now = self._clock.monotonic()
            # A pool whose fetch just failed is not asked again at once, however many clients
            # ask for /v1/models meanwhile: they get the last known list.
            pools = [
                p
                for p in self._pools
                if p.discover
                and (
                    not only_stale
                    or (p.name not in self._fresh and now - self._attempted.get(p.name, -1e9) >= _RETRY_UNKNOWN)
                )
            ]
            if not pools:
                return
            for pool in pools:
                self._attempted[pool.name] = now
            results = await asyncio.gather(*(self._fetch_pool(p) for p in pools), return_exceptions=True)
            for pool, items in zip(pools, results, strict=True):
                if isinstance(items, BaseException):
                    if not isinstance(items, Exception):
                        raise items
                    log.warning("pool=%s: model list fetch failed: %s", pool.name, type(items).__name__)
                elif items is not None:
                    self._fresh[pool.name] = items
                    self._last[pool.name] = items
            self._rebuild()

    async def _fetch_pool(self, pool: PoolModels) -> tuple[dict[str, Any], ...] | None:
        """The union of what the pool's replicas list; None when none of them answered."""
        backends = list(pool.backends())
        if not backends:
            return None
        answers = await asyncio.gather(*(self._fetch(b) for b in backends))  # _fetch never raises
        merged: dict[str, dict[str, Any]] = {}
        ok = False
        for answer in answers:
            if answer is None:
                continue
            ok = True
            for item in answer:
                merged.setdefault(item["id"], item)
        self._metrics.model_fetches.labels(pool.name, "success" if ok else "failure").inc()
        if not ok:
            log.warning("pool=%s: no replica answered GET /v1/models; keeping the last known list", pool.name)
            return None
        return tuple(merged.values())

    async def _fetch(self, backend: Backend) -> list[dict[str, Any]] | None:
        """The replica's models; [] when it has no list to give; None when it could not be asked
        or answered nonsense (too large, not JSON, too deeply nested, no ``data`` list)."""
        assert self._client is not None
        try:
            async with self._client.stream("GET", backend.target("/v1/models"), timeout=self._timeout) as response:
                if response.status_code in _NO_LIST:
                    return []
                if response.status_code != 200:
                    return None
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_ANSWER:
                        return None
                    chunks.append(chunk)
            doc = orjson.loads(b"".join(chunks))
        except Exception:  # whatever a replica sends, the catalog and its refresher survive it
            return None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            return None
        items = [
            {k: v for k, v in item.items() if isinstance(k, str)}
            for item in data[:_MAX_MODELS]
            if isinstance(item, dict) and isinstance(item.get("id"), str) and 0 < len(item["id"]) <= 256
        ]
        return items
