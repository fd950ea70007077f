"""``haproxy-ai``: argv and env -> settings -> run. No other logic lives here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from . import __version__
from .settings import ConfigError, Settings, load_settings, settings_to_dict

__all__ = ["main"]

EXIT_CONFIG = 2


def _serve_flags(parser: argparse.ArgumentParser, *, defaults_note: bool = True) -> None:
    env = "env HAPROXY_AI_"
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file ({env}CONFIG)")
    parser.add_argument(
        "--backend",
        action="append",
        metavar="URL[,weight=N][,name=NAME]",
        help=f"a replica; repeat for more; replaces the file's backends ({env}BACKENDS, whitespace-separated)",
    )
    parser.add_argument("--host", help=f"data listener address, default 127.0.0.1 ({env}HOST)")
    parser.add_argument("--port", help=f"data port, default 8080 ({env}PORT)")
    parser.add_argument("--admin-host", help=f"admin listener address, default 127.0.0.1 ({env}ADMIN_HOST)")
    parser.add_argument("--admin-port", help=f"admin port, default 9901 ({env}ADMIN_PORT)")
    parser.add_argument("--balancer", help=f"p2c (default), round_robin, hash or load_aware ({env}BALANCER)")
    parser.add_argument("--upstream-client", help=f"aiohttp (default) or httpx ({env}UPSTREAM_CLIENT)")
    parser.add_argument(
        "--access-log", action="store_const", const="true", help=f"log one line per request ({env}ACCESS_LOG)"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haproxy-ai", description="High-availability streaming reverse proxy for AI inference replicas."
    )
    parser.add_argument("--version", action="version", version=f"haproxy-ai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument(
        "--log-level",
        default=os.environ.get("HAPROXY_AI_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env HAPROXY_AI_LOG_LEVEL)",
    )

    serve = sub.add_parser("serve", help="run the proxy", parents=[logs])
    _serve_flags(serve)

    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("file", help="YAML config file")

    from . import fake_backend

    fake = sub.add_parser("fake-backend", help="run a simulated OpenAI-compatible replica")
    fake_backend.add_arguments(fake)

    avail = sub.add_parser("availability", help="availability estimate of a pool, from a running proxy or a file")
    source = avail.add_mutually_exclusive_group(required=True)
    source.add_argument("--admin", metavar="URL", help="a running proxy's admin listener, e.g. http://127.0.0.1:9901")
    source.add_argument("--history", metavar="FILE", help="a history exported from GET /admin/history")
    avail.add_argument(
        "--token", default=os.environ.get("HAPROXY_AI_ADMIN_TOKEN"), help="admin token (env HAPROXY_AI_ADMIN_TOKEN)"
    )
    avail.add_argument(
        "--min-healthy",
        type=int,
        help="pool is up with at least this many healthy (default 1; with no model flag, --admin shows "
        "the proxy's own report, computed with its settings)",
    )
    avail.add_argument("--crews", type=int, help="repairs at a time (0 = independent)")
    avail.add_argument("--target", type=float, help="target availability for the what-if (default 0.9999)")
    avail.add_argument("--json", action="store_true", help="print the report as JSON")

    demo = sub.add_parser("demo", help="three simulated replicas behind the proxy, in one process", parents=[logs])
    demo.add_argument("--host", default="127.0.0.1", help="data listener address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="data port (default 8080; 0 = any free port)")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901; 0 = any free port)")
    demo.add_argument("--spool-dir", help="where records are spooled (default: a new temporary directory)")

    from .mirror import commands as mirror_commands

    replay = sub.add_parser("replay", help="re-send recorded requests (spool or PostgreSQL) to a target")
    mirror_commands.add_replay_arguments(replay)
    records = sub.add_parser("logs", help="recorded requests as JSON lines: tail [-f], export")
    mirror_commands.add_logs_arguments(records)
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "config": args.config,
        "backend": args.backend,
        "host": args.host,
        "port": args.port,
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
        "balancer": args.balancer,
        "upstream_client": args.upstream_client,
        "access_log": args.access_log,
    }


def _config_error(exc: ConfigError) -> int:
    print("haproxy-ai: invalid configuration:", file=sys.stderr)
    for issue in exc.issues:
        print(f"  {issue}", file=sys.stderr)
    return EXIT_CONFIG


def _run_serve(args: argparse.Namespace) -> int:
    from .server import configure_logging

    overrides = _flag_overrides(args)
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        return _config_error(exc)
    configure_logging(args.log_level)
    # SIGHUP and POST /admin/reload re-read the same sources (file, env, flags) in the same order.
    return _run_until_signal(_serve(settings, lambda: load_settings(overrides=overrides)))


async def _serve(settings: Settings, reloader: Callable[[], Settings]) -> None:
    from .server import ProxyServer

    try:
        server = ProxyServer(settings, reloader=reloader)
    except OSError as exc:
        raise SystemExit(f"haproxy-ai: cannot bind a listener: {exc.strerror or exc}") from None

    def ready(s: ProxyServer) -> None:
        host, port = s.data_address
        admin = s.admin_address
        names = ", ".join(b.name for b in settings.backends)
        print(f"haproxy-ai: proxying http://{host}:{port} -> {names}", flush=True)
        if admin:
            print(
                f"haproxy-ai: admin on http://{admin[0]}:{admin[1]} (/metrics /healthz /readyz /admin/backends)",
                flush=True,
            )

    await server.serve(handle_signals=True, on_ready=ready, own_process=True)


def _run_until_signal(coro: Any) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(coro)
    return 0


def _run_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file, environ={})
    except ConfigError as exc:
        return _config_error(exc)
    print(f"# {args.file}: OK — effective configuration:")
    print(yaml.safe_dump(settings_to_dict(settings), sort_keys=False), end="")
    return 0


def _run_fake_backend(args: argparse.Namespace) -> int:
    from . import fake_backend

    try:
        options = fake_backend.options_from_args(args)
    except ValueError as exc:
        print(f"haproxy-ai fake-backend: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def ready(backend: fake_backend.FakeBackend) -> None:
        print(f"fake-backend: serving {backend.url} (model {options.model})", flush=True)

    return _run_until_signal(fake_backend.serve_forever(options, args.host, args.port, ready))


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .server import configure_logging

    configure_logging(args.log_level)
    return _run_until_signal(run_demo(args.host, args.port, args.admin_port, args.spool_dir))


def _run_availability(args: argparse.Namespace) -> int:
    import json

    from .availability.render import HistoryError, render_table, report_from_export

    model_flags = (args.min_healthy, args.crews, args.target)
    if any(v is not None and v < 0 for v in model_flags) or (args.min_healthy is not None and args.min_healthy < 1):
        print("haproxy-ai availability: --min-healthy must be >= 1, --crews and --target >= 0", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.history:
            with open(args.history, encoding="utf-8") as f:
                data = json.load(f)
        else:
            import httpx

            headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
            # Without model flags, show exactly what the proxy computes with its own settings.
            path = "/admin/history" if any(v is not None for v in model_flags) else "/admin/availability"
            response = httpx.get(args.admin.rstrip("/") + path, headers=headers, timeout=10, trust_env=False)
            if response.status_code in (401, 403):
                print(
                    f"haproxy-ai availability: admin token required or rejected ({response.status_code})",
                    file=sys.stderr,
                )
                return 1
            response.raise_for_status()
            data = response.json()
        if "format" in data:
            report = report_from_export(
                data,
                k_min=args.min_healthy or 1,
                crews=args.crews or None,
                target=args.target if args.target is not None else 0.9999,
            )
        else:
            report = data
    except (OSError, ValueError, HistoryError) as exc:
        print(f"haproxy-ai availability: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # httpx errors: unreachable admin, bad status
        print(f"haproxy-ai availability: cannot read {args.admin}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _run_serve(args)
    if args.command == "check-config":
        return _run_check_config(args)
    if args.command == "fake-backend":
        return _run_fake_backend(args)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "availability":
        return _run_availability(args)
    if args.command == "replay":
        from .mirror.commands import run_replay

        return run_replay(args)
    if args.command == "logs":
        from .mirror.commands import run_logs

        return run_logs(args)
    parser.print_help()
    return EXIT_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
