"""Single sign-on with OpenID Connect against a real provider over TLS (tests/production/
oidc_provider.py): the code flow signs an existing user in; every bad answer is refused."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.db.models import AuditEvent, UserRole
from tests.production.oidc_provider import OidcProvider
from tests.production.pki import Pki
from tests.support.web_process import RunningWeb, start_web
from tests.web.factories import make_user


@pytest.fixture
def provider(pki: Pki) -> Iterator[OidcProvider]:
    cert, key = pki.issue("idp")
    running = OidcProvider(cert, key).start()
    yield running
    running.stop()


@pytest.fixture
def web(clean_db: Engine, provider: OidcProvider, pki: Pki, tmp_path: Path) -> Iterator[RunningWeb]:
    with Session(clean_db) as session:
        make_user(session, "li.wei", UserRole.RADIOLOGIST, full_name="Li Wei")
        make_user(session, "gone.user", UserRole.RADIOLOGIST, active=False)
    env = {
        "MEDREGA_OIDC_ISSUER": provider.issuer,
        "MEDREGA_OIDC_CLIENT_ID": provider.client_id,
        "MEDREGA_OIDC_CLIENT_SECRET": provider.client_secret,
        "MEDREGA_OIDC_CA": str(pki.ca),
    }
    running = start_web(env, tmp_path / "web.log")
    yield running
    running.stop()


def _browser(pki: Pki) -> httpx.Client:
    """Follows redirects and keeps cookies like a browser; trusts the test CA for the provider."""
    return httpx.Client(
        verify=ssl.create_default_context(cafile=str(pki.ca)), follow_redirects=True, timeout=20
    )


def _audit(engine: Engine, action: str) -> list[AuditEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_the_code_flow_signs_an_existing_user_in(
    web: RunningWeb, provider: OidcProvider, pki: Pki, clean_db: Engine
) -> None:
    with _browser(pki) as browser:
        page = browser.get(web.base_url + "/login")
        assert 'id="sso-sign-in"' in page.text
        landed = browser.get(web.base_url + "/login/oidc?next=/worklist")
        assert landed.status_code == 200 and landed.url.path == "/worklist"
        hops = [str(r.url) for r in landed.history]
        assert hops[1].startswith(provider.issuer + "/authorize?")  # via the provider
        assert "code_challenge_method=S256" in hops[1] and "nonce=" in hops[1]
        assert "medrega_session" in browser.cookies
        assert browser.get(web.base_url + "/api/v1/session").json()["username"] == "li.wei"
        # The code was spent: replaying the provider's answer does not sign anyone in again.
        replay = browser.get(hops[2])
        assert replay.status_code == 403
    assert provider.token_requests == 1  # the replay failed before the provider (no flow)
    [login] = _audit(clean_db, "login")
    assert login.details == {"method": "oidc", "issuer": provider.issuer}


@pytest.mark.parametrize("fault", ["wrong_nonce", "wrong_audience", "foreign_key", "expired"])
def test_a_bad_id_token_is_refused(
    web: RunningWeb, provider: OidcProvider, pki: Pki, clean_db: Engine, fault: str
) -> None:
    provider.fault = fault  # type: ignore[assignment]
    with _browser(pki) as browser:
        answer = browser.get(web.base_url + "/login/oidc")
        assert answer.status_code == 403 and "Single sign-on failed" in answer.text
        assert "medrega_session" not in browser.cookies
        assert browser.get(web.base_url + "/api/v1/session").status_code == 401
    assert provider.token_requests == 1
    [failed] = _audit(clean_db, "login_failed")
    assert failed.details is not None and failed.details["method"] == "oidc"
    assert "ID token refused" in failed.details["reason"]
    assert _audit(clean_db, "login") == []


@pytest.mark.parametrize("who", ["nobody.here", "gone.user"])
def test_an_identity_without_an_active_account_is_refused(
    web: RunningWeb, provider: OidcProvider, pki: Pki, clean_db: Engine, who: str
) -> None:
    provider.login_as = who
    with _browser(pki) as browser:
        answer = browser.get(web.base_url + "/login/oidc")
        assert answer.status_code == 403
        assert "medrega_session" not in browser.cookies
    [failed] = _audit(clean_db, "login_failed")
    assert failed.username == who and failed.details["reason"] == (  # type: ignore[index]
        "no active account for this identity"
    )


def test_a_forged_state_or_a_missing_flow_cookie_is_refused(
    web: RunningWeb, provider: OidcProvider, pki: Pki
) -> None:
    with _browser(pki) as browser:
        started = browser.get(web.base_url + "/login/oidc", follow_redirects=False)
        assert started.status_code == 303 and "medrega_oidc_flow" in browser.cookies
        forged = browser.get(web.base_url + "/login/oidc/callback?code=x&state=forged")
        assert forged.status_code == 403 and "medrega_session" not in browser.cookies
    with _browser(pki) as stranger:  # a callback in a browser that never started a sign-in
        answer = stranger.get(web.base_url + "/login/oidc/callback?code=x&state=y")
        assert answer.status_code == 403
    assert provider.token_requests == 0
