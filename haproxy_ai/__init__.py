"""haproxy-ai: a high-availability streaming reverse proxy for AI inference replicas."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import Proxy, build_proxy
from .clock import Clock, FakeClock, SystemClock
from .errors import ProxyError
from .server import ProxyServer
from .settings import ConfigError, Settings, load_settings

__all__ = [
    "Clock",
    "ConfigError",
    "FakeClock",
    "Proxy",
    "ProxyError",
    "ProxyServer",
    "Settings",
    "SystemClock",
    "__version__",
    "build_proxy",
    "load_settings",
]
