"""Bad input never corrupts a record: person names as the names they hold, log lines unforgeable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine

from tests.listener.conftest import c_store, rows, storescu
from tests.listener.ct_files import write_ct_study
from tests.support.listener_process import RunningListener

FORGED = "FORGED ERROR services.listener: admin password reset"


def test_person_names_with_several_values_and_hl7_delimiters_are_stored_as_dicom_writes_them(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    """Stored as DICOM's own value (`\\` between names): what the file and the SR built from it
    carry, never Python's list repr "['Doe^John', ...]"; HL7 delimiters are plain characters."""
    study = write_ct_study(tmp_path / "in", count=1)
    path = study.files[0]
    dataset = dcmread(path)
    dataset.PatientName = ["Doe^John", "O|Brien^Mary~Ann&Co"]
    dataset.ReferringPhysicianName = "Smith^Anne\\Jones^Bob"
    dataset.StudyDescription = "CT chest | abdomen ~ pelvis & more"
    dataset.save_as(path, enforce_file_format=True)
    assert storescu(listener, [path]).returncode == 0

    (study_row,) = rows(
        clean_db,
        "SELECT patient_name, referring_physician, study_description FROM studies "
        "WHERE study_instance_uid = :uid",
        uid=study.study_uid,
    )
    assert study_row.patient_name == "Doe^John\\O|Brien^Mary~Ann&Co"
    assert study_row.referring_physician == "Smith^Anne\\Jones^Bob"
    assert study_row.study_description == "CT chest | abdomen ~ pelvis & more"


@pytest.fixture
def loose_client_validation() -> Iterator[None]:
    """Let our test SCU put what a hostile peer would on the wire: any AE title, files sent as
    they are (the request's UIDs from the file meta, no decode)."""
    validator = _config.VALIDATORS["AE"]
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.VALIDATORS["AE"] = lambda value: (True, "")
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.VALIDATORS["AE"] = validator
    _config.STORE_SEND_CHUNKED_DATASET = chunked


def under_request_uid(source: Path, target: Path, sop_instance_uid: str) -> Path:
    """`source`'s dataset under a file meta (so a C-STORE request) naming `sop_instance_uid`."""
    dataset = dcmread(source)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, dataset)
    target.write_bytes(buffer.getvalue() + body.getvalue())
    return target


def assert_no_forged_line(log: str) -> None:
    assert FORGED in log  # the value was logged (escaped), not dropped
    for line in log.splitlines():
        assert not line.startswith(("FORGED", "\u2028FORGED")), line
        assert "\u2028" not in line and "\r" not in line, line


def test_peer_values_cannot_forge_a_log_line(
    listener: RunningListener, clean_db: Engine, tmp_path: Path, loose_client_validation: None
) -> None:
    study = write_ct_study(tmp_path / "in", count=1)
    # A request UID carrying a line break (64 characters at most, as pynetdicom checks).
    hostile_uid = f"1.2\n{FORGED}"[:64]
    request = under_request_uid(study.files[0], tmp_path / "hostile.dcm", hostile_uid)
    assert c_store(listener, [request]) == [0xA900]  # the dataset names another instance
    # A calling AE title with a line break: pynetdicom refuses to decode the request and logs the
    # title (in its message and its traceback's exception line), escaped by our formatter.
    hostile_ae = "X\nFORGED ERROR"
    hostile = AE(ae_title=hostile_ae)
    hostile.add_requested_context(Verification)
    association = hostile.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert not association.is_established
    assert c_store(listener, study.files) == [0x0000]  # still serving
    assert_no_forged_line(listener.log_text())
