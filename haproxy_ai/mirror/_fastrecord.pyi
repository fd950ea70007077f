from typing import Any

def encode(
    exchange: Any,
    second: list[Any],
    instance: str,
    request_cap: int,
    model: str | None,
    fields: dict[Any, tuple[str, str]],
    listed: dict[Any, str],
    replacement: str,
    literals: tuple[bytes, ...],
    /,
) -> bytes | None: ...
