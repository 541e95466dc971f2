"""Which draft and which delivery go first, and the upgrade from the queues before the lanes.

A chest X-ray costs the model tens of milliseconds, a 300-slice CT seconds: drafted in arrival
order, a burst's X-rays wait behind its CTs. The relay publishes each draft job with a RabbitMQ
message priority (the `draft` queue is declared with `x-max-priority`), and the broker hands the
model worker the highest-priority message whenever the model is free (prefetch 1, acks late).
Nothing is starved for long: CT jobs still run whenever no X-ray is waiting, and a burst of
X-rays is finite. Deliveries likewise (the `delivery` queue): a burst's SRs, each a C-STORE with
its association, must not hold up the ORUs the RIS is waiting for.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from amqp.exceptions import NotFound
from kombu import Connection
from sqlalchemy import ColumnElement, Engine, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from shared.db.models import (
    Delivery,
    DeliveryKind,
    DraftJob,
    DraftJobState,
    ResultStatus,
    Series,
    Study,
)

log = logging.getLogger(__name__)

# Projection radiography (CR, DX), mammography, panoramic and intra-oral X-ray: one to a few
# images, drafted in well under a second.
XRAY_MODALITIES = frozenset({"CR", "DX", "MG", "PX", "IO"})

PRIORITY_CRITICAL = 9  # a re-draft of a study the model already found critical
PRIORITY_XRAY = 7
# Other studies by size: (at most this many instances, priority), first match wins.
PRIORITY_BY_SIZE = ((10, 5), (50, 3), (200, 2))
PRIORITY_LARGEST = 1


def draft_priority(*, instance_count: int, modalities: set[str], critical: bool) -> int:
    """The message priority of a draft job (0–9; higher goes first)."""
    if critical:
        return PRIORITY_CRITICAL
    if modalities and modalities <= XRAY_MODALITIES:
        return PRIORITY_XRAY
    for most, priority in PRIORITY_BY_SIZE:
        if instance_count <= most:
            return priority
    return PRIORITY_LARGEST


def _xray_study_job() -> ColumnElement[bool]:
    """SQL: the draft job's study is an X-ray study in `draft_priority`'s sense — it has an X-ray
    series and no series of another modality (our own output and unknown modalities aside) —
    and is small (one to a few images)."""
    xray, other = aliased(Series), aliased(Series)
    has_xray = exists().where(
        xray.study_id == DraftJob.study_id,
        xray.is_own_output.is_(False),
        xray.modality.in_(XRAY_MODALITIES),
    )
    has_other = exists().where(
        other.study_id == DraftJob.study_id,
        other.is_own_output.is_(False),
        other.modality.is_not(None),
        other.modality.not_in(XRAY_MODALITIES),
    )
    return has_xray & ~has_other & (DraftJob.instance_count <= PRIORITY_BY_SIZE[0][0])


def is_xray_job(session: Session, job_id: int) -> bool:
    return (
        session.scalar(select(DraftJob.id).where(DraftJob.id == job_id, _xray_study_job()))
        is not None
    )


def waiting_xray_jobs(session: Session, *, exclude: int, limit: int) -> list[int]:
    """X-ray jobs waiting for the draft lane (published and not started, or recorded and not yet
    published by the relay; not those waiting out a backoff), critical studies first, then in
    arrival order: the companions a draft run may take with it (`drafting.run_draft_job`)."""
    return list(
        session.scalars(
            select(DraftJob.id)
            .join(Study, Study.id == DraftJob.study_id)
            .where(
                DraftJob.id != exclude,
                or_(
                    DraftJob.state == DraftJobState.QUEUED,
                    (DraftJob.state == DraftJobState.PENDING) & DraftJob.next_attempt_at.is_(None),
                ),
                _xray_study_job(),
            )
            .order_by(Study.critical.desc(), DraftJob.id)
            .limit(limit)
        )
    )


def job_priority(engine: Engine, job_id: int) -> int:
    """The priority of a job as the database describes it now (0 if it is gone)."""
    with sessionmaker(engine)() as session:
        row = session.execute(
            select(DraftJob.study_id, DraftJob.instance_count, Study.critical)
            .join(Study, Study.id == DraftJob.study_id)
            .where(DraftJob.id == job_id)
        ).first()
        if row is None:
            return 0
        modalities = {
            modality
            for modality in session.scalars(
                select(Series.modality).where(
                    Series.study_id == row.study_id,
                    Series.is_own_output.is_(False),
                )
            )
            if modality
        }
    return draft_priority(
        instance_count=row.instance_count, modalities=modalities, critical=row.critical
    )


def delivery_priority(*, kind: str, result_status: str) -> int:
    """The message priority of a delivery: a signed report (a radiologist just pressed Sign)
    before a draft's, and the ORU (what the RIS and the referring clinician read; one cheap
    MLLP message) before the SR (a C-STORE with its association and SR building)."""
    signed = result_status in (ResultStatus.FINAL, ResultStatus.CORRECTED)
    if kind == DeliveryKind.HL7:
        return 9 if signed else 5
    return 7 if signed else 1


def delivery_priority_of(engine: Engine, delivery_id: int) -> int:
    with sessionmaker(engine)() as session:
        row = session.execute(
            select(Delivery.kind, Delivery.result_status).where(Delivery.id == delivery_id)
        ).first()
    if row is None:
        return 0
    return delivery_priority(kind=row.kind, result_status=row.result_status)


def retire_legacy_queue(broker_url: str, queue_name: str) -> int | None:
    """Delete a queue of the pre-lanes layout once nothing consumes it; the number of messages
    it held, or None when it is gone already or an old worker still consumes it (that worker
    drains it; the next relay start tries again)."""
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            _, messages, consumers = channel.queue_declare(queue_name, passive=True)
        except NotFound:
            return None
        if consumers:
            log.warning(
                "legacy queue %s still has %d consumer(s): stop the old worker", queue_name,
                consumers,
            )  # fmt: skip
            return None
        channel.queue_delete(queue_name, if_unused=True)
    log.warning("retired legacy queue %s (%d message(s))", queue_name, messages)
    return int(messages)


def make_queued_drafts_due(engine: Engine, now: datetime, republish_after: timedelta) -> int:
    """Every job still `queued` is made due for the relay's next pass: its message may have been
    in a retired queue. Duplicates are harmless (the draft task locks and re-checks the job)."""
    with sessionmaker(engine).begin() as session:
        return len(
            session.scalars(
                update(DraftJob)
                .where(DraftJob.state == DraftJobState.QUEUED)
                .values(published_at=now - republish_after - timedelta(seconds=1))
                .returning(DraftJob.id)
            ).all()
        )
