"""The local spool: segment files of JSON lines, per-sink checkpoints, bounded disk use.

Layout (README, "Spool"): ``00000000000000000001.jsonl`` closed segments, at most one
``....jsonl.open`` being written, ``checkpoint.<sink>.json`` per sink, ``LOCK``.

Every method is blocking file I/O and the class is not thread-safe: the mirror runs all of
them on one dedicated thread, so writes, rotation, reads and deletion never interleave.

Durability: appended lines reach the page cache at once (they survive the process being
killed) and the disk at the next ``sync`` (the writer calls it every ``fsync_interval``) or
rotation. Rotation fsyncs the segment, renames it and fsyncs the directory; checkpoints are
written to a temporary file, fsynced and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Position", "Spool", "SpoolError", "SpoolStats"]

log = logging.getLogger("haproxy_ai.mirror")

_SEGMENT = re.compile(r"(\d{20})\.jsonl(\.open)?")


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, another process holds it, bad data)."""


@dataclass(frozen=True, slots=True)
class Position:
    """A sink's progress: the next record is line ``index`` at byte ``offset`` of ``segment``."""

    segment: int
    offset: int = 0
    index: int = 0


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int
    records: int
    closed: bool
    closed_at: float  # wall time, for retention
    opened_at: float  # wall time (a recovered segment's mtime), for sink lag


@dataclass(frozen=True, slots=True)
class SpoolStats:
    bytes: int
    segments: int
    records: int
    pending: dict[str, int]  # per sink: records not yet delivered
    oldest_pending: dict[str, float | None]  # per sink: when its oldest undelivered segment was opened


class Spool:
    def __init__(
        self,
        directory: str | Path,
        *,
        sinks: list[str],
        segment_max_bytes: int,
        segment_max_age: float,
        max_bytes: int,
        on_full: str = "drop_newest",
        retention: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.dir = Path(directory)
        self.sinks = list(sinks)
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.max_bytes = max_bytes
        self.on_full = on_full
        self.retention = retention
        self._now = now
        self._segments: list[_Segment] = []
        self._positions: dict[str, Position] = {}
        self._fd = -1
        self._lock_fd = -1
        self._opened_at = 0.0
        self._dirty = False

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Create or recover the spool: lock it, close a segment left open by a crash (dropping a
        torn last line), load checkpoints and start a new segment. Raises SpoolError."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {str(self.dir)!r}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool directory {str(self.dir)!r} is in use by another haproxy-ai process") from None
        try:
            self._recover()
            self._start_segment()
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot use spool directory {str(self.dir)!r}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Sync and close the open segment (renamed to closed) and release the lock."""
        if self._fd >= 0:
            self._close_segment()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _recover(self) -> None:
        found: list[tuple[int, Path, bool]] = []
        for entry in os.scandir(self.dir):
            m = _SEGMENT.fullmatch(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path), m.group(2) is not None))
        found.sort()
        for number, path, is_open in found:
            if is_open:
                closed = path.with_name(f"{number:020d}.jsonl")
                self._truncate_torn(path)
                os.replace(path, closed)
                _fsync_dir(self.dir)
                path = closed
            data = path.read_bytes()
            stat = path.stat()
            self._segments.append(
                _Segment(number, path, len(data), data.count(b"\n"), True, stat.st_mtime, stat.st_mtime)
            )
        first = self._segments[0].number if self._segments else 1
        for sink in self.sinks:
            self._positions[sink] = self._load_checkpoint(sink, first)

    @staticmethod
    def _truncate_torn(path: Path) -> None:
        # A crash can leave a partial last line; everything before the last newline is whole.
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning("spool: dropped a partial record (%d bytes) at the end of %s", len(data) - end, path.name)
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())

    def _load_checkpoint(self, sink: str, first: int) -> Position:
        path = self.dir / f"checkpoint.{sink}.json"
        try:
            data = json.loads(path.read_text())
            position = Position(int(data["segment"]), int(data["offset"]), int(data["index"]))
        except FileNotFoundError:
            return Position(first)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Re-shipping from the start is safe (sinks deduplicate); skipping records is not.
            log.warning("spool: unreadable checkpoint for sink %s (%s); re-shipping the spool", sink, exc)
            return Position(first)
        if not any(s.number == position.segment for s in self._segments):
            # Its segment was shipped and deleted: continue at the first segment after it.
            later = [s.number for s in self._segments if s.number > position.segment]
            return Position(later[0] if later else position.segment + 1)
        return position

    def _start_segment(self) -> None:
        number = self._segments[-1].number + 1 if self._segments else 1
        for position in self._positions.values():
            number = max(number, position.segment)
        path = self.dir / f"{number:020d}.jsonl.open"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self.dir)
        self._opened_at = self._now()
        self._segments.append(_Segment(number, path, 0, 0, False, 0.0, self._opened_at))

    def _close_segment(self) -> None:
        segment = self._segments[-1]
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        closed = segment.path.with_name(f"{segment.number:020d}.jsonl")
        os.replace(segment.path, closed)
        _fsync_dir(self.dir)
        segment.path, segment.closed, segment.closed_at = closed, True, self._now()
        self._dirty = False

    # -- writing --------------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> tuple[int, int, int]:
        """Append records (JSON without newline). Returns (written, dropped, evicted): dropped
        newest records that did not fit, and records of older segments evicted to make room
        (``drop_oldest``), counted as undelivered to at least one sink."""
        if not lines:
            return 0, 0, 0
        evicted = 0
        data = b"\n".join(lines) + b"\n"
        if self.total_bytes() + len(data) > self.max_bytes:
            self.collect()
            if self.on_full == "drop_oldest":
                evicted = self._evict(len(data))
            if self.total_bytes() + len(data) > self.max_bytes:
                # Keep whatever prefix still fits, so a burst loses only its tail.
                room = self.max_bytes - self.total_bytes()
                keep = 0
                size = 0
                while keep < len(lines) and size + len(lines[keep]) + 1 <= room:
                    size += len(lines[keep]) + 1
                    keep += 1
                dropped = len(lines) - keep
                if not keep:
                    return 0, dropped, evicted
                lines = lines[:keep]
                data = b"\n".join(lines) + b"\n"
                self._write(data, len(lines))
                return keep, dropped, evicted
        self._write(data, len(lines))
        return len(lines), 0, evicted

    def _write(self, data: bytes, count: int) -> None:
        segment = self._segments[-1]
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        segment.size += len(data)
        segment.records += count
        self._dirty = True
        if segment.size >= self.segment_max_bytes:
            self.rotate()

    def sync(self) -> None:
        """fsync the open segment if anything was written since the last sync."""
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False

    def rotate(self) -> None:
        """Close the open segment (if it holds anything) and start the next one."""
        if self._segments[-1].records == 0:
            return
        self._close_segment()
        self._start_segment()

    def tick(self) -> None:
        """Periodic upkeep: sync, rotate an old non-empty segment, delete what no one needs."""
        self.sync()
        if self._segments[-1].records and self._now() - self._opened_at >= self.segment_max_age:
            self.rotate()
        self.collect()

    # -- reading for sinks ----------------------------------------------------------------------

    def read(self, sink: str, max_records: int, *, closed_only: bool = False) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` records after the sink's position (with ``closed_only``, only
        from closed segments), and the position after them. Does not move the position."""
        position = self._positions[sink]
        lines: list[bytes] = []
        for segment in self._segments:
            if segment.number < position.segment:
                continue
            if closed_only and not segment.closed:
                break
            offset = position.offset if segment.number == position.segment else 0
            index = position.index if segment.number == position.segment else 0
            if offset >= segment.size:
                if segment.closed:
                    position = Position(segment.number + 1)
                    continue
                break
            with open(segment.path, "rb") as f:
                f.seek(offset)
                chunk = f.read(segment.size - offset)
            end = chunk.rfind(b"\n") + 1
            taken = chunk[:end].split(b"\n")[:-1]
            want = max_records - len(lines)
            if len(taken) > want:
                taken = taken[:want]
                end = sum(len(line) + 1 for line in taken)
            lines.extend(taken)
            position = Position(segment.number, offset + end, index + len(taken))
            if len(lines) >= max_records:
                break
            if segment.closed and offset + end >= segment.size:
                position = Position(segment.number + 1)
            else:
                break
        return lines, position

    def closed_segment(self, sink: str) -> tuple[Path, int, Position] | None:
        """The next closed segment the sink has not received whole: its path, its records not
        yet delivered, and the position after it."""
        position = self._positions[sink]
        for segment in self._segments:
            if segment.number >= position.segment and segment.closed:
                return segment.path, self._undelivered(sink, segment), Position(segment.number + 1)
        return None

    def position(self, sink: str) -> Position:
        return self._positions[sink]

    def commit(self, sink: str, position: Position) -> None:
        """Record durably that the sink holds everything before ``position``."""
        path = self.dir / f"checkpoint.{sink}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"segment": position.segment, "offset": position.offset, "index": position.index}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)
        self._positions[sink] = position
        self.collect()

    # -- bounding -------------------------------------------------------------------------------

    def _delivered(self, segment: _Segment) -> bool:
        return all(self._positions[s].segment > segment.number for s in self.sinks)

    def collect(self) -> None:
        """Delete closed segments every sink holds, once past the retention (with no sinks the
        spool is the store: segments go only when older than a non-zero retention)."""
        now = self._now()
        keep: list[_Segment] = []
        for segment in self._segments:
            old_enough = now - segment.closed_at >= self.retention
            deletable = (
                segment.closed and old_enough and (self._delivered(segment) if self.sinks else self.retention > 0)
            )
            if deletable:
                self._delete(segment)
            else:
                keep.append(segment)
        self._segments = keep

    def _evict(self, needed: int) -> int:
        """drop_oldest: delete the oldest closed segments until ``needed`` bytes fit."""
        evicted = 0
        while self.total_bytes() + needed > self.max_bytes:
            oldest = next((s for s in self._segments if s.closed), None)
            if oldest is None:
                break
            lost = max((self._undelivered(sink, oldest) for sink in self.sinks), default=oldest.records)
            evicted += lost
            log.warning("spool full: evicted segment %s with %d undelivered records", oldest.path.name, lost)
            self._delete(oldest)
            self._segments.remove(oldest)
            for sink, position in self._positions.items():
                if position.segment <= oldest.number:
                    self._positions[sink] = Position(oldest.number + 1)
        return evicted

    def _undelivered(self, sink: str, segment: _Segment) -> int:
        position = self._positions[sink]
        if position.segment > segment.number:
            return 0
        if position.segment == segment.number:
            return segment.records - position.index
        return segment.records

    def _delete(self, segment: _Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    # -- status ---------------------------------------------------------------------------------

    def total_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def stats(self) -> SpoolStats:
        pending = {sink: sum(self._undelivered(sink, s) for s in self._segments) for sink in self.sinks}
        oldest: dict[str, float | None] = {}
        for sink in self.sinks:
            first = next((s for s in self._segments if self._undelivered(sink, s)), None)
            oldest[sink] = None if first is None else first.opened_at
        return SpoolStats(
            bytes=self.total_bytes(),
            segments=len(self._segments),
            records=sum(s.records for s in self._segments),
            pending=pending,
            oldest_pending=oldest,
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
