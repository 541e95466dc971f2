"""Listener admission: AE title AND address (or client certificate) per allowed peer; refusals
logged on one line and counted in the database (and in the web app's /metrics)."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from services.listener.refusals import MAX_KEYS, OVERFLOW, RefusalCounter
from services.web.metrics import exposition
from shared.config import Settings
from shared.listener_peers import PeerRule, admits, parse_peer
from tests.listener.conftest import storescu
from tests.listener.ct_files import write_ct_study
from tests.support.listener_process import RunningListener, listener_process


def test_peer_entries_parse_and_match_ae_title_and_address() -> None:
    rules = tuple(
        parse_peer(entry)
        for entry in ("ORTHANC@127.0.0.1", "MODALITY1@10.0.0.0/24", "PACS@fd00::/64", "ANY@*")
    )
    assert admits(rules, "ORTHANC", "127.0.0.1")
    assert admits(rules, "ORTHANC", "::ffff:127.0.0.1")  # IPv4 peer on an IPv6 socket
    assert not admits(rules, "ORTHANC", "127.0.0.2")  # right title, wrong address
    assert not admits(rules, "MODALITY1", "127.0.0.1")  # right address, wrong title
    assert admits(rules, "MODALITY1", "10.0.0.200")
    assert not admits(rules, "MODALITY1", "10.0.1.1")
    assert admits(rules, "PACS", "fd00::5") and not admits(rules, "PACS", "10.0.0.1")
    assert admits(rules, "ANY", "192.0.2.7")
    assert not admits(rules, "orthanc", "127.0.0.1")  # AE titles are case-sensitive
    assert not admits(rules, "ORTHANC", "not-an-address")
    cn = (parse_peer("ORTHANC@cn=Orthanc.Example"),)
    certificate = {"subject": ((("commonName", "orthanc.example"),),), "subjectAltName": ()}
    assert admits(cn, "ORTHANC", "192.0.2.1", certificate)
    assert not admits(cn, "ORTHANC", "192.0.2.1", None)
    san = {"subject": ((("commonName", "x"),),), "subjectAltName": (("DNS", "orthanc.example"),)}
    assert admits(cn, "ORTHANC", "192.0.2.1", san)
    for bad in ("ORTHANC", "@127.0.0.1", "ORTHANC@", "ORTHANC@10.0.0.300", "A" * 17 + "@*"):
        with pytest.raises(ValueError):
            parse_peer(bad)


def test_defaults_hold_no_test_senders_and_bad_entries_stop_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MEDREGA_LISTENER_ALLOWED_PEERS", "MEDREGA_LISTENER_ALLOWED_AES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.listener_peer_rules() == (parse_peer("ORTHANC@127.0.0.1"),)
    titles = {rule.ae_title for rule in settings.listener_peer_rules()}
    assert not titles & {"STORESCU", "MEDREGA_TEST"}
    # The old AE-only variable still works, as an explicit any-address rule.
    legacy = Settings(_env_file=None, listener_allowed_aes="ORTHANC2")  # type: ignore[call-arg]
    assert PeerRule("ORTHANC2") in legacy.listener_peer_rules()
    with pytest.raises(ValidationError, match="not an address or network"):
        Settings(_env_file=None, listener_allowed_peers="ORTHANC@somewhere")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="needs MEDREGA_LISTENER_TLS_CA"):
        Settings(_env_file=None, listener_allowed_peers="ORTHANC@cn=pacs")  # type: ignore[call-arg]


def _associate(
    listener: RunningListener,
    calling_ae: str,
    source: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    return ae.associate(
        listener.host,
        listener.port,
        ae_title=listener.ae_title,
        bind_address=(source, 0),
        tls_args=(tls, "localhost") if tls else None,
    )


def _refusals(engine: Engine, timeout_s: float = 10.0, want: int = 1) -> dict[tuple, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT reason, remote_addr, calling_ae_title, count FROM listener_refusals")
            ).all()
        found = {(r.reason, r.remote_addr, r.calling_ae_title): int(r.count) for r in rows}
        if sum(found.values()) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_title_and_address_must_both_match_and_refusals_are_logged_and_counted(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=2)
    peers = ["STORESCU@127.0.0.1", "MODALITY1@127.0.0.2/32"]
    with listener_process(storage_dir=storage_dir, allowed_peers=peers) as listener:
        # MODALITY1 is allowed from 127.0.0.2 only: from 127.0.0.1 its title proves nothing.
        wrong_address = _associate(listener, "MODALITY1", "127.0.0.1")
        assert wrong_address.is_rejected
        assert storescu(listener, study.files, calling_ae="MODALITY1").returncode != 0
        right_address = _associate(listener, "MODALITY1", "127.0.0.2")
        assert right_address.is_established
        right_address.release()
        # The test senders of old are gone unless named.
        assert _associate(listener, "MEDREGA_TEST").is_rejected
        assert storescu(listener, study.files, calling_ae="STORESCU").returncode == 0
        refusals = _refusals(clean_db, want=3)
        log = listener.log_text()
    assert refusals == {
        ("peer_not_allowed", "127.0.0.1", "MODALITY1"): 2,
        ("peer_not_allowed", "127.0.0.1", "MEDREGA_TEST"): 1,
    }
    assert "calling AE 'MODALITY1' at 127.0.0.1 refused: not an allowed peer" in log
    assert "allowed peers: STORESCU@127.0.0.1/32, MODALITY1@127.0.0.2/32" in log
    metrics = exposition(clean_db, with_queues=False)
    assert 'medrega_listener_refused_associations_total{reason="peer_not_allowed"} 3.0' in metrics
    assert 'medrega_listener_refused_associations_total{reason="storage_low"} 0.0' in metrics


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(directory: Path) -> dict[str, tuple[Path, Path]]:
    """A CA, the listener's certificate and two client certificates, all signed by the CA."""
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(ca_key), "-out", str(ca_cert))  # fmt: skip
    made = {"ca": (ca_cert, ca_key)}
    for name, cn in (("server", "localhost"), ("orthanc", "orthanc.test"), ("other", "other.test")):
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = directory / f"{name}.ext"
        extensions.write_text(
            f"subjectAltName=DNS:{cn}" + (",IP:127.0.0.1" if name == "server" else "")
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", str(key), "-out", str(csr))  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
        made[name] = (cert, key)
    return made


def _client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(cert, key)
    return context


def test_a_peer_named_by_its_client_certificate(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    certs = _certificates(tmp_path)
    ca = certs["ca"][0]
    env = {
        "MEDREGA_LISTENER_TLS_CERT": str(certs["server"][0]),
        "MEDREGA_LISTENER_TLS_KEY": str(certs["server"][1]),
        "MEDREGA_LISTENER_TLS_CA": str(ca),
    }
    good = _client_tls(ca, *certs["orthanc"])
    other = _client_tls(ca, *certs["other"])
    with listener_process(
        storage_dir=storage_dir,
        allowed_peers=["ORTHANC@cn=orthanc.test"],
        env=env,
        echo_tls_context=good,
    ) as listener:
        established = _associate(listener, "ORTHANC", tls=good)
        assert established.is_established
        established.release()
        # Another certificate the same CA signed, claiming the same AE title: refused.
        assert _associate(listener, "ORTHANC", tls=other).is_rejected
        refusals = _refusals(clean_db)
    assert refusals == {("peer_not_allowed", "127.0.0.1", "ORTHANC"): 1}


def test_refusal_tally_is_bounded_and_adds_up_in_the_table(clean_db: Engine) -> None:
    counter = RefusalCounter(str(clean_db.url.render_as_string(hide_password=False)))
    for index in range(MAX_KEYS + 5):  # a scanner inventing AE titles
        counter.count("peer_not_allowed", "192.0.2.9", f"SCAN{index}")
    counter.count("peer_not_allowed", "192.0.2.9", "SCAN0")
    counter.count("peer_not_allowed", "192.0.2.9", "EVIL\nFORGED")
    counter.flush()
    counter.count("peer_not_allowed", "192.0.2.9", "SCAN0")
    counter.flush()
    found = _refusals(clean_db, want=MAX_KEYS + 8)
    assert len(found) == MAX_KEYS + 1
    assert found[("peer_not_allowed", "192.0.2.9", "SCAN0")] == 3
    assert found[("peer_not_allowed", OVERFLOW, OVERFLOW)] == 6  # 5 new titles + the forged one
    assert sum(found.values()) == MAX_KEYS + 8
