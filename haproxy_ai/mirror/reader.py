"""Reading mirrored records back: spool and file-sink directories, PostgreSQL, filters, times.

``iter_spool`` yields the records of a spool directory (or of a ``file`` sink's directory) in
spool order, optionally following new ones like ``tail -F``. ``Filters`` selects records;
``parse_time`` reads the ``--since``/``--until`` forms; ``open_source`` turns a ``--source``
spec (``spool:DIR``, ``postgres:DSN[#TABLE]``, ``postgresql://...``) into a ``Source`` whose
``records(filters)`` is an async iterator.

Nothing here ever prints a DSN's password: ``mask_dsn`` hides it in DSNs and ``hide_secret``
scrubs it from any message that might echo it.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import unquote

from ..settings import parse_duration
from ..settings.values import parse_statuses

__all__ = [
    "ENDINGS",
    "Filters",
    "Source",
    "SourceError",
    "SpoolReader",
    "hide_secret",
    "iter_spool",
    "list_segments",
    "mask_dsn",
    "open_source",
    "parse_time",
]

Record = dict[str, Any]

ENDINGS = ("complete", "client_aborted", "upstream_reset", "truncated")
DEFAULT_TABLE = "haproxy_ai_requests"

_SEGMENT = re.compile(r"(\d{20})\.jsonl(\.gz|\.open)?")
# When one number exists under several names (a rename racing a listing), read the closed one.
_SUFFIX_RANK = {"": 0, ".gz": 1, ".open": 2}
_CHUNK = 1 << 16


# -- segments -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    number: int
    path: Path

    @property
    def is_open(self) -> bool:
        return self.path.name.endswith(".open")

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".gz")


def _segment_name(number: int, suffix: str) -> str:
    return f"{number:020d}.jsonl{suffix}"


def list_segments(directory: str | Path) -> list[Segment]:
    """The directory's segments in reading order: closed ones by number, then the open one.

    A missing directory has no segments (a followed spool may not exist yet)."""
    directory = Path(directory)
    best: dict[int, tuple[int, Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        m = _SEGMENT.fullmatch(entry.name)
        if not m:
            continue
        try:
            if not entry.is_file():
                continue
        except OSError:
            continue
        number, rank = int(m.group(1)), _SUFFIX_RANK[m.group(2) or ""]
        if number not in best or rank < best[number][0]:
            best[number] = (rank, Path(entry.path))
    segments = [Segment(number, path) for number, (_rank, path) in best.items()]
    segments.sort(key=lambda s: (s.is_open, s.number))
    return segments


def _open_segment(directory: Path, number: int, preferred: Path) -> tuple[Path, IO[bytes]] | None:
    """Open segment ``number``, which may have been renamed (``.open`` -> ``.jsonl``) or
    deleted (retention) since it was listed; None when it is gone."""
    candidates = [preferred]
    for suffix in ("", ".gz", ".open", ""):
        path = directory / _segment_name(number, suffix)
        candidates.append(path)
    for path in candidates:
        try:
            if path.name.endswith(".gz"):
                return path, cast(IO[bytes], gzip.open(path, "rb"))
            return path, open(path, "rb")
        except FileNotFoundError:
            continue
    return None


@dataclass
class _Cursor:
    """An open segment being read: the bytes consumed so far end on a line boundary."""

    number: int
    path: Path
    file: IO[bytes]
    offset: int = 0  # bytes of complete lines consumed (decompressed for .gz)
    line: int = 0  # lines consumed
    buffer: bytes = b""  # a partial line, waiting for its newline

    @property
    def is_open(self) -> bool:
        return self.path.name.endswith(".open")


def _default_warn(message: str) -> None:
    print(f"haproxy-ai: {message}", file=sys.stderr, flush=True)


class SpoolReader(Iterator[Record]):
    """Iterator over a spool directory's records (see ``iter_spool``).

    ``skipped`` counts lines that were not valid JSON objects (each reported through ``warn``);
    ``position`` is ``(segment number, byte offset)`` just past the last line consumed, which
    ``iter_spool(..., start=position)`` resumes from.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        follow: bool = False,
        poll: float = 0.2,
        stop: threading.Event | None = None,
        start: tuple[int, int] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(path)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no such directory")
        if poll <= 0:
            raise ValueError("poll must be > 0")
        self.follow = follow
        self.poll = poll
        self.stop = stop
        self.skipped = 0
        self.position: tuple[int, int] | None = start
        self._start = start
        self._warn = warn or _default_warn
        self._gen = self._run()

    def __iter__(self) -> SpoolReader:
        return self

    def __next__(self) -> Record:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    # -- reading ----------------------------------------------------------------------------------

    def _bad_line(self, cursor: _Cursor, why: str) -> None:
        self.skipped += 1
        self._warn(f"{cursor.path}:{cursor.line}: skipped a line that is {why}")

    def _drain(self, cursor: _Cursor) -> Iterator[Record]:
        """Every complete line now available in ``cursor``'s file."""
        while True:
            chunk = cursor.file.read(_CHUNK)
            if not chunk:
                return
            data = cursor.buffer + chunk
            lines = data.split(b"\n")
            cursor.buffer = lines.pop()
            for raw in lines:
                cursor.offset += len(raw) + 1
                cursor.line += 1
                text = raw.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except ValueError:
                    self._bad_line(cursor, "not valid JSON")
                    continue
                if not isinstance(record, dict):
                    self._bad_line(cursor, "not a JSON object")
                    continue
                self.position = (cursor.number, cursor.offset)
                yield record
            self.position = (cursor.number, cursor.offset)

    def _finish(self, cursor: _Cursor) -> None:
        """A closed segment is read to its end: a line without its newline is damage."""
        if cursor.buffer.strip():
            cursor.line += 1
            self._bad_line(cursor, "incomplete (no newline at the end of a closed segment)")
        cursor.file.close()

    def _open(self, segment: Segment, offset: int) -> _Cursor | None:
        opened = _open_segment(self.directory, segment.number, segment.path)
        if opened is None:
            return None
        path, file = opened
        cursor = _Cursor(segment.number, path, file)
        try:
            remaining = offset
            while remaining > 0:  # skip (and count the lines of) what was already read
                chunk = file.read(min(remaining, _CHUNK))
                if not chunk:
                    break
                cursor.line += chunk.count(b"\n")
                remaining -= len(chunk)
            cursor.offset = offset - remaining
        except (OSError, EOFError) as exc:
            file.close()
            self._warn(f"{path}: cannot read: {exc}")
            return None
        return cursor

    def _read_all(self, cursor: _Cursor) -> Iterator[Record]:
        try:
            yield from self._drain(cursor)
        except (OSError, EOFError) as exc:  # e.g. a damaged .gz
            self._warn(f"{cursor.path}: cannot read past line {cursor.line}: {exc}")
            cursor.buffer = b""

    def _run(self) -> Generator[Record, None, None]:
        start_number, start_offset = self._start if self._start is not None else (-1, 0)
        done: set[int] = set()
        cursor: _Cursor | None = None
        try:
            while True:
                if self.stop is not None and self.stop.is_set():
                    return
                if cursor is None:
                    pending = [
                        s for s in list_segments(self.directory) if s.number >= start_number and s.number not in done
                    ]
                    if not pending:
                        if not self.follow:
                            return
                        self._wait()
                        continue
                    segment = pending[0]
                    cursor = self._open(segment, start_offset if segment.number == start_number else 0)
                    if cursor is None:  # deleted since it was listed
                        done.add(segment.number)
                        continue
                yield from self._read_all(cursor)
                if not cursor.is_open:
                    self._finish(cursor)
                elif not self.follow:
                    # The segment being written: its last line may still be partial; leave it.
                    cursor.file.close()
                elif not (self.directory / _segment_name(cursor.number, ".open")).exists():
                    # Rotated (renamed to .jsonl) or deleted: our descriptor still reads the same
                    # file, so pick up what was written before the rename, then move on.
                    yield from self._read_all(cursor)
                    self._finish(cursor)
                else:
                    self._wait()
                    continue
                done.add(cursor.number)
                cursor = None
        finally:
            if cursor is not None:
                cursor.file.close()

    def _wait(self) -> None:
        if self.stop is not None:
            self.stop.wait(self.poll)
        else:
            time.sleep(self.poll)


def iter_spool(
    path: str | Path,
    *,
    follow: bool = False,
    poll: float = 0.2,
    stop: threading.Event | None = None,
    start: tuple[int, int] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SpoolReader:
    """The records of a spool directory or a ``file`` sink's directory, in spool order.

    Reads ``*.jsonl``, ``*.jsonl.gz`` and ``*.jsonl.open`` segments by number, the open one last,
    ignoring its final line while it has no newline. Lines that are not JSON objects are
    skipped with a warning naming ``file:line`` (``warn``, default stderr) and counted in the
    returned reader's ``skipped``. With ``follow``, keeps reading new lines and segments as
    they are written (through rotations) until ``stop`` is set, polling every ``poll`` seconds.
    ``start`` resumes from a previous reader's ``position``. Raises FileNotFoundError at once
    when ``path`` is not a directory.
    """
    return SpoolReader(path, follow=follow, poll=poll, stop=stop, start=start, warn=warn)


# -- times and filters ----------------------------------------------------------------------------

_TIME_FORMS = (
    "use RFC 3339 (2026-11-28T16:00:00Z or with an offset like +02:00), a date (2026-11-28) or an age (15m, 2h, 7d)"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DAYS = re.compile(r"(\d+(?:\.\d+)?)d")


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from RFC 3339 (``2026-11-28T16:00:00Z``, ``...+02:00``), a date
    (``2026-11-28``: midnight UTC) or an age before ``now`` (``15m``, ``2h``, ``1h30m``, ``7d``)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty time: {_TIME_FORMS}")
    s = text.strip()
    if _DATE.fullmatch(s):
        try:
            day = date.fromisoformat(s)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid date: {exc}") from None
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if _DATE.match(s):
        try:
            value = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1] in "zZ" else s)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid time: {_TIME_FORMS}") from None
        if value.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset like +02:00")
        return value.astimezone(UTC)
    age_text = s[: -len("ago")].strip() if s.lower().endswith("ago") else s
    if re.fullmatch(r"\d+(\.\d+)?", age_text):
        raise ValueError(f"{text!r}: give an age a unit (15m, 2h, 7d) or a full time; {_TIME_FORMS}")
    if m := _DAYS.fullmatch(age_text):
        seconds = float(m.group(1)) * 86400
    else:
        try:
            seconds = parse_duration(age_text)
        except ValueError:
            raise ValueError(f"{text!r} is not a time: {_TIME_FORMS}") from None
    current = now if now is not None else datetime.now(UTC)
    try:
        return (current - timedelta(seconds=seconds)).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is too far in the past") from None


def _record_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


def _words(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Values of a repeatable flag; each may also be comma-separated."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    result: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part and part not in result:
                result.append(part)
    return tuple(result)


@dataclass(frozen=True)
class Filters:
    """Which records to keep. Empty tuples and None select everything.

    ``since`` is inclusive and ``until`` exclusive, on ``received_at``; ``status`` holds
    inclusive ``(low, high)`` ranges; ``backend``, ``model`` and ``ended`` match any of their
    values exactly; ``path_prefix`` matches paths starting with any of its values.
    """

    since: datetime | None = None
    until: datetime | None = None
    status: tuple[tuple[int, int], ...] = ()
    backend: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    path_prefix: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        since: str | None = None,
        until: str | None = None,
        status: str | Iterable[str] | None = None,
        backend: str | Iterable[str] | None = None,
        model: str | Iterable[str] | None = None,
        path_prefix: str | Iterable[str] | None = None,
        ended: str | Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> Filters:
        """Filters from flag values; ValueError names the flag that is wrong."""
        now = now or datetime.now(UTC)
        try:
            since_at = parse_time(since, now=now) if since is not None else None
        except ValueError as exc:
            raise ValueError(f"--since: {exc}") from None
        try:
            until_at = parse_time(until, now=now) if until is not None else None
        except ValueError as exc:
            raise ValueError(f"--until: {exc}") from None
        if since_at is not None and until_at is not None and since_at >= until_at:
            raise ValueError(
                f"--since ({since_at:%Y-%m-%dT%H:%M:%SZ}) must be before --until ({until_at:%Y-%m-%dT%H:%M:%SZ})"
            )
        statuses: tuple[tuple[int, int], ...] = ()
        if status is not None:
            parts = _words(status)
            try:
                statuses = parse_statuses(list(parts))
            except ValueError as exc:
                raise ValueError(f"--status: {exc}") from None
        endings = _words(ended)
        for e in endings:
            if e not in ENDINGS:
                raise ValueError(f"--ended: {e!r} is not one of {', '.join(ENDINGS)}")
        prefixes = _words(path_prefix)
        for p in prefixes:
            if not p.startswith("/"):
                raise ValueError(f"--path-prefix: {p!r} must start with /")
        return cls(
            since=since_at,
            until=until_at,
            status=statuses,
            backend=_words(backend),
            model=_words(model),
            path_prefix=prefixes,
            ended=endings,
        )

    def matches(self, record: Record) -> bool:
        if self.since is not None or self.until is not None:
            at = _record_time(record.get("received_at"))
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        if self.status:
            status = record.get("status")
            if not isinstance(status, int) or not any(low <= status <= high for low, high in self.status):
                return False
        if self.backend and record.get("backend") not in self.backend:
            return False
        if self.model and record.get("model") not in self.model:
            return False
        if self.ended and record.get("ended") not in self.ended:
            return False
        if self.path_prefix:
            path = record.get("path")
            if not isinstance(path, str) or not path.startswith(self.path_prefix):
                return False
        return True


# -- secrets in DSNs ------------------------------------------------------------------------------

_URL_DSN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(.*)@", re.DOTALL)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``: the userinfo password of a URL
    (``postgresql://user:pw@host/db``) and ``password=...`` in key/value or query form."""

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _password = m.group(2).partition(":")
        return f"{m.group(1)}{user}{sep}{'***' if sep else ''}@"

    return _KV_PASSWORD.sub(lambda m: m.group(1) + "***", _URL_DSN.sub(userinfo, dsn, count=1))


def _passwords(dsn: str) -> list[str]:
    found: list[str] = []
    m = _URL_DSN.match(dsn)
    if m and ":" in m.group(2):
        found.append(m.group(2).partition(":")[2])
    found.extend(v.strip("'") for _k, v in _KV_PASSWORD.findall(dsn))
    result: list[str] = []
    for p in found:
        result.append(p)
        if unquote(p) != p:
            result.append(unquote(p))
    return [p for p in result if p]


def hide_secret(text: str, dsn: str) -> str:
    """``text`` with ``dsn``'s password (raw or percent-decoded) and the DSN itself masked."""
    text = text.replace(dsn, mask_dsn(dsn)) if dsn else text
    for secret in sorted(_passwords(dsn), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# -- sources --------------------------------------------------------------------------------------


class SourceError(Exception):
    """Records could not be read from a source. The message never contains a password."""


_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
SOURCE_FORMS = "spool:DIR, postgres:DSN, postgres:DSN#TABLE or a postgresql:// URL"


def _take(iterator: Iterator[Record], filters: Filters, count: int) -> list[Record]:
    batch: list[Record] = []
    for record in iterator:
        if filters.matches(record):
            batch.append(record)
            if len(batch) >= count:
                break
    return batch


@dataclass
class Source:
    """Where records are read from; ``records(filters)`` is an async iterator over them."""

    kind: Literal["spool", "postgres"]
    location: str  # the directory, or the DSN
    table: str = DEFAULT_TABLE
    reader: SpoolReader | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.kind == "spool":
            return f"spool:{self.location}"
        suffix = f"#{self.table}" if self.table != DEFAULT_TABLE else ""
        return f"postgres:{mask_dsn(self.location)}{suffix}"

    def __repr__(self) -> str:
        return f"Source({self})"

    @property
    def skipped(self) -> int:
        """Lines skipped as invalid by the last ``records`` of a spool source."""
        return self.reader.skipped if self.reader is not None else 0

    def records(self, filters: Filters | None = None, *, limit: int | None = None) -> AsyncGenerator[Record, None]:
        filters = filters or Filters()
        if self.kind == "spool":
            return self._spool(filters, limit)
        return self._postgres(filters, limit)

    async def _spool(self, filters: Filters, limit: int | None) -> AsyncGenerator[Record, None]:
        try:
            reader = iter_spool(self.location)
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from None
        self.reader = reader
        sent = 0
        try:
            while limit is None or sent < limit:
                # Disk reads and JSON parsing happen off the event loop, a batch at a time.
                want = 256 if limit is None else min(256, limit - sent)
                try:
                    batch = await asyncio.to_thread(_take, reader, filters, want)
                except OSError as exc:
                    raise SourceError(f"{self.location}: {exc}") from None
                if not batch:
                    return
                for record in batch:
                    yield record
                sent += len(batch)
        finally:
            reader.close()

    async def _postgres(self, filters: Filters, limit: int | None) -> AsyncGenerator[Record, None]:
        where = str(self)
        try:
            module = importlib.import_module("haproxy_ai.mirror.sinks.postgres")
        except ImportError as exc:
            raise SourceError(f"{where}: the PostgreSQL reader is not available ({exc.name or exc})") from None
        kwargs: dict[str, Any] = {"since": filters.since, "until": filters.until}
        if len(filters.backend) == 1:
            kwargs["backend"] = filters.backend[0]
        if len(filters.model) == 1:
            kwargs["model"] = filters.model[0]
        single_status = len(filters.status) == 1 and filters.status[0][0] == filters.status[0][1]
        if single_status:
            kwargs["status"] = filters.status[0][0]
        # Every filter is applied here as well; a limit is pushed down only when the query
        # expresses all of them, else it would count records this side then drops.
        local_only = (filters.status and not single_status) or filters.path_prefix or filters.ended
        if limit is not None and not local_only and len(filters.backend) <= 1 and len(filters.model) <= 1:
            kwargs["limit"] = limit
        sent = 0
        try:
            async for record in module.read_records(self.location, self.table, **kwargs):
                if filters.matches(record):
                    yield record
                    sent += 1
                    if limit is not None and sent >= limit:
                        return
        except SourceError:
            raise
        except Exception as exc:  # SinkError, MissingDriver, driver errors: all reported, masked
            message = hide_secret(str(exc) or type(exc).__name__, self.location)
            raise SourceError(f"{where}: {message}") from None


def open_source(spec: str) -> Source:
    """A ``Source`` from ``spool:DIR``, ``postgres:DSN``, ``postgres:DSN#TABLE`` or a bare
    ``postgresql://``/``postgres://`` URL. ValueError (password masked) for anything else;
    a spool directory must exist."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise ValueError(f"--source is empty: use {SOURCE_FORMS}")
    lowered = text.lower()
    if lowered.startswith("spool:"):
        directory = text[len("spool:") :]
        if not directory:
            raise ValueError("--source spool: needs a directory, e.g. spool:/var/lib/haproxy-ai/spool")
        if not Path(directory).is_dir():
            raise ValueError(f"--source {text}: no such directory")
        return Source("spool", directory)
    if lowered.startswith(("postgresql://", "postgres://")):
        dsn = text
    elif lowered.startswith(("postgres:", "postgresql:")):
        dsn = text.partition(":")[2]
    elif ":" in text:
        # Show only the type: what follows could hold a password in a form we do not know.
        kind = text.partition(":")[0]
        raise ValueError(f"--source: unknown source type {kind!r}: use {SOURCE_FORMS}")
    else:
        raise ValueError(f"--source {mask_dsn(text)!r} has no type: use {SOURCE_FORMS}")
    table = DEFAULT_TABLE
    if "#" in dsn:
        dsn, _, table = dsn.rpartition("#")
        if not _TABLE.fullmatch(table):
            raise ValueError(f"--source: {table!r} is not a table name (letters, digits, _; optionally schema.table)")
    if not dsn.strip():
        raise ValueError("--source postgres: needs a DSN, e.g. postgres:postgresql://user@host/db")
    return Source("postgres", dsn, table)
