"""Studies as the worker sees them, for tests that drive the worker's code in-process: files
recorded the way the listener records them, a draft job for their instance set, and the
`StudyInput` a backend reads."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.instance_sets import instance_set_sha256
from shared.db.models import DraftJob, Instance, Series, Study, StudyState
from shared.inference.backend import InstanceInput, StudyInput


def index_files(
    session: Session, storage: Path, files: list[Path], *, storage_node: str | None = None
) -> Study:
    """Record files as the listener would (copy into storage under its layout
    `<study>/<series>/<sop>.dcm`, one row each, naming the node that holds them)."""
    study: Study | None = None
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study = study or session.scalar(
            select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID)
        )
        if study is None:
            study = Study(study_instance_uid=ds.StudyInstanceUID, state=StudyState.STABLE)
            session.add(study)
            session.flush()
        series = session.scalar(
            select(Series).where(Series.series_instance_uid == ds.SeriesInstanceUID)
        )
        if series is None:
            series = Series(
                study_id=study.id,
                series_instance_uid=ds.SeriesInstanceUID,
                modality=ds.Modality,
                series_number=ds.get("SeriesNumber"),
            )
            session.add(series)
            session.flush()
        relative = Path(ds.StudyInstanceUID) / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        (storage / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, storage / relative)
        data = path.read_bytes()
        session.add(
            Instance(
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                instance_number=ds.get("InstanceNumber"),
                file_path=str(relative),
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                storage_node=storage_node,
            )
        )
    assert study is not None
    session.flush()
    return study


def draft_job_for(session: Session, study: Study) -> DraftJob:
    uids = session.scalars(select(Instance.sop_instance_uid).where(Instance.study_id == study.id))
    uid_list = list(uids)
    job = DraftJob(
        study_id=study.id,
        instance_set_sha256=instance_set_sha256(uid_list),
        instance_count=len(uid_list),
    )
    session.add(job)
    session.flush()
    return job


def study_input(files: list[Path]) -> StudyInput:
    instances = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(
            InstanceInput(
                path,
                ds.SOPInstanceUID,
                ds.SOPClassUID,
                ds.SeriesInstanceUID,
                ds.Modality,
                ds.get("SeriesNumber"),
                ds.get("InstanceNumber"),
                None,
                None,
            )  # fmt: skip
        )
    return StudyInput(str(ds.StudyInstanceUID), instances)
