"""The directory fsync the listener leaves to the index writer's batch: names become durable
before their rows commit, once per directory per batch, and a batch whose directory cannot be
synced commits nothing (its C-STOREs are answered 0xA700). The sync runs while the batch's SQL
is sent (it overlaps), but the COMMIT waits for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.listener import indexer
from services.listener.dataset_header import read_header
from services.listener.indexer import IndexOutcome, IndexWriter, InstanceRecord
from services.listener.storage import ContentStore
from tests.listener.conftest import rows, wait_for
from tests.listener.ct_files import write_ct_study


def _records(store: ContentStore, files: list[Path]) -> list[InstanceRecord]:
    records = []
    for path in files:
        data = path.read_bytes()
        header = read_header(data)
        stored = store.write(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
            data,
            sync_directory=False,
        )
        records.append(
            InstanceRecord(
                header=header,
                stored=stored,
                transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian
                calling_ae_title="TEST",
                directory_to_sync=store.directory_of(stored),
            )
        )
    return records


def _index_as_one_batch(engine: Engine, records: list[InstanceRecord]) -> None:
    """All `records` queued before the writer starts (one batch), each stored."""
    writer = IndexWriter(engine.url.render_as_string(hide_password=False))
    futures = [writer.submit(r) for r in records]
    writer.start()
    try:
        assert [f.result(timeout=30) for f in futures] == [IndexOutcome.STORED] * len(records)
    finally:
        writer.stop()


def test_rows_commit_after_their_directory_sync(
    clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = write_ct_study(tmp_path / "in", 3)
    store = ContentStore(tmp_path / "storage", min_free_bytes=0)
    records = _records(store, study.files)
    series_directory = tmp_path / "storage" / study.study_uid / study.series_uid
    assert {Path(r.directory_to_sync) for r in records} == {series_directory}
    # Each sync the writer makes, with the instance rows committed at that moment.
    synced: list[tuple[Path, int]] = []
    real_fsync = indexer.fsync_directory

    def recording_fsync(directory: Path) -> None:
        synced.append((Path(directory), len(rows(clean_db, "SELECT id FROM instances"))))
        real_fsync(directory)

    monkeypatch.setattr(indexer, "fsync_directory", recording_fsync)
    _index_as_one_batch(clean_db, records)
    assert synced == [(series_directory, 0)]  # once for the batch, before any row committed
    assert len(rows(clean_db, "SELECT id FROM instances")) == 3


def test_a_directory_that_cannot_be_synced_commits_nothing(
    clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", 1)
    store = ContentStore(tmp_path / "storage", min_free_bytes=0)
    records = _records(store, study.files)
    gone = replace(records[0], directory_to_sync=tmp_path / "no-such-directory")
    writer = IndexWriter(clean_db.url.render_as_string(hide_password=False))
    writer.start()
    try:
        with pytest.raises(FileNotFoundError):
            writer.submit(gone).result(timeout=30)
    finally:
        writer.stop()
    assert rows(clean_db, "SELECT id FROM instances") == []


def _writer_state(engine: Engine) -> str | None:
    found = rows(
        engine,
        "SELECT state FROM pg_stat_activity"
        " WHERE application_name = 'medrega-listener' AND datname = current_database()",
    )
    return str(found[0][0]) if found else None


def test_the_commit_waits_for_a_sync_that_outlasts_the_sql(
    clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = write_ct_study(tmp_path / "in", 2)
    store = ContentStore(tmp_path / "storage", min_free_bytes=0)
    records = _records(store, study.files)
    seen: dict[str, object] = {}
    real_fsync = indexer.fsync_directory

    def slow_fsync(directory: Path) -> None:
        # Held until the batch's SQL is done and its transaction open: the sync overlaps it.
        seen["overlapped"] = wait_for(
            lambda: _writer_state(clean_db) == "idle in transaction", timeout_s=15
        )
        # Held a while longer: a writer that did not wait for the sync would commit meanwhile.
        seen["committed_while_syncing"] = wait_for(
            lambda: bool(rows(clean_db, "SELECT id FROM instances")), timeout_s=1.0
        )
        real_fsync(directory)

    monkeypatch.setattr(indexer, "fsync_directory", slow_fsync)
    _index_as_one_batch(clean_db, records)
    assert seen == {"overlapped": True, "committed_while_syncing": False}
    assert len(rows(clean_db, "SELECT id FROM instances")) == 2
