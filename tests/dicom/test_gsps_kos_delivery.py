"""A drafted then signed chest X-ray's SR, GSPS and KOS reach a real DICOM peer (DCMTK storescp as
the PACS) through the worker's delivery code, and the ORU at a real MLLP peer (ops/ris_sink.py)
points at exactly those objects; a PACS configured without GSPS gets none.

The study, its stored image and the report versions are real rows and files; the worker's
`attempt_delivery` claims, builds, C-STOREs and records each delivery as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from ops.ris_sink import RisSink
from services.worker.delivery import attempt_delivery
from shared.config import get_settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Study
from shared.hl7.oru_read import read_oru
from shared.reports import lifecycle
from shared.reports.domain import DraftResult, ImageRef, PixelBox, RegionFindingResult
from shared.reports.domain import ReportSentence as Sentence
from tests.dicom.gsps_kos_sources import BACKGROUND, LESION, LESION_BOX, lesion_dx
from tests.reports.world import make_user, running_job
from tests.support.listener_process import free_port
from tests.support.study_rows import index_files
from tests.worker.conftest import phantom

PACS_KINDS = (DeliveryKind.SR, DeliveryKind.GSPS, DeliveryKind.KOS)


@dataclass
class StoreScp:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    ris: RisSink  # the RIS beside it, for the ORU that points at what the PACS got

    def received(self, study_uid: str) -> dict[str, list[Dataset]]:
        """SOP Class UID → datasets received for the study."""
        found: dict[str, list[Dataset]] = {}
        for path in sorted(self.directory.iterdir()):
            ds = pydicom.dcmread(path)
            if ds.StudyInstanceUID == study_uid:
                found.setdefault(str(ds.SOPClassUID), []).append(ds)
        return found


@pytest.fixture
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreScp]:
    port, received = free_port(), tmp_path / "pacs"
    received.mkdir()
    process = subprocess.Popen(
        ["storescp", "--aetitle", "ORTHANC", "--output-directory", str(received), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "storescp did not start listening"
            time.sleep(0.1)
    ris = RisSink(tmp_path / "ris").start()
    monkeypatch.setenv("MEDREGA_RIS_PORT", str(ris.port))
    monkeypatch.setenv("MEDREGA_PACS_PORT", str(port))
    monkeypatch.setenv("MEDREGA_PACS_AE_TITLE", "ORTHANC")
    monkeypatch.setenv("MEDREGA_STORAGE_DIR", str(tmp_path / "storage"))
    get_settings.cache_clear()
    yield StoreScp(process, port, received, ris)
    ris.stop()
    process.terminate()
    process.wait(timeout=10)
    get_settings.cache_clear()


def _draft_of(image: Dataset) -> DraftResult:
    """An abnormal finding boxed on the image, and a normal region (boxed too)."""
    ref = ImageRef(str(image.SOPInstanceUID), str(image.SOPClassUID))
    rows, columns = int(image.Rows), int(image.Columns)
    findings = [
        RegionFindingResult(
            region_code="right_lung", region_name_en="right lung", region_name_zh="右肺",
            finding_code="pleural_effusion", finding_name_en="pleural effusion",
            finding_name_zh="胸腔积液", probability=0.88, image=ref,
            box=PixelBox(columns * 0.1, rows * 0.55, columns * 0.45, rows * 0.85),
            sentence_en="Right pleural effusion.", sentence_zh="右侧胸腔积液。",
        ),
        RegionFindingResult(
            region_code="heart", region_name_en="heart", region_name_zh="心脏", finding_code=None,
            finding_name_en=None, finding_name_zh=None, probability=0.95, image=ref,
            box=PixelBox(columns * 0.4, rows * 0.4, columns * 0.7, rows * 0.75),
            sentence_en="The heart is normal.", sentence_zh="心脏未见异常。",
        ),
    ]  # fmt: skip
    return DraftResult(
        domain="cxr", applicable=True, reason=None, model_name="medrega-ref",
        model_version="1.2.0", backend="onnx", findings=findings,
        sentences=[
            Sentence("findings", findings[0].sentence_en, findings[0].sentence_zh, [0]),
            Sentence("findings", findings[1].sentence_en, findings[1].sentence_zh, [1]),
            Sentence("impression", "Right pleural effusion.", "右侧胸腔积液。", [0]),
        ],
    )  # fmt: skip


def _drafted_study(engine: Engine, tmp_path: Path, name: str) -> tuple[int, Dataset]:
    written = phantom("cxr", tmp_path / name, abnormal=True, max_side=256)
    image = pydicom.dcmread(written.files[0], stop_before_pixels=True)
    with sessionmaker(engine).begin() as session:
        study = index_files(session, get_settings().storage_dir, written.files)
        study.patient_id, study.accession_number = image.PatientID, image.AccessionNumber
        make_user(session)
        assert lifecycle.store_draft(session, running_job(session, study), _draft_of(image))
        return study.id, image


def _pointers(pacs: StoreScp, engine: Engine, study_id: int, version: int) -> dict[str, str]:
    """The version's ORU, delivered to the RIS: OBX-4 sub-ID → the UID its RP points at."""
    with Session(engine) as session:
        hl7 = session.scalars(
            select(Delivery).where(
                Delivery.study_id == study_id,
                Delivery.kind == DeliveryKind.HL7,
                Delivery.report_version == version,
            )
        ).one()
    outcome = attempt_delivery(engine, hl7.id)
    with Session(engine) as session:
        row = session.get(Delivery, hl7.id)
        assert outcome == DeliveryState.DELIVERED, row.last_error if row else None
    oru = read_oru((pacs.ris.out_dir / f"{hl7.message_id}.hl7").read_text("utf-8"))
    rows = [o for o in oru.observations if o.value_type == "RP"]
    assert all(o.value.endswith("^PACS^AP^DICOM") for o in rows)
    return {o.sub_id: o.value.split("^")[0] for o in rows}


def _deliver_pacs_objects(engine: Engine, study_id: int) -> dict[str, Delivery]:
    with Session(engine) as session:
        rows = list(
            session.scalars(
                select(Delivery)
                .where(Delivery.study_id == study_id, Delivery.kind.in_(PACS_KINDS))
                .order_by(Delivery.report_version, Delivery.id)
            )
        )
    for row in rows:
        if row.state == DeliveryState.PENDING:
            assert attempt_delivery(engine, row.id) == DeliveryState.DELIVERED, row
    with Session(engine) as session:
        fresh = [session.get(Delivery, row.id) for row in rows]
        return {f"{d.kind}:{d.result_status}": d for d in fresh if d is not None}


def test_sr_gsps_and_kos_of_a_draft_and_its_signature_arrive_at_the_pacs(
    clean_db: Engine, pacs: StoreScp, tmp_path: Path
) -> None:
    study_id, image = _drafted_study(clean_db, tmp_path, "cxr")
    draft = _deliver_pacs_objects(clean_db, study_id)
    assert set(draft) == {"sr:P", "gsps:P", "kos:P"}
    assert all(
        d.state == DeliveryState.DELIVERED and d.ack_code == "0x0000" for d in draft.values()
    )

    got = pacs.received(str(image.StudyInstanceUID))
    (sr,) = got[Comprehensive3DSRStorage]
    (state,) = got[GrayscaleSoftcopyPresentationStateStorage]
    (kos,) = got[KeyObjectSelectionDocumentStorage]
    assert sr.SOPInstanceUID == draft["sr:P"].message_id
    assert state.SeriesInstanceUID == draft["gsps:P"].message_id
    assert kos.SOPInstanceUID == draft["kos:P"].message_id
    assert state.ContentLabel == "AI_DRAFT"
    referenced = state.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == image.SOPInstanceUID
    (annotation,) = state.GraphicAnnotationSequence
    assert len(annotation.GraphicObjectSequence) == 1  # the effusion; the normal heart is not drawn
    assert annotation.TextObjectSequence[0].UnformattedTextValue == (
        "Right pleural effusion / 右侧胸腔积液 (p 0.88)"
    )
    (key_image,) = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    pointer = key_image.ReferencedSOPSequence[0]
    assert pointer.ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert pointer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == state.SOPInstanceUID
    assert _pointers(pacs, clean_db, study_id, 1) == {
        "SR": sr.SOPInstanceUID, "GSPS.1": state.SOPInstanceUID, "KOS": kos.SOPInstanceUID,
    }  # fmt: skip

    with sessionmaker(clean_db).begin() as session:
        study = session.get(Study, study_id)
        lifecycle.sign(session, study, make_user(session), 1)
    signed = _deliver_pacs_objects(clean_db, study_id)
    assert {k for k, d in signed.items() if d.state == DeliveryState.DELIVERED} == {
        "sr:P", "gsps:P", "kos:P", "sr:F", "gsps:F", "kos:F",
    }  # fmt: skip
    got = pacs.received(str(image.StudyInstanceUID))
    labels = sorted(s.ContentLabel for s in got[GrayscaleSoftcopyPresentationStateStorage])
    assert labels == ["AI_DRAFT", "SIGNED"]
    final_kos = next(
        k for k in got[KeyObjectSelectionDocumentStorage] if k.SOPInstanceUID != kos.SOPInstanceUID
    )
    (description,) = [
        i.TextValue
        for i in final_kos.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == "113012"  # Key Object Description
    ]
    assert description.startswith("Signed by radiologist Wei Li.")


def test_a_pacs_configured_without_gsps_gets_sr_and_kos_only(
    clean_db: Engine, pacs: StoreScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDREGA_PACS_OBJECTS", "sr,kos")
    get_settings.cache_clear()
    study_id, image = _drafted_study(clean_db, tmp_path, "cxr")
    delivered = _deliver_pacs_objects(clean_db, study_id)
    assert set(delivered) == {"sr:P", "kos:P"}
    got = pacs.received(str(image.StudyInstanceUID))
    assert sorted(got) == sorted([Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage])
    (kos,) = got[KeyObjectSelectionDocumentStorage]
    (key_image,) = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert "ReferencedSOPSequence" not in key_image.ReferencedSOPSequence[0]  # no GSPS to name
    assert _pointers(pacs, clean_db, study_id, 1) == {
        "SR": got[Comprehensive3DSRStorage][0].SOPInstanceUID,
        "KOS": kos.SOPInstanceUID,
    }


def test_a_key_image_without_a_window_gets_one_from_its_pixels_in_the_sent_gsps(
    clean_db: Engine, pacs: StoreScp, tmp_path: Path
) -> None:
    """The worker reads only headers, except for an image that names no window: then it reads
    its pixels so the presentation state can say how to show it."""
    path = lesion_dx(tmp_path, window=False)
    image = pydicom.dcmread(path, stop_before_pixels=True)
    with sessionmaker(clean_db).begin() as session:
        study = index_files(session, get_settings().storage_dir, [path])
        make_user(session)
        draft = _draft_of(image)
        draft.findings[0].box = LESION_BOX
        assert lifecycle.store_draft(session, running_job(session, study), draft)
        study_id = study.id
    assert "gsps:P" in _deliver_pacs_objects(clean_db, study_id)
    (state,) = pacs.received(str(image.StudyInstanceUID))[GrayscaleSoftcopyPresentationStateStorage]
    window = state.SoftcopyVOILUTSequence[0]
    assert (window.WindowCenter, window.WindowWidth) == (
        (BACKGROUND + LESION) / 2,
        LESION - BACKGROUND,
    )
