"""GET /api/v1/worklist: the radiologists' queue, critical first, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.web.deps import SessionDep, UserDep
from services.web.schemas import Worklist
from services.web.worklist_query import (
    MAX_PAGE_SIZE,
    DisplayStatus,
    WorklistFilter,
    load_worklist,
)

router = APIRouter(prefix="/api/v1", tags=["worklist"])


@router.get("/worklist", response_model=Worklist)
def worklist(
    db: SessionDep,
    _: UserDep,
    status: DisplayStatus | None = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z]{2,4}$")] = None,
    domain: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    q: Annotated[
        str | None, Query(max_length=128, description="patient name, ID or accession")
    ] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> Worklist:
    """Studies with their display status; filters combine (AND). Polled by the worklist page."""
    return load_worklist(
        db,
        WorklistFilter(
            status=status,
            modality=modality,
            domain=domain,
            q=q.strip() if q and q.strip() else None,
            page=page,
            page_size=page_size,
        ),
    )
