"""`python -m services.web.cli create-user` / `create_admin`: a reset changes what it is told to.

Run in-process (stdin is not a terminal, so the password is its first line) on the test database.
"""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web import cli
from shared.db.models import AuditEvent, User, UserRole

NEW_PASSWORD = "a lantern by the river 2026"


def _run(monkeypatch: pytest.MonkeyPatch, *args: str, role: UserRole | None = None) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    return cli.main(list(args), default_role=role)


def _user(session: Session, username: str) -> User:
    session.expire_all()
    user = session.scalar(select(User).where(User.username == username))
    assert user is not None
    return user


def test_a_password_reset_keeps_the_role_and_the_dicom_name(
    monkeypatch: pytest.MonkeyPatch, db_session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, "create-user", "--username", "pacs.admin", "--full-name",
                "PACS Admin", "--dicom-name", "Admin^PACS", "--role", "admin") == 0  # fmt: skip
    before = _user(db_session, "pacs.admin").password_hash
    # The reset an admin would type after a forgotten password: no --role, no --dicom-name.
    assert _run(monkeypatch, "create-user", "--username", "pacs.admin", "--update") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("updated admin 'pacs.admin'")
    user = _user(db_session, "pacs.admin")
    assert user.role == UserRole.ADMIN
    assert user.dicom_person_name == "Admin^PACS"
    assert user.full_name == "PACS Admin"
    assert user.password_hash != before and user.active
    reset = db_session.scalars(select(AuditEvent).where(AuditEvent.action == "user_reset")).one()
    assert reset.details == {"role": "admin", "via": "cli"}


def test_create_admin_update_does_not_promote_a_radiologist(
    monkeypatch: pytest.MonkeyPatch, db_session: Session
) -> None:
    assert _run(monkeypatch, "create-user", "--username", "li.wei", "--full-name", "Li Wei") == 0
    assert _user(db_session, "li.wei").role == UserRole.RADIOLOGIST
    assert _run(monkeypatch, "--username", "li.wei", "--update", role=UserRole.ADMIN) == 0
    assert _user(db_session, "li.wei").role == UserRole.RADIOLOGIST
    # …unless the role is asked for.
    assert _run(monkeypatch, "--username", "li.wei", "--update", "--role", "admin",
                role=UserRole.ADMIN) == 0  # fmt: skip
    assert _user(db_session, "li.wei").role == UserRole.ADMIN


def test_create_admin_makes_an_admin_and_a_new_user_needs_a_full_name(
    monkeypatch: pytest.MonkeyPatch, db_session: Session
) -> None:
    with pytest.raises(SystemExit, match="--full-name is required"):
        _run(monkeypatch, "--username", "first.admin", role=UserRole.ADMIN)
    assert db_session.scalar(select(User).where(User.username == "first.admin")) is None
    assert _run(monkeypatch, "--username", "first.admin", "--full-name", "First",
                role=UserRole.ADMIN) == 0  # fmt: skip
    assert _user(db_session, "first.admin").role == UserRole.ADMIN
    # `--update` on a name not yet taken creates the user as the command would without it.
    assert _run(monkeypatch, "--username", "second.admin", "--full-name", "Second", "--update",
                role=UserRole.ADMIN) == 0  # fmt: skip
    assert _user(db_session, "second.admin").role == UserRole.ADMIN
