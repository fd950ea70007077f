"""Typed, frozen configuration: parsed once, validated with errors that name the key path.

This module is the only reader of config files and ``os.environ``. Durations (``250ms``,
``2s``, ``1m30s``) become float seconds and sizes (``10MiB``, ``512k``) become int bytes at
load time, so nothing on the request path parses strings.

Precedence, lowest first: built-in defaults < YAML file < ``HAPROXY_AI_*`` env vars < CLI flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "AdminSettings",
    "BackendSettings",
    "BalancerSettings",
    "ConfigError",
    "LimitSettings",
    "ListenSettings",
    "Settings",
    "TimeoutSettings",
    "UpstreamSettings",
    "format_duration",
    "format_size",
    "load_settings",
    "parse_backend_spec",
    "parse_duration",
    "parse_settings",
    "parse_size",
    "settings_to_dict",
]


# ---------------------------------------------------------------------------------------------
# Field kinds. Each field's metadata names how to parse it and which bounds apply.


def _f(default: Any, kind: str, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc, **bounds})


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = _f("127.0.0.1", "str", "address of the data listener (0.0.0.0 for all interfaces)")
    port: int = _f(8080, "int", "data port (0 = pick a free one)", min=0, max=65535)
    backlog: int = _f(2048, "int", "listen(2) backlog", min=1)
    drain_timeout: float = _f(30.0, "duration", "on SIGTERM, how long open requests may finish", min=0)
    access_log: bool = _f(False, "bool", "log one line per request")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    enabled: bool = _f(True, "bool", "serve /metrics, /healthz, /readyz and /admin/*")
    host: str = _f("127.0.0.1", "str", "admin address; keep it off public interfaces")
    port: int = _f(9901, "int", "admin port (0 = pick a free one)", min=0, max=65535)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    url: str = _f("", "str", "http(s)://host:port[/base-path] of the replica")
    name: str = _f("", "str", "unique name (default: host:port)")
    weight: int = _f(1, "int", "relative share of traffic", gt=0, max=1_000_000)


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    type: str = _f("p2c", "choice", "p2c (peak-EWMA + in-flight) or round_robin", choices=("p2c", "round_robin"))
    ewma_decay: float = _f(10.0, "duration", "p2c: how fast a replica that sped up is trusted again", gt=0)
    cost_tolerance: float = _f(
        0.2, "float", "p2c: keep the weighted first pick unless the other is this much cheaper", min=0
    )


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    client: str = _f("aiohttp", "choice", "aiohttp (fast path) or httpx", choices=("aiohttp", "httpx"))
    max_connections_per_backend: int = _f(512, "int", "connection pool size per replica", min=1)
    keepalive_timeout: float = _f(
        4.0, "duration", "close idle pooled connections after this; keep below the replicas' own (5s in uvicorn)", gt=0
    )
    backend_header: bool = _f(True, "bool", "add x-haproxy-ai-backend: NAME to responses")
    server_timing: bool = _f(True, "bool", "add Server-Timing: proxy;dur=..., upstream;dur=... to responses")


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    connect: float = _f(5.0, "duration", "TCP connect to a replica", gt=0)
    first_byte: float = _f(300.0, "duration", "request sent -> response headers (a first token can take long)", gt=0)
    idle: float = _f(120.0, "duration", "longest gap between two response body chunks", gt=0)
    total: float = _f(1800.0, "duration", "whole request including the streamed body (0 = no limit)", min=0)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_request_body: int = _f(10 * 1024 * 1024, "size", "larger request bodies get 413", min=0)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    backends: tuple[BackendSettings, ...] = ()
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


_SECTIONS: dict[str, type[Any]] = {
    "listen": ListenSettings,
    "admin": AdminSettings,
    "balancer": BalancerSettings,
    "upstream": UpstreamSettings,
    "timeouts": TimeoutSettings,
    "limits": LimitSettings,
}


# ---------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    message: str
    where: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.path}: {self.message}" if self.path else f"{prefix}{self.message}"


class ConfigError(Exception):
    """One or more config problems; ``str()`` lists one per line, each naming its key path."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# ---------------------------------------------------------------------------------------------
# Scalars

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|µs|ms|s|m|h)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: Any) -> float:
    """``250ms``, ``2s``, ``1m30s``, ``1.5h`` or a bare number of seconds -> float seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms or 2s, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(f"{value!r} is not a duration (use e.g. 250ms, 2s, 1m30s)")
    else:
        raise ValueError(f"expected a duration like 250ms or 2s, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative duration")
    return seconds


def parse_size(value: Any) -> int:
    """``10MiB``, ``512k``, ``1GB`` or a bare number of bytes -> int bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10MiB, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip().lower())
        if not m or m.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size (use e.g. 512KiB, 10MiB, 1GB)")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"expected a size like 10MiB, got {type(value).__name__}")
    if size < 0:
        raise ValueError(f"{value!r} is negative")
    return size


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite number, got {value!r}")
    return result


def _parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _parse_scalar(kind: str, meta: Mapping[str, Any], value: Any) -> Any:
    if kind == "duration":
        result: Any = parse_duration(value)
    elif kind == "size":
        result = parse_size(value)
    elif kind == "bool":
        result = _parse_bool(value)
    elif kind == "int":
        result = _parse_int(value)
    elif kind == "float":
        result = _parse_float(value)
    elif kind == "choice":
        result = _parse_str(value)
        if result not in meta["choices"]:
            raise ValueError(f"must be one of {', '.join(meta['choices'])}; got {result!r}")
    else:
        result = _parse_str(value)
    if "gt" in meta and not result > meta["gt"]:
        raise ValueError(f"must be > {meta['gt']}")
    if "min" in meta and result < meta["min"]:
        raise ValueError(f"must be >= {meta['min']}")
    if "max" in meta and result > meta["max"]:
        raise ValueError(f"must be <= {meta['max']}")
    return result


# ---------------------------------------------------------------------------------------------
# Tree parsing


class _Parser:
    def __init__(self, where: Mapping[str, str]) -> None:
        self.where = where
        self.issues: list[ConfigIssue] = []

    def error(self, path: str, message: str) -> None:
        where = self.where.get(path)
        if where is None:  # fall back to the nearest enclosing key that has a location
            parent = path
            while where is None and parent:
                parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", parent)
                where = self.where.get(parent)
                if parent == re.sub(r"(\.[^.\[]+|\[\d+\])$", "", parent):
                    break
        self.issues.append(ConfigIssue(path, message, where))

    def section(self, cls: type[Any], data: Any, path: str) -> Any:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            self.error(path, f"must be a mapping, got {type(data).__name__}")
            return cls()
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            sub = f"{path}.{key}" if path else str(key)
            f = known.get(str(key))
            if f is None:
                hint = _closest(str(key), known)
                self.error(sub, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
                continue
            try:
                values[f.name] = _parse_scalar(f.metadata["kind"], f.metadata, raw)
            except ValueError as exc:
                self.error(sub, str(exc))
        return cls(**values)

    def backends(self, data: Any, path: str) -> tuple[BackendSettings, ...]:
        if data is None:
            return ()
        if not isinstance(data, Sequence) or isinstance(data, str | bytes):
            self.error(path, "must be a list of {url, name, weight}")
            return ()
        result: list[BackendSettings] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(data):
            sub = f"{path}[{i}]"
            if isinstance(item, str):
                try:
                    item = parse_backend_spec(item)
                except ValueError as exc:
                    self.error(sub, str(exc))
                    continue
            before = len(self.issues)
            backend = self.section(BackendSettings, item, sub)
            if len(self.issues) > before:
                continue
            url_problem = _check_url(backend.url)
            if url_problem:
                self.error(f"{sub}.url", url_problem)
                continue
            if not backend.name:
                parts = urlsplit(backend.url)
                backend = dataclasses.replace(backend, name=f"{parts.hostname}:{parts.port or 80}")
            if backend.name in seen:
                self.error(
                    f"{sub}.name", f"duplicate backend name {backend.name!r} (also backends[{seen[backend.name]}])"
                )
                continue
            seen[backend.name] = i
            result.append(backend)
        return tuple(result)


def _check_url(url: str) -> str | None:
    if not url:
        return "is required"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"unsupported scheme {parts.scheme!r} in {url!r} (use http:// or https://)"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment"
    if parts.username or parts.password:
        return "must not embed credentials"
    del port
    return None


def _closest(key: str, known: Mapping[str, Any]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def parse_backend_spec(spec: str) -> dict[str, Any]:
    """``URL[,weight=N][,name=NAME]`` (the ``--backend`` flag form) -> a backend mapping."""
    parts = [p.strip() for p in spec.split(",")]
    if not parts[0]:
        raise ValueError(f"{spec!r}: missing URL (expected URL[,weight=N][,name=NAME])")
    out: dict[str, Any] = {"url": parts[0]}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("weight", "name"):
            raise ValueError(f"{spec!r}: unexpected {part!r} (expected URL[,weight=N][,name=NAME])")
        out[key] = value
    return out


def _build(data: Any, where: Mapping[str, str], *, require_backends: bool) -> Settings:
    parser = _Parser(where)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigIssue("", f"the top level must be a mapping, got {type(data).__name__}")])
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "backends":
            sections["backends"] = parser.backends(value, "backends")
        elif key in _SECTIONS:
            sections[key] = parser.section(_SECTIONS[key], value, key)
        else:
            hint = _closest(str(key), {**_SECTIONS, "backends": None})
            parser.error(str(key), "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
    settings = Settings(**sections)
    has_backend_errors = any(i.path.startswith("backends") for i in parser.issues)
    if require_backends and not settings.backends and not has_backend_errors:
        parser.error("backends", "at least one backend is required (config file, --backend or HAPROXY_AI_BACKENDS)")
    if (
        settings.admin.enabled
        and settings.admin.port == settings.listen.port != 0
        and (settings.admin.host == settings.listen.host or "0.0.0.0" in (settings.admin.host, settings.listen.host))
    ):
        parser.error("admin.port", f"must differ from listen.port ({settings.listen.port})")
    if parser.issues:
        raise ConfigError(parser.issues)
    return settings


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


def _yaml_locations(text: str, source: str) -> dict[str, str]:
    """Map each key path (``backends[1].weight``) to ``file:line`` for error messages."""
    locations: dict[str, str] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = f"{path}.{key_node.value}" if path else str(key_node.value)
                locations[sub] = f"{source}:{key_node.start_mark.line + 1}"
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                locations[sub] = f"{source}:{item.start_mark.line + 1}"
                walk(item, sub)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return locations
    if root is not None:
        walk(root, "")
    return locations


def _read_yaml(path: Path) -> tuple[Any, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file: {exc.strerror}", str(path))]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", "config file is not UTF-8 text", str(path))]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc.problem}", where)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}", str(path))]) from None
    return data, _yaml_locations(text, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: YAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# ---------------------------------------------------------------------------------------------
# Public loader

# Flag/env name -> (section, key). Backends and config are handled separately.
OVERRIDES: dict[str, tuple[str, str]] = {
    "host": ("listen", "host"),
    "port": ("listen", "port"),
    "admin_host": ("admin", "host"),
    "admin_port": ("admin", "port"),
    "balancer": ("balancer", "type"),
    "upstream_client": ("upstream", "client"),
    "access_log": ("listen", "access_log"),
}

ENV_PREFIX = "HAPROXY_AI_"


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``HAPROXY_AI_<FLAG>`` env vars -> the same dict shape the CLI produces."""
    out: dict[str, Any] = {}
    for name in (*OVERRIDES, "config"):
        value = environ.get(ENV_PREFIX + name.upper())
        if value not in (None, ""):
            out[name] = value
    backends = environ.get(ENV_PREFIX + "BACKENDS")
    if backends and backends.strip():
        out["backend"] = backends.split()
    return out


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_backends: bool = True,
) -> Settings:
    """Build the effective settings: defaults < file < env < ``overrides`` (CLI).

    ``environ`` defaults to ``os.environ``; tests pass their own mapping.

    ``overrides`` uses flag names (``host``, ``port``, ``backend``: list of specs, ...); a
    value of None means "not given". Raises ConfigError listing every problem found.
    """
    env = env_overrides(os.environ if environ is None else environ)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None and v != []}
    config_file = flags.get("config", config_file) or env.get("config")
    data: dict[str, Any] = {}
    where: dict[str, str] = {}
    if config_file:
        loaded, where = _read_yaml(Path(config_file))
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError([ConfigIssue("", "the top level must be a mapping of sections", str(config_file))])
        data = dict(loaded or {})
    for layer, label in ((env, "env " + ENV_PREFIX), (flags, "--")):
        for name, value in layer.items():
            if name == "config":
                continue
            if name == "backend":
                data["backends"] = list(value)
                for i in range(len(value)):
                    where[f"backends[{i}]"] = f"{label}BACKENDS" if label.startswith("env") else "--backend"
                continue
            section, key = OVERRIDES[name]
            merged = dict(data.get(section) or {}) if isinstance(data.get(section), Mapping) else {}
            merged[key] = value
            data[section] = merged
            flag = name.upper() if label.startswith("env") else name.replace("_", "-")
            where[f"{section}.{key}"] = f"{label}{flag}"
    return _build(data, where, require_backends=require_backends)


def parse_settings(data: Mapping[str, Any], *, require_backends: bool = True) -> Settings:
    """Settings from an already-loaded mapping (the shape of the YAML file); for embedding and tests."""
    return _build(data, {}, require_backends=require_backends)


def settings_to_dict(settings: Any) -> Any:
    """The effective config as plain data, durations and sizes written back in units."""
    if isinstance(settings, tuple):
        return [settings_to_dict(item) for item in settings]
    if not dataclasses.is_dataclass(settings):
        return settings
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        kind = f.metadata.get("kind")
        if kind == "duration":
            out[f.name] = format_duration(value)
        elif kind == "size":
            out[f.name] = format_size(value)
        else:
            out[f.name] = settings_to_dict(value)
    return out
