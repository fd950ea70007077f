"""One attempt to one backend behind one small interface.

``AiohttpUpstream`` is the default on the hot path; ``HttpxUpstream`` is selectable with
``upstream.client: httpx``. These are the only modules that see client-library exceptions:
each maps them to the ProxyError tree.
"""

from __future__ import annotations

from ..clock import Clock
from ..settings import Settings
from .aiohttp_client import AiohttpUpstream
from .base import AttemptTimeouts, Upstream
from .httpx_client import HttpxUpstream

__all__ = ["AiohttpUpstream", "AttemptTimeouts", "HttpxUpstream", "Upstream", "make_upstream"]


def make_upstream(settings: Settings, clock: Clock) -> Upstream:
    if settings.upstream.client == "httpx":
        return HttpxUpstream(settings.upstream, settings.timeouts, clock)
    return AiohttpUpstream(settings.upstream, settings.timeouts, clock)
