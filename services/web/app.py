"""FastAPI application: the radiologists' review UI and its JSON API.

So far it serves the health endpoint used by Compose and the local stack; the worklist, review,
sign-in and audit pages come with the review-UI issue.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import text

from shared.db.session import get_engine

app = FastAPI(title="medrega-pacs", version="0.1.0")


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, Any]:
    """Up when the database answers; no authentication (load balancers call it)."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    return {"status": "ok"}
