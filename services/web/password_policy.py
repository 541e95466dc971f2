"""Which passwords are accepted, per NIST SP 800-63B §5.1.1.2: long enough, not known to be
common, not the username or the service's name, no composition rules (no "one digit, one
symbol"), no expiry.

Checked wherever a password is set: the API and the admin page creating users, the command-line
tools, and a user changing their own password. `PasswordRejected` says why, in words a user can
act on; the password itself never appears in a message or a log.
"""

from __future__ import annotations

import string
import unicodedata
from functools import lru_cache
from pathlib import Path

from services.web.web_settings import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
# Context-specific words (SP 800-63B: "the name of the service").
SERVICE_WORDS = ("medrega", "pacs")
_DECORATION = string.digits + string.punctuation + " "


class PasswordRejected(ValueError):
    """The password breaks the policy; the message says which rule, never the password."""


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


# Ordered and keyboard sequences, each twice over so a run may wrap ('…7890123…').
_SEQUENCES = tuple(
    2 * seq
    for seq in (
        "0123456789",
        "abcdefghijklmnopqrstuvwxyz",
        "qwertyuiopasdfghjklzxcvbnm",
        "qwertzuiopasdfghjklyxcvbnm",
        "azertyuiopqsdfghjklmwxcvbn",
        "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    )
)


def _is_run(text: str) -> bool:
    """One character repeated, or a stretch of an ordered or keyboard sequence, either way
    ('aaaa…', '1234…', 'zyx…', 'qwerty…')."""
    if len(set(text)) == 1:
        return True
    return any(text in seq or text[::-1] in seq for seq in _SEQUENCES)


def check_password(password: str, username: str | None = None) -> None:
    """Raise PasswordRejected unless `password` may be set (for `username`, when given)."""
    # SP 800-63B counts characters after Unicode normalisation; NFKC as verifiers are told to.
    normalised = unicodedata.normalize("NFKC", password)
    if len(normalised) < MIN_PASSWORD_LENGTH:
        raise PasswordRejected(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(normalised) > MAX_PASSWORD_LENGTH:
        raise PasswordRejected(f"password must have at most {MAX_PASSWORD_LENGTH} characters")
    lowered = normalised.casefold()
    common = common_passwords()
    # 'Password2024!' is 'password' dressed up: strip digits and symbols from both ends too.
    core = lowered.strip(_DECORATION)
    if lowered in common or core in common or lowered.replace(" ", "") in common:
        raise PasswordRejected("password is too common (it is on a list of breached passwords)")
    if _is_run(lowered) or (len(core) >= 4 and _is_run(core)):
        raise PasswordRejected("password is a repeated or sequential pattern")
    name = (username or "").casefold().strip()
    if len(name) >= 4 and (name in lowered or lowered in name):
        raise PasswordRejected("password must not contain the username")
    if any(word in core and len(core) - len(word) < 6 for word in SERVICE_WORDS):
        raise PasswordRejected("password is too close to the name of this service")
