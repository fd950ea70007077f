"""Typed, frozen configuration: parsed once, validated with errors that name the key path.

This package is the only reader of config files and ``os.environ``. Durations (``250ms``,
``2s``, ``1m30s``) become float seconds and sizes (``10MiB``, ``512k``) become int bytes at
load time, so nothing on the request path parses strings.

Precedence, lowest first: built-in defaults < YAML file < ``HAPROXY_AI_*`` env vars < CLI flags.
"""

from __future__ import annotations

from .errors import ConfigError, ConfigIssue
from .loader import (
    ENV_PREFIX,
    OVERRIDES,
    env_overrides,
    load_settings,
    parse_backend_spec,
    parse_settings,
    settings_to_dict,
)
from .schema import (
    ActiveCheckSettings,
    AdminSettings,
    AvailabilitySettings,
    BackendSettings,
    BalancerSettings,
    BudgetSettings,
    HealthSettings,
    HedgeSettings,
    LimitSettings,
    ListenSettings,
    MirrorSettings,
    PassiveSettings,
    PoolSettings,
    RedactSettings,
    RetrySettings,
    RouteSettings,
    RoutingSettings,
    ScrapeSettings,
    Settings,
    SinkSettings,
    StatusRanges,
    TimeoutSettings,
    UpstreamSettings,
)
from .values import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "ENV_PREFIX",
    "OVERRIDES",
    "ActiveCheckSettings",
    "AdminSettings",
    "AvailabilitySettings",
    "BackendSettings",
    "BalancerSettings",
    "BudgetSettings",
    "ConfigError",
    "ConfigIssue",
    "HealthSettings",
    "HedgeSettings",
    "LimitSettings",
    "ListenSettings",
    "MirrorSettings",
    "PassiveSettings",
    "PoolSettings",
    "RedactSettings",
    "RetrySettings",
    "RouteSettings",
    "RoutingSettings",
    "ScrapeSettings",
    "Settings",
    "SinkSettings",
    "StatusRanges",
    "TimeoutSettings",
    "UpstreamSettings",
    "env_overrides",
    "format_duration",
    "format_size",
    "load_settings",
    "parse_backend_spec",
    "parse_duration",
    "parse_settings",
    "parse_size",
    "settings_to_dict",
]
