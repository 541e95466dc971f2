"""MedRegA's interactive region tasks for the review UI: Locate (Text→Region), Identify
(Region→Text), on the interactive lane: its own worker process with its own model session,
so a click never waits behind drafts.

The web process waits for the answer on its own short-lived reply queue (AMQP `reply_to`): the
Celery app keeps no result backend, and these answers are ephemeral, so they never touch the
database. Payloads are an instance id plus the query; the task reads the file path from the
database like every other task. No retries: a user is waiting, and a late answer is worthless
(the message carries an expiry, so a busy worker drops it instead of running it late).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy import select

from services.worker.celery_app import INTERACTIVE_QUEUE, app
from shared.config import get_settings
from shared.db.instance_inputs import instance_input
from shared.db.models import Instance, Series
from shared.db.session import session_scope
from shared.inference.backend import InstanceInput, ModelAnswerInvalid, ModelServerUnavailable
from shared.reports.domain import PixelBox
from shared.storage.instance_reader import instance_reader, localize
from shared.storage.refs import InstanceUnavailable

log = logging.getLogger(__name__)


def _instance_input(instance_id: int) -> InstanceInput:
    with session_scope() as session:
        row = session.execute(
            select(Instance, Series)
            .join(Series, Instance.series_id == Series.id)
            .where(Instance.id == instance_id)
        ).first()
        if row is None:
            raise LookupError(f"instance {instance_id} does not exist")
        instance, series = row
        unread = instance_input(instance, series, get_settings().storage_dir)
    try:  # after the session: another node's file may take a moment to fetch
        return localize(unread, instance_reader(get_settings().storage_dir))
    except InstanceUnavailable as exc:
        raise LookupError(f"image not available: {exc}") from None


def _reply(task: Task, body: dict[str, Any]) -> dict[str, Any]:
    """Send the answer to the caller's reply queue (a vanished caller is fine: it's dropped)."""
    reply_to = task.request.reply_to
    if reply_to:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=reply_to,
                correlation_id=task.request.id,
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
            )
    return body


def _guarded(task: Task, work: Any) -> dict[str, Any]:
    try:
        return _reply(task, {"ok": True, **work()})
    except (LookupError, ValueError) as exc:
        # Bad input (unknown instance, frame out of range, undecodable image): say why.
        return _reply(task, {"ok": False, "error": str(exc)[:500]})
    except ModelServerUnavailable:
        # A served model (mllm backend) is down or slow: the user may try again later.
        return _reply(task, {"ok": False, "busy": True, "error": "the model server is unavailable"})
    except ModelAnswerInvalid as exc:
        return _reply(task, {"ok": False, "error": f"the model could not answer: {exc}"[:500]})
    except Exception as exc:
        log.exception("interactive task %s failed", task.name)
        _reply(task, {"ok": False, "error": f"model error: {type(exc).__name__}"})
        raise


def _valid_ids(instance_id: object, frame: object) -> tuple[int, int]:
    if not isinstance(instance_id, int) or isinstance(instance_id, bool):
        raise ValueError("instance id must be an integer")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 1:
        raise ValueError("frame must be a positive integer")
    return instance_id, frame


@app.task(name="medrega.locate", queue=INTERACTIVE_QUEUE, bind=True, acks_late=False, max_retries=0)
def locate(self: Task, instance_id: int, frame: int, query: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        from services.worker.tasks import model_backend

        image_id, frame_number = _valid_ids(instance_id, frame)
        if not isinstance(query, str) or not 0 < len(query) <= 128:
            raise ValueError("query must be a non-empty string of at most 128 characters")
        answer = model_backend().locate(_instance_input(image_id), frame_number, query)
        return {
            "region_code": answer.region_code,
            "sop_instance_uid": answer.image.sop_instance_uid,
            "frame": answer.image.frame,
            "boxes": [[b.x1, b.y1, b.x2, b.y2] for b in answer.boxes],
            "probability": answer.probability,
        }

    return _guarded(self, work)


@app.task(
    name="medrega.identify", queue=INTERACTIVE_QUEUE, bind=True, acks_late=False, max_retries=0
)
def identify(self: Task, instance_id: int, frame: int, box: list[float]) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        from services.worker.tasks import model_backend

        image_id, frame_number = _valid_ids(instance_id, frame)
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError("box must be [x1, y1, x2, y2]")
        pixel_box = PixelBox(*(float(v) for v in box))
        answer = model_backend().identify(_instance_input(image_id), frame_number, pixel_box)
        return {
            "region_code": answer.region_code,
            "name_en": answer.name_en,
            "name_zh": answer.name_zh,
            "probability": answer.probability,
        }

    return _guarded(self, work)
