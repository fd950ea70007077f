"""Loading: YAML (with line numbers), env vars and flags merged, then parsed into Settings.

Precedence, lowest first: built-in defaults < YAML file < ``HAPROXY_AI_*`` env vars < CLI flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, ConfigIssue
from .schema import (
    SECTIONS,
    BackendSettings,
    MirrorSettings,
    PoolSettings,
    RouteSettings,
    RoutingSettings,
    ScrapeSettings,
    Settings,
    SinkSettings,
)
from .values import format_delay, format_duration, format_size, format_statuses, parse_scalar

__all__ = [
    "ENV_PREFIX",
    "OVERRIDES",
    "env_overrides",
    "load_settings",
    "parse_backend_spec",
    "parse_settings",
    "settings_to_dict",
]


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

    def section(self, cls: type[Any], data: Any, path: str, base: Any = None) -> Any:
        if base is None:
            base = cls()
        if data is None:
            return base
        if not isinstance(data, Mapping):
            self.error(path, f"must be a mapping, got {type(data).__name__}")
            return base
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            sub = f"{path}.{key}" if path else str(key)
            f = known.get(str(key))
            if f is None:
                hint = _closest(str(key), known)
                self.error(sub, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
                continue
            kind = f.metadata["kind"]
            if kind == "section":
                # Start from the base's value: a nested section may default differently from its
                # class (hedge.budget is smaller than retry.budget), and a pool's sections start
                # from the top-level ones.
                values[f.name] = self.section(f.metadata["cls"], raw, sub, base=getattr(base, f.name))
            elif kind == "sinks":
                values[f.name] = self.sinks(raw, sub)
            elif kind == "backends":
                values[f.name] = self.backends(raw, sub)
            elif kind == "routes":
                values[f.name] = self.routes(raw, sub)
            elif kind in ("model_map", "headers"):
                values[f.name] = self.string_map(raw, sub, headers=kind == "headers")
            elif kind == "overrides":
                values[f.name] = tuple(self.partial(f.metadata["cls"], raw, sub).items())
            else:
                try:
                    values[f.name] = parse_scalar(kind, f.metadata, raw)
                except ValueError as exc:
                    self.error(sub, str(exc))
        return dataclasses.replace(base, **values)

    def partial(self, cls: type[Any], data: Any, path: str) -> dict[str, Any]:
        """Only the keys given, each parsed and checked as in ``cls`` (for per-item overrides)."""
        if data is None:
            return {}
        section = self.section(cls, data, path)
        if not isinstance(data, Mapping):
            return {}
        return {str(k): getattr(section, str(k)) for k in data if hasattr(section, str(k))}

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
                port = parts.port or (443 if parts.scheme == "https" else 80)
                backend = dataclasses.replace(backend, name=f"{parts.hostname}:{port}")
            if backend.name in seen:
                self.error(
                    f"{sub}.name", f"duplicate backend name {backend.name!r} (also backends[{seen[backend.name]}])"
                )
                continue
            seen[backend.name] = i
            result.append(backend)
        return tuple(result)

    def routes(self, data: Any, path: str) -> tuple[RouteSettings, ...]:
        if data is None:
            return ()
        if not isinstance(data, Sequence) or isinstance(data, str | bytes):
            self.error(
                path, "must be a list like [{model: llama-*, pool: llama}, {path_prefix: /v1/embeddings, pool: emb}]"
            )
            return ()
        result: list[RouteSettings] = []
        for i, item in enumerate(data):
            sub = f"{path}[{i}]"
            before = len(self.issues)
            route = self.section(RouteSettings, item, sub)
            if len(self.issues) > before:
                continue
            if not route.pool:
                self.error(f"{sub}.pool", "is required: the pool that receives matching requests")
                continue
            if route.path_prefix and not route.path_prefix.startswith("/"):
                self.error(f"{sub}.path_prefix", f"must start with '/', got {route.path_prefix!r}")
                continue
            result.append(route)
        return tuple(result)

    def string_map(self, data: Any, path: str, *, headers: bool) -> tuple[tuple[str, str], ...]:
        if data is None:
            return ()
        if not isinstance(data, Mapping):
            example = "{x-tenant: gold}" if headers else "{gpt-4o: llama, qwen-*: qwen}"
            self.error(path, f"must be a mapping like {example}")
            return ()
        result: list[tuple[str, str]] = []
        for key, value in data.items():
            sub = f"{path}.{key}"
            if not isinstance(key, str) or not key or not isinstance(value, str) or value == "":
                # YAML turns yes into True and 010 into 8: a silent str() would never match.
                self.error(sub, f"keys and values must be non-empty strings (quote {value!r} in YAML)")
                continue
            if headers and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key):
                self.error(sub, f"{key!r} is not a valid header name")
                continue
            result.append((key.lower() if headers else key, str(value)))
        return tuple(result)

    def pools(self, data: Any, path: str, root: Settings) -> tuple[PoolSettings, ...]:
        if data is None:
            return ()
        if not isinstance(data, Mapping) or not data:
            self.error(path, "must be a mapping of pool names to {backends: [...], ...}")
            return ()
        # A pool's sections start from the top-level ones; its keys override them.
        result: list[PoolSettings] = []
        owner: dict[str, str] = {}
        for name, item in data.items():
            sub = f"{path}.{name}"
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                self.error(sub, f"pool name {name!r}: use letters, digits, '_', '.' or '-'")
                continue
            if isinstance(item, Mapping) and "name" in item:
                self.error(f"{sub}.name", "the pool's name is its key under `pools`")
                continue
            before = len(self.issues)
            pool = self.section(PoolSettings, item, sub, base=root.pool_defaults(name))
            if len(self.issues) > before:
                continue
            if not pool.backends:
                self.error(f"{sub}.backends", "a pool needs at least one backend")
                continue
            for i, backend in enumerate(pool.backends):
                if backend.name in owner:
                    self.error(
                        f"{sub}.backends[{i}].name",
                        f"backend name {backend.name!r} is also in pool {owner[backend.name]!r}; names are unique"
                        " across pools (set name:)",
                    )
                owner.setdefault(backend.name, name)
            result.append(pool)
        return tuple(result)

    def check_scrape(self, path: str, scrape: ScrapeSettings) -> None:
        if scrape.stale_after <= scrape.interval:
            self.error(
                f"{path}.stale_after",
                f"must be longer than {path}.interval ({scrape.interval:g}s), or every replica looks saturated"
                " between two scrapes",
            )

    def check_routing(self, settings: Settings) -> None:
        routing: RoutingSettings = settings.routing
        if not settings.pools:
            if routing != RoutingSettings():
                self.error("routing", "needs `pools`: routes send requests to named pools")
            return
        names = [p.name for p in settings.pools]
        for i, route in enumerate(routing.routes):
            if route.pool not in names:
                self.error(f"routing.routes[{i}].pool", f"unknown pool {route.pool!r}; pools: {', '.join(names)}")
        for model, pool in routing.models:
            if pool not in names:
                self.error(f"routing.models.{model}", f"unknown pool {pool!r}; pools: {', '.join(names)}")
        if routing.default_pool and routing.default_pool not in names:
            self.error("routing.default_pool", f"unknown pool {routing.default_pool!r}; pools: {', '.join(names)}")

    def sinks(self, data: Any, path: str) -> tuple[SinkSettings, ...]:
        if data is None:
            return ()
        if not isinstance(data, Sequence) or isinstance(data, str | bytes):
            self.error(path, "must be a list like [{type: postgres, dsn: ...}, {type: file, dir: ...}]")
            return ()
        result: list[SinkSettings] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(data):
            sub = f"{path}[{i}]"
            before = len(self.issues)
            sink = self.section(SinkSettings, item, sub)
            if len(self.issues) > before:
                continue
            given = set(item) if isinstance(item, Mapping) else set()
            if not sink.type:
                self.error(f"{sub}.type", "is required: file or postgres")
                continue
            only = {"file": {"dir", "compress"}, "postgres": {"dsn", "table", "connect_timeout", "statement_timeout"}}
            for other, keys in only.items():
                for key in sorted(keys & given) if other != sink.type else ():
                    self.error(f"{sub}.{key}", f"applies to {other} sinks, not {sink.type}")
            if sink.type == "file" and not sink.dir:
                self.error(f"{sub}.dir", "is required for a file sink")
            if sink.type == "postgres" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", sink.table):
                self.error(f"{sub}.table", f"{sink.table!r} is not a plain SQL identifier")
            name = sink.name or sink.type
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                self.error(f"{sub}.name", f"{name!r}: use letters, digits, '_', '.' or '-'")
            elif name in seen:
                self.error(f"{sub}.name", f"duplicate sink name {name!r} (also {path}[{seen[name]}]); set name:")
            else:
                seen[name] = i
                result.append(dataclasses.replace(sink, name=name))
        return tuple(result)

    def check_networks(self, path: str, values: tuple[str, ...]) -> None:
        import ipaddress

        for i, value in enumerate(values):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                self.error(f"{path}[{i}]", f"{value!r} is not an IP address or CIDR like 10.0.0.0/8")

    def check_mirror(self, mirror: MirrorSettings) -> None:
        for i, pattern in enumerate(mirror.redact.patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                self.error(f"mirror.redact.patterns[{i}]", f"invalid regex {pattern!r}: {exc}")
        for key in ("paths", "exclude_paths"):
            for i, prefix in enumerate(getattr(mirror, key)):
                if not prefix.startswith("/"):
                    self.error(f"mirror.{key}[{i}]", f"must start with '/', got {prefix!r}")
        if not mirror.spool_dir:
            self.error("mirror.spool_dir", "is required")
        if mirror.segment_max_bytes * 2 > mirror.spool_max_bytes:
            self.error("mirror.spool_max_bytes", "must hold at least two segments (2 x mirror.segment_max_bytes)")


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
        elif key == "pools":
            continue  # after the top-level sections, which pools inherit from
        elif key in SECTIONS:
            sections[key] = parser.section(SECTIONS[key], value, key)
        else:
            hint = _closest(str(key), {**SECTIONS, "backends": None, "pools": None})
            parser.error(str(key), "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
    settings = Settings(**sections)
    if "pools" in data:
        if data.get("backends"):
            parser.error("pools", "use either top-level `backends` (one pool) or `pools`, not both")
        settings = dataclasses.replace(settings, pools=parser.pools(data["pools"], "pools", settings))
    parser.check_routing(settings)
    parser.check_scrape("scrape", settings.scrape)
    for pool in settings.pools:
        if pool.scrape != settings.scrape:
            parser.check_scrape(f"pools.{pool.name}.scrape", pool.scrape)
    parser.check_mirror(settings.mirror)
    parser.check_networks("listen.trusted_proxies", settings.listen.trusted_proxies)
    has_backend_errors = any(i.path.startswith(("backends", "pools")) for i in parser.issues)
    if require_backends and not settings.backends and not settings.pools and not has_backend_errors:
        parser.error(
            "backends", "at least one backend is required (config file, --backend, HAPROXY_AI_BACKENDS or pools)"
        )
    if (
        settings.admin.enabled
        and settings.admin.port == settings.listen.port != 0
        and (settings.admin.host == settings.listen.host or "0.0.0.0" in (settings.admin.host, settings.listen.host))
    ):
        parser.error("admin.port", f"must differ from listen.port ({settings.listen.port})")
    admin = settings.admin
    if admin.enabled and not admin.token and not _is_loopback(admin.host):
        parser.error(
            "admin.token",
            f"required when the admin listener is not on loopback (admin.host is {admin.host!r}); "
            "set it or HAPROXY_AI_ADMIN_TOKEN",
        )
    if parser.issues:
        raise ConfigError(parser.issues)
    return settings


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    "admin_token": ("admin", "token"),  # env only: a flag would show in `ps`
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
    """The effective config as plain data: durations and sizes in units, secrets redacted."""
    if isinstance(settings, tuple):
        return [settings_to_dict(item) for item in settings]
    if not dataclasses.is_dataclass(settings):
        return settings
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "pools" and isinstance(settings, Settings):
            # As written in a config file: a mapping of names (absent without pools), so the
            # printed config loads back.
            if value:
                out["pools"] = {p.name: {k: v for k, v in settings_to_dict(p).items() if k != "name"} for p in value}
        elif f.metadata.get("kind") == "overrides":
            if value:
                fields = {g.name: g for g in dataclasses.fields(f.metadata["cls"])}
                out[f.name] = {key: _format_value(fields[key].metadata.get("kind"), item) for key, item in value}
        else:
            out[f.name] = _format_value(f.metadata.get("kind"), value)
    return out


def _format_value(kind: str | None, value: Any) -> Any:
    if kind == "duration":
        return format_duration(value)
    if kind == "size":
        return format_size(value)
    if kind == "statuses":
        return format_statuses(value)
    if kind == "delay":
        return format_delay(value)
    if kind in ("words", "strings"):
        return list(value)
    if kind in ("model_map", "headers"):
        return dict(value)
    if kind == "secret":
        return "<redacted>" if value else ""
    return settings_to_dict(value)
