"""User administration from the command line: the first admin, and users when the UI is down.

    python -m services.web.cli create-user --username li.wei --full-name "Li Wei" \
        --dicom-name "Li^Wei" --role radiologist        # password from a prompt or stdin
    python -m services.web.create_admin --username admin --full-name "PACS Admin"

The password is read from the terminal (twice) or, when stdin is not a terminal, from its first
line (for scripts: `printf '%s\n' "$PW" | python -m services.web.create_admin …`). It is never a
command-line argument, where `ps` and shell history would keep it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from services.web.password_policy import PasswordRejected
from services.web.passwords import hash_new_password
from services.web.sessions import revoke_user_sessions
from shared.db.models import AuditEvent, User, UserRole
from shared.db.session import get_engine


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit("passwords differ")
    return first


def create_user(
    username: str,
    full_name: str | None,
    password: str,
    role: UserRole | None,
    dicom_person_name: str | None = None,
    *,
    update: bool = False,
    new_user_role: UserRole = UserRole.RADIOLOGIST,
) -> tuple[int, bool, str]:
    """Create (or with `update`, reset) a user; returns (id, created, role).

    A new user needs a full name (role: `role`, else `new_user_role`). A reset sets the password,
    reactivates the account and ends every session it had; its full name, DICOM name and role
    change only where given, so resetting an admin's password never demotes it and never drops
    the DICOM name its signed reports carry. PasswordRejected when the password breaks the
    policy (password_policy.py)."""
    password_hash = hash_new_password(password, username)
    with sessionmaker(get_engine()).begin() as session:
        user = session.scalar(select(User).where(User.username == username))
        created = user is None
        if user is None:
            if not full_name:
                raise SystemExit(f"user {username!r} is new: --full-name is required")
            user = User(username=username, role=role or new_user_role)
            session.add(user)
        elif not update:
            raise SystemExit(f"user {username!r} exists; pass --update to reset it")
        user.password_hash = password_hash
        if full_name:
            user.full_name = full_name
        if dicom_person_name is not None:
            user.dicom_person_name = dicom_person_name
        if role is not None:
            user.role = role
        user.active = True
        session.flush()
        role_now = UserRole(user.role).value
        if not created:
            revoke_user_sessions(session, user.id, "password_reset")
        session.add(
            AuditEvent(
                action="user_create" if created else "user_reset",
                object_type="user",
                object_id=str(user.id),
                username="cli",
                details={"role": role_now, "via": "cli"},
            )
        )
        return user.id, created, role_now


def main(argv: Sequence[str] | None = None, *, default_role: UserRole | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    if default_role is None:
        sub = parser.add_subparsers(dest="command", required=True)
        target = sub.add_parser("create-user", help="create or reset a user")
    else:
        target = parser
    target.add_argument("--username", required=True)
    target.add_argument("--full-name", help="required for a new user; --update: kept unless given")
    target.add_argument(
        "--dicom-name", help='DICOM Person Name, e.g. "Li^Wei" (--update: kept unless given)'
    )
    target.add_argument(
        "--role",
        choices=[r.value for r in UserRole],
        help=f"new user: default {(default_role or UserRole.RADIOLOGIST).value}; "
        "--update: kept unless given",
    )
    target.add_argument(
        "--update",
        action="store_true",
        help="reset an existing user: new password, reactivated, sessions ended",
    )
    args = parser.parse_args(argv)
    password = _read_password()
    try:
        user_id, created, role = create_user(
            args.username,
            args.full_name,
            password,
            UserRole(args.role) if args.role else None,
            args.dicom_name,
            update=args.update,
            new_user_role=default_role or UserRole.RADIOLOGIST,
        )
    except PasswordRejected as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{'created' if created else 'updated'} {role} {args.username!r} (id {user_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
