"""What a sink is: something the shipper hands batches of spooled records to, at least once."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["RecordSink", "SegmentSink", "SinkError"]


class SinkError(Exception):
    """A delivery failed; the shipper keeps the records in the spool and retries later.

    The message is shown in logs and the admin API, so it must never contain a DSN, a password
    or record contents.
    """


class RecordSink(Protocol):
    """Receives records in spool order, in batches. Delivery is at least once: the same record
    (same "id") may arrive again after a crash, and the sink must store it only once."""

    name: str

    async def write(self, lines: list[bytes]) -> None:
        """Store every record (one JSON object per item, no newline) or raise SinkError."""
        ...

    async def aclose(self) -> None: ...


class SegmentSink(Protocol):
    """Receives whole closed spool segments (a backup directory)."""

    name: str

    async def write_segment(self, path: Path) -> None:
        """Store a copy of the closed segment at ``path`` (idempotent) or raise SinkError."""
        ...

    async def aclose(self) -> None: ...
