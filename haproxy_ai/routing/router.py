"""The router stage: choose the request's pool, then hand it to that pool's pipeline.

Order of decision, first hit wins:

1. ``routing.routes`` in order (path prefix, methods, headers, model);
2. ``routing.models``, the model map (exact names, then globs);
3. the model catalog: the pool whose replicas (or config) list the request's model;
4. a request with a model nobody serves: 404 ``model_not_found`` listing the models, once
   every pool's list is known (``routing.unknown_model: default`` sends it on instead);
5. ``routing.default_pool`` (the first pool when unset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from ..context import RequestContext
from ..errors import UnknownModel
from ..metrics import Metrics
from ..types import Handler, ProxyRequest, UpstreamResponse
from .catalog import ModelCatalog
from .inspect import release, request_model
from .table import RouteTable

__all__ = ["Router"]


class Router:
    def __init__(
        self,
        pools: Mapping[str, Handler],
        *,
        table: RouteTable,
        catalog: ModelCatalog,
        default_pool: str,
        reject_unknown: bool,
        metrics: Metrics,
        prompt_keyed: frozenset[str] = frozenset(),
    ) -> None:
        self._pools = dict(pools)
        # Pools whose hash balancer keys on the prompt: the parsed body is kept for them.
        self._keeps_body = {name: name in prompt_keyed for name in self._pools}
        self._table = table
        self._catalog = catalog
        self._default = default_pool
        self._reject = reject_unknown
        self._metrics = metrics
        self._routed: dict[tuple[str, str], Any] = {}

    def choose(self, request: ProxyRequest, ctx: RequestContext) -> tuple[str, str]:
        """``(pool, how)`` for the request; raises UnknownModel. Synchronous, no I/O."""
        model = request_model(request, ctx)
        path = request.target.partition("?")[0]
        if "%" in path:
            # Match what the replica will serve: /v1/%65mbeddings is /v1/embeddings to it.
            path = unquote(path)
        hit = self._table.match(request.method, path, request.headers, model)
        if hit is not None:
            return hit
        if model is not None:
            pool = self._catalog.pool_for(model)
            if pool is not None:
                return pool, "model"
            if self._reject and self._catalog.complete:
                self._metrics.unknown_models.inc()
                raise UnknownModel(model, self._catalog.model_ids())
        return self._default, "default"

    async def __call__(self, request: ProxyRequest, ctx: RequestContext) -> UpstreamResponse:
        pool, how = self.choose(request, ctx)
        ctx.pool = pool
        if not self._keeps_body.get(pool, False):
            release(ctx)  # this pool's balancer does not read the prompt
        child = self._routed.get((pool, how))
        if child is None:
            child = self._routed[(pool, how)] = self._metrics.routed.labels(pool, how)
        child.inc()
        return await self._pools[pool](request, ctx)
