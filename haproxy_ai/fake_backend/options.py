"""How a fake replica behaves: ``FakeBackendOptions``, its validation, and the matching CLI flags.

The dataclass and the command line share one converter per field, so ``FakeBackendOptions(...)``
and ``haproxy-ai fake-backend --flag VALUE`` accept and reject exactly the same values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from ..settings import parse_duration

__all__ = ["FakeBackendOptions", "add_arguments", "options_from_args"]

_Kind = Literal["str", "duration", "rate", "status", "positive", "count", "seed"]

_KINDS: Final[dict[str, _Kind]] = {
    "model": "str",
    "latency": "duration",
    "jitter": "duration",
    "tail_fraction": "rate",
    "tail_latency": "duration",
    "error_rate": "rate",
    "error_status": "status",
    "tokens": "positive",
    "chunk_interval": "duration",
    "seed": "seed",
    "name": "str",
    "max_batch": "count",
    "prefill_per_kchar": "duration",
    "prefix_block_chars": "positive",
    "prefix_cache_chars": "count",
}


def _to_int(value: object) -> int:
    """An int from an int, an integral float or a decimal string; never from a bool."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _convert(kind: _Kind, value: object) -> Any:
    """Parse and check one option value; ValueError says what is wrong (without the name)."""
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    if kind == "duration":
        return parse_duration(value)
    if kind == "rate":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number between 0 and 1, got {value!r}")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"expected a number between 0 and 1, got {value!r}") from None
        if not 0.0 <= rate <= 1.0:  # also rejects NaN
            raise ValueError(f"must be between 0 and 1, got {value!r}")
        return rate
    if kind == "status":
        status = _to_int(value)
        if not 100 <= status <= 599:
            raise ValueError(f"must be an HTTP status between 100 and 599, got {status}")
        return status
    if kind == "positive":
        number = _to_int(value)
        if number < 1:
            raise ValueError(f"must be at least 1, got {number}")
        return number
    if kind == "count":
        number = _to_int(value)
        if number < 0:
            raise ValueError(f"must be 0 or more, got {number}")
        return number
    # seed
    return None if value is None else _to_int(value)


@dataclass(frozen=True)
class FakeBackendOptions:
    """How a fake replica behaves. Invalid values raise ValueError on construction; valid ones
    are stored parsed, so ``latency="50ms"`` holds ``0.05`` just as ``--latency 50ms`` would."""

    model: str = "fake-model"
    latency: float = 0.0  # seconds before response headers (time to first token)
    jitter: float = 0.0  # uniform extra 0..jitter seconds added to latency
    tail_fraction: float = 0.0  # fraction of requests that get tail_latency instead
    tail_latency: float = 0.0
    error_rate: float = 0.0  # fraction of inference requests answered with error_status
    error_status: int = 500
    tokens: int = 16  # completion tokens per response
    chunk_interval: float = 0.0  # seconds between SSE chunks when streaming
    seed: int | None = None  # RNG seed, for reproducible runs
    name: str = ""  # replica name, echoed in a response header x-fake-backend
    # The engine model (see scheduler.py); the defaults leave timing exactly as without it.
    max_batch: int = 0  # generations running at once; more wait in a FIFO queue (0 = no limit)
    prefill_per_kchar: float = 0.0  # extra time to first token per 1000 prompt chars not in the prefix cache
    prefix_block_chars: int = 64  # prefix-cache block size, in prompt characters
    prefix_cache_chars: int = 200_000  # prefix-cache capacity, in characters (whole blocks; 0 = no cache)

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                value = _convert(_KINDS[f.name], getattr(self, f.name))
            except ValueError as exc:
                raise ValueError(f"FakeBackendOptions.{f.name}: {exc}") from None
            object.__setattr__(self, f.name, value)  # frozen: the one sanctioned way to normalise


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_HELP: Final[dict[str, str]] = {
    "model": "model id served and echoed when a request names none",
    "latency": "delay before response headers (time to first token), e.g. 0.05 or 50ms",
    "jitter": "uniform random extra delay, 0..JITTER, added to --latency",
    "tail_fraction": "fraction (0..1) of requests delayed by --tail-latency instead",
    "tail_latency": "delay for the tail fraction of requests",
    "error_rate": "fraction (0..1) of inference requests answered with --error-status",
    "error_status": "HTTP status of injected errors",
    "tokens": "completion tokens per response (requests' max_tokens may cap it)",
    "chunk_interval": "delay between streamed tokens",
    "seed": "random seed, for reproducible latency and error sequences",
    "name": "replica name sent in the x-fake-backend header (default: host:port)",
    "max_batch": "generations running at once; further requests queue FIFO (0 = unlimited)",
    "prefill_per_kchar": "time to first token added per 1000 prompt characters missing from the prefix cache",
    "prefix_block_chars": "prefix-cache block size in characters; a block hits only if its whole prefix matches",
    "prefix_cache_chars": "prefix-cache capacity in characters, evicted least recently used (0 = no cache)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host``, ``--port`` and one flag per ``FakeBackendOptions`` field to ``parser``.

    Option values stay raw strings here; ``options_from_args`` parses and validates them so
    its errors can name the flag (durations accept ``0.05``, ``50ms``, ``2s``).
    """
    defaults = FakeBackendOptions()
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="listen port, 0 = any (default: %(default)s)")
    for f in fields(FakeBackendOptions):
        default = getattr(defaults, f.name)
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=default,
            metavar=f.name.upper(),
            help=f"{_HELP[f.name]} (default: {default!r})",
        )


def options_from_args(args: argparse.Namespace) -> FakeBackendOptions:
    """Build validated options from parsed arguments; missing attributes take the defaults.

    Raises ValueError whose message starts with the offending flag, e.g.
    ``--error-rate: must be between 0 and 1, got '1.5'``.
    """
    defaults = FakeBackendOptions()
    values: dict[str, Any] = {}
    for f in fields(FakeBackendOptions):
        raw = getattr(args, f.name, getattr(defaults, f.name))
        try:
            values[f.name] = _convert(_KINDS[f.name], raw)
        except ValueError as exc:
            raise ValueError(f"{_flag(f.name)}: {exc}") from None
    return FakeBackendOptions(**values)
