from collections.abc import Callable
from typing import Any

class Encoder:
    def __init__(
        self,
        fields: dict[Any, tuple[str, str]],
        listed: dict[Any, str],
        replacement: str,
        literals: tuple[bytes, ...],
        header_names: frozenset[str],
        instance: str,
        second: list[Any],
        request_cap: int,
        model_of: Callable[[bytes], str | None],
        seed: int,
    ) -> None: ...
    def line(self, exchange: Any, /) -> bytes | None: ...
    def batch(
        self, exchanges: list[Any], lines: list[bytes], wall_offset: float, fallback: Callable[[Any], bytes | None], /
    ) -> int: ...

class Exchange:
    """record.Exchange in C: the same attributes, constructor and methods."""

    id: str
    request_id: str
    method: str
    raw_path: bytes
    query: bytes
    request_headers: Any
    client: str | None
    request_body: bytes
    response_headers: Any
    first_byte: float | None
    chunks: list[bytes]
    tail: list[bytes]
    ended: str
    error: str | None
    backend: str | None
    attempts: list[Any]
    received: float
    received_wall: float
    done: float
    body_cap: int
    kept: int
    response_bytes: int
    status: int
    def __init__(
        self,
        record_id: str,
        received: float,
        method: str,
        raw_path: bytes,
        query: bytes,
        request_headers: Any,
        client: str | None,
        body_cap: int,
    ) -> None: ...
    def add(self, chunk: bytes, /) -> None: ...
    def respond(self, status: int, headers: Any, first_byte: float, /) -> None: ...
