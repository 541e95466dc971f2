"""The header values the listener indexes are the same whether read from the raw elements (the
fast path in services/listener/dataset_header.py) or converted by pydicom."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Engine

from services.listener.dataset_header import _extract, read_header
from services.listener.indexer import IndexOutcome, IndexWriter, InstanceRecord
from services.listener.storage import ContentStore
from tests.listener.conftest import rows
from tests.listener.ct_files import TEST_UID_ROOT, ct_dataset

ODD_UID = TEST_UID_ROOT + "123"
EVEN_UID = TEST_UID_ROOT + "1234"


def variants() -> list[tuple[str, Dataset]]:
    cases: list[tuple[str, Dataset]] = []

    def add(name: str, **values: object) -> None:
        ds = ct_dataset(ODD_UID, EVEN_UID, ODD_UID + ".7", 3, size=8)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        cases.append((name, ds))

    add("plain")
    add("several names", PatientName="Doe^John\\Roe^Jane", ReferringPhysicianName="A^B\\C^D")
    add("name groups", PatientName="Yamada^Tarou=山田^太郎", SpecificCharacterSet="ISO_IR 192")
    add(
        "utf-8 text",
        StudyDescription="胸部 CT",
        PatientName="张^伟",
        SpecificCharacterSet="ISO_IR 192",
    )
    add("latin-1 text", PatientName="Müller^Jürgen", Manufacturer="Société", PatientID="É1")
    add(
        "iso 2022",
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
        PatientName="Yamada^Tarou=山田^太郎",
        StudyDescription="CT",
    )
    add("padding and spaces", PatientID=" ID 7 ", StudyDescription=" Chest ", Modality="CT ")
    add("several CS values", BodyPartExamined="CHEST\\ABDOMEN", PatientSex="O")
    add("odd integers", InstanceNumber="12.0", SeriesNumber="+7", NumberOfFrames="1\\2")
    add("empty values", PatientName="", AccessionNumber="", StudyTime="", InstanceNumber=None)
    # pydicom drops trailing NULs of text values (a UID's padding aside): so must the raw reading.
    add("NUL padding", StudyDescription="AB\x00", PatientName="A^B\x00", PatientID="7\x00\x00")
    add("delimiters", PatientName="O'Neil^Mary|Ann~x&y", AccessionNumber="A|B^C")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID1", "LN", "CT chest"
    add("procedure code", RequestedProcedureCodeSequence=[code])
    return cases


SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(("name", "dataset"), variants(), ids=[n for n, _ in variants()])
def test_raw_and_pydicom_values_agree(
    name: str, dataset: Dataset, syntax: str, tmp_path: Path
) -> None:
    dataset.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "x.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        fast = _extract(dcmread(BytesIO(data), stop_before_pixels=True), fast=True)
        slow = _extract(dcmread(BytesIO(data), stop_before_pixels=True), fast=False)
    assert fast == slow
    assert read_header(data) == fast


def test_nul_inside_a_value_is_dropped_from_the_index_and_the_row_commits(
    clean_db: Engine, tmp_path: Path
) -> None:
    """PostgreSQL text cannot hold NUL: before, such an instance failed its row (0xA700) on
    every retry of its sender. The file keeps its bytes; the index drops the NULs."""
    ds = ct_dataset(ODD_UID, EVEN_UID, ODD_UID + ".8", 3, size=8)
    ds.PatientName, ds.StudyDescription = "A\x00B^C", "Chest\x00CT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "P\x001", "LN", "CT\x00 chest"
    several = Dataset()
    several.CodeValue, several.CodingSchemeDesignator = ["A", "B"], "LN"  # VM 1 broken: skipped
    ds.RequestedProcedureCodeSequence = [several, code]
    for syntax in SYNTAXES[:2]:
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"nul-{syntax}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path, enforce_file_format=True)
        header = read_header(path.read_bytes())
        assert (header.patient_name, header.study_description) == ("AB^C", "ChestCT")
        assert header.procedure_code == ("P1", "LN", "CT chest")

    store = ContentStore(tmp_path / "storage", min_free_bytes=0)
    data = path.read_bytes()
    stored = store.write(ODD_UID, EVEN_UID, ODD_UID + ".8", data)
    writer = IndexWriter(clean_db.url.render_as_string(hide_password=False))
    writer.start()
    try:
        record = InstanceRecord(read_header(data), stored, ImplicitVRLittleEndian, "TEST")
        assert writer.submit(record).result(timeout=30) == IndexOutcome.STORED
    finally:
        writer.stop()
    assert rows(clean_db, "SELECT patient_name FROM studies") == [("AB^C",)]
