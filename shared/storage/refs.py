"""What a reader needs to find one stored file: where it is, and what its bytes must hash to."""

from __future__ import annotations

import re
from dataclasses import dataclass

# `<Study>/<Series>/<SOPInstance>[.<sha256 prefix or whole>].dcm`, as the listener's content
# store names files (services/listener/storage.py). Nothing else is ever served or requested.
RELATIVE_PATH = re.compile(
    r"[0-9.]{1,64}/[0-9.]{1,64}/[0-9.]{1,64}(?:\.[0-9a-f]{16}|\.[0-9a-f]{64})?\.dcm"
)
SHA256 = re.compile(r"[0-9a-f]{64}")


class InstanceUnavailable(OSError):
    """The file can't be read now (its node is unreachable, refused, or sent other bytes).

    An OSError, so callers that already treat an unreadable file as such keep doing so."""


def checked_relative_path(value: str) -> str:
    """`value` when it is a content-store path (no '..', no absolute path, nothing else)."""
    if not RELATIVE_PATH.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(f"not a stored instance path: {value[:120]!r}")
    return value


@dataclass(frozen=True, slots=True)
class StoredFileRef:
    file_path: str  # relative to its node's storage directory (instances.file_path)
    sha256: str  # of the whole file, as stored by the listener
    size_bytes: int
    node: str | None = None  # instances.storage_node; None: this machine's storage directory
