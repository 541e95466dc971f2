"""The real path: storescu → Orthanc → routing plugin → our listener → PostgreSQL."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, text

from services.pacs.local_orthanc import RunningOrthanc, running_orthanc
from shared.config import Settings
from tests.pacs.conftest import (
    ROUTING_TIMEOUT_S,
    TEST_STABLE_AGE_S,
    orthanc_study_id,
    send_with_storescu,
    wait_until,
    wait_until_handled,
)
from tests.pacs.dicom_samples import new_study, write_ct_series, write_own_sr
from tests.support.listener_process import RunningListener, listener_process

LISTENER_STABLE_AGE_S = 1.0
STUDY_SIZE = 5


@pytest.fixture
def listener(clean_db: Engine, tmp_path: Path) -> Iterator[RunningListener]:
    # The listener admits only whitelisted calling AEs: Orthanc calls with its own DicomAet.
    with listener_process(
        storage_dir=tmp_path / "storage",
        stable_age_s=LISTENER_STABLE_AGE_S,
        allowed_aes=(Settings().pacs_ae_title, "MEDREGA_TEST"),
    ) as running:
        yield running


@pytest.fixture
def orthanc_to_listener(tmp_path: Path, listener: RunningListener) -> Iterator[RunningOrthanc]:
    with running_orthanc(
        tmp_path / "orthanc",
        Settings(),
        listener_host=listener.host,
        listener_port=listener.port,
        listener_ae_title=listener.ae_title,
        stable_age_s=TEST_STABLE_AGE_S,
    ) as orthanc:
        yield orthanc


def query(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql), params).all())


def instances_of(engine: Engine, study_uid: str) -> list[Any]:
    return query(
        engine,
        "SELECT i.sop_instance_uid, i.file_path, i.sha256 FROM instances i "
        "JOIN studies s ON s.id = i.study_id WHERE s.study_instance_uid = :uid",
        uid=study_uid,
    )


def draft_jobs_of(engine: Engine, study_uid: str) -> list[Any]:
    return query(
        engine,
        "SELECT j.id, j.instance_count FROM draft_jobs j JOIN studies s ON s.id = j.study_id "
        "WHERE s.study_instance_uid = :uid ORDER BY j.id",
        uid=study_uid,
    )


def test_study_through_orthanc_reaches_postgres_once_and_our_sr_never_comes_back(
    tmp_path: Path,
    clean_db: Engine,
    listener: RunningListener,
    orthanc_to_listener: RunningOrthanc,
) -> None:
    study = new_study()
    series_uid = generate_uid()
    files = write_ct_series(tmp_path / "study", study, STUDY_SIZE, series_instance_uid=series_uid)
    send_with_storescu([path for path, _ in files], orthanc_to_listener.dicom_port)
    study_id = orthanc_study_id(orthanc_to_listener, study.study_instance_uid)

    # 1. After Orthanc's stability, the whole study is on the listener's disk and in Postgres.
    wait_until_handled(orthanc_to_listener, study_id, times=1)
    rows = wait_until(
        lambda: (
            r if len(r := instances_of(clean_db, study.study_instance_uid)) == STUDY_SIZE else None
        ),
        ROUTING_TIMEOUT_S,
        "all instances indexed by the listener",
    )
    assert sorted(row.sop_instance_uid for row in rows) == sorted(uid for _, uid in files)
    for row in rows:
        stored = listener.storage_dir / row.file_path
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.sha256
    wait_until(
        lambda: len(draft_jobs_of(clean_db, study.study_instance_uid)) == 1,
        ROUTING_TIMEOUT_S,
        "the study's draft job",
    )

    # 2. Our SR stored into the PACS: the plugin's second pass sends nothing to the listener.
    sr_path, sr_uid = write_own_sr(tmp_path / "sr", study)
    send_with_storescu([sr_path], orthanc_to_listener.dicom_port)
    record = wait_until_handled(orthanc_to_listener, study_id, times=2)
    assert record["skipped_own_output"] == 1 and record["routed"] == STUDY_SIZE
    # Had the SR been routed, it would be indexed by now (the plugin's pass ends only after the
    # listener answered). Give the listener a stability period to show a second job if any.
    time.sleep(LISTENER_STABLE_AGE_S + 0.5)
    assert sr_uid not in {
        row.sop_instance_uid for row in instances_of(clean_db, study.study_instance_uid)
    }
    assert len(draft_jobs_of(clean_db, study.study_instance_uid)) == 1

    # 3. A late image is routed on its own and leads to a re-draft for the new instance set.
    [(late_path, late_uid)] = write_ct_series(
        tmp_path / "late", study, 1, series_instance_uid=series_uid, first_instance_number=50
    )
    send_with_storescu([late_path], orthanc_to_listener.dicom_port)
    record = wait_until_handled(orthanc_to_listener, study_id, times=3)
    assert record["routed"] == STUDY_SIZE + 1
    wait_until(
        lambda: (
            late_uid
            in {r.sop_instance_uid for r in instances_of(clean_db, study.study_instance_uid)}
        ),
        ROUTING_TIMEOUT_S,
        "the late instance in Postgres",
    )
    jobs = wait_until(
        lambda: j if len(j := draft_jobs_of(clean_db, study.study_instance_uid)) == 2 else None,
        ROUTING_TIMEOUT_S,
        "a second draft job for the grown instance set",
    )
    assert [job.instance_count for job in jobs] == [STUDY_SIZE, STUDY_SIZE + 1]
