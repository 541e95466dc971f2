"""Retention of received images: delete the files of old, finished studies from our storage.

    python -m ops.retention [--dry-run]          one pass with MEDREGA_RETENTION_* (Settings)
    python -m ops.retention --every 3600         a pass every hour (the Compose `retention` service)
    python -m ops.retention --check              the database and storage answer (healthcheck)

The PACS keeps the images; our storage holds copies for drafting and review. A study's files may
go only when nothing here can need them again: the study is signed, its current report version
is final (signed or corrected: no amendment under way), no draft job is waiting or running, no
delivery is pending, in flight or retrying, and no images arrived after sign-off or with
conflicting bytes (someone must look at those). Anything else — every study not yet signed — is
never touched, whatever its age or the storage's size.

Two limits (either may be unset): `MEDREGA_RETENTION_MAX_AGE_DAYS` (since the study's last image
arrived) and `MEDREGA_RETENTION_MAX_STORAGE_BYTES` (the oldest deletable studies go first until
the storage is under it; if only protected studies remain, it stays over and says so). The rows
stay: the report, its findings and the audit trail are records; only image files are deleted,
and each purge leaves an audit row (`images_purged`, by `retention`, with files and bytes).
Each study is purged under its lifecycle lock with the rule checked again, so a report being
amended at that moment keeps its images.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db.advisory_locks import lock_study
from shared.db.models import AuditEvent
from shared.db.session import get_engine

log = logging.getLogger("retention")

# A study whose files nothing here needs again (see the module docstring).
_DELETABLE = """
    s.state = 'signed'
    AND NOT s.new_images_after_signoff
    AND NOT s.conflicting_instances
    AND (SELECT r.status FROM reports r WHERE r.study_id = s.id AND r.status <> 'superseded'
         ORDER BY r.version DESC LIMIT 1) IN ('signed', 'corrected')
    AND NOT EXISTS (SELECT 1 FROM draft_jobs j WHERE j.study_id = s.id
                    AND j.state IN ('pending', 'queued', 'running'))
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.study_id = s.id
                    AND d.state IN ('pending', 'in_flight', 'retrying', 'failed'))
"""


@dataclass(frozen=True)
class RetentionPolicy:
    max_age: timedelta | None = None
    max_storage_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        days = settings.retention_max_age_days
        return cls(
            max_age=timedelta(days=days) if days is not None else None,
            max_storage_bytes=settings.retention_max_storage_bytes,
        )


@dataclass
class RetentionResult:
    purged_study_ids: list[int] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    storage_bytes_after: int | None = None
    over_limit: bool = False  # the size limit could not be met without touching protected studies


def deletable_studies(session: Session, received_before: datetime | None = None) -> list[int]:
    """Ids of the studies whose files may go, oldest last image first."""
    where = _DELETABLE + (" AND s.last_received_at < :before" if received_before else "")
    rows = session.execute(
        text(f"SELECT s.id FROM studies s WHERE {where} ORDER BY s.last_received_at, s.id"),
        {"before": received_before} if received_before else {},
    )
    return [int(row.id) for row in rows]


def storage_usage(root: Path) -> int:
    """Bytes of the files under `root` (what the size limit is about)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.stat(os.path.join(directory, name), follow_symlinks=False).st_size
            except FileNotFoundError:  # removed meanwhile
                continue
    return total


def _study_files(session: Session, study_id: int) -> Iterator[str]:
    rows = session.execute(
        text(
            "SELECT file_path FROM instances WHERE study_id = :id UNION ALL "
            "SELECT c.file_path FROM instance_copies c JOIN instances i ON i.id = c.instance_id "
            "WHERE i.study_id = :id"
        ),
        {"id": study_id},
    )
    for row in rows:
        yield str(row.file_path)


def study_file_usage(session: Session, storage_dir: Path, study_id: int) -> tuple[int, int]:
    """(files, bytes) of a study still on disk (what purging it would free)."""
    files = size = 0
    for relative in _study_files(session, study_id):
        try:
            size += (storage_dir / relative).stat().st_size
        except FileNotFoundError:
            continue
        files += 1
    return files, size


def purge_study(session: Session, storage_dir: Path, study_id: int) -> tuple[int, int]:
    """Delete a deletable study's files (its lifecycle lock held, the rule checked again);
    returns (files, bytes) deleted. Call inside a transaction."""
    lock_study(session, study_id)
    # FOR SHARE: the listener does not take the lifecycle lock, but every batch it stores for a
    # study updates the study's row (and raises its flags there). Holding the row makes a batch
    # that commits after this check wait until the purge has committed, and one that committed
    # before it fail the check; the files listed next are then exactly those checked.
    still = session.execute(
        text(f"SELECT 1 FROM studies s WHERE s.id = :id AND {_DELETABLE} FOR SHARE OF s"),
        {"id": study_id},
    ).first()
    if still is None:
        return 0, 0
    root = storage_dir.resolve()
    files = size = 0
    directories: set[Path] = set()
    for relative in _study_files(session, study_id):
        path = (root / relative).resolve()
        if not path.is_relative_to(root):  # a row must never point us outside the storage
            raise ValueError(f"study {study_id}: file path outside the storage: {relative!r}")
        try:
            size += path.stat().st_size
            path.unlink()
        except FileNotFoundError:  # purged before
            continue
        files += 1
        directories.update(p for p in path.parents if p.is_relative_to(root) and p != root)
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()  # only when empty: a file arriving meanwhile stays
        except OSError:
            pass
    if files:
        # The record of why a signed study's images are no longer here (the PACS keeps them),
        # in the same transaction as the rule's check.
        session.add(
            AuditEvent(
                action="images_purged",
                object_type="study",
                object_id=str(study_id),
                study_id=study_id,
                username="retention",
                details={"files": files, "bytes": size},
            )
        )
    return files, size


def apply_retention(
    engine: Engine,
    storage_dir: Path,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """One pass: the age limit, then the size limit (oldest deletable studies first)."""
    now = now or datetime.now(UTC)
    result = RetentionResult()

    def purge(study_id: int) -> int:
        # A dry run deletes nothing, so the size pass would meet the age pass's studies again.
        if study_id in result.purged_study_ids:
            return 0
        with Session(engine) as session, session.begin():
            if dry_run:
                files, size = study_file_usage(session, storage_dir, study_id)
            else:
                files, size = purge_study(session, storage_dir, study_id)
        if files:
            result.purged_study_ids.append(study_id)
            result.files += files
            result.bytes += size
        return size

    if policy.max_age is not None:
        with Session(engine) as session:
            old = deletable_studies(session, received_before=now - policy.max_age)
        for study_id in old:
            purge(study_id)
    if policy.max_storage_bytes is not None:
        # What the age pass freed (a dry run: would free) no longer counts.
        usage = storage_usage(storage_dir) - (result.bytes if dry_run else 0)
        if usage > policy.max_storage_bytes:
            with Session(engine) as session:
                candidates = deletable_studies(session)
            for study_id in candidates:
                if usage <= policy.max_storage_bytes:
                    break
                usage -= purge(study_id)
        result.storage_bytes_after = usage
        result.over_limit = usage > policy.max_storage_bytes
        if result.over_limit and not dry_run:
            log.warning(
                "storage holds %d bytes, over the limit of %d, and every remaining study is "
                "still needed (unsigned, pending or flagged): nothing more may be deleted",
                usage,
                policy.max_storage_bytes,
            )
    return result


def _check(settings: Settings) -> int:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1 FROM studies LIMIT 1"))
    if not settings.storage_dir.is_dir():
        print(f"storage directory missing: {settings.storage_dir}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.retention", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    parser.add_argument("--every", type=float, metavar="S", help="repeat every S seconds")
    parser.add_argument("--check", action="store_true", help="exit 0 when DB and storage answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    if args.check:
        return _check(settings)
    policy = RetentionPolicy.from_settings(settings)
    if policy.max_age is None and policy.max_storage_bytes is None:
        log.info("no retention limits set (MEDREGA_RETENTION_*): images are kept")
    while True:
        try:
            result = apply_retention(
                get_engine(), settings.storage_dir, policy, dry_run=args.dry_run
            )
        except Exception:
            # A database restart or one unreadable file must not end the hourly service: nothing
            # supervises it under ops/stack.sh, and storage would fill without a word.
            log.exception("retention pass failed")
            if args.every is None:
                return 1
        else:
            log.info(
                "%s %d studies, %d files, %d bytes%s",
                "would purge" if args.dry_run else "purged",
                len(result.purged_study_ids),
                result.files,
                result.bytes,
                f"; storage now {result.storage_bytes_after} bytes"
                if result.storage_bytes_after is not None
                else "",
            )
            if args.every is None:
                return 0
        time.sleep(args.every)


if __name__ == "__main__":
    raise SystemExit(main())
