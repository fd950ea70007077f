"""Scalar values: durations, sizes, booleans and numbers, parsed and bounds-checked."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "format_delay",
    "format_duration",
    "format_size",
    "format_statuses",
    "parse_delay",
    "parse_duration",
    "parse_scalar",
    "parse_size",
    "parse_statuses",
    "parse_words",
]

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


_STATUS_RANGE = re.compile(r"([1-5])xx|([1-5]\d\d)(?:-([1-5]\d\d))?")


def parse_statuses(value: Any) -> tuple[tuple[int, int], ...]:
    """``2xx``, ``200-204``, ``200`` or a list of those -> inclusive (low, high) ranges."""
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("needs at least one status, e.g. 2xx")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"expected statuses like 2xx, 200-204 or 200, got {item!r}")
        m = _STATUS_RANGE.fullmatch(str(item).strip().lower())
        if not m:
            raise ValueError(f"expected statuses like 2xx, 200-204 or 200, got {item!r}")
        if m.group(1):
            low = int(m.group(1)) * 100
            ranges.append((low, low + 99))
        else:
            low = int(m.group(2))
            high = int(m.group(3) or low)
            if high < low:
                raise ValueError(f"{item!r}: range end is below its start")
            ranges.append((low, high))
    return tuple(ranges)


def format_statuses(ranges: tuple[tuple[int, int], ...]) -> str | list[str]:
    parts = [
        f"{low // 100}xx" if low % 100 == 0 and high == low + 99 else (str(low) if low == high else f"{low}-{high}")
        for low, high in ranges
    ]
    return parts[0] if len(parts) == 1 else parts


def parse_words(value: Any, choices: tuple[str, ...] | None) -> tuple[str, ...]:
    """A list (or a comma/space separated string) of words, each one of ``choices``."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected words, got {item!r}")
        if choices is not None:
            match = next((c for c in choices if c.lower() == item.lower()), None)
            if match is None:
                raise ValueError(f"{item!r} is not one of {', '.join(choices)}")
            item = match
        if item not in result:
            result.append(item)
    return tuple(result)


def parse_strings(value: Any) -> tuple[str, ...]:
    """A list of strings (a single string is a one-item list; it is never split)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of strings, got {type(value).__name__}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"expected non-empty strings, got {item!r}")
        if item not in result:
            result.append(item)
    return tuple(result)


def parse_delay(value: Any) -> tuple[str, float]:
    """``200ms`` -> ("fixed", 0.2); ``p95`` -> ("percentile", 95.0)."""
    if isinstance(value, str) and value.strip().lower().startswith("p"):
        try:
            percentile = float(value.strip()[1:])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentile like p95") from None
        if not 0 < percentile < 100:
            raise ValueError(f"{value!r}: the percentile must be between 0 and 100")
        return ("percentile", percentile)
    try:
        return ("fixed", parse_duration(value))
    except ValueError:
        raise ValueError(f"expected a duration like 200ms or a percentile like p95, got {value!r}") from None


def format_delay(delay: tuple[str, float]) -> str:
    return f"p{delay[1]:g}" if delay[0] == "percentile" else format_duration(delay[1])


def parse_scalar(kind: str, meta: Mapping[str, Any], value: Any) -> Any:
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
    elif kind == "statuses":
        result = parse_statuses(value)
    elif kind == "words":
        result = parse_words(value, meta.get("choices"))
    elif kind == "strings":
        result = parse_strings(value)
    elif kind == "delay":
        result = parse_delay(value)
    elif kind == "hash_key":
        result = _parse_str(value).strip()
        header = result[7:] if result.lower().startswith("header:") else None
        if header is not None:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
                raise ValueError(f"header:NAME needs a valid header name, got {result!r}")
            result = "header:" + header.lower()
        elif result not in ("prompt", "system_prompt"):
            raise ValueError(f"must be header:NAME, prompt or system_prompt; got {result!r}")
    elif kind == "path":
        result = _parse_str(value)
        if not result.startswith("/") or any(c in result for c in " \r\n\t#"):
            raise ValueError(f"must be an absolute path like /health, got {result!r}")
    else:
        result = _parse_str(value)
    if "gt" in meta and not result > meta["gt"]:
        raise ValueError(f"must be > {meta['gt']}")
    if "min" in meta and result < meta["min"]:
        raise ValueError(f"must be >= {meta['min']}")
    if "max" in meta and result > meta["max"]:
        raise ValueError(f"must be <= {meta['max']}")
    return result
