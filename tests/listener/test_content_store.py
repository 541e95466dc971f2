"""ContentStore: the same guarantees whether a file is written unnamed (O_TMPFILE, then linked)
or as a named `.part` file (the fallback where the filesystem or /proc does not allow that)."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from services.listener import storage
from services.listener.storage import ContentStore, unnamed_files_supported

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _store(root: Path, unnamed: bool) -> ContentStore:
    store = ContentStore(root, min_free_bytes=0)
    if unnamed and not store.unnamed_files:
        pytest.skip(f"{root}: this filesystem has no O_TMPFILE")
    store.unnamed_files = unnamed
    return store


def _entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_unnamed_files_are_used_where_the_filesystem_allows_them(tmp_path: Path) -> None:
    # ext4, xfs, btrfs and tmpfs have O_TMPFILE (this machine's /tmp: ext4). A CPython link(2),
    # which does not follow /proc/self/fd, would make this probe fail.
    assert unnamed_files_supported(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
@pytest.mark.parametrize(
    ("study", "series", "sop"),
    [("..", SERIES, SOP), (STUDY, "../..", SOP), (STUDY, SERIES, "../x"), ("1/2", SERIES, SOP),
     ("", SERIES, SOP), (STUDY, SERIES, "1.2\n3")],
)  # fmt: skip
def test_a_uid_that_is_not_a_uid_never_becomes_a_path(
    tmp_path: Path, unnamed: bool, study: str, series: str, sop: str
) -> None:
    store = _store(tmp_path / "root", unnamed)
    store.write(STUDY, SERIES, SOP + ".9", b"a valid one first: its directory is known")
    with pytest.raises(ValueError, match="not a valid UID"):
        store.write(study, series, sop, b"x")
    assert _entries(tmp_path) == [f"root/{STUDY}/{SERIES}/{SOP}.9.dcm"]


def test_a_directory_that_refuses_unnamed_files_takes_a_named_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount the start-up check did not see (O_TMPFILE refused there): the instance is still
    stored, through the fallback, rather than refused."""
    store = _store(tmp_path, unnamed=True)
    real_open = os.open

    def no_tmpfile(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(storage.os, "open", no_tmpfile)
    stored = store.write(STUDY, SERIES, SOP, b"stored anyway")
    assert (tmp_path / stored.relative_path).read_bytes() == b"stored anyway"
    assert _entries(tmp_path) == [stored.relative_path]
    assert not store.unnamed_files  # switched once: no failing syscall per instance after this


def test_without_o_tmpfile_the_named_temp_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE")
    assert not ContentStore(tmp_path, min_free_bytes=0).unnamed_files


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_write_new_duplicate_and_copy(tmp_path: Path, unnamed: bool) -> None:
    store = _store(tmp_path, unnamed)
    first = store.write(STUDY, SERIES, SOP, b"first")
    assert first.relative_path == f"{STUDY}/{SERIES}/{SOP}.dcm"
    assert first.sha256 == hashlib.sha256(b"first").hexdigest()
    assert (tmp_path / first.relative_path).read_bytes() == b"first"
    assert store.directory_of(first) == str(tmp_path / STUDY / SERIES)

    again = store.write(STUDY, SERIES, SOP, b"first")
    assert again == first

    copy = store.write(STUDY, SERIES, SOP, b"second")
    digest = hashlib.sha256(b"second").hexdigest()
    assert copy.relative_path == f"{STUDY}/{SERIES}/{SOP}.{digest[:16]}.dcm"
    assert (tmp_path / first.relative_path).read_bytes() == b"first"  # never replaced
    assert (tmp_path / copy.relative_path).read_bytes() == b"second"
    assert _entries(tmp_path) == sorted([first.relative_path, copy.relative_path])


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_a_series_directory_removed_behind_our_back_is_recreated(
    tmp_path: Path, unnamed: bool
) -> None:
    store = _store(tmp_path, unnamed)
    store.write(STUDY, SERIES, SOP, b"a")
    for path in (tmp_path / STUDY / SERIES).iterdir():
        path.unlink()
    (tmp_path / STUDY / SERIES).rmdir()
    stored = store.write(STUDY, SERIES, SOP + ".1", b"b")
    assert (tmp_path / stored.relative_path).read_bytes() == b"b"


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_a_failed_link_leaves_no_file(
    tmp_path: Path, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, unnamed)

    def failing_link(source: str, target: str, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "link", failing_link)
    with pytest.raises(OSError):
        store.write(STUDY, SERIES, SOP, b"x")
    assert _entries(tmp_path) == []


def _write_and_die_before_the_link(root: str, unnamed: bool) -> None:
    store = ContentStore(Path(root), min_free_bytes=0)
    store.unnamed_files = unnamed

    def die(source: str, target: str, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    storage.os.link = die  # type: ignore[assignment]
    store.write(STUDY, SERIES, SOP, b"bytes that were fsynced but never named")


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_a_writer_killed_between_fsync_and_link(tmp_path: Path, unnamed: bool) -> None:
    """SIGKILL after the bytes are durable, before they have a name: an unnamed file vanishes
    with its process; the fallback leaves its hidden .part name (documented), never a final
    name."""
    child = multiprocessing.get_context("fork").Process(
        target=_write_and_die_before_the_link, args=(str(tmp_path), unnamed)
    )
    child.start()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    left = _entries(tmp_path)
    if unnamed:
        assert left == []
    else:
        assert len(left) == 1 and left[0].endswith(".part") and "/." in left[0]


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_the_bytes_are_fsynced_before_they_get_their_name(
    tmp_path: Path, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, unnamed)
    events: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def recording_fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def recording_link(source: str, target: str, **kwargs: object) -> None:
        events.append("link")
        real_link(source, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage.os, "fsync", recording_fsync)
    monkeypatch.setattr(storage.os, "link", recording_link)
    store.write(STUDY, SERIES, SOP, b"x", sync_directory=True)
    assert events[-3:] == ["fsync file", "link", "fsync dir"]
