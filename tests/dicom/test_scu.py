"""C-STORE SCU against real peers: DCMTK storescp, and pynetdicom SCPs that misbehave on purpose."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from shared.dicom.scu import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    classify_status,
    store_dataset,
)
from shared.dicom.sr_builder import build_report_sr
from shared.dicom.sr_content import SrContext, SrReport
from shared.reports.domain import ImageRef, PixelBox, RegionFindingResult
from tests.dicom.sr_sources import read_header, write_dx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def sr(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    image = read_header(
        write_dx(tmp_path_factory.mktemp("src"), patient_name="王^小明", charset="ISO_IR 192")
    )
    finding = RegionFindingResult(
        region_code="right_lung",
        region_name_en="right lung",
        region_name_zh="右肺",
        finding_code="lung_nodule",
        finding_name_en="pulmonary nodule",
        finding_name_zh="肺结节",
        probability=0.9,
        image=ImageRef(image.SOPInstanceUID, image.SOPClassUID),
        box=PixelBox(10, 10, 30, 30),
        sentence_en="A 10 mm nodule is seen in the right lung.",
        sentence_zh="右肺见一大小约10 mm的结节影。",
    )
    report = SrReport(
        domain="cxr",
        findings=[finding],
        findings_text={"en": finding.sentence_en, "zh": finding.sentence_zh},
        impression_text={"en": "Pulmonary nodule in the right lung.", "zh": "右肺结节。"},
    )
    context = SrContext(
        report_id="scu-test",
        version=1,
        status="draft",
        source_images=[image],
        model_name="medrega-reference",
        model_version="2026.11.0",
        content_datetime=datetime(2026, 11, 28, 4, 0),
    )
    return build_report_sr(report, context)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        ["storescp", "--aetitle", "PACS", "--output-directory", str(out), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sr_arrives_at_dcmtk_storescp(sr: Dataset, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    status = store_dataset(sr, "PACS", "127.0.0.1", port, calling_ae="MEDREGA_TEST", timeout_s=10)
    assert status == 0x0000
    [received] = list(out.iterdir())
    ds = pydicom.dcmread(received)
    assert ds.SOPInstanceUID == sr.SOPInstanceUID
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert str(ds.PatientName) == "王^小明"
    # Re-sending the same version is accepted again (the peer sees the same SOP Instance UID).
    assert store_dataset(sr, "PACS", "127.0.0.1", port, timeout_s=10) == 0x0000


def test_connection_refused_is_transient(sr: Dataset) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TransientStoreError) as info:
        store_dataset(sr, "PACS", "127.0.0.1", port, timeout_s=3)
    assert time.monotonic() - started < 5
    assert info.value.transient and info.value.status is None


StatusHandler = Callable[[evt.Event], int]


def start_scp(
    handler: StatusHandler,
    *,
    sop_class: str = Comprehensive3DSRStorage,
    ae_title: str = "PACS",
    require_called_aet: bool = False,
) -> tuple[ThreadedAssociationServer, int]:
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called_aet
    ae.add_supported_context(sop_class, [ImplicitVRLittleEndian])  # the minimum an SCP offers
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]
    )
    assert server is not None  # non-blocking: the server runs in its own thread
    return server, port


class ScriptedSCP:
    """A pynetdicom Storage SCP that answers whatever status the test sets."""

    def __init__(self) -> None:
        self.status = 0x0000
        self.received: list[str] = []
        self.server, self.port = start_scp(self.handle)

    def handle(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))  # decodes Implicit VR LE
        return self.status


@pytest.fixture(scope="module")
def scripted_scp() -> Iterator[ScriptedSCP]:
    scp = ScriptedSCP()
    yield scp
    scp.server.shutdown()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, None),
        (0xB000, None),  # warning: stored with coercion
        (0xA700, TransientStoreError),
        (0xA701, TransientStoreError),
        (0xA900, PermanentStoreError),
        (0xC000, PermanentStoreError),
        (0xC211, PermanentStoreError),
    ],
)
def test_dimse_status_is_classified(
    sr: Dataset, scripted_scp: ScriptedSCP, status: int, expected: type[StoreError] | None
) -> None:
    scripted_scp.status = status
    scripted_scp.received.clear()
    if expected is None:
        assert store_dataset(sr, "PACS", "127.0.0.1", scripted_scp.port, timeout_s=5) == status
    else:
        with pytest.raises(expected) as info:
            store_dataset(sr, "PACS", "127.0.0.1", scripted_scp.port, timeout_s=5)
        assert info.value.status == status
        assert f"0x{status:04X}" in str(info.value)
    assert scripted_scp.received == [sr.SOPInstanceUID]


def test_rejected_association_is_permanent(sr: Dataset) -> None:
    server, port = start_scp(lambda event: 0x0000, require_called_aet=True)
    try:
        with pytest.raises(PermanentStoreError, match="rejected"):
            store_dataset(sr, "NOT_PACS", "127.0.0.1", port, timeout_s=5)
    finally:
        server.shutdown()


def test_sop_class_not_accepted_is_permanent(sr: Dataset) -> None:
    server, port = start_scp(lambda event: 0x0000, sop_class=CTImageStorage)
    try:
        with pytest.raises(PermanentStoreError, match="presentation context"):
            store_dataset(sr, "PACS", "127.0.0.1", port, timeout_s=5)
    finally:
        server.shutdown()


def test_no_response_in_time_is_transient(sr: Dataset) -> None:
    def slow(event: evt.Event) -> int:
        time.sleep(2.5)
        return 0x0000

    server, port = start_scp(slow)
    try:
        started = time.monotonic()
        with pytest.raises(TransientStoreError, match="no C-STORE response"):
            store_dataset(sr, "PACS", "127.0.0.1", port, timeout_s=1)
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()


def test_classify_status_and_argument_checks(sr: Dataset) -> None:
    assert classify_status(0x0000) is None
    assert classify_status(0x0110) is TransientStoreError  # processing failure at the peer
    assert classify_status(0x0122) is PermanentStoreError  # SOP class not supported
    with pytest.raises(ValueError, match="Called AE Title"):
        store_dataset(sr, "A" * 17, "127.0.0.1", 104)
    with pytest.raises(ValueError, match="port"):
        store_dataset(sr, "PACS", "127.0.0.1", 0)
    no_meta = Dataset()
    no_meta.SOPClassUID = Comprehensive3DSRStorage
    no_meta.SOPInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="TransferSyntaxUID"):
        store_dataset(no_meta, "PACS", "127.0.0.1", 104)
