"""``haproxy-ai replay`` and ``haproxy-ai logs tail|export``: flags, validation, output.

Every flag value is checked before anything is read or sent; a bad one prints one line,
``haproxy-ai <command>: ...``, and exits 2. Exit codes: 0 done; 1 records could not be read
or (replay) some requests got no response; 2 bad arguments; 130 interrupted (replay, export).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from ..settings import parse_duration
from .reader import ENDINGS, Filters, Source, SourceError, iter_spool, open_source

__all__ = ["add_logs_arguments", "add_replay_arguments", "run_logs", "run_replay"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # cli.EXIT_CONFIG: bad arguments
EXIT_INTERRUPTED = 130

SOURCE_HELP = "spool:DIR (a spool or file-sink directory), postgres:DSN[#TABLE] or a postgresql:// URL"


# -- shared ---------------------------------------------------------------------------------------


def _usage(command: str, message: str) -> int:
    print(f"haproxy-ai {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (repeat a flag or separate values with commas to match any)")
    group.add_argument("--since", metavar="T", help="received at or after T: 2026-11-28T16:00:00Z, 2026-11-28, 15m, 2h")
    group.add_argument("--until", metavar="T", help="received before T (same forms)")
    group.add_argument("--status", action="append", metavar="S", help="response status: 200, 5xx, 400-404")
    group.add_argument("--backend", action="append", metavar="B", help="backend (replica) name")
    group.add_argument("--model", action="append", metavar="M", help="model named in the request body")
    group.add_argument("--path-prefix", action="append", metavar="P", help="request path prefix, e.g. /v1/chat")
    group.add_argument("--ended", action="append", metavar="E", help=f"how the exchange ended: {', '.join(ENDINGS)}")


def _filters(args: argparse.Namespace) -> Filters:
    return Filters.parse(
        since=args.since,
        until=args.until,
        status=args.status,
        backend=args.backend,
        model=args.model,
        path_prefix=args.path_prefix,
        ended=args.ended,
    )


def _source(args: argparse.Namespace) -> Source:
    if not args.source:
        raise ValueError(f"--source is required: {SOURCE_HELP}")
    return open_source(args.source)


def _count(value: str | None, flag: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a whole number") from None
    if number < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {number}")
    return number


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo is not None else value
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _line_writer(stream: TextIO) -> Callable[[dict[str, Any]], None]:
    """Writes a record as one compact JSON line, in its key order; non-ASCII stays as is
    when the stream is UTF-8."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    ascii_only = encoding != "utf8"

    def write(record: dict[str, Any]) -> None:
        stream.write(json.dumps(record, ensure_ascii=ascii_only, separators=(",", ":"), default=_json_default))
        stream.write("\n")

    return write


def _silence_stdout() -> None:
    """After EPIPE (``| head``): point stdout at /dev/null so the exit-time flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


@contextlib.contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (main thread only; elsewhere signals are not ours)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- replay ---------------------------------------------------------------------------------------


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="SOURCE", help=f"where the records are: {SOURCE_HELP}")
    parser.add_argument("--target", metavar="URL", help="base URL to send to, e.g. http://127.0.0.1:8080")
    _add_filter_arguments(parser)
    parser.add_argument("--limit", metavar="N", help="replay at most N matching records")
    parser.add_argument("--rate", metavar="N", help="start at most N requests per second (default: no limit)")
    parser.add_argument("--concurrency", metavar="N", help="requests in flight at most (default 8)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add or replace a header (e.g. a credential the recording redacted); repeatable",
    )
    parser.add_argument("--timeout", metavar="D", help="connect / wait-for-bytes timeout per request (default 60s)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")
    parser.add_argument(
        "--allow-redacted", action="store_true", help="also send records whose path, query or body contains [REDACTED]"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


@dataclass(frozen=True)
class _ReplayOptions:
    source: Source
    filters: Filters
    target: str
    limit: int | None
    rate: float | None
    concurrency: int
    headers: list[tuple[str, str]]
    timeout: float


def _replay_options(args: argparse.Namespace) -> _ReplayOptions:
    from .replay import check_header, check_target

    source = _source(args)
    if not args.target:
        raise ValueError("--target URL is required, e.g. --target http://127.0.0.1:8080")
    target = check_target(args.target)
    filters = _filters(args)
    rate: float | None = None
    if args.rate is not None:
        try:
            rate = float(args.rate)
        except ValueError:
            raise ValueError(f"--rate {args.rate!r} is not a number of requests per second") from None
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"--rate must be > 0, got {args.rate}")
    concurrency = _count(args.concurrency, "--concurrency", minimum=1) or 8
    try:
        timeout = parse_duration(args.timeout) if args.timeout is not None else 60.0
    except ValueError as exc:
        raise ValueError(f"--timeout: {exc}") from None
    if timeout <= 0:
        raise ValueError("--timeout must be > 0")
    headers = [check_header(h) for h in args.header]
    return _ReplayOptions(
        source=source,
        filters=filters,
        target=target,
        limit=_count(args.limit, "--limit", minimum=1),
        rate=rate,
        concurrency=concurrency,
        headers=headers,
        timeout=timeout,
    )


def run_replay(args: argparse.Namespace) -> int:
    try:
        options = _replay_options(args)
    except ValueError as exc:
        return _usage("replay", str(exc))

    from .replay import ProgressLine, ReplaySummary, replay

    progress = ProgressLine(sys.stderr) if not args.dry_run else None

    async def run() -> ReplaySummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        restore: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, stop.set)
                    restore[sig] = previous
        try:
            async with contextlib.aclosing(options.source.records(options.filters, limit=options.limit)) as records:
                return await replay(
                    records,
                    options.target,
                    rate=options.rate,
                    concurrency=options.concurrency,
                    dry_run=args.dry_run,
                    extra_headers=options.headers,
                    timeout=options.timeout,
                    progress=progress,
                    allow_redacted=args.allow_redacted,
                    stop=stop,
                )
        finally:
            for sig, previous in restore.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous)

    try:
        summary = asyncio.run(run())
    except KeyboardInterrupt:  # before our handlers were in place
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.finish()
    if summary.source_error is not None and summary.records == 0:
        # Nothing could be read: the error is the whole story.
        print(f"haproxy-ai replay: cannot read records: {summary.source_error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.json:
            print(json.dumps(summary.to_dict(), indent=2))
        else:
            if args.dry_run:
                for item in summary.planned:
                    print(f"{item['method']} {item['path']}  {item['body_bytes']} bytes  (id {item['id']})")
                if summary.planned:
                    print()
            print(summary.render())
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    if options.source.skipped:
        print(
            f"haproxy-ai replay: skipped {options.source.skipped} spool lines that are not valid JSON",
            file=sys.stderr,
        )
    if summary.source_error is not None:
        print(f"haproxy-ai replay: cannot read records: {summary.source_error}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.source_error is not None or summary.transport_errors:
        return EXIT_FAILED
    return EXIT_OK


# -- logs -----------------------------------------------------------------------------------------


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="logs_command", metavar="ACTION")
    tail = actions.add_parser("tail", help="print the last N recorded requests; -f to follow new ones")
    tail.add_argument("--source", metavar="spool:DIR", help="the spool (or file-sink) directory")
    tail.add_argument("-n", "--lines", metavar="N", help="print the last N matching records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until Ctrl-C/SIGTERM")
    _add_filter_arguments(tail)
    export = actions.add_parser("export", help="print or write every matching record as JSON lines")
    export.add_argument("--source", metavar="SOURCE", help=SOURCE_HELP)
    _add_filter_arguments(export)
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: standard output)")
    export.add_argument("--limit", metavar="N", help="at most N records")


def run_logs(args: argparse.Namespace) -> int:
    action = getattr(args, "logs_command", None)
    if action not in ("tail", "export"):
        return _usage("logs", "choose an action: tail or export (see haproxy-ai logs --help)")
    command = f"logs {action}"
    try:
        source = _source(args)
        filters = _filters(args)
        if action == "tail":
            if source.kind != "spool":
                raise ValueError("--source must be spool:DIR (tail reads a spool or file-sink directory)")
            lines = _count(args.lines, "-n", minimum=0)
            return _tail(source, filters, 10 if lines is None else lines, args.follow)
        limit = _count(args.limit, "--limit", minimum=1)
        return _export(source, filters, limit, args.output)
    except ValueError as exc:
        return _usage(command, str(exc))
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


def _tail(source: Source, filters: Filters, count: int, follow: bool) -> int:
    write = _line_writer(sys.stdout)
    # With -f, Ctrl-C and SIGTERM are the normal way out (exit 0), from the first moment on.
    stop = threading.Event()
    with _signals_set(stop) if follow else contextlib.nullcontext():
        try:
            reader = iter_spool(source.location, stop=stop)
        except FileNotFoundError as exc:
            raise ValueError(f"--source: {exc}") from None
        last: deque[dict[str, Any]] = deque(maxlen=count)
        try:
            if count:
                last.extend(record for record in reader if filters.matches(record))
            else:
                for _ in reader:  # only to find the end
                    pass
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        finally:
            reader.close()
        if stop.is_set():
            return EXIT_OK
        for record in last:
            write(record)
        sys.stdout.flush()
        if not follow:
            return EXIT_OK
        follower = iter_spool(source.location, follow=True, stop=stop, start=reader.position)
        try:
            for record in follower:
                if filters.matches(record):
                    write(record)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        finally:
            follower.close()
    return EXIT_OK


def _export(source: Source, filters: Filters, limit: int | None, output: str | None) -> int:
    stream: TextIO = sys.stdout
    temp: Path | None = None
    if output is not None:
        target = Path(output)
        if target.is_dir():
            raise ValueError(f"--output {output}: is a directory")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path("."))
        except OSError as exc:
            raise ValueError(f"--output {output}: cannot write there: {exc.strerror or exc}") from None
        temp = Path(name)
        stream = open(fd, "w", encoding="utf-8", newline="\n")
    write = _line_writer(stream)

    async def run() -> int:
        written = 0
        async with contextlib.aclosing(source.records(filters, limit=limit)) as records:
            async for record in records:
                write(record)
                written += 1
        return written

    ok = False
    try:
        try:
            written = asyncio.run(run())
        except SourceError as exc:
            print(f"haproxy-ai logs export: cannot read records: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        stream.flush()
        ok = True
    finally:
        if temp is not None:
            stream.close()
            if ok and output is not None:
                os.replace(temp, output)
            else:
                temp.unlink(missing_ok=True)
    where = f" to {output}" if output is not None else ""
    note = f" ({source.skipped} invalid lines skipped)" if source.skipped else ""
    print(f"haproxy-ai logs export: {written} records{where}{note}", file=sys.stderr)
    return EXIT_OK
