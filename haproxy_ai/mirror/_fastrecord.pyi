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
