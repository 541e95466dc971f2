"""The production mode end to end, as `ops/stack.sh start --production` runs it, with real peers.

nginx terminates TLS in front of the web app (certificates from a CA the stack makes; HSTS; plain
HTTP only redirects); the secrets come from files, not the environment; a modality stores over
DICOM TLS into Orthanc, which routes to the listener over mutual TLS; the worker's SR goes back to
Orthanc over TLS and the ORU to the RIS sink over MLLP/TLS with a client certificate. Chromium
(trusting the proxy's key, not ignoring errors) signs in over HTTPS and signs the report.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from services.pacs.local_orthanc import OrthancClient
from shared.config import REPO_ROOT
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Report, Study, UserRole
from shared.hl7.oru_read import read_oru
from tests.conftest import TEST_DB_NAME
from tests.production.pki import Pki
from tests.support.listener_process import free_port
from tests.support.worker_process import delete_test_queues, queue_prefix
from tests.web.factories import PASSWORD, make_user
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.worker.conftest import phantom, wait_for

pytestmark = pytest.mark.slow

STACK = REPO_ROOT / "ops" / "stack.sh"
SCREENSHOT = Path(
    os.environ.get("MEDREGA_PROD_SCREENSHOT", REPO_ROOT / "test-artifacts" / "prod-signin.png")
)


@dataclass
class ProductionStack:
    run_dir: Path
    env: dict[str, str]
    https_port: int
    http_port: int

    @property
    def pki(self) -> Pki:
        return Pki(self.run_dir / "pki")

    @property
    def base(self) -> str:
        return f"https://localhost:{self.https_port}"

    def port(self, name: str) -> int:
        return int(self.env[name].rsplit(":", 1)[-1])

    def secret(self, name: str) -> str:
        return (self.run_dir / "secrets" / name).read_text().strip()

    def pid(self, service: str) -> int:
        return int((self.run_dir / "run" / f"{service}.pid").read_text().split()[0])  # "PID START"

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted((self.run_dir / "log").glob("*.log"))
        )


@pytest.fixture
def production_stack(db_url: str, clean_db: Engine, tmp_path: Path) -> Iterator[ProductionStack]:
    run_dir = tmp_path / "run"
    prefix = queue_prefix() + "prod-"
    https_port, http_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEDREGA_")} | {
        "MEDREGA_RUN_DIR": str(run_dir),
        "MEDREGA_DATABASE_URL": db_url,
        "MEDREGA_DB_NAME": TEST_DB_NAME,
        "MEDREGA_QUEUE_PREFIX": prefix,
        "MEDREGA_STORAGE_DIR": str(run_dir / "storage"),
        "MEDREGA_WEB_PORT": str(free_port()),
        "MEDREGA_PACS_PORT": str(free_port()),
        "MEDREGA_PACS_HTTP_URL": f"http://127.0.0.1:{free_port()}",
        "MEDREGA_LISTENER_PORT": str(free_port()),
        "MEDREGA_RIS_PORT": str(free_port()),
        "MEDREGA_RIS_TIMEOUT_S": "5",
        "MEDREGA_HTTPS_PORT": str(https_port),
        "MEDREGA_HTTP_PORT": str(http_port),
        "MEDREGA_STABLE_AGE_S": "1",
        "MEDREGA_PACS_STABLE_AGE_S": "1",
    }
    stack = ProductionStack(run_dir, env, https_port, http_port)
    try:
        subprocess.run(
            [str(STACK), "start", "--production", "--no-install"],
            env=env, check=True, timeout=300, capture_output=True, text=True,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        print(exc.stderr, stack.logs())
        subprocess.run([str(STACK), "stop"], env=env, timeout=120)
        raise
    try:
        yield stack
    finally:
        subprocess.run([str(STACK), "stop"], env=env, timeout=120, capture_output=True)
        delete_test_queues(prefix)


def _deliveries(engine: Engine, study_uid: str) -> list[Delivery]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(Delivery).join(Report).join(Study)
                .where(Study.study_instance_uid == study_uid).order_by(Delivery.id)
            )
        )  # fmt: skip


def _all_delivered(engine: Engine, study_uid: str, final: bool) -> list[Delivery] | None:
    wanted = [d for d in _deliveries(engine, study_uid) if (d.result_status != "P") == final]
    kinds = {d.kind for d in wanted}
    if {DeliveryKind.SR, DeliveryKind.HL7} <= kinds and all(
        d.state == DeliveryState.DELIVERED for d in wanted
    ):
        return wanted
    return None


def _storescu_tls(stack: ProductionStack, paths: list[Path], *, tls: bool) -> int:
    cert, key = stack.pki.issue("modality")
    tls_args = ["+tls", str(key), str(cert), "+cf", str(stack.pki.ca)] if tls else []
    port = stack.env["MEDREGA_PACS_PORT"]
    result = subprocess.run(
        ["storescu", *tls_args, "-aet", "MODALITY", "-aec", "ORTHANC", "127.0.0.1", port]
        + [str(p) for p in paths],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode


def _spki_sha256(cert: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's SPKI allow-list names."""
    pem = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pem, check=True, capture_output=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-binary"], input=der, check=True, capture_output=True
    ).stdout
    return base64.b64encode(digest).decode("ascii")


def test_production_stack_behind_tls_signs_a_report(
    production_stack: ProductionStack, clean_db: Engine, other_pki: Pki, tmp_path: Path
) -> None:
    from playwright.sync_api import Error, expect, sync_playwright

    stack = production_stack
    base = stack.base

    # 1. The proxy's chain verifies against the stack's CA (and not against another CA); HSTS.
    trusted = ssl.create_default_context(cafile=str(stack.pki.ca))
    response = httpx.get(base + "/login", verify=trusted, timeout=10)
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert "; secure" in response.headers["set-cookie"].lower()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(base + "/login", verify=ssl.create_default_context(cafile=str(other_pki.ca)))
    redirect = httpx.get(f"http://localhost:{stack.http_port}/login?x=1", timeout=10)
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"{base}/login?x=1"
    # The web app itself is on loopback behind the proxy, in production mode.
    assert httpx.get(base + "/healthz", verify=trusted).status_code == 200

    # 2. Secrets came from files: none is in any process's environment.
    secret_key = stack.secret("medrega_secret_key")
    for service in ("web", "worker-io", "listener"):
        environ = Path(f"/proc/{stack.pid(service)}/environ").read_bytes()
        assert secret_key.encode() not in environ and b"MEDREGA_SECRET_KEY=" not in environ
        assert b"MEDREGA_ENVIRONMENT=production" in environ

    # 3. A modality stores over DICOM TLS only; the study travels on over TLS and is drafted;
    #    the draft's SR (DICOM TLS → Orthanc) and ORU (MLLP/TLS → RIS) are delivered.
    written = phantom("cxr", tmp_path / "in", chinese=False, abnormal=True)
    assert _storescu_tls(stack, written.files, tls=False) != 0
    assert _storescu_tls(stack, written.files, tls=True) == 0
    uid = written.study_instance_uid
    try:
        drafts = wait_for(lambda: _all_delivered(clean_db, uid, final=False), 240, "the draft")
    except AssertionError:
        print(stack.logs())
        raise
    inbox = stack.run_dir / "ris-inbox"
    draft_oru = next(d for d in drafts if d.kind == DeliveryKind.HL7)
    assert read_oru((inbox / f"{draft_oru.message_id}.hl7").read_text("utf-8")).result_status == "P"
    listener_log = (stack.run_dir / "log" / "listener.log").read_text()
    assert "(TLS on)" in listener_log and "ORTHANC@cn=orthanc" in listener_log

    with Session(clean_db, expire_on_commit=False) as session:
        make_user(session, "li.wei", UserRole.RADIOLOGIST, full_name="Li Wei")
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))

    # 4. Chromium over HTTPS: refuses the certificate unless told to trust the proxy's key.
    pin = _spki_sha256(stack.pki.directory / "web.crt")
    with sync_playwright() as playwright:
        untrusting = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
            untrusting.new_page().goto(base + "/login")
        untrusting.close()

        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        )  # fmt: skip
        context = browser.new_context(
            ignore_https_errors=False, viewport={"width": 1280, "height": 800}
        )
        page = context.new_page()
        page.goto(base + "/worklist")
        expect(page).to_have_url(f"{base}/login?next=%2Fworklist")
        page.fill("#username", "li.wei")
        page.wait_for_timeout(300)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        row = page.locator(f'#worklist-body tr[data-study-id="{study_id}"]')
        expect(row).to_be_visible()
        session_cookie = next(c for c in context.cookies() if c["name"] == "medrega_session")
        assert session_cookie["secure"] and session_cookie["httpOnly"]

        row.click()
        expect(page).to_have_url(f"{base}/studies/{study_id}")
        page.click("#sign-btn")
        expect(page.locator("#sign-dialog")).to_be_visible()
        page.click("#sign-confirm")
        expect(page.locator("#banner")).to_have_class(_has("banner-final"))
        expect(page.locator("#signed-by")).to_contain_text("Li Wei")
        page.screenshot(path=str(SCREENSHOT.with_name("prod-signed.png")))
        browser.close()

    # 5. The signed report's SR is in Orthanc (over DICOM TLS) and its F ORU at the RIS (MLLP/TLS).
    finals = wait_for(lambda: _all_delivered(clean_db, uid, final=True), 120, "the final")
    final_sr = next(d for d in finals if d.kind == DeliveryKind.SR)
    final_oru = next(d for d in finals if d.kind == DeliveryKind.HL7)
    assert read_oru((inbox / f"{final_oru.message_id}.hl7").read_text("utf-8")).result_status == "F"
    orthanc = OrthancClient(
        stack.env["MEDREGA_PACS_HTTP_URL"], "medrega", stack.secret("medrega_pacs_http_password")
    )
    found = orthanc.post_json(
        "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": final_sr.message_id}}
    )
    assert len(found) == 1


def _has(css_class: str):  # type: ignore[no-untyped-def]
    import re

    return re.compile(rf"(^|\s){re.escape(css_class)}(\s|$)")
