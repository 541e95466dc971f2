"""The identity of a study's instance set: what a draft job covers.

The listener creates one draft job per (study, instance set); the worker re-computes the set
when it runs and supersedes a job whose study has since grown. Both must agree byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def instance_set_sha256(sop_instance_uids: Iterable[str]) -> str:
    joined = "\n".join(sorted(set(sop_instance_uids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()
