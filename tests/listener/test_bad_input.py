"""Bad input gets the right DICOM answer, changes nothing else, and the listener keeps serving."""

from __future__ import annotations

import os
import resource
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from tests.listener.conftest import rows, storescu
from tests.listener.ct_files import TEST_UID_ROOT, write_ct_study
from tests.support.listener_process import RunningListener, listener_process


@pytest.fixture
def send_raw_files() -> Iterator[None]:
    """Make pynetdicom send files as they are (file meta decides the request's UIDs, no decode):
    the only way to put a corrupt or mismatched dataset on the wire."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = previous


def associate(listener: RunningListener, calling_ae: str = "MEDREGA_TEST") -> Association:
    ae = AE(ae_title=calling_ae)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae.associate(listener.host, listener.port, ae_title=listener.ae_title)


def rejection(association: Association) -> tuple[int, int, int]:
    answer = association.acceptor.primitive
    assert answer is not None
    return (int(answer.result or 0), int(answer.result_source or 0), int(answer.diagnostic or 0))


def store_status(association: Association, path: Path) -> int:
    status = association.send_c_store(path)
    assert status, "no response"
    return int(status.Status)


def raw_file(path: Path, sop_class: str, sop_instance: str, body: bytes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + body)
    return path


def with_meta(source: Path, target: Path, sop_class: str, sop_instance: str) -> Path:
    """`source`'s dataset under a file meta naming another SOP Class/Instance."""
    data = source.read_bytes()
    group_length = struct.unpack("<I", data[140:144])[0]
    return raw_file(target, sop_class, sop_instance, data[144 + group_length :])


def instance_uids(engine: Engine) -> set[str]:
    return {r.sop_instance_uid for r in rows(engine, "SELECT sop_instance_uid FROM instances")}


def test_corrupt_incomplete_and_mismatched_datasets(
    listener: RunningListener, clean_db: Engine, tmp_path: Path, send_raw_files: None
) -> None:
    good = write_ct_study(tmp_path / "good", count=3)
    assert storescu(listener, good.files[:2]).returncode == 0

    other = generate_uid(prefix=TEST_UID_ROOT)
    garbage = raw_file(tmp_path / "garbage.dcm", CTImageStorage, other, os.urandom(4000))
    # Decodable, but without the UIDs it would be filed under.
    incomplete = raw_file(
        tmp_path / "incomplete.dcm",
        CTImageStorage,
        other,
        struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", 4) + b"A^B ",
    )
    wrong_instance = with_meta(good.files[2], tmp_path / "wrong_uid.dcm", CTImageStorage, other)
    wrong_class = with_meta(
        good.files[2], tmp_path / "wrong_class.dcm", MRImageStorage, good.sop_instance_uids[2]
    )

    association = associate(listener)
    assert association.is_established
    try:
        assert store_status(association, garbage) == 0xC210
        assert store_status(association, incomplete) == 0xC000
        assert store_status(association, wrong_instance) == 0xA900
        assert store_status(association, wrong_class) == 0xA900
        # Same association, still serving: the genuine instance goes through.
        assert store_status(association, good.files[2]) == 0x0000
    finally:
        association.release()

    assert instance_uids(clean_db) == set(good.sop_instance_uids)
    assert not list(listener.storage_dir.rglob("*.part"))
    assert len(list(listener.storage_dir.glob("*/*/*.dcm"))) == 3
    assert listener.is_running()


def test_unknown_calling_ae_is_rejected_at_association(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=2)
    association = associate(listener, calling_ae="INTRUDER")
    assert association.is_rejected
    assert rejection(association) == (0x01, 0x01, 0x03)  # permanent: calling AE not recognised
    assert storescu(listener, study.files, calling_ae="INTRUDER").returncode != 0
    assert instance_uids(clean_db) == set()
    # Whitelisted peers are still served.
    assert storescu(listener, study.files).returncode == 0
    assert instance_uids(clean_db) == set(study.sop_instance_uids)


def test_free_space_watermark_refuses_associations(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=1)
    far_above_free = str(1 << 62)
    with listener_process(
        storage_dir=storage_dir, env={"MEDREGA_STORAGE_MIN_FREE_BYTES": far_above_free}
    ) as listener:
        association = associate(listener)
        assert association.is_rejected
        assert rejection(association) == (0x02, 0x03, 0x02)  # transient: local limit exceeded
        assert storescu(listener, study.files).returncode != 0
        assert listener.is_running()
    assert instance_uids(clean_db) == set()


def _limit_file_size() -> None:
    # A real storage failure: writes past 64 KB fail with EFBIG in the listener process (Python
    # ignores SIGXFSZ), exactly as a full disk fails a write.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_storage_failure_answers_out_of_resources(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    large = write_ct_study(tmp_path / "large", count=1, size=256)  # ~130 KB
    small = write_ct_study(tmp_path / "small", count=2)  # ~33 KB each
    with listener_process(storage_dir=storage_dir, preexec_fn=_limit_file_size) as listener:
        association = associate(listener)
        assert association.is_established
        try:
            assert store_status(association, small.files[0]) == 0x0000
            assert store_status(association, large.files[0]) == 0xA700
            assert store_status(association, small.files[1]) == 0x0000
        finally:
            association.release()
        assert not list(listener.storage_dir.rglob("*.part"))
    assert instance_uids(clean_db) == set(small.sop_instance_uids)


def test_lost_database_connection_is_reestablished(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=4)
    assert storescu(listener, study.files[:2]).returncode == 0
    with clean_db.begin() as connection:  # what a database restart does to the listener
        killed = connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'medrega-listener'"
            )
        ).all()
    assert killed
    assert storescu(listener, study.files[2:]).returncode == 0
    assert instance_uids(clean_db) == set(study.sop_instance_uids)
