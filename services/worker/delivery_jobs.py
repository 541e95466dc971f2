"""Delivery rows for a report version: one DICOM SR to the PACS, one HL7 ORU to the RIS.

Rows are written in the same transaction as the report, so a report never exists without its
deliveries; the relay publishes them and the `deliver` task sends them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Report
from shared.message_ids import hl7_control_id, sr_sop_instance_uid


def pacs_destination() -> str:
    s = get_settings()
    return f"{s.pacs_ae_title}@{s.pacs_host}:{s.pacs_port}"


def ris_destination() -> str:
    s = get_settings()
    return f"{s.ris_host}:{s.ris_port}"


def create_deliveries(session: Session, report: Report) -> list[Delivery]:
    deliveries = [
        Delivery(
            report_id=report.id,
            kind=DeliveryKind.SR,
            destination=pacs_destination(),
            message_id=sr_sop_instance_uid(report.id, report.version),
            state=DeliveryState.PENDING,
        ),
        Delivery(
            report_id=report.id,
            kind=DeliveryKind.HL7,
            destination=ris_destination(),
            message_id=hl7_control_id(report.id, report.version),
            state=DeliveryState.PENDING,
        ),
    ]
    session.add_all(deliveries)
    return deliveries
