"""DICOM TLS both ways with real peers: a modality → Orthanc (TLS only) → listener over mutual TLS,
the listener admitting Orthanc by its certificate; the worker's SR → Orthanc over TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine

from services.pacs.local_orthanc import RunningOrthanc, running_orthanc
from shared.config import Settings
from shared.dicom.scu import StoreError, pacs_tls_context, store_dataset
from shared.tls import client_tls_context
from tests.pacs.conftest import (
    ROUTING_TIMEOUT_S,
    TEST_CALLING_AE,
    TEST_STABLE_AGE_S,
    dcmtk_environment,
    wait_until,
)
from tests.pacs.dicom_samples import new_study, write_ct_series, write_own_sr
from tests.pacs.test_pacs_to_listener import instances_of
from tests.production.pki import Pki
from tests.support.listener_process import RunningListener, listener_process

STUDY_SIZE = 3


def storescu_tls(paths: list[Path], port: int, pki: Pki, *, tls: bool = True) -> int:
    cert, key = pki.issue("modality")
    tls_args = ["+tls", str(key), str(cert), "+cf", str(pki.ca)] if tls else []
    result = subprocess.run(
        ["storescu", *tls_args, "-aet", TEST_CALLING_AE, "-aec", "ORTHANC", "127.0.0.1", str(port)]
        + [str(path) for path in paths],
        env=dcmtk_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode


@pytest.fixture
def tls_listener(clean_db: Engine, tmp_path: Path, pki: Pki) -> Iterator[RunningListener]:
    cert, key = pki.issue("listener")
    orthanc_cert, orthanc_key = pki.issue("orthanc")
    env = {
        "MEDREGA_LISTENER_TLS_CERT": str(cert),
        "MEDREGA_LISTENER_TLS_KEY": str(key),
        "MEDREGA_LISTENER_TLS_CA": str(pki.ca),
    }
    echo = client_tls_context(pki.ca, orthanc_cert, orthanc_key)
    # Admitted: calling AE ORTHANC with a client certificate named `orthanc` from our CA.
    with listener_process(
        storage_dir=tmp_path / "storage",
        allowed_peers=["ORTHANC@cn=orthanc"],
        env=env,
        echo_tls_context=echo,
    ) as running:
        yield running


@pytest.fixture
def tls_orthanc(
    tmp_path: Path, pki: Pki, tls_listener: RunningListener
) -> Iterator[RunningOrthanc]:
    cert, key = pki.issue("orthanc")
    settings = Settings(orthanc_tls_cert=cert, orthanc_tls_key=key, orthanc_tls_ca=pki.ca)
    with running_orthanc(
        tmp_path / "orthanc",
        settings,
        listener_host=tls_listener.host,
        listener_port=tls_listener.port,
        listener_ae_title=tls_listener.ae_title,
        stable_age_s=TEST_STABLE_AGE_S,
    ) as orthanc:
        yield orthanc


def test_study_reaches_the_listener_over_tls_and_the_sr_goes_back_over_tls(
    tmp_path: Path, clean_db: Engine, pki: Pki, tls_listener: RunningListener,
    tls_orthanc: RunningOrthanc,
) -> None:  # fmt: skip
    study = new_study()
    files = write_ct_series(tmp_path / "study", study, STUDY_SIZE)
    paths = [path for path, _ in files]

    # Orthanc's DICOM port speaks TLS only: a plain modality is refused, a TLS one stores.
    assert storescu_tls(paths, tls_orthanc.dicom_port, pki, tls=False) != 0
    assert storescu_tls(paths, tls_orthanc.dicom_port, pki) == 0

    # Routed after StableAge over mutual TLS; the listener admitted ORTHANC by certificate.
    rows = wait_until(
        lambda: r if len(r := instances_of(clean_db, study.study_instance_uid)) == STUDY_SIZE else None,
        ROUTING_TIMEOUT_S,
        "the study at the listener over TLS",
    )  # fmt: skip
    assert sorted(row.sop_instance_uid for row in rows) == sorted(uid for _, uid in files)

    # The worker's SR: pynetdicom over TLS with a client certificate (Orthanc asks for one).
    sr_path, sr_uid = write_own_sr(tmp_path / "sr", study)
    worker_cert, worker_key = pki.issue("worker")
    settings = Settings(
        pacs_tls=True, pacs_tls_ca=pki.ca, pacs_tls_cert=worker_cert, pacs_tls_key=worker_key
    )
    context = pacs_tls_context(settings)
    assert context is not None
    status = store_dataset(
        dcmread(sr_path), "ORTHANC", "localhost", tls_orthanc.dicom_port, tls_context=context
    )
    assert status == 0x0000
    found = tls_orthanc.client.post_json(
        "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sr_uid}}
    )
    assert len(found) == 1

    # Without a client certificate, or without TLS, the SR is not stored.
    with pytest.raises(StoreError):
        store_dataset(
            dcmread(sr_path), "ORTHANC", "localhost", tls_orthanc.dicom_port,
            tls_context=client_tls_context(pki.ca), timeout_s=5,
        )  # fmt: skip
    with pytest.raises(StoreError):
        store_dataset(dcmread(sr_path), "ORTHANC", "127.0.0.1", tls_orthanc.dicom_port, timeout_s=5)
