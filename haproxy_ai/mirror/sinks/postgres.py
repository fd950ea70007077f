"""The PostgreSQL sink: one row per record (schema 1), inserted idempotently, and a reader that rebuilds the records.

Every record key is a column (see the record format), so ``read_records`` gives back the very dicts that were
written. The driver, asyncpg, is an optional dependency (``haproxy-ai[postgres]``): this module imports without it
and raises ``MissingDriver`` when a sink or a reader is actually created.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .base import SinkError

__all__ = ["MissingDriver", "PostgresSink", "read_records"]

log = logging.getLogger("haproxy_ai.mirror")

SCHEMA_VERSION = 1

# (column, SQL type) in table order; the array parameters of the batch insert use the same order.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("schema", "integer"),
    ("request_id", "text"),
    ("instance", "text"),
    ("received_at", "timestamptz"),
    ("first_byte_at", "timestamptz"),
    ("done_at", "timestamptz"),
    ("latency_ms", "double precision"),
    ("ttfb_ms", "double precision"),
    ("client", "text"),
    ("method", "text"),
    ("path", "text"),
    ("query", "text"),
    ("model", "text"),
    ("status", "integer"),
    ("ended", "text"),
    ("backend", "text"),
    ("error", "text"),
    ("attempts", "jsonb"),
    ("request", "jsonb"),
    ("response", "jsonb"),
)
_TYPES = dict(_COLUMNS)

# Record key order of the format (schema 1); rebuilt records use it, so they serialise like the spooled line.
_RECORD_KEYS = (
    "schema",
    "id",
    "request_id",
    "instance",
    "received_at",
    "first_byte_at",
    "done_at",
    "latency_ms",
    "ttfb_ms",
    "client",
    "method",
    "path",
    "query",
    "model",
    "status",
    "ended",
    "backend",
    "error",
    "attempts",
    "request",
    "response",
)
# jsonb keeps objects with sorted keys; the known keys of the nested objects get their format order back.
_NESTED_ORDER: dict[str, tuple[str, ...]] = {
    "attempts": ("backend", "outcome", "status", "start_ms", "headers_ms", "end_ms"),
    "request": ("headers", "body", "body_encoding", "bytes", "body_truncated"),
    "response": ("headers", "body", "body_encoding", "bytes", "body_truncated", "stream", "text", "usage"),
}
_INDEXED = ("received_at", "status", "backend", "model")
# A btree index entry must fit in ~2700 bytes: client-chosen values of indexed text columns (the request's
# "model") are cut to this many characters (at most 4 bytes each) when a record is sanitised.
_INDEXED_TEXT_CHARS = 512
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_IDENTIFIER = 63
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT4 = (-(2**31), 2**31 - 1)
_PREFETCH = 100  # rows per cursor fetch in read_records: bounds memory, since rows carry bodies

# What _row raises for a record that does not follow the format.
_MALFORMED: tuple[type[BaseException], ...] = (KeyError, ValueError, TypeError)

_DRIVER_HINT = "the postgres sink needs asyncpg: pip install 'haproxy-ai[postgres]'"


class MissingDriver(SinkError):
    """asyncpg is not installed."""


def _driver() -> Any:
    """The asyncpg module, imported on first use so the package works without the extra."""
    try:
        return importlib.import_module("asyncpg")
    except ImportError:
        raise MissingDriver(_DRIVER_HINT) from None


def _check_table(table: str) -> str:
    """The table name, which must be a plain identifier (the settings loader checks it too)."""
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"{table!r} is not a plain SQL identifier")
    return table


def _quote(identifier: str) -> str:
    return f'"{identifier}"'


def _index_name(table: str, column: str) -> str:
    """``<table>_<column>_idx``; for long table names the table part is cut so that the name fits in 63
    characters, where PostgreSQL would otherwise cut the suffix and the four names could collide."""
    suffix = f"_{column}_idx"
    return table[: _MAX_IDENTIFIER - len(suffix)] + suffix


def _ddl(table: str) -> str:
    t = _quote(table)
    script = [
        f"""CREATE TABLE IF NOT EXISTS {t} (
  id text PRIMARY KEY,
  schema integer NOT NULL,
  request_id text NOT NULL,
  instance text NOT NULL,
  received_at timestamptz NOT NULL,
  first_byte_at timestamptz,
  done_at timestamptz NOT NULL,
  latency_ms double precision NOT NULL,
  ttfb_ms double precision,
  client text,
  method text NOT NULL,
  path text NOT NULL,
  query text NOT NULL,
  model text,
  status integer NOT NULL,
  ended text NOT NULL,
  backend text,
  error text,
  attempts jsonb NOT NULL,
  request jsonb NOT NULL,
  response jsonb NOT NULL
)"""
    ]
    for column in _INDEXED:
        script.append(f"CREATE INDEX IF NOT EXISTS {_quote(_index_name(table, column))} ON {t} ({column})")
    return ";\n".join(script)


def _insert_sql(table: str) -> str:
    names = ", ".join(column for column, _ in _COLUMNS)
    arrays = ", ".join(f"${i}::{sql_type}[]" for i, (_, sql_type) in enumerate(_COLUMNS, 1))
    return f"INSERT INTO {_quote(table)} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO NOTHING"


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 string as an aware datetime (a missing offset means UTC); None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("a timestamp must be a string")
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _format_time(value: datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, as the proxy writes it."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


_TO_DB: dict[str, Callable[[Any], Any]] = {
    "text": lambda v: v,
    "integer": lambda v: v,
    "double precision": lambda v: v,
    "timestamptz": _parse_time,
    "jsonb": _json_text,
}


def _row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The column values of a record. Raises (KeyError, ValueError, TypeError) on a record that does not
    follow the format; wrong scalar types are left for the driver to reject."""
    return tuple(_TO_DB[sql_type](record[column]) for column, sql_type in _COLUMNS)


def _clean_text(value: str) -> str:
    """Without NUL characters (text and jsonb cannot hold them) and without lone surrogates (not UTF-8)."""
    value = value.replace("\x00", "")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode()
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _sanitise(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with every string cleaned, missing keys set to None and indexed client-chosen text cut."""
    clean: dict[str, Any] = _clean(dict(record))
    for key in _RECORD_KEYS:
        clean.setdefault(key, None)
    for key in ("model", "backend"):
        if isinstance(clean[key], str):
            clean[key] = clean[key][:_INDEXED_TEXT_CHARS]
    return clean


def _minimal_row(record: Mapping[str, Any], error: str) -> tuple[Any, ...] | None:
    """A row that any table accepts, keeping only the record's identity, times and outcome; None when the
    record has no usable id (without one, redelivery could not be deduplicated)."""
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        return None

    def text(key: str) -> str:
        value = record.get(key)
        return _clean_text(value) if isinstance(value, str) else ""

    def time(key: str) -> datetime | None:
        try:
            return _parse_time(record.get(key))
        except (TypeError, ValueError):
            return None

    def number(key: str) -> float | None:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    def int4(key: str, default: int) -> int:
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and _INT4[0] <= value <= _INT4[1]:
            return value
        return default

    received = time("received_at") or _EPOCH
    values = {
        "id": _clean_text(rid),
        "schema": int4("schema", SCHEMA_VERSION),
        "request_id": text("request_id"),
        "instance": text("instance"),
        "received_at": received,
        "first_byte_at": time("first_byte_at"),
        "done_at": time("done_at") or received,
        "latency_ms": number("latency_ms") or 0.0,
        "ttfb_ms": number("ttfb_ms"),
        "client": None,
        "method": text("method"),
        "path": text("path"),
        "query": "",
        "model": None,
        "status": int4("status", 0),
        "ended": text("ended"),
        "backend": None,
        "error": f"record could not be stored: {error}",
        "attempts": "[]",  # still a list, so readers that iterate attempts keep working
        "request": "{}",
        "response": "{}",
    }
    return tuple(values[column] for column, _ in _COLUMNS)


def _record_id(record: Mapping[str, Any]) -> str:
    rid = record.get("id")
    return repr(rid[:64]) if isinstance(rid, str) else "<no id>"


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """One spooled line as a record; None when it is not a JSON object at all."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson refuses escaped lone surrogates, which the stdlib accepts; sanitising removes them later.
        try:
            value = json.loads(line)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _reason(exc: BaseException, driver: Any) -> str:
    """A short description of a failure: its kind, class and SQLSTATE, never its message (asyncpg and server
    messages can quote the data or connection details)."""
    errors = driver.exceptions
    if isinstance(exc, TimeoutError | errors.QueryCanceledError):
        kind = "timed out"
    elif isinstance(
        exc,
        OSError
        | errors.PostgresConnectionError
        | errors.InterfaceError
        | errors.OperatorInterventionError
        | errors.TooManyConnectionsError,
    ):
        kind = "connection failed"
    elif isinstance(exc, errors.PostgresError):
        kind = "server error"
    else:
        kind = "failed"
    sqlstate = getattr(exc, "sqlstate", None)
    state = f", SQLSTATE {sqlstate}" if isinstance(sqlstate, str) else ""
    return f"{kind} ({type(exc).__name__}{state})"


class PostgresSink:
    """Stores records as rows of ``table`` (created with its indexes when missing), at most once per id.

    Uses one connection, opened on the first write and again after any failure; the shipper calls ``write``
    sequentially. A batch is one INSERT ... ON CONFLICT (id) DO NOTHING, so redelivered records are skipped.
    A record the database rejects (a NUL in a string, a wrong type, an oversized indexed value) never blocks
    the spool: its batch is split until the record is alone, then it is stored sanitised, or as a minimal row
    whose ``error`` says so, or (without a usable id) dropped; each case is logged with the record id only.
    Anything else (connection, timeout, server state) raises SinkError and the whole batch is retried.
    """

    def __init__(
        self,
        *,
        name: str,
        dsn: str,
        table: str = "haproxy_ai_requests",
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        """Raises MissingDriver without asyncpg and ValueError for a table name that is not an identifier.
        An empty ``dsn`` means libpq's PG* environment variables."""
        self.name = name
        self._driver = _driver()
        self._dsn = dsn or None
        self._table = _check_table(table)
        self._insert = _insert_sql(table)
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        errors = self._driver.exceptions
        # Errors that concern the rows of a statement rather than the connection: retried record by record.
        self._data_errors: tuple[type[BaseException], ...] = (
            errors.DataError,  # class 22, and asyncpg's own "invalid input for query argument"
            errors.IntegrityConstraintViolationError,  # class 23, e.g. a NOT NULL column given null
            errors.ProgramLimitExceededError,  # class 54, e.g. an index entry too large
        )
        self._rejected: tuple[type[BaseException], ...] = (*_MALFORMED, *self._data_errors)
        self._conn: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresSink(name={self.name!r}, table={self._table!r})"

    async def write(self, lines: list[bytes]) -> None:
        """Store every record of ``lines`` (JSON objects, no newline) or raise SinkError."""
        records: list[dict[str, Any]] = []
        for index, line in enumerate(lines):
            record = _parse_line(line)
            if record is None:
                log.warning("postgres sink %r: skipped line %d of a batch: not a JSON object", self.name, index)
            else:
                records.append(record)
        if not records:
            return
        async with self._lock:
            conn = await self._connection()
            try:
                await self._store(conn, records)
            except Exception as exc:
                self._drop()
                raise SinkError(f"postgres sink {self.name!r}: write failed: {_reason(exc, self._driver)}") from None
            except BaseException:
                # Cancelled mid-statement: the connection's state is unknown.
                self._drop()
                raise

    async def aclose(self) -> None:
        """Close the connection (a later write opens a new one)."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                await conn.close(timeout=self._connect_timeout)
            except Exception:
                conn.terminate()  # the server is gone or slow: closing is all that matters
            except BaseException:
                conn.terminate()
                raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # immediate: a graceful close could wait on a dead server

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        try:
            conn = await self._driver.connect(
                self._dsn,
                timeout=self._connect_timeout,
                command_timeout=self._statement_timeout,
                server_settings={
                    "statement_timeout": str(max(1, round(self._statement_timeout * 1000))),
                    "application_name": "haproxy-ai",
                },
            )
        except Exception as exc:
            raise SinkError(f"postgres sink {self.name!r}: cannot connect: {_reason(exc, self._driver)}") from None
        try:
            await self._prepare_table(conn)
        except Exception as exc:
            conn.terminate()
            raise SinkError(
                f"postgres sink {self.name!r}: cannot create table {self._table!r}: {_reason(exc, self._driver)}"
            ) from None
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    async def _prepare_table(self, conn: Any) -> None:
        """Create the table and its indexes when any is missing. When all exist nothing is run, so a role
        with only INSERT on a table provisioned by someone else works too."""
        names = [self._table, *(_index_name(self._table, column) for column in _INDEXED)]
        checks = " AND ".join(f"to_regclass(${i}) IS NOT NULL" for i in range(1, len(names) + 1))
        timeout = self._statement_timeout
        if await conn.fetchval(f"SELECT {checks}", *map(_quote, names), timeout=timeout):
            return
        async with conn.transaction():
            # Serialises instances creating the same table: concurrent CREATE ... IF NOT EXISTS can still
            # fail on the catalog's unique indexes.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"haproxy_ai:{self._table}", timeout=timeout
            )
            await conn.execute(_ddl(self._table), timeout=timeout)

    async def _store(self, conn: Any, records: list[dict[str, Any]]) -> None:
        rows: list[tuple[dict[str, Any], tuple[Any, ...]]] = []
        malformed: list[tuple[dict[str, Any], BaseException]] = []
        for record in records:
            try:
                rows.append((record, _row(record)))
            except _MALFORMED as problem:
                malformed.append((record, problem))
        await self._insert_split(conn, rows)
        for record, error in malformed:
            await self._store_rejected(conn, record, error)

    async def _insert_rows(self, conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = [list(values) for values in zip(*rows, strict=True)]
        await conn.execute(self._insert, *columns, timeout=self._statement_timeout)

    async def _insert_split(self, conn: Any, rows: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> None:
        """Insert ``rows``; when the database rejects the data, halve the batch until the bad records are
        alone (O(k log n) statements for k bad records among n, instead of n)."""
        if not rows:
            return
        try:
            await self._insert_rows(conn, [row for _, row in rows])
        except self._data_errors as exc:
            if len(rows) == 1:
                await self._store_rejected(conn, rows[0][0], exc)
                return
            middle = len(rows) // 2
            await self._insert_split(conn, rows[:middle])
            await self._insert_split(conn, rows[middle:])

    async def _store_rejected(self, conn: Any, record: dict[str, Any], exc: BaseException) -> None:
        """Store a record that failed as is: sanitised, else as a minimal row, else not at all."""
        rid = _record_id(record)
        clean = _sanitise(record)
        error = type(exc).__name__
        try:
            await self._insert_rows(conn, [_row(clean)])
        except self._rejected as again:
            error = type(again).__name__
        else:
            log.warning(
                "postgres sink %r: record %s could not be stored as is (%s); stored sanitised "
                "(NUL characters and invalid text removed, indexed text cut)",
                self.name,
                rid,
                type(exc).__name__,
            )
            return
        minimal = _minimal_row(clean, error)
        if minimal is not None:
            try:
                await self._insert_rows(conn, [minimal])
            except self._data_errors as last:
                error = type(last).__name__
            else:
                log.warning(
                    "postgres sink %r: record %s could not be stored (%s); stored a minimal row instead",
                    self.name,
                    rid,
                    error,
                )
                return
        log.error("postgres sink %r: record %s could not be stored at all (%s); dropped", self.name, rid, error)


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ordered(value: Any, order: tuple[str, ...]) -> Any:
    if not isinstance(value, dict):
        return value
    out = {key: value[key] for key in order if key in value}
    out.update((key, item) for key, item in value.items() if key not in out)
    return out


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row back as the record it was made from, keys in the format's order."""
    record: dict[str, Any] = {}
    for key in _RECORD_KEYS:
        value = row[key]
        sql_type = _TYPES[key]
        if sql_type == "timestamptz":
            value = _format_time(value)
        elif sql_type == "jsonb":
            value = orjson.loads(value)
            order = _NESTED_ORDER.get(key)
            if order is not None:
                value = [_ordered(v, order) for v in value] if isinstance(value, list) else _ordered(value, order)
        record[key] = value
    return record


async def read_records(
    dsn: str,
    table: str = "haproxy_ai_requests",
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    status: int | None = None,
    backend: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    connect_timeout: float = 5.0,
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the records stored in ``table`` in (received_at, id) order, equal to the dicts that were written.

    Filters combine: ``since`` <= received_at < ``until`` (naive datetimes are UTC), and equality on
    ``status``, ``backend`` and ``model`` (None = no filter); ``limit`` caps the count. Rows are read through a
    server-side cursor in a read-only transaction, so memory stays constant for any table size. Raises
    MissingDriver, SinkError when the connection fails or the table does not exist, and ValueError for a
    table name that is not an identifier or a negative limit.

    Nested objects come back with the format's key order for known keys; header names (and any other
    object keys) come back in jsonb's order (by length, then bytes), which compares equal all the same.
    """
    driver = _driver()
    _check_table(table)
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (
        ("received_at >= ", None if since is None else _utc(since)),
        ("received_at < ", None if until is None else _utc(until)),
        ("status = ", status),
        ("backend = ", backend),
        ("model = ", model),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{condition}${len(args)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    bound = ""
    if limit is not None:
        args.append(limit)
        bound = f" LIMIT ${len(args)}"
    names = ", ".join(column for column, _ in _COLUMNS)
    query = f"SELECT {names} FROM {_quote(table)}{where} ORDER BY received_at, id{bound}"

    try:
        conn = await driver.connect(dsn or None, timeout=connect_timeout)
    except Exception as exc:
        raise SinkError(f"postgres: cannot connect: {_reason(exc, driver)}") from None
    try:
        try:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _quote(table))
        except Exception as exc:
            raise SinkError(f"postgres: cannot read table {table!r}: {_reason(exc, driver)}") from None
        if not exists:
            raise SinkError(f"table {table!r} does not exist")
        try:
            async with conn.transaction(readonly=True):
                async for row in conn.cursor(query, *args, prefetch=_PREFETCH):
                    yield _record(row)
        except driver.exceptions.UndefinedTableError:
            raise SinkError(f"table {table!r} does not exist") from None
        except (OSError, driver.exceptions.PostgresError, driver.exceptions.InterfaceError) as exc:
            raise SinkError(f"postgres: reading table {table!r} failed: {_reason(exc, driver)}") from None
    finally:
        try:
            await conn.close(timeout=connect_timeout)
        except Exception:
            conn.terminate()
        except BaseException:
            conn.terminate()
            raise
