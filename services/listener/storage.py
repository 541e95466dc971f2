"""Durable content storage for received instances: `<root>/<Study>/<Series>/<SOPInstance>.dcm`.

A file is written as a hidden `.part` file next to its final name, fsynced, renamed into place,
and its directory fsynced: a reader never sees a half-written instance, and the file survives a
crash before its row is committed (indexer.py). Each association thread does its own fsyncs:
concurrent fsyncs share the filesystem's journal commits, so they cost far less than the same
fsyncs made one after another by a single thread.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from shared.dicom.uids import is_valid_uid

# Suffix of files being written (hidden, next to their final name); never referenced by a row.
PARTIAL_SUFFIX = ".part"
# Series directories remembered as existing; bounded so a long-running listener does not grow.
_KNOWN_DIRS_MAX = 4096


@dataclass(frozen=True, slots=True)
class StoredFile:
    relative_path: str  # relative to the storage root, as recorded in `instances.file_path`
    size_bytes: int
    sha256: str


class ContentStore:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        root.mkdir(parents=True, exist_ok=True)
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
        """Write `data` durably: file fsynced, renamed into place, directory fsynced.
        Raises OSError on any storage failure, leaving no temp file."""
        relative = self.relative_path(study_uid, series_uid, sop_instance_uid)
        final_path = self.root / relative
        self._ensure_directory(final_path.parent)
        try:
            self._write_and_rename(final_path, data)
        except FileNotFoundError:
            # The series directory was removed behind our back (clean-up): recreate, retry once.
            with self._known_dirs_lock:
                self._known_dirs.pop(final_path.parent, None)
            self._ensure_directory(final_path.parent)
            self._write_and_rename(final_path, data)
        return StoredFile(
            relative_path=relative,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    @staticmethod
    def _write_and_rename(final_path: Path, data: bytes) -> None:
        # The temp file lives next to its final name: the rename stays inside one directory (one
        # directory fsync covers it) and no shared scratch directory serialises every writer.
        # pid + thread id make the name unique among concurrent writers of the same instance.
        temp_path = final_path.with_name(
            f".{final_path.name}.{os.getpid()}.{threading.get_ident()}{PARTIAL_SUFFIX}"
        )
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_path, final_path)
            fsync_directory(final_path.parent)  # the rename itself must survive a crash
        except BaseException:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass
            raise

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
