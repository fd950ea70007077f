"""The file sink: a copy of every closed spool segment in a second directory (a backup volume)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
from pathlib import Path

from .base import SinkError

__all__ = ["FileSink"]


class FileSink:
    """Writes ``<segment>.jsonl.gz`` (or ``.jsonl``) atomically: temporary file, fsync, rename,
    directory fsync. Delivering the same segment twice rewrites the same file, so redelivery
    never duplicates records."""

    def __init__(self, *, name: str, directory: str | Path, compress: bool = True) -> None:
        self.name = name
        self.dir = Path(directory)
        self.compress = compress

    async def write_segment(self, path: Path) -> None:
        await asyncio.to_thread(self._copy, path)

    def _copy(self, path: Path) -> None:
        target = self.dir / (path.name + (".gz" if self.compress else ""))
        tmp = self.dir / f".{target.name}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as source, open(tmp, "wb") as raw:
                if self.compress:
                    # mtime=0: the same segment always compresses to the same bytes.
                    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
                        shutil.copyfileobj(source, out, 1024 * 1024)
                else:
                    shutil.copyfileobj(source, raw, 1024 * 1024)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, target)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkError(f"file sink {self.name}: cannot write {target.name}: {exc.strerror or exc}") from None

    async def aclose(self) -> None:
        return None
