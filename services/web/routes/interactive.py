"""Locate (Text→Region) and Identify (Region→Text) on a study image, answered by the worker."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from services.web import web_settings
from services.web.deps import RowId, SessionDep, UserDep
from services.web.schemas import Box, IdentifyOut, IdentifyRequest, LocateOut, LocateRequest
from shared.db.models import Instance
from shared.vocab import load_vocab
from shared.worker_client import ModelCouldNotAnswer, WorkerBusy, ask_worker

router = APIRouter(prefix="/api/v1", tags=["region tools"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "the image is not part of the study"},
    422: {"description": "the model could not answer for this input"},
    503: {"description": "the model is busy or did not answer in time"},
}


def _instance_id(db: SessionDep, study_id: RowId, uid: str) -> int:
    instance_id = db.scalar(
        select(Instance.id).where(Instance.study_id == study_id, Instance.sop_instance_uid == uid)
    )
    if instance_id is None:
        raise HTTPException(status_code=404, detail="the image is not part of this study")
    db.close()  # the wait for the worker must not hold a database connection
    return int(instance_id)


def _ask(task: str, args: list[object]) -> dict[str, object]:
    try:
        return ask_worker(task, args, web_settings.INTERACTIVE_TIMEOUT_S)
    except WorkerBusy:
        raise HTTPException(
            status_code=503, detail="the model is busy or did not answer in time"
        ) from None
    except ModelCouldNotAnswer as exc:
        raise HTTPException(status_code=422, detail=f"the model could not answer: {exc}") from None


@router.post("/studies/{study_id}/locate", response_model=LocateOut, responses=RESPONSES)
def locate(study_id: RowId, body: LocateRequest, db: SessionDep, _: UserDep) -> LocateOut:
    """Where is the named structure (English or Chinese name or synonym) on this image?"""
    instance_id = _instance_id(db, study_id, body.sop_instance_uid)
    answer = _ask("medrega.locate", [instance_id, body.frame, body.query])
    code = answer.get("region_code")
    region = load_vocab().region(str(code)) if code else None
    raw_boxes = answer.get("boxes") or []
    assert isinstance(raw_boxes, list)
    return LocateOut(
        region_code=region.code if region else None,
        name_en=region.en if region else None,
        name_zh=region.zh if region else None,
        sop_instance_uid=body.sop_instance_uid,
        frame=body.frame,
        boxes=[Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for b in raw_boxes],
        probability=answer.get("probability"),  # type: ignore[arg-type]
    )


@router.post("/studies/{study_id}/identify", response_model=IdentifyOut, responses=RESPONSES)
def identify(study_id: RowId, body: IdentifyRequest, db: SessionDep, _: UserDep) -> IdentifyOut:
    """Which structure is in this box?"""
    instance_id = _instance_id(db, study_id, body.sop_instance_uid)
    box = [body.box.x1, body.box.y1, body.box.x2, body.box.y2]
    answer = _ask("medrega.identify", [instance_id, body.frame, box])
    return IdentifyOut(
        region_code=answer.get("region_code"),  # type: ignore[arg-type]
        name_en=str(answer.get("name_en") or ""),
        name_zh=str(answer.get("name_zh") or ""),
        probability=answer.get("probability"),  # type: ignore[arg-type]
    )
