"""OBR-4 from the study: the listener indexes the Requested Procedure Code Sequence (0032,1064),
else the Procedure Code Sequence (0008,1032), and the ORU built from the stored row carries it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from services.listener.dataset_header import read_header
from shared.db.models import Study
from shared.hl7.er7 import read_er7
from shared.hl7.oru import OruInput, build_oru, study_procedure
from shared.reports.mapping import study_header
from tests.listener.conftest import storescu
from tests.listener.ct_files import TEST_UID_ROOT, ct_dataset
from tests.support.listener_process import listener_process


def _code(value: str, scheme: str, meaning: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if meaning is not None:
        item.CodeMeaning = meaning
    return item


def _part10(
    n: int, requested: list[Dataset] | None = None, performed: list[Dataset] | None = None
) -> bytes:
    root = f"{TEST_UID_ROOT}77.{n}"
    ds = ct_dataset(root, f"{root}.1", f"{root}.1.1", 1, size=8)
    if requested is not None:
        ds.RequestedProcedureCodeSequence = requested
    if performed is not None:
        ds.ProcedureCodeSequence = performed
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_requested_procedure_wins_over_the_performed_one() -> None:
    header = read_header(
        _part10(1, [_code("36643-5", "LN", "XR Chest 2 Views")], [_code("CT1", "99X", "CT")])
    )
    assert header.procedure_code == ("36643-5", "LN", "XR Chest 2 Views")


def test_the_procedure_code_sequence_is_the_fallback_and_unusable_items_are_skipped() -> None:
    too_long = _code("X" * 17, "LN", "not a short string")
    no_scheme = _code("71046", "", "no scheme")
    header = read_header(_part10(2, [too_long, no_scheme], [_code("CT1", "99CITY")]))
    assert header.procedure_code == ("CT1", "99CITY", None)
    assert read_header(_part10(3)).procedure_code is None


def test_the_listener_stores_it_and_the_oru_carries_it(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(_part10(4, [_code("24627-2", "LN", "CT Chest")]))
    study_uid = str(dcmread(path).StudyInstanceUID)
    with listener_process(storage_dir=storage_dir) as listener:
        assert storescu(listener, [path]).returncode == 0
    with Session(clean_db) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        header = study_header(study)
    assert (study.procedure_code_value, study.procedure_code_scheme) == ("24627-2", "LN")
    assert study.procedure_code_meaning == "CT Chest"
    data = OruInput(
        report_id=1,
        report_version=1,
        result_status="P",
        status_changed_at=study.created_at,
        observation_dtm="20261130",
        patient_id=header.patient_id or "",
        patient_name_pn=header.patient_name,
        patient_birth_date=None,
        patient_sex=None,
        accession_number=None,
        study_instance_uid=study_uid,
        lines=(),
        procedure=study_procedure(header),
    )
    obr = read_er7(build_oru(data, "ORU1V1")).segment("OBR")
    assert obr is not None and obr[4] == "24627-2^CT Chest^LN"
