"""The listener's event-driven association loops (services/listener/reactor.py): multi-PDU
datasets arrive whole, idle associations still answer, and peers that abort, drop the connection
or send half a PDU leave stored instances stored and the listener serving."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import Engine

from services.listener.reactor import event_driven_supported
from tests.listener.conftest import c_store, dataset_bytes, rows, storescu, wait_for
from tests.listener.ct_files import write_ct_study
from tests.support.listener_process import RunningListener


def test_the_pinned_pynetdicom_gets_the_event_driven_loops(listener: RunningListener) -> None:
    # The loops copy pynetdicom 3.0.4's internals: another version falls back (and says so).
    assert event_driven_supported()
    assert "polling association loops" not in listener.log_text()


def stored_bytes(engine: Engine, listener: RunningListener, sop_instance_uid: str) -> bytes:
    (row,) = rows(
        engine,
        "SELECT file_path FROM instances WHERE sop_instance_uid = :uid",
        uid=sop_instance_uid,
    )
    return dataset_bytes(listener.storage_dir / row.file_path)


def ct_requestor() -> AE:
    """A peer asking for CT Image Storage in Explicit VR Little Endian only."""
    ae = AE(ae_title="MEDREGA_TEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


def test_a_dataset_of_several_pdus_is_stored_byte_for_byte(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    # 720 × 720 × 2 bytes ≈ 1 MB: four or more P-DATA PDUs at the listener's 256 KiB maximum.
    study = write_ct_study(tmp_path / "big", count=2, size=720)
    assert c_store(listener, study.files) == [0x0000, 0x0000]
    for path, uid in zip(study.files, study.sop_instance_uids, strict=True):
        assert stored_bytes(clean_db, listener, uid) == dataset_bytes(path)


def test_an_idle_association_still_stores_and_releases(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "idle", count=2)
    ae = ct_requestor()
    association = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert association.is_established
    for path in study.files:
        # Idle between requests: both loops are waiting. (Their waits are capped at 50 ms, so
        # this shows an idle association still serves, not that no wake-up is ever lost.)
        time.sleep(0.3)
        assert int(association.send_c_store(path).Status) == 0x0000
    time.sleep(0.3)
    association.release()
    assert association.is_released
    assert len(rows(clean_db, "SELECT id FROM instances")) == 2


def test_peers_that_abort_drop_or_stall_leave_the_listener_serving(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=4)

    # A-ABORT after one acknowledged C-STORE: that instance stays stored.
    ae = ct_requestor()
    aborted = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert int(aborted.send_c_store(study.files[0]).Status) == 0x0000
    aborted.abort()

    # TCP closed under an established association, without release or abort.
    dropped = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert int(dropped.send_c_store(study.files[1]).Status) == 0x0000
    raw = dropped.dul.socket.socket if dropped.dul.socket is not None else None
    assert raw is not None
    raw.shutdown(socket.SHUT_RDWR)
    dropped.kill()

    # Half a PDU header, then silence; and a connection that says nothing and closes.
    stalled = socket.create_connection((listener.host, listener.port))
    stalled.sendall(b"\x01\x00\x00\x00")
    silent = socket.create_connection((listener.host, listener.port))
    silent.close()

    result = storescu(listener, study.files[2:])
    assert result.returncode == 0, result.stderr
    stalled.close()

    assert listener.is_running()
    assert wait_for(lambda: len(rows(clean_db, "SELECT id FROM instances")) == 4)
    assert sorted(
        r.sop_instance_uid for r in rows(clean_db, "SELECT sop_instance_uid FROM instances")
    ) == sorted(study.sop_instance_uids)
