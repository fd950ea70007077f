"""The spool on its own: segments, recovery after a crash, per-sink progress, bounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from haproxy_ai.mirror.spool import Position, Spool, SpoolError


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(directory: Path, wall: Wall | None = None, **kwargs: object) -> Spool:
    options: dict[str, object] = {
        "sinks": ["db"],
        "segment_max_bytes": 1000,
        "segment_max_age": 60.0,
        "max_bytes": 100_000,
        "now": wall or Wall(),
    }
    options.update(kwargs)
    spool = Spool(directory, **options)  # type: ignore[arg-type]
    spool.open()
    return spool


def records(start: int, count: int, size: int = 50) -> list[bytes]:
    return [json.dumps({"id": f"r{i}", "pad": "x" * size}).encode() for i in range(start, start + count)]


def ids(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["id"] for line in lines]


def drain(spool: Spool, sink: str = "db", batch: int = 7) -> list[str]:
    """Read everything the sink has not received, committing as a shipper does."""
    out: list[str] = []
    while True:
        lines, after = spool.read(sink, batch)
        if not lines and after == spool.position(sink):
            return out
        spool.commit(sink, after)
        out.extend(ids(lines))


def test_records_come_back_in_order_across_rotations(tmp_path: Path) -> None:
    spool = make(tmp_path)
    for start in range(0, 60, 6):
        assert spool.append(records(start, 6)) == (6, 0, 0)
    assert spool.stats().segments > 3  # 1000-byte segments rotated
    assert drain(spool) == [f"r{i}" for i in range(60)]
    assert spool.stats().pending == {"db": 0}


def test_delivered_segments_are_deleted_and_undelivered_kept(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(records(0, 40))
    before = spool.stats().segments
    _lines, after = spool.read("db", 10)
    spool.commit("db", after)
    assert spool.stats().pending == {"db": 30}
    assert spool.stats().segments <= before
    drain(spool)
    spool.rotate()
    spool.collect()
    assert [p.name for p in tmp_path.glob("*.jsonl")] == []  # every closed segment was delivered


def test_no_sinks_means_the_spool_is_the_store(tmp_path: Path) -> None:
    spool = make(tmp_path, sinks=[])
    spool.append(records(0, 40))
    spool.rotate()
    spool.collect()
    kept = sorted(tmp_path.glob("*.jsonl"))
    assert kept and sum(p.read_bytes().count(b"\n") for p in kept) == 40


def test_retention_keeps_delivered_segments_for_a_while(tmp_path: Path) -> None:
    wall = Wall()
    spool = make(tmp_path, wall, retention=600.0)
    spool.append(records(0, 40))
    spool.rotate()
    drain(spool)
    assert list(tmp_path.glob("*.jsonl"))
    wall.now += 601
    spool.collect()
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_crash_leaves_a_torn_line_that_recovery_drops(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(records(0, 3))
    # Simulate a kill mid-write: a partial line after the last newline, no clean close.
    open_segment = next(tmp_path.glob("*.jsonl.open"))
    with open(open_segment, "ab") as f:
        f.write(b'{"id": "torn", "pad": "xx')
    os.close(spool._fd)  # the process died: no rotation, no checkpoint, lock released
    os.close(spool._lock_fd)
    again = make(tmp_path)
    assert not list(tmp_path.glob("*.jsonl.open"))[:-1]  # only the new open segment
    assert drain(again) == ["r0", "r1", "r2"]
    again.append(records(3, 2))
    assert drain(again) == ["r3", "r4"]


def test_checkpoints_survive_a_restart(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(records(0, 30))
    _lines, after = spool.read("db", 12)
    spool.commit("db", after)
    spool.close()
    again = make(tmp_path)
    assert drain(again) == [f"r{i}" for i in range(12, 30)]


def test_an_unreadable_checkpoint_means_reshipping_not_skipping(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(records(0, 10))
    spool.commit("db", spool.read("db", 5)[1])
    spool.close()
    (tmp_path / "checkpoint.db.json").write_text("{not json")
    again = make(tmp_path)
    assert drain(again) == [f"r{i}" for i in range(10)]


def test_sinks_progress_independently(tmp_path: Path) -> None:
    spool = make(tmp_path, sinks=["db", "backup"])
    spool.append(records(0, 20))
    assert drain(spool, "db") == [f"r{i}" for i in range(20)]
    assert spool.stats().pending == {"db": 0, "backup": 20}
    spool.rotate()
    spool.collect()
    assert list(tmp_path.glob("*.jsonl"))  # backup still needs them
    assert drain(spool, "backup") == [f"r{i}" for i in range(20)]


def test_closed_segments_for_segment_sinks(tmp_path: Path) -> None:
    spool = make(tmp_path, sinks=["backup"])
    spool.append(records(0, 5))
    assert spool.closed_segment("backup") is None  # nothing closed yet
    spool.rotate()
    item = spool.closed_segment("backup")
    assert item is not None
    path, count, after = item
    assert count == 5 and path.read_bytes().count(b"\n") == 5
    spool.commit("backup", after)
    assert spool.closed_segment("backup") is None
    assert spool.stats().pending == {"backup": 0}


def test_segments_rotate_by_age(tmp_path: Path) -> None:
    wall = Wall()
    spool = make(tmp_path, wall, segment_max_bytes=10**6)
    spool.append(records(0, 2))
    spool.tick()
    assert not list(tmp_path.glob("*.jsonl"))
    wall.now += 61
    spool.tick()
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


def test_full_spool_drops_newest_and_keeps_what_fits(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=65536, segment_max_bytes=8192)
    written = dropped = 0
    for start in range(0, 2000, 50):
        w, d, e = spool.append(records(start, 50))
        written, dropped = written + w, dropped + d
        assert e == 0
    assert dropped > 0 and written + dropped == 2000
    assert spool.total_bytes() <= 65536
    # The oldest records are the ones kept.
    assert drain(spool, batch=500)[:3] == ["r0", "r1", "r2"]


def test_full_spool_can_evict_oldest(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=65536, segment_max_bytes=8192, on_full="drop_oldest")
    written = evicted = 0
    for start in range(0, 2000, 50):
        w, d, e = spool.append(records(start, 50))
        assert d == 0
        written, evicted = written + w, evicted + e
    assert written == 2000 and evicted > 0
    kept = drain(spool, batch=500)
    assert kept[-1] == "r1999"  # the newest survive
    assert len(kept) + evicted == 2000  # every loss is counted


def test_one_process_per_spool(tmp_path: Path) -> None:
    make(tmp_path)
    with pytest.raises(SpoolError, match="in use by another"):
        make(tmp_path)


def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        make(blocker / "spool")


def test_position_of_a_deleted_segment_moves_to_the_next(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(records(0, 40))
    drain(spool)
    spool.close()
    (tmp_path / "checkpoint.db.json").write_text(json.dumps({"segment": 1, "offset": 0, "index": 0}))
    for p in tmp_path.glob("*.jsonl"):
        if p.name.startswith("0" * 19 + "1"):
            p.unlink()
    again = make(tmp_path)
    assert again.position("db").segment >= 2
    assert isinstance(again.position("db"), Position)
