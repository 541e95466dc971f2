"""Audit rows: who saw, edited or signed what, when, from where (invariant 5).

Written in the same transaction as the change they describe, so an edit without its audit row
cannot exist. Details carry IDs and codes only, never patient data.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from shared.db.models import AuditEvent, User


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def record(
    db: Session,
    request: Request,
    user: User | None,
    action: str,
    *,
    object_type: str | None = None,
    object_id: str | int | None = None,
    study_id: int | None = None,
    details: dict[str, Any] | None = None,
    username: str | None = None,
) -> None:
    db.add(
        AuditEvent(
            user_id=user.id if user else None,
            username=(user.username if user else username),
            action=action,
            object_type=object_type,
            object_id=str(object_id) if object_id is not None else None,
            study_id=study_id,
            remote_addr=client_address(request),
            details=details,
        )
    )
