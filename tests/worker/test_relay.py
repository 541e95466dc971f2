"""The outbox relay's choices, against real PostgreSQL: what is due, and in which order."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from services.worker.relay import relay_once
from shared.db.models import DeliveryKind, Report, ReportStatus
from shared.reports.deliveries import create_deliveries
from tests.support.study_rows import index_files
from tests.worker.conftest import phantom


def test_the_oru_is_published_before_the_sr_of_the_same_report(
    clean_db: Engine, tmp_path: Path
) -> None:
    """The ORU is what the RIS and clinicians read; an SR C-STORE to a busy PACS must not hold
    it up behind it in the queue."""
    written = phantom("cxr", tmp_path / "in", abnormal=True, max_side=256)
    with sessionmaker(clean_db).begin() as session:
        study = index_files(session, tmp_path / "storage", written.files)
        report = Report(
            study_id=study.id, version=1, status=ReportStatus.DRAFT, model_name="m",
            model_version="1", model_backend="onnx", domain="cxr", sentences=[],
        )  # fmt: skip
        session.add(report)
        session.flush()
        deliveries = {d.kind: d for d in create_deliveries(session, report)}
        session.flush()
        ids = {kind: d.id for kind, d in deliveries.items()}
    published: list[tuple[str, int]] = []
    relay_once(clean_db, lambda kind, row: published.append((kind, row)))
    assert published == [("deliver", ids[DeliveryKind.HL7]), ("deliver", ids[DeliveryKind.SR])]
