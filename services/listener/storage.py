"""Durable content storage for received instances: `<root>/<Study>/<Series>/<SOPInstance>.dcm`.

A file is written as an unnamed file in its final directory (Linux `O_TMPFILE`), fsynced, then
linked to its final name (never renamed over it) and the directory fsynced: a reader never sees a
half-written instance, a crash before the link leaves nothing behind, and the file survives a
crash after it, before its row is committed (indexer.py). Where the filesystem has no
`O_TMPFILE` (or /proc is not mounted), the file is written as a hidden `.part` file next to its
final name, linked, and the temp name unlinked: the same guarantees, with two more directory
changes per instance and, after a crash, possibly a `.part` name left behind. Each association thread does its own file fsyncs: concurrent fsyncs share the
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

import errno
import functools
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.dicom.uids import is_valid_uid

logger = logging.getLogger(__name__)

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
        self._root = str(root)  # the hot path joins strings: pathlib was ~8 % of its Python time
        self.min_free_bytes = min_free_bytes
        root.mkdir(parents=True, exist_ok=True)
        # Directories we know exist and whose own entries are durable; saves a stat per store.
        # Their study and series UIDs were checked when they were first used.
        self._known_dirs: OrderedDict[str, None] = OrderedDict()
        self._known_dirs_lock = threading.Lock()  # one store serves every association thread
        self._mkdir_lock = threading.Lock()
        self.unnamed_files = unnamed_files_supported(self._root)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_free_space(self) -> bool:
        return self.free_bytes() >= self.min_free_bytes

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        for uid in (study_uid, series_uid, sop_instance_uid):
            _check_path_uid(uid)
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
        # A UID is used as a path component: anything but digits and dots could escape root.
        _check_path_uid(sop_instance_uid)
        series_dir = f"{study_uid}/{series_uid}"
        directory = f"{self._root}/{series_dir}"
        sha256 = hashlib.sha256(data).hexdigest()
        self._ensure_directory(directory, study_uid, series_uid)
        name = f"{sop_instance_uid}.dcm"
        try:
            name = self._write_new(directory, name, data, sha256, sync_directory)
        except FileNotFoundError:
            # The series directory was removed behind our back (clean-up): recreate, retry once.
            with self._known_dirs_lock:
                self._known_dirs.pop(directory, None)
            self._ensure_directory(directory, study_uid, series_uid)
            name = self._write_new(directory, name, data, sha256, sync_directory)
        return StoredFile(relative_path=f"{series_dir}/{name}", size_bytes=len(data), sha256=sha256)

    def directory_of(self, stored: StoredFile) -> str:
        """The directory whose fsync makes `stored`'s name durable."""
        return f"{self._root}/{stored.relative_path.rpartition('/')[0]}"

    def _write_new(
        self, directory: str, name: str, data: bytes, sha256: str, sync_directory: bool
    ) -> str:
        """The file name (in `directory`) that now holds `data` durably."""
        unnamed = self._write_unnamed(directory, name, data, sha256) if self.unnamed_files else None
        name = unnamed or self._write_named_temp(directory, name, data, sha256)
        # The link (or the existing name we answer with) must survive a crash: now, or in the
        # caller's batch (then, in the fallback, a crash may also leave the .part name behind).
        if sync_directory:
            fsync_directory(directory)
        return name

    def _write_unnamed(self, directory: str, name: str, data: bytes, sha256: str) -> str | None:
        """The name now holding `data`, or None where the filesystem takes no unnamed file after
        all (a mount the start-up check did not see): the store then switches to named temp
        files for good, rather than failing a syscall and logging on every instance."""
        fd = -1
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o640)
            _write_all(fd, data)
            os.fsync(fd)
            # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file.
            return _link_beside(
                f"/proc/self/fd/{fd}", directory, name, data, sha256, _link_following
            )
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED_FILES:
                raise
            self.unnamed_files = False
            logger.warning(
                "no unnamed file in %s (%s): the listener writes named temp files from now on",
                directory,
                exc.strerror,
            )
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _write_named_temp(directory: str, name: str, data: bytes, sha256: str) -> str:
        # The temp file lives next to its final name: the link stays inside one directory (one
        # directory fsync covers it) and no shared scratch directory serialises every writer.
        # pid + thread id make the name unique among concurrent writers of the same instance.
        temp_path = f"{directory}/.{name}.{os.getpid()}.{threading.get_ident()}{PARTIAL_SUFFIX}"
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            name = _link_beside(temp_path, directory, name, data, sha256, os.link)
            os.unlink(temp_path)
            return name
        except BaseException:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass
            raise

    def read(self, relative_path: str) -> bytes:
        return (self.root / relative_path).read_bytes()

    def _ensure_directory(self, directory: str, study_uid: str, series_uid: str) -> None:
        with self._known_dirs_lock:
            if directory in self._known_dirs:
                self._known_dirs.move_to_end(directory)
                return
        _check_path_uid(study_uid)
        _check_path_uid(series_uid)
        # Serialised so a second thread cannot use a directory whose entry is not yet fsynced.
        with self._mkdir_lock:
            with self._known_dirs_lock:
                if directory in self._known_dirs:
                    return
            os.makedirs(directory, exist_ok=True)
            # The directory's entry (and its parents') must be durable before any file in it is
            # acknowledged. Done on first use in this process even if it already existed: another
            # listener process may have created it and not yet fsynced its parent.
            ancestor = Path(directory).parent
            while True:
                fsync_directory(ancestor)
                if ancestor == self.root or ancestor == ancestor.parent:
                    break
                ancestor = ancestor.parent
            with self._known_dirs_lock:
                self._known_dirs[directory] = None
                if len(self._known_dirs) > _KNOWN_DIRS_MAX:
                    self._known_dirs.popitem(last=False)


@functools.cache
def _any_directory_fd() -> int:
    """An open directory fd, kept for the process's life (one, whatever the number of stores)."""
    return os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _link_following(source: str, target: str) -> None:
    """linkat(AT_SYMLINK_FOLLOW): CPython calls plain link(2), which does not follow the
    /proc/self/fd link, unless it is given a dir fd (ignored here: the source path is
    absolute)."""
    os.link(source, target, src_dir_fd=_any_directory_fd(), follow_symlinks=True)


# What open(O_TMPFILE) or the /proc/self/fd link give where a filesystem cannot do this.
_NO_UNNAMED_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.EXDEV})


def _check_path_uid(uid: str) -> None:
    if not is_valid_uid(uid):
        raise ValueError(f"not a valid UID, refusing it as a path component: {uid!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unnamed_files_supported(directory: str) -> bool:
    """Whether `directory`'s filesystem makes unnamed files (O_TMPFILE) that we can then link
    by /proc/self/fd (not on every filesystem, and not without /proc): the write sequence
    itself (write, fsync, link, directory fsync) on a probe file, removed after."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    probe = f"{directory}/.o_tmpfile_probe.{uuid.uuid4().hex}"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        logger.info("storage %s: no O_TMPFILE (%s); named temp files", directory, exc.strerror)
        return False
    try:
        _write_all(fd, b"probe")
        os.fsync(fd)
        _link_following(f"/proc/self/fd/{fd}", probe)
        fsync_directory(directory)
    except OSError as exc:
        logger.info("storage %s: unnamed files unusable (%s); named temp files", directory, exc)
        return False
    finally:
        os.close(fd)
    try:
        with open(probe, "rb") as linked:
            usable = linked.read() == b"probe"
    finally:
        os.unlink(probe)
    logger.info("storage %s: files written unnamed (O_TMPFILE), then linked", directory)
    return usable


def fsync_directory(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_beside(
    source: str,
    directory: str,
    name: str,
    data: bytes,
    sha256: str,
    link: Callable[[str, str], None],
) -> str:
    """Give the durable `source` (holding `data`) a name in `directory` and return it: the
    instance's own `name` if free or already holding `data`, else a name of this copy's own (16
    hex digits of its sha256; the full digest should two copies ever share those). Never replaces
    a file."""
    stem = name.removesuffix(".dcm")
    for candidate in (name, f"{stem}.{sha256[:16]}.dcm", f"{stem}.{sha256}.dcm"):
        target = f"{directory}/{candidate}"
        try:
            link(source, target)
            return candidate
        except FileExistsError:
            with open(target, "rb") as existing:
                if existing.read() == data:
                    return candidate
    raise FileExistsError(f"{name}: every name is taken by different bytes")
