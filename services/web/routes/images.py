"""GET a stored frame as PNG, windowed server-side (presets per modality), cacheable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from sqlalchemy import select

from services.web import rendering
from services.web.deps import SessionDep, UserDep
from services.web.web_settings import RENDER_DEFAULT_MAX_SIDE, RENDER_MAX_SIDE_LIMIT
from shared.config import get_settings
from shared.db.instance_inputs import stored_file
from shared.db.models import Instance
from shared.dicom.pixels import PixelDataUnsupported
from shared.storage.instance_reader import instance_reader
from shared.storage.refs import InstanceUnavailable

router = APIRouter(prefix="/api/v1", tags=["images"])

Preset = Annotated[str, Query(pattern="^(" + "|".join(sorted(rendering.PRESET_CODES)) + ")$")]


def _stored_path(instance: Instance) -> Path:
    """The file on this machine: from its storage directory, or fetched from the node that
    stored it (shared.storage.instance_reader; never outside a storage directory)."""
    settings = get_settings()
    try:
        return instance_reader(settings.storage_dir).local_path(stored_file(instance))
    except InstanceUnavailable:
        elsewhere = instance.storage_node not in (None, settings.node_name)
        # Another node unreachable: try again later (503); a bad local path: not found (404).
        raise HTTPException(
            status_code=503 if elsewhere else 404, detail="image file not available"
        ) from None


@router.get(
    "/images/{sop_instance_uid}/frames/{frame}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "8-bit PNG of the frame"},
        304: {"description": "not modified"},
        404: {"description": "no such image or frame"},
        422: {"description": "the frame cannot be rendered"},
    },
)
def render_image(
    request: Request,
    db: SessionDep,
    _: UserDep,
    sop_instance_uid: Annotated[str, PathParam(max_length=64, pattern=r"^[0-9.]+$")],
    frame: Annotated[int, PathParam(ge=1, le=100_000)],
    preset: Preset = "default",
    max_side: Annotated[int, Query(ge=64, le=RENDER_MAX_SIDE_LIMIT)] = RENDER_DEFAULT_MAX_SIDE,
    wc: Annotated[float | None, Query(ge=-100_000, le=100_000, allow_inf_nan=False)] = None,
    ww: Annotated[float | None, Query(gt=0, le=200_000, allow_inf_nan=False)] = None,
) -> Response:
    """X-Image-Scale: source pixels per PNG pixel; X-Source-Rows/Columns: the source size."""
    instance = db.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    if instance is None:
        raise HTTPException(status_code=404, detail="no such image")
    db.close()  # decoding takes a while; don't hold a pooled connection meanwhile
    key = (instance.file_path, frame, preset, max_side, wc, ww)
    etag = '"' + hashlib.sha256(repr((sop_instance_uid, *key[1:])).encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "private, max-age=86400", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    rendered = rendering.cache.get(key)
    if rendered is None:
        try:
            rendered = rendering.render_frame(
                _stored_path(instance),
                frame,
                preset=preset,
                max_side=max_side,
                center=wc if ww is not None else None,
                width=ww if wc is not None else None,
            )
        except rendering.RenderError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except PixelDataUnsupported as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        rendering.cache.put(key, rendered)
    headers.update(
        {
            "X-Image-Scale": str(rendered.scale),
            "X-Source-Rows": str(rendered.rows),
            "X-Source-Columns": str(rendered.columns),
            "X-Window": f"{rendered.window[0]:g}/{rendered.window[1]:g}",
        }
    )
    return Response(rendered.png, media_type="image/png", headers=headers)
