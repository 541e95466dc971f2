"""Password hashing with argon2id (argon2-cffi's defaults follow RFC 9106's recommendations)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.web.password_policy import check_password

_hasher = PasswordHasher()

# Verified against when the username is unknown, so a miss costs the same time as a hit
# (no username enumeration by timing).
_DUMMY_HASH = _hasher.hash("medrega-no-such-user-placeholder")


def hash_new_password(password: str, username: str | None) -> str:
    """The hash of a password being set now; PasswordRejected unless the policy accepts it."""
    check_password(password, username)
    return _hasher.hash(password)


def hash_password(password: str) -> str:
    """The hash of a password already accepted (re-hashing at sign-in, test fixtures)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
