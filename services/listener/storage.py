"""Durable content storage for received instances: `<root>/<Study>/<Series>/<SOPInstance>.dcm`.

A file is written as a hidden `.part` file next to its final name, fsynced, hard-linked to its
final name (never renamed over it), the temp name unlinked and the directory fsynced: a reader
never sees a half-written instance, and the file survives a crash before its row is committed
(indexer.py). Each association thread does its own file fsyncs: concurrent fsyncs share the
filesystem's journal commits, so they cost far less than the same fsyncs made one after another
by a single thread. The directory fsync that makes the final name durable may be left to the
caller (`sync_directory=False`): the listener's index writer does it once per directory for a
whole group-commit batch, before the batch's rows commit (indexer.py). A directory fsync forces
a journal commit; one per instance was most of a single association's time on ext4.

Bytes once under a final name are never overwritten or deleted here (invariant: an acknowledged
instance is never lost or silently replaced). `os.link` fails when the name exists, so a second
arrival of the same SOP Instance UID cannot replace the first even in a race:
- same bytes: nothing is written; the existing name is returned (its directory fsynced again,
  in case another thread linked it a moment ago and has not yet made that durable);
- different bytes: the copy is stored beside it as `<SOPInstance>.<first 16 hex of its
  sha256>.dcm`, made durable the same way; the indexer records it as an instance copy.
A crash at any point leaves at most an unreferenced `.part` file or an unreferenced (durable)
final file, never a changed one.
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
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        data: bytes,
        *,
        sync_directory: bool = True,
    ) -> StoredFile:
        """Write `data` durably under its instance's name, or beside the different bytes already
        there (see the module docstring). Raises OSError on any storage failure, leaving no temp
        file and nothing changed under a final name. With `sync_directory=False` the bytes are
        durable but the name is not until the caller fsyncs `directory_of(...)`."""
        relative = self.relative_path(study_uid, series_uid, sop_instance_uid)
        final_path = self.root / relative
        sha256 = hashlib.sha256(data).hexdigest()
        self._ensure_directory(final_path.parent)
        try:
            name = self._write_new(final_path, data, sha256, sync_directory)
        except FileNotFoundError:
            # The series directory was removed behind our back (clean-up): recreate, retry once.
            with self._known_dirs_lock:
                self._known_dirs.pop(final_path.parent, None)
            self._ensure_directory(final_path.parent)
            name = self._write_new(final_path, data, sha256, sync_directory)
        if name != final_path.name:
            relative = str(Path(relative).with_name(name))
        return StoredFile(
            relative_path=relative,
            size_bytes=len(data),
            sha256=sha256,
        )

    def directory_of(self, stored: StoredFile) -> Path:
        """The directory whose fsync makes `stored`'s name durable."""
        return (self.root / stored.relative_path).parent

    @staticmethod
    def _write_new(final_path: Path, data: bytes, sha256: str, sync_directory: bool) -> str:
        """The file name (in `final_path`'s directory) that now holds `data` durably."""
        # The temp file lives next to its final name: the link stays inside one directory (one
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
            name = _link_beside(temp_path, final_path, data, sha256)
            os.unlink(temp_path)
            # The link (or the existing name we answer with) must survive a crash: now, or in the
            # caller's batch (then a crash may also leave the .part name behind, unreferenced).
            if sync_directory:
                fsync_directory(final_path.parent)
            return name
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


def _link_beside(temp_path: Path, final_path: Path, data: bytes, sha256: str) -> str:
    """Give the durable `temp_path` (holding `data`) a final name and return it: the instance's
    own name if free or already holding `data`, else a name of this copy's own (16 hex digits of
    its sha256; the full digest should two copies ever share those). Never replaces a file."""
    stem = final_path.name.removesuffix(".dcm")
    for name in (final_path.name, f"{stem}.{sha256[:16]}.dcm", f"{stem}.{sha256}.dcm"):
        target = final_path.with_name(name)
        try:
            os.link(temp_path, target)
            return name
        except FileExistsError:
            if target.read_bytes() == data:
                return name
    raise FileExistsError(f"{final_path.name}: every name is taken by different bytes")
