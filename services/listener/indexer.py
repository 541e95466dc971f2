"""Record received instances in PostgreSQL with group commit.

Every association thread makes its file's bytes durable itself (storage.py: file fsyncs,
concurrent across associations), then hands the row to one `IndexWriter` thread per process and
waits. The writer takes whatever has queued up meanwhile as one batch, fsyncs each directory the
batch's files were linked into once (their names become durable: one journal commit for the
batch instead of one per instance), writes all rows in one
transaction (one statement inserts the instances and updates their studies; study and series ids
are cached), commits, and only then releases the waiting handlers, which answer 0x0000. Under load
one WAL flush covers many instances; an idle listener pays the same latency as a per-instance
commit. A row is committed only after its file is durable, so the database never points at a file
a crash could lose. (The reverse can happen: a file whose row failed to commit was answered
0xA700; it is an orphan until the sender's retry overwrites it and records it.)

Duplicates (same SOP Instance UID received again):
- same bytes: success, nothing written (storage.py found the same bytes under the name);
- different bytes: the first copy stands. Reports reference it, so its row and its file never
  change (a trigger refuses any update of an instance's stored bytes). The new copy, stored
  durably beside it by storage.py, gets an `instance_copies` row (once per distinct copy: a
  re-send of the same copy is idempotent), the study is flagged `conflicting_instances` and an
  `audit_log` row ("instance_conflict", both sha256) records the event; the C-STORE is answered
  0x0000, as the copy is durable. No re-draft: the draft is made from the first copy. These are
  rare and take the slow path, one instance at a time, inside the batch's transaction.

Late input: new input instances re-draft a study that already has a draft job (`needs_redraft`),
unless it is signed or has a signed/corrected report. Then the signed report stands, the new
instances are recorded, and the study is flagged `new_images_after_signoff` for the radiologist,
with one `audit_log` row when the flag goes up (slow path, the study row already locked by the
batch). Our own output (an SR back from the PACS) is not input.

Lock order: every batch inserts studies, then series, then instances (in UID order), then updates
studies; concurrent batches of several processes may still deadlock on study rows in rare cases,
and a deadlock is retried (TRANSIENT_RETRIES).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from services.listener.dataset_header import InstanceHeader
from services.listener.storage import StoredFile, fsync_directory
from shared.config import get_settings
from shared.db.models import ReportStatus, StudyState
from shared.db.session import libpq_url
from shared.log_safety import printable

logger = logging.getLogger(__name__)

# Enough to cover every association of a busy process in one commit, small enough to keep a
# transaction (and the study-row locks it holds) short.
MAX_BATCH = 128
# A deadlock or serialization failure is retried this many times before rows are tried one by one.
TRANSIENT_RETRIES = 3


class IndexOutcome(enum.StrEnum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed
    CONFLICT = "conflict"  # same SOP Instance UID, different bytes: kept beside the first


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    header: InstanceHeader
    stored: StoredFile
    transfer_syntax_uid: str
    calling_ae_title: str | None
    # Where the file's name still has to be made durable (fsynced) before its row commits.
    directory_to_sync: str | Path | None = None


_SELECT_STUDY = "SELECT id FROM studies WHERE study_instance_uid = %(uid)s"
_INSERT_STUDY = """
INSERT INTO studies (
    study_instance_uid, patient_id, patient_name, patient_birth_date, patient_sex,
    accession_number, study_date, study_time, study_description, referring_physician,
    specific_character_set, procedure_code_value, procedure_code_scheme, procedure_code_meaning,
    state, critical, needs_redraft, instance_count,
    first_received_at, last_received_at, created_at, updated_at)
VALUES (
    %(uid)s, %(patient_id)s, %(patient_name)s, %(patient_birth_date)s, %(patient_sex)s,
    %(accession_number)s, %(study_date)s, %(study_time)s, %(study_description)s,
    %(referring_physician)s, %(specific_character_set)s, %(procedure_code_value)s,
    %(procedure_code_scheme)s, %(procedure_code_meaning)s, %(state)s, false, false, 0,
    now(), now(), now(), now())
ON CONFLICT (study_instance_uid) DO NOTHING
RETURNING id
"""
_SELECT_SERIES = "SELECT id FROM series WHERE series_instance_uid = %(uid)s"
_INSERT_SERIES = """
INSERT INTO series (
    study_id, series_instance_uid, modality, series_number, series_description,
    body_part_examined, is_own_output, created_at)
VALUES (
    %(study_id)s, %(uid)s, %(modality)s, %(series_number)s, %(series_description)s,
    %(body_part_examined)s, %(is_own_output)s, now())
ON CONFLICT (series_instance_uid) DO NOTHING
RETURNING id
"""
_BATCH_COLUMNS = (
    "series_id", "study_id", "uid", "sop_class_uid", "transfer_syntax_uid", "instance_number",
    "rows", "columns", "number_of_frames", "file_path", "size_bytes", "sha256", "calling_ae_title",
)  # fmt: skip
# The JSON key of each column (the recordset's column names; the params call the UID "uid").
_BATCH_KEYS = {key: ("sop_instance_uid" if key == "uid" else key) for key in _BATCH_COLUMNS}
# The per-study part of the batch: instance counts, arrival time, the re-draft mark (never under a
# signed report) and, among studies with a final report, those whose flag must go up (returned).
_INSERT_BATCH = """
WITH incoming AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS t(
        series_id bigint, study_id bigint, sop_instance_uid text, sop_class_uid text,
        transfer_syntax_uid text, instance_number int, rows int, columns int,
        number_of_frames int, file_path text, size_bytes bigint, sha256 text,
        calling_ae_title text, is_input boolean)
),
inserted AS (
    INSERT INTO instances (
        series_id, study_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,
        instance_number, rows, columns, number_of_frames, file_path, size_bytes, sha256,
        calling_ae_title, storage_node, received_at)
    SELECT series_id, study_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,
        instance_number, rows, columns, number_of_frames, file_path, size_bytes, sha256,
        calling_ae_title, %(storage_node)s::text, now()
    FROM incoming ORDER BY sop_instance_uid
    ON CONFLICT (sop_instance_uid) DO NOTHING
    RETURNING sop_instance_uid, study_id
),
per_study AS (
    SELECT i.study_id, count(*) AS new_instances, bool_or(u.is_input) AS new_input,
        EXISTS (SELECT 1 FROM reports r WHERE r.study_id = i.study_id
                AND r.status = ANY(%(final_statuses)s::text[])) AS has_final
    FROM inserted i
    JOIN (SELECT sop_instance_uid, bool_or(is_input) AS is_input FROM incoming GROUP BY 1) u
        USING (sop_instance_uid)
    GROUP BY i.study_id
),
touched AS (
    UPDATE studies s SET
        instance_count = s.instance_count + p.new_instances,
        last_received_at = CASE WHEN p.new_input THEN now() ELSE s.last_received_at END,
        needs_redraft = s.needs_redraft
            OR (p.new_input AND s.state NOT IN (%(receiving)s, %(signed)s) AND NOT p.has_final),
        updated_at = now()
    FROM per_study p
    WHERE s.id = p.study_id
    RETURNING s.id,
        p.new_input AND NOT s.new_images_after_signoff
            AND (s.state = %(signed)s OR p.has_final) AS after_signoff
)
SELECT sop_instance_uid, NULL::bigint FROM inserted
UNION ALL
SELECT NULL, id FROM touched WHERE after_signoff
"""
# Re-checked here, on a fresh snapshot, with the study row locked by the batch's UPDATE: exactly
# one transaction raises the flag, and only that one writes the audit row.
_FLAG_NEW_IMAGES_AFTER_SIGNOFF = """
UPDATE studies s SET new_images_after_signoff = true, updated_at = now()
WHERE s.id = %(id)s AND NOT s.new_images_after_signoff
  AND (s.state = %(signed)s OR EXISTS (SELECT 1 FROM reports r WHERE r.study_id = s.id
                                       AND r.status = ANY(%(final_statuses)s::text[])))
RETURNING s.id
"""
_SELECT_INSTANCE = """
SELECT id, sha256, study_id FROM instances WHERE sop_instance_uid = %(uid)s
"""
# A re-send of a copy already kept is idempotent (unique instance_id, sha256).
_INSERT_COPY = """
INSERT INTO instance_copies (
    instance_id, file_path, size_bytes, sha256, transfer_syntax_uid, calling_ae_title,
    storage_node, received_at)
VALUES (%(instance_id)s, %(file_path)s, %(size_bytes)s, %(sha256)s, %(transfer_syntax_uid)s,
    %(calling_ae_title)s, %(storage_node)s, now())
ON CONFLICT (instance_id, sha256) DO NOTHING
RETURNING id
"""
_FLAG_CONFLICTING = """
UPDATE studies SET conflicting_instances = true, updated_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND NOT conflicting_instances
"""
# Machine-made audit rows (no user); details carry UIDs and digests only, never PHI.
_INSERT_AUDIT = """
INSERT INTO audit_log (at, action, object_type, object_id, study_id, details)
VALUES (now(), %(action)s, %(object_type)s, %(object_id)s, %(study_id)s, %(details)s)
"""
_FINAL_STATUSES = [ReportStatus.SIGNED.value, ReportStatus.CORRECTED.value]


# Studies and series are created once and then looked up for each of their instances; the ids
# are cached per process (bounded) to save two round trips per instance.
ID_CACHE_MAX = 20_000


class IdCache:
    def __init__(self) -> None:
        self.studies: dict[str, int] = {}
        self.series: dict[str, int] = {}

    def clear(self) -> None:
        self.studies.clear()
        self.series.clear()

    def remember(self, table: dict[str, int], uid: str, row_id: int) -> None:
        if len(table) >= ID_CACHE_MAX:
            table.clear()
        table[uid] = row_id


class BatchIndexer:
    """The SQL of one batch, on a connection the caller owns (and commits).

    `cache` may only hold ids of committed rows: the caller clears it when a batch rolls back.
    """

    def __init__(self, connection: psycopg.Connection[Any], cache: IdCache | None = None) -> None:
        self.connection = connection
        self.cache = cache or IdCache()
        self._created: list[tuple[dict[str, int], str, int]] = []  # cached after commit only

    def remember_created(self) -> None:
        """Call after COMMIT: ids created by this batch become cacheable."""
        for table, uid, row_id in self._created:
            self.cache.remember(table, uid, row_id)
        self._created.clear()

    def index(self, records: list[InstanceRecord]) -> list[IndexOutcome]:
        cursor = self.connection.cursor()
        study_ids: dict[str, int] = {}
        for record in sorted(records, key=lambda r: r.header.study_instance_uid):
            uid = record.header.study_instance_uid
            if uid not in study_ids:
                study_ids[uid] = self._ensure_study(cursor, record.header)
        series_ids: dict[str, int] = {}
        for record in sorted(records, key=lambda r: r.header.series_instance_uid):
            uid = record.header.series_instance_uid
            if uid not in series_ids:
                study_id = study_ids[record.header.study_instance_uid]
                series_ids[uid] = self._ensure_series(cursor, study_id, record.header)

        order = sorted(range(len(records)), key=lambda i: records[i].header.sop_instance_uid)
        params = [
            self._instance_params(
                records[i],
                study_ids[records[i].header.study_instance_uid],
                series_ids[records[i].header.series_instance_uid],
            )
            for i in order
        ]
        # One round trip inserts every new instance and updates its study; duplicates (conflicts)
        # are left out and handled one by one below (rare), as are studies signed off (rarer).
        # The batch as one JSON document: psycopg dumps it in C, where 14 array parameters cost
        # ~7 % of the listener's Python time (py-spy --gil) to dump element by element.
        batch = [
            {
                **{_BATCH_KEYS[key]: p[key] for key in _BATCH_COLUMNS},
                "is_input": not records[i].header.is_own_output,
            }
            for i, p in zip(order, params, strict=True)
        ]
        inserted_uids: set[str] = set()
        signed_off: list[int] = []
        for uid, study_id in cursor.execute(
            _INSERT_BATCH,
            {
                "batch": Jsonb(batch),
                "storage_node": get_settings().node_name,
                "receiving": StudyState.RECEIVING.value,
                "signed": StudyState.SIGNED.value,
                "final_statuses": _FINAL_STATUSES,
            },
        ).fetchall():
            if uid is not None:
                inserted_uids.add(uid)
            else:
                signed_off.append(int(study_id))

        outcomes: dict[int, IndexOutcome] = {}
        conflicting_studies: set[int] = set()
        for position, instance_params in zip(order, params, strict=True):
            record = records[position]
            uid = record.header.sop_instance_uid
            if uid in inserted_uids:
                inserted_uids.discard(uid)  # a second copy in this batch is a duplicate
                outcomes[position] = IndexOutcome.STORED
                continue
            outcomes[position] = self._record_duplicate(
                cursor, record, instance_params, conflicting_studies
            )
        if conflicting_studies:
            cursor.execute(_FLAG_CONFLICTING, {"ids": sorted(conflicting_studies)})
        for study_id in sorted(signed_off):
            self._flag_new_images_after_signoff(cursor, study_id)
        return [outcomes[i] for i in range(len(records))]

    def _ensure_study(self, cursor: psycopg.Cursor[Any], header: InstanceHeader) -> int:
        # The study row takes its attributes (the procedure code among them) from the first
        # instance that creates it, as for the patient and accession.
        cached = self.cache.studies.get(header.study_instance_uid)
        if cached is not None:
            return cached
        params = {"uid": header.study_instance_uid}
        row = cursor.execute(_SELECT_STUDY, params).fetchone()
        if row is None:
            row = cursor.execute(
                _INSERT_STUDY,
                {
                    **params,
                    "patient_id": header.patient_id,
                    "patient_name": header.patient_name,
                    "patient_birth_date": header.patient_birth_date,
                    "patient_sex": header.patient_sex,
                    "accession_number": header.accession_number,
                    "study_date": header.study_date,
                    "study_time": header.study_time,
                    "study_description": header.study_description,
                    "referring_physician": header.referring_physician,
                    "specific_character_set": header.specific_character_set,
                    **_procedure_params(header),
                    "state": StudyState.RECEIVING.value,
                },
            ).fetchone()
            if row is None:  # another transaction created it meanwhile
                row = cursor.execute(_SELECT_STUDY, params).fetchone()
        assert row is not None
        self._created.append((self.cache.studies, header.study_instance_uid, int(row[0])))
        return int(row[0])

    def _ensure_series(
        self, cursor: psycopg.Cursor[Any], study_id: int, header: InstanceHeader
    ) -> int:
        cached = self.cache.series.get(header.series_instance_uid)
        if cached is not None:
            return cached
        params = {"uid": header.series_instance_uid}
        row = cursor.execute(_SELECT_SERIES, params).fetchone()
        if row is None:
            row = cursor.execute(
                _INSERT_SERIES,
                {
                    **params,
                    "study_id": study_id,
                    "modality": header.modality,
                    "series_number": header.series_number,
                    "series_description": header.series_description,
                    "body_part_examined": header.body_part_examined,
                    "is_own_output": header.is_own_output,
                },
            ).fetchone()
            if row is None:
                row = cursor.execute(_SELECT_SERIES, params).fetchone()
        assert row is not None
        self._created.append((self.cache.series, header.series_instance_uid, int(row[0])))
        return int(row[0])

    @staticmethod
    def _instance_params(record: InstanceRecord, study_id: int, series_id: int) -> dict[str, Any]:
        header, stored = record.header, record.stored
        return {
            "uid": header.sop_instance_uid,
            "series_id": series_id,
            "study_id": study_id,
            "sop_class_uid": header.sop_class_uid,
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "instance_number": header.instance_number,
            "rows": header.rows,
            "columns": header.columns,
            "number_of_frames": header.number_of_frames,
            "file_path": stored.relative_path,
            "size_bytes": stored.size_bytes,
            "sha256": stored.sha256,
            "calling_ae_title": record.calling_ae_title,
            # Whose storage directory holds the file (scale-out: other nodes fetch it there).
            "storage_node": get_settings().node_name,
        }

    def _record_duplicate(
        self,
        cursor: psycopg.Cursor[Any],
        record: InstanceRecord,
        params: dict[str, Any],
        conflicting_studies: set[int],
    ) -> IndexOutcome:
        """A SOP Instance UID we have: the same bytes change nothing; different bytes are kept
        as a copy beside the first (whose row and file stay as they are), flagged and audited."""
        existing = cursor.execute(_SELECT_INSTANCE, params).fetchone()
        assert existing is not None
        instance_id, first_sha256, study_id = int(existing[0]), existing[1], int(existing[2])
        if first_sha256 == record.stored.sha256:
            return IndexOutcome.DUPLICATE
        copy = cursor.execute(_INSERT_COPY, {**params, "instance_id": instance_id}).fetchone()
        if copy is None:
            return IndexOutcome.DUPLICATE  # this very copy is already kept
        conflicting_studies.add(study_id)
        details: dict[str, Any] = {
            "first_sha256": first_sha256,
            "copy_sha256": record.stored.sha256,
            "copy_file_path": record.stored.relative_path,
            "calling_ae_title": record.calling_ae_title,
        }
        if params["study_id"] != study_id:  # the copy names another study (and series)
            conflicting_studies.add(params["study_id"])
            details["copy_study_id"] = params["study_id"]
        cursor.execute(
            _INSERT_AUDIT,
            {
                "action": "instance_conflict",
                "object_type": "instance",
                "object_id": record.header.sop_instance_uid,
                "study_id": study_id,
                "details": Jsonb(details),
            },
        )
        logger.warning(
            "instance %s received again with different content: first copy kept, this one stored "
            "beside it as %s",
            printable(record.header.sop_instance_uid),
            printable(record.stored.relative_path),
        )
        return IndexOutcome.CONFLICT

    @staticmethod
    def _flag_new_images_after_signoff(cursor: psycopg.Cursor[Any], study_id: int) -> None:
        flagged = cursor.execute(
            _FLAG_NEW_IMAGES_AFTER_SIGNOFF,
            {"id": study_id, "signed": StudyState.SIGNED.value, "final_statuses": _FINAL_STATUSES},
        ).fetchone()
        if flagged is None:
            return
        cursor.execute(
            _INSERT_AUDIT,
            {
                "action": "new_images_after_signoff",
                "object_type": "study",
                "object_id": str(study_id),
                "study_id": study_id,
                "details": Jsonb({"source": "listener"}),
            },
        )
        logger.info("study %d: new images after sign-off, flagged for the radiologist", study_id)


def _fsync_directories(directories: list[str | Path]) -> None:
    for directory in directories:
        fsync_directory(directory)


@dataclass(slots=True)
class _Pending:
    record: InstanceRecord
    future: Future[IndexOutcome]


def _procedure_params(header: InstanceHeader) -> dict[str, str | None]:
    value, scheme, meaning = header.procedure_code or (None, None, None)
    return {
        "procedure_code_value": value,
        "procedure_code_scheme": scheme,
        "procedure_code_meaning": meaning,
    }


class IndexWriter:
    """One thread per process that commits the rows of whatever instances are waiting."""

    def __init__(self, database_url: str, max_batch: int = MAX_BATCH) -> None:
        self._conninfo = libpq_url(database_url)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._connection: psycopg.Connection[Any] | None = None
        self._ids = IdCache()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        # One thread: a batch's directory fsyncs overlap its SQL, never another batch's syncs.
        self._directory_syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dir-sync")

    def start(self) -> None:
        self._connect()  # fail at start, not at the first C-STORE, when the database is down
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        # A writer still stuck (a hung fsync) must not hang the shutdown as well.
        self._directory_syncer.shutdown(wait=not self._thread.is_alive(), cancel_futures=True)
        if self._connection is not None:
            self._connection.close()

    def submit(self, record: InstanceRecord) -> Future[IndexOutcome]:
        future: Future[IndexOutcome] = Future()
        self._queue.put(_Pending(record, future))
        return future

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._conninfo, application_name="medrega-listener")
        return self._connection

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                self._make_durable(batch)
            except Exception as exc:  # never let the writer thread die: fail the batch instead
                logger.exception("index writer failed a batch of %d", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    def _make_durable(self, batch: list[_Pending]) -> None:
        # The files' names first: no row may commit pointing at a name a crash could lose. The
        # directory fsyncs (a journal commit, ~0.3-3 ms here) run on their own thread while this
        # one sends the batch's SQL; the COMMIT waits for them. A failed sync fails the whole
        # batch (rolled back; each C-STORE is answered 0xA700 and the sender retries).
        directories = list(
            dict.fromkeys(
                p.record.directory_to_sync for p in batch if p.record.directory_to_sync is not None
            )
        )
        synced = self._directory_syncer.submit(_fsync_directories, directories)
        names_durable = synced.result  # raises the sync's OSError, if any
        try:
            outcomes = self._commit_with_retries(
                [pending.record for pending in batch], before_commit=names_durable
            )
        except psycopg.Error:
            if len(batch) == 1:
                raise
            # One bad row must not fail the others: fall back to one transaction per instance.
            logger.exception("batch of %d failed; retrying instances one by one", len(batch))
            for pending in batch:
                try:
                    (outcome,) = self._commit_with_retries(
                        [pending.record], before_commit=names_durable
                    )
                except Exception as exc:
                    logger.exception(
                        "indexing instance %s failed",
                        printable(pending.record.header.sop_instance_uid),
                    )
                    pending.future.set_exception(exc)
                else:
                    pending.future.set_result(outcome)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.future.set_result(outcome)

    def _commit_with_retries(
        self, records: list[InstanceRecord], before_commit: Callable[[], object]
    ) -> list[IndexOutcome]:
        for attempt in range(TRANSIENT_RETRIES + 1):
            connection = self._connect()
            indexer = BatchIndexer(connection, self._ids)
            try:
                outcomes = indexer.index(records)
                before_commit()
                connection.commit()
                indexer.remember_created()
                return outcomes
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                connection.rollback()
                if attempt == TRANSIENT_RETRIES:
                    raise
            except psycopg.errors.ForeignKeyViolation:
                # A cached study/series was deleted meanwhile (an administrator's clean-up).
                connection.rollback()
                self._ids.clear()
                if attempt == TRANSIENT_RETRIES:
                    raise
            except psycopg.OperationalError:
                # Connection lost (database restarted): reconnect, with a short pause.
                self._discard_connection()
                if attempt == TRANSIENT_RETRIES:
                    raise
                time.sleep(0.2 * (attempt + 1))
            except BaseException:
                self._rollback_quietly()
                raise
        raise AssertionError("unreachable")

    def _rollback_quietly(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.rollback()
        except psycopg.Error:
            self._discard_connection()

    def _discard_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
