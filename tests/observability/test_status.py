"""`make status` on a seeded database: the lanes' depths in RabbitMQ, what is still owed, and the
oldest undelivered item with its age and last error — by row id, never by patient."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from ops.status import duration
from shared.config import REPO_ROOT, Settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Study
from tests.observability.conftest import drafted_studies
from tests.support.worker_process import delete_test_queues, queue_prefix


def _seed(engine: Engine) -> tuple[int, int]:
    """Two drafted studies with their deliveries owed; the first study's ORU has been retrying
    for an hour. Returns (that delivery's id, its study's id)."""
    drafted_studies(engine, 2)
    with sessionmaker(engine).begin() as session:
        first = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.HL7).order_by(Delivery.id)
        ).first()
        assert first is not None
        session.execute(
            update(Delivery)
            .where(Delivery.id == first.id)
            .values(
                state=DeliveryState.RETRYING,
                attempts=3,
                next_attempt_at=datetime.now(UTC) + timedelta(minutes=5),
                last_attempt_at=datetime.now(UTC) - timedelta(minutes=1),
                last_error="AE: RIS sink: simulated application error",
                created_at=datetime.now(UTC) - timedelta(hours=1, minutes=2),
            )
        )
        return first.id, first.study_id


def test_make_status_shows_queue_depths_and_the_oldest_undelivered_item(clean_db: Engine) -> None:
    delivery_id, study_id = _seed(clean_db)
    prefix = queue_prefix()
    broker = Settings().broker_url
    lane = Queue(f"{prefix}draft", Exchange(f"{prefix}draft"), routing_key=f"{prefix}draft",
                 durable=True, max_priority=9)  # fmt: skip
    try:
        with Connection(broker) as connection:
            producer = connection.Producer()
            for n in range(3):
                producer.publish({"n": n}, exchange=lane.exchange, routing_key=lane.routing_key,
                                 declare=[lane])  # fmt: skip
        result = subprocess.run(
            ["make", "-s", "status"],
            cwd=REPO_ROOT,
            env={**os.environ, "MEDREGA_QUEUE_PREFIX": prefix},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        delete_test_queues(prefix)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert any(line.split()[:3] == [f"{prefix}draft", "3", "waiting"] for line in lines), out
    assert any(line.split()[:3] == [f"{prefix}delivery", "0", "waiting"] for line in lines), out
    assert "draft jobs: pending 0, queued 0, running 0, failed 0" in out
    owed = next(line for line in lines if line.startswith("deliveries owed:"))
    assert "hl7 2" in owed and "sr 2" in owed and "failed (an admin may retry): none" in owed
    oldest = next(line for line in lines if line.startswith("oldest undelivered:"))
    assert f"delivery {delivery_id} (hl7, P, retrying, 3 attempt(s)) of study-{study_id}" in oldest
    assert "waiting 1h02m" in oldest
    assert "last error: AE: RIS sink: simulated application error" in out
    with sessionmaker(clean_db)() as session:
        for study in session.scalars(select(Study)):
            for phi in (study.patient_id, study.patient_name, study.accession_number):
                assert phi and phi not in out


def test_durations_read_like_a_clock() -> None:
    assert duration(4.25) == "4.2s"
    assert duration(3725) == "1h02m05s"
    assert duration(125) == "2m05s"
    assert duration(90061) == "1d01h01m"
