"""MLLP over TLS to a RIS (ops/ris_sink.py serving TLS): verified, optionally mutual, never plain."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.ris_sink import RisSink, server_tls_context
from shared.config import Settings
from shared.hl7.errors import DeliveryError, RisUnreachable
from shared.hl7.mllp import ris_tls_context, send_message
from shared.hl7.oru import build_oru
from shared.tls import client_tls_context
from tests.hl7.conftest import make_input
from tests.production.pki import Pki


def _message(control_id: str) -> str:
    return build_oru(make_input(result_status="F"), control_id)


def test_mutual_tls_delivers_and_the_settings_build_the_context(pki: Pki, inbox: Path) -> None:
    server_cert, server_key = pki.issue("ris")
    client_cert, client_key = pki.issue("worker")
    settings = Settings(
        ris_tls=True, ris_tls_ca=pki.ca, ris_tls_cert=client_cert, ris_tls_key=client_key
    )
    context = ris_tls_context(settings)
    assert context is not None
    tls = server_tls_context(server_cert, server_key, client_ca=pki.ca)
    with RisSink(inbox, tls_context=tls) as sink:
        message = _message("TLS1")
        ack = send_message(
            message, host="localhost", port=sink.port, timeout_s=10, tls_context=context
        )
        assert ack.accepted and ack.control_id == "TLS1"
    assert (inbox / "TLS1.hl7").read_bytes() == message.encode("utf-8")


def test_a_sink_asking_for_a_client_certificate_refuses_one_without(pki: Pki, inbox: Path) -> None:
    server_cert, server_key = pki.issue("ris")
    tls = server_tls_context(server_cert, server_key, client_ca=pki.ca)
    with RisSink(inbox, tls_context=tls) as sink:
        with pytest.raises(DeliveryError):
            send_message(
                _message("NOCERT"),
                host="localhost",
                port=sink.port,
                timeout_s=5,
                tls_context=client_tls_context(pki.ca),
            )
    assert not (inbox / "NOCERT.hl7").exists()


def test_a_ris_certificate_from_another_ca_or_name_is_not_trusted(
    pki: Pki, other_pki: Pki, inbox: Path
) -> None:
    stranger_cert, stranger_key = other_pki.issue("ris")
    with RisSink(inbox, tls_context=server_tls_context(stranger_cert, stranger_key)) as sink:
        with pytest.raises(RisUnreachable, match="not trusted"):
            send_message(
                _message("MITM"),
                host="localhost",
                port=sink.port,
                timeout_s=5,
                tls_context=client_tls_context(pki.ca),
            )
    # Our CA, but a certificate for another host than the one we dialled.
    elsewhere_cert, elsewhere_key = pki.issue("elsewhere", "DNS:ris.elsewhere.example")
    with RisSink(inbox, tls_context=server_tls_context(elsewhere_cert, elsewhere_key)) as sink:
        with pytest.raises(RisUnreachable, match="not trusted"):
            send_message(
                _message("WRONGHOST"),
                host="localhost",
                port=sink.port,
                timeout_s=5,
                tls_context=client_tls_context(pki.ca),
            )
    assert not list(inbox.glob("*.hl7"))


def test_plain_mllp_to_a_tls_sink_is_not_delivered(pki: Pki, inbox: Path) -> None:
    cert, key = pki.issue("ris")
    with RisSink(inbox, tls_context=server_tls_context(cert, key)) as sink:
        with pytest.raises(DeliveryError):
            send_message(_message("PLAIN"), host="127.0.0.1", port=sink.port, timeout_s=5)
    assert not list(inbox.glob("*.hl7"))


def test_tls_off_by_default_and_missing_files_are_named(tmp_path: Path) -> None:
    assert ris_tls_context(Settings()) is None
    with pytest.raises(FileNotFoundError, match="no-such-ca.pem"):
        ris_tls_context(Settings(ris_tls=True, ris_tls_ca=tmp_path / "no-such-ca.pem"))
