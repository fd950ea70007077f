"""The route table: routes and the model map compiled once at load, matched per request.

Pure and synchronous: ``match`` reads only the request's method, path, headers and model.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..settings import RouteSettings, RoutingSettings

__all__ = ["ModelMatcher", "RouteTable"]

_GLOB = re.compile(r"[*?\[]")


class ModelMatcher:
    """Exact names in a set, globs (``llama-*``) as one compiled regex each."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._exact = frozenset(p for p in patterns if not _GLOB.search(p))
        self._globs = tuple(re.compile(fnmatch.translate(p)) for p in patterns if _GLOB.search(p))

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def matches(self, model: str) -> bool:
        return model in self._exact or any(g.match(model) for g in self._globs)


@dataclass(frozen=True, slots=True)
class _Route:
    pool: str
    path_prefix: str
    methods: frozenset[str]
    headers: tuple[tuple[str, ModelMatcher], ...]  # lower-case name, value matcher
    model: ModelMatcher | None

    @classmethod
    def compile(cls, route: RouteSettings) -> _Route:
        return cls(
            route.pool,
            route.path_prefix,
            frozenset(route.methods),
            tuple((name, ModelMatcher([value])) for name, value in route.headers),
            ModelMatcher(route.model) if route.model else None,
        )


class RouteTable:
    """First match wins: the routes in order, then the model map (exact names before globs)."""

    def __init__(self, routing: RoutingSettings) -> None:
        self._routes = tuple(_Route.compile(r) for r in routing.routes)
        self._exact_models = {m: p for m, p in routing.models if not _GLOB.search(m)}
        self._glob_models = tuple((ModelMatcher([m]), p) for m, p in routing.models if _GLOB.search(m))
        # Whether a request's model must be known to route it (the body is parsed only then).
        self.reads_model = bool(self._exact_models or self._glob_models) or any(r.model for r in self._routes)
        self._header_names = frozenset(name for r in self._routes for name, _ in r.headers)

    def match(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], model: str | None
    ) -> tuple[str, str] | None:
        """``(pool, "route" | "model_map")`` for the first match, or None."""
        wanted: dict[str, str] | None = None
        if self._header_names:
            wanted = {}
            for name, value in headers:
                lower = name.lower()
                if lower in self._header_names and lower not in wanted:
                    wanted[lower] = value
        for route in self._routes:
            if route.path_prefix and not path.startswith(route.path_prefix):
                continue
            if route.methods and method not in route.methods:
                continue
            if route.model is not None and (model is None or not route.model.matches(model)):
                continue
            if route.headers:
                assert wanted is not None
                if not all(
                    (got := wanted.get(name)) is not None and matcher.matches(got) for name, matcher in route.headers
                ):
                    continue
            return route.pool, "route"
        if model is not None:
            exact = self._exact_models.get(model)
            if exact is not None:
                return exact, "model_map"
            for matcher, pool in self._glob_models:
                if matcher.matches(model):
                    return pool, "model_map"
        return None
