"""The draft task's body against real Postgres and the real model: exactly one draft per
instance set, re-drafts, 'not applicable', signed studies left alone."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from services.worker.drafting import run_draft_job
from shared.config import get_settings
from shared.db.models import (
    Delivery,
    DraftJob,
    DraftJobState,
    Report,
    ReportStatus,
    Study,
    StudyState,
)
from shared.inference.onnx_backend import OnnxBackend
from shared.reports.deliveries import pacs_targets
from tests.support.study_rows import draft_job_for, index_files
from tests.worker.conftest import phantom


@pytest.fixture(scope="module")
def backend() -> OnnxBackend:
    return OnnxBackend(get_settings().model_path)


def _ultrasound(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((128, 128), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_supported_study_gets_one_report_with_findings_and_deliveries(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    written = phantom("cxr", tmp_path / "in", abnormal=True)
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        job = draft_job_for(session, index_files(session, tmp_path / "storage", written.files))
    outcome = run_draft_job(clean_db, job.id, backend, tmp_path / "storage")
    assert outcome.state == DraftJobState.DONE and outcome.report_id is not None
    with factory() as session:
        report = session.get(Report, outcome.report_id)
        assert report is not None and report.version == 1 and report.domain == "cxr"
        assert report.findings and report.impression_en and report.impression_zh
        # the SR, the GSPS and KOS of the key images (an abnormal phantom has some), the ORU
        pacs = {kind for kind, _ in pacs_targets(report)}
        assert "sr" in pacs and {d.kind for d in report.deliveries} == pacs | {"hl7"}
        done = session.get(DraftJob, job.id)
        assert done is not None and set(done.timings or {}) >= {"inference_ms", "total_ms"}
    # The same message delivered again changes nothing.
    again = run_draft_job(clean_db, job.id, backend, tmp_path / "storage")
    assert again.state == DraftJobState.DONE and again.report_id is None
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 1


def test_two_workers_on_one_job_draft_it_once(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    written = phantom("chest_ct", tmp_path / "in", slices=12, max_side=256)
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        job = draft_job_for(session, index_files(session, tmp_path / "storage", written.files))
    outcomes = []
    threads = [
        threading.Thread(
            target=lambda: outcomes.append(
                run_draft_job(clean_db, job.id, backend, tmp_path / "storage")
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for o in outcomes if o.report_id is not None) == 1
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 1
        report = session.scalars(select(Report)).one()
        # one version's messages, once: its PACS objects and its ORU
        assert session.scalar(select(func.count()).select_from(Delivery)) == (
            len(pacs_targets(report)) + 1
        )


def test_unsupported_modality_is_not_applicable_and_changes_nothing_else(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        study = index_files(session, tmp_path / "storage", [_ultrasound(tmp_path / "us.dcm")])
        job = draft_job_for(session, study)
    outcome = run_draft_job(clean_db, job.id, backend, tmp_path / "storage")
    assert outcome.state == DraftJobState.NOT_APPLICABLE
    with factory() as session:
        done = session.get(DraftJob, job.id)
        assert done is not None and "modality US is not supported" in (done.reason or "")
        assert session.get(Study, study.id).state == StudyState.NOT_APPLICABLE  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Report)) == 0


def test_late_instances_supersede_the_job_and_a_redraft_supersedes_the_draft(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    written = phantom("abd_ct", tmp_path / "in", slices=10, max_side=256)
    first, late = written.files[:-2], written.files[-2:]
    storage = tmp_path / "storage"
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        study = index_files(session, storage, first)
        stale_job = draft_job_for(session, study)
        index_files(session, storage, late[:1])  # arrives before the worker runs
    assert run_draft_job(clean_db, stale_job.id, backend, storage).state == "superseded"

    with factory.begin() as session:
        job = draft_job_for(session, session.get(Study, study.id))  # type: ignore[arg-type]
    assert run_draft_job(clean_db, job.id, backend, storage).state == DraftJobState.DONE
    with factory.begin() as session:
        index_files(session, storage, late[1:])
        redraft = draft_job_for(session, session.get(Study, study.id))  # type: ignore[arg-type]
    assert run_draft_job(clean_db, redraft.id, backend, storage).state == DraftJobState.DONE
    with factory() as session:
        reports = session.scalars(select(Report).order_by(Report.version)).all()
        assert [(r.version, r.status) for r in reports] == [
            (1, ReportStatus.SUPERSEDED),
            (2, ReportStatus.DRAFT),
        ]
        # each version's PACS objects and ORU
        assert session.scalar(select(func.count()).select_from(Delivery)) == sum(
            len(pacs_targets(r)) + 1 for r in reports
        )
