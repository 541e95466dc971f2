"""Compressed transfer syntaxes are stored as received; TLS associations work end to end."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine

from tests.listener.conftest import dataset_bytes, rows, sha256_file, storescu
from tests.listener.ct_files import write_ct_study
from tests.support.listener_process import RunningListener, listener_process


def test_rle_lossless_is_stored_as_received(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=2, rle=True)
    assert dcmread(study.files[0]).file_meta.TransferSyntaxUID == RLELossless
    # -xr: propose RLE Lossless (and, in separate contexts, the uncompressed syntaxes).
    result = storescu(listener, study.files, extra_args=["-xr"])
    assert result.returncode == 0, result.stderr

    stored = rows(clean_db, "SELECT file_path, sha256, transfer_syntax_uid FROM instances")
    assert len(stored) == 2
    sent = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in study.files}
    for row in stored:
        on_disk = listener.storage_dir / row.file_path
        assert row.transfer_syntax_uid == RLELossless
        assert dcmread(on_disk).file_meta.TransferSyntaxUID == RLELossless
        assert sha256_file(on_disk) == row.sha256
        original = sent[on_disk.stem]
        assert dataset_bytes(on_disk) == dataset_bytes(original)
        assert (dcmread(on_disk).pixel_array == dcmread(original).pixel_array).all()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "listener.crt", directory / "listener.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_association_stores_and_plain_tcp_is_refused(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    client_tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    study = write_ct_study(tmp_path / "in", count=2)
    env = {"MEDREGA_LISTENER_TLS_CERT": str(cert), "MEDREGA_LISTENER_TLS_KEY": str(key)}
    with listener_process(
        storage_dir=storage_dir, env=env, echo_tls_context=client_tls
    ) as listener:
        ae = AE(ae_title="MEDREGA_TEST")
        ae.add_requested_context(CTImageStorage)
        association = ae.associate(
            listener.host,
            listener.port,
            ae_title=listener.ae_title,
            tls_args=(client_tls, "localhost"),  # the certificate is verified, hostname too
        )
        assert association.is_established
        try:
            for path in study.files:
                status = association.send_c_store(dcmread(path))
                assert status.Status == 0x0000
        finally:
            association.release()

        plain = storescu(listener, study.files)  # no TLS: the handshake fails
        assert plain.returncode != 0
        assert listener.is_running()
    stored = rows(clean_db, "SELECT sop_instance_uid FROM instances")
    assert sorted(r.sop_instance_uid for r in stored) == sorted(study.sop_instance_uids)
