"""Durable content storage for received instances: `<root>/<Study>/<Series>/<SOPInstance>.dcm`.

A file is written under `<root>/.incoming/`, fsynced, then renamed into place, so a reader never
sees a half-written instance. The rename itself becomes durable only when its directory is
fsynced; `ContentStore.sync_directories` does that for a whole batch at once (see indexer.py),
before any of the batch is answered 0x0000.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from shared.dicom.uids import is_valid_uid

INCOMING_DIR_NAME = ".incoming"
# Series directories remembered as existing; bounded so a long-running listener does not grow.
_KNOWN_DIRS_MAX = 4096


@dataclass(frozen=True, slots=True)
class StoredFile:
    relative_path: str  # relative to the storage root, as recorded in `instances.file_path`
    directory: Path  # the directory whose entry must be fsynced to make the rename durable
    size_bytes: int
    sha256: str


class ContentStore:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._incoming = root / INCOMING_DIR_NAME
        self._incoming.mkdir(parents=True, exist_ok=True)
        # Directories we know exist and whose own entries are durable; saves a stat per store.
        self._known_dirs: OrderedDict[Path, None] = OrderedDict()
        self._known_dirs_lock = threading.Lock()  # one store serves every association thread
        self._mkdir_lock = threading.Lock()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_free_space(self) -> bool:
        return self.free_bytes() >= self.min_free_bytes

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        for uid in (study_uid, series_uid, sop_instance_uid):
            # A UID is used as a path component: anything but digits and dots could escape root.
            if not is_valid_uid(uid):
                raise ValueError(f"not a valid UID, refusing it as a path component: {uid!r}")
        return f"{study_uid}/{series_uid}/{sop_instance_uid}.dcm"

    def write(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes
    ) -> StoredFile:
        """Write `data` durably (file fsynced, renamed into place; the rename is durable only
        after `sync_directories`). Raises OSError on any storage failure, leaving no temp file."""
        relative = self.relative_path(study_uid, series_uid, sop_instance_uid)
        final_path = self.root / relative
        self._ensure_directory(final_path.parent)
        fd, temp_name = tempfile.mkstemp(dir=self._incoming, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.replace(temp_name, final_path)
            except FileNotFoundError:
                # The series directory was removed behind our back (clean-up): recreate, retry.
                with self._known_dirs_lock:
                    self._known_dirs.pop(final_path.parent, None)
                self._ensure_directory(final_path.parent)
                os.replace(temp_name, final_path)
        except BaseException:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
            raise
        return StoredFile(
            relative_path=relative,
            directory=final_path.parent,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def read(self, relative_path: str) -> bytes:
        return (self.root / relative_path).read_bytes()

    def _ensure_directory(self, directory: Path) -> None:
        with self._known_dirs_lock:
            if directory in self._known_dirs:
                self._known_dirs.move_to_end(directory)
                return
        # Serialised so a second thread cannot use a directory whose entry is not yet fsynced.
        with self._mkdir_lock:
            with self._known_dirs_lock:
                if directory in self._known_dirs:
                    return
            directory.mkdir(parents=True, exist_ok=True)
            # The directory's entry (and its parents') must be durable before any file in it is
            # acknowledged. Done on first use in this process even if it already existed: another
            # listener process may have created it and not yet fsynced its parent.
            ancestor = directory.parent
            while True:
                fsync_directory(ancestor)
                if ancestor == self.root or ancestor == ancestor.parent:
                    break
                ancestor = ancestor.parent
            with self._known_dirs_lock:
                self._known_dirs[directory] = None
                if len(self._known_dirs) > _KNOWN_DIRS_MAX:
                    self._known_dirs.popitem(last=False)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directories(directories: set[Path]) -> None:
    """Make the renames into these directories durable (one fsync per directory, not per file)."""
    for directory in sorted(directories):
        fsync_directory(directory)
