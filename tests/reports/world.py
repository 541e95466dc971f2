"""Rows for lifecycle tests: a study, running draft jobs, a radiologist, a model result.

The model's output is input data here (the lifecycle is under test, not the model), so drafts
are a fixed grounded result; the end-to-end tests in tests/worker run the real model.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.instance_sets import instance_set_sha256
from shared.db.models import (
    DraftJob,
    DraftJobState,
    Instance,
    Report,
    Series,
    Study,
    StudyState,
    User,
)
from shared.reports.domain import (
    DraftResult,
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
)

_counter = itertools.count(1)


def make_study(session: Session) -> Study:
    n = next(_counter)
    study = Study(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.99.{n}",
        patient_id=f"P{n}",
        patient_name="Wang^Hui=王^慧",
        accession_number=f"A{n}",
        state=StudyState.STABLE,
    )
    session.add(study)
    session.flush()
    return study


def make_user(session: Session, username: str = "lwei") -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(
            username=username, password_hash="x", full_name="Li Wei", dicom_person_name="Li^Wei"
        )
        session.add(user)
        session.flush()
    return user


def running_job(session: Session, study: Study, instance_set: str = "first") -> DraftJob:
    """A draft job the worker has claimed (state 'running'), for the named instance set."""
    job = DraftJob(
        study_id=study.id,
        instance_set_sha256=hashlib.sha256(instance_set.encode()).hexdigest(),
        instance_count=1,
        state=DraftJobState.RUNNING,
        started_at=datetime.now(UTC),
    )
    session.add(job)
    session.flush()
    return job


def model_result(abnormal: bool = True) -> DraftResult:
    image = ImageRef("1.2.826.0.1.3680043.8.498.99.1000", "1.2.840.10008.5.1.4.1.1.1.1")
    findings = [
        RegionFindingResult(
            region_code="right_lung", region_name_en="right lung", region_name_zh="右肺",
            finding_code="pleural_effusion" if abnormal else None,
            finding_name_en="pleural effusion" if abnormal else None,
            finding_name_zh="胸腔积液" if abnormal else None,
            probability=0.9, image=image, box=PixelBox(10, 10, 60, 80),
            sentence_en="Right pleural effusion.", sentence_zh="右侧胸腔积液。",
        ),
        RegionFindingResult(
            region_code="heart", region_name_en="heart", region_name_zh="心脏",
            finding_code=None, finding_name_en=None, finding_name_zh=None, probability=0.95,
            image=image, box=PixelBox(40, 40, 90, 90),
            sentence_en="The heart is normal.", sentence_zh="心脏未见异常。",
        ),
    ]  # fmt: skip
    return DraftResult(
        domain="cxr",
        applicable=True,
        reason=None,
        model_name="medrega-ref",
        model_version="test",
        backend="onnx",
        findings=findings,
        sentences=[
            ReportSentence("findings", findings[0].sentence_en, findings[0].sentence_zh, [0]),
            ReportSentence("findings", findings[1].sentence_en, findings[1].sentence_zh, [1]),
            ReportSentence("impression", "Right pleural effusion.", "右侧胸腔积液。", [0]),
        ],
    )


def versions(session: Session, study_id: int) -> list[tuple[int, str, int | None]]:
    """(version, status, author) of every version of the study, in order."""
    return [
        (r.version, r.status, r.author_user_id)
        for r in session.scalars(
            select(Report).where(Report.study_id == study_id).order_by(Report.version)
        )
    ]


def add_instance(session: Session, study: Study, uid: str) -> None:
    """An input image row (no file: the lifecycle reads only which images the study holds)."""
    series = session.scalar(select(Series).where(Series.study_id == study.id))
    if series is None:
        series = Series(
            study_id=study.id, series_instance_uid=f"{study.study_instance_uid}.1", modality="DX"
        )
        session.add(series)
        session.flush()
    session.add(
        Instance(series_id=series.id, study_id=study.id, sop_instance_uid=uid,
                 sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                 file_path=f"{uid}.dcm", size_bytes=1, sha256="0" * 64)
    )  # fmt: skip
    session.flush()


def job_for_held_images(session: Session, study: Study) -> DraftJob:
    """A running draft job for exactly the images the study holds now."""
    uids = session.scalars(select(Instance.sop_instance_uid).where(Instance.study_id == study.id))
    job = DraftJob(
        study_id=study.id, instance_set_sha256=instance_set_sha256(uids), instance_count=1,
        state=DraftJobState.RUNNING, started_at=datetime.now(UTC),
    )  # fmt: skip
    session.add(job)
    session.flush()
    return job
