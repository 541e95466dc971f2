"""A size-bounded, least-recently-used cache of fetched files on this machine's own disk.

Files are content-addressed (`<root>/<sha256[:2]>/<sha256>.dcm`): a name is never reused for
other bytes, so a hit needs no revalidation, and several processes of one machine (draft and
interactive workers, the web app) may share one cache directory. A file appears under its name
only complete and fsynced (written aside, then `os.replace`d). A hit refreshes the file's mtime;
when the total passes the bound, the oldest files go first, down to 90 % of it (so a full cache
does not rescan on every insert). An evicted file a reader already opened stays readable (POSIX
unlink); one evicted by another process between "fetched" and "opened" is unreadable for that
read, so the bound should hold several studies.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shared.storage.refs import SHA256

_PARTIAL_DIR = ".partial"
_STALE_PARTIAL_S = 3600.0  # a temp file this old belonged to a process that died mid-write
_LOW_WATER = 0.9
_RESCAN_EVERY = 64  # inserts; other processes' files are counted at least this often


class FileCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache bound must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self._partial = root / _PARTIAL_DIR
        self._partial.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks = [threading.Lock() for _ in range(64)]
        self._inserts = 0
        self._total = self._scan_and_evict(keep=None)
        self._remove_stale_partials()

    def path_of(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256[:80]!r}")
        return self.root / sha256[:2] / f"{sha256}.dcm"

    def get(self, sha256: str, size_bytes: int) -> Path | None:
        """The cached file, its recency refreshed; None when absent (or not the expected size)."""
        path = self.path_of(sha256)
        try:
            if path.stat().st_size != size_bytes:
                return None
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def get_or_put(self, sha256: str, size_bytes: int, write: Callable[[BinaryIO], None]) -> Path:
        """The cached file, else `write` fills a new one (it raises to refuse the bytes)."""
        # One writer per key in this process: two threads wanting one file fetch it once.
        with self._key_locks[int(sha256[:8], 16) % len(self._key_locks)]:
            hit = self.get(sha256, size_bytes)
            if hit is not None:
                return hit
            return self._put(sha256, size_bytes, write)

    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def _put(self, sha256: str, size_bytes: int, write: Callable[[BinaryIO], None]) -> Path:
        final = self.path_of(sha256)
        final.parent.mkdir(exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self._partial, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        with self._lock:
            self._total += size_bytes
            self._inserts += 1
            due = self._total > self.max_bytes or self._inserts % _RESCAN_EVERY == 0
        if due:
            total = self._scan_and_evict(keep=final)
            with self._lock:
                self._total = total
        return final

    def _scan_and_evict(self, keep: Path | None) -> int:
        """Count every cached file (any process's), evict the oldest past the bound; the total."""
        entries: list[tuple[float, int, str]] = []
        for bucket in os.scandir(self.root):
            if not bucket.is_dir() or bucket.name == _PARTIAL_DIR:
                continue
            for entry in os.scandir(bucket.path):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return total
        target = int(self.max_bytes * _LOW_WATER)
        for _, size, path in sorted(entries):
            if total <= target:
                break
            if keep is not None and path == str(keep):
                continue  # the file just asked for is about to be read
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                total -= size
        return total

    def _remove_stale_partials(self) -> None:
        cutoff = time.time() - _STALE_PARTIAL_S
        for entry in os.scandir(self._partial):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
