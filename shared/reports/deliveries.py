"""A report version's messages: creating them, deciding when one may go, recording each attempt.

Each version that is sent gets its DICOM objects for the PACS (SR, GSPS, KOS, as configured) and
one HL7 ORU (to the RIS), created in the version's own transaction with identifiers derived from (report id, version). For one
study, kind and destination, messages go out in version order and never backwards:
- never a preliminary (P) once a final (F/C) exists; a correction (C) only after an F went out;
- a newer version's message waits while an older one is still in flight;
- a superseded version's messages that have not gone out are cancelled (recorded, never sent);
  final (F) messages are never cancelled.
`claim` applies these rules under the study's lifecycle lock before every attempt; the
deliveries guard trigger (migration 0003) refuses any claim that breaks them.

No delivery is ever stuck: a claim takes a lease; every attempt's outcome, expected or not, is
recorded (attempts, last error, transient/permanent) and leads to a retry with backoff or to
'failed' (visible, one-click retry); a lease that runs out (the worker died) is taken back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.advisory_locks import lock_study
from shared.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Report,
    ReportStatus,
    ResultStatus,
)
from shared.delivery_policy import DEFAULT_POLICY, RetryPolicy, after_failure
from shared.reports.domain import RESULT_STATUS
from shared.reports.key_images import key_findings_of
from shared.reports.mapping import finding_from_row
from shared.reports.message_ids import (
    fhir_message_id,
    gsps_series_uid,
    hl7_control_id,
    kos_uids,
    sr_uids,
)

log = logging.getLogger(__name__)

# An attempt's lease: longer than the MLLP and DIMSE timeouts, so only a dead worker overruns it.
ATTEMPT_LEASE = timedelta(minutes=2)
# How long a message waits before asking again when an older version is still in flight.
ORDER_WAIT = timedelta(seconds=2)
OPEN_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
# A cancelled message that was attempted before: an attempt whose answer was lost (the worker
# died mid-send, the ACK timed out) may have reached the receiver, in order, before anything
# newer could go. The row says so rather than claim it never went out.
MAYBE_RECEIVED = "attempted before: the receiver may hold it if an attempt's answer was lost"
ACK_CODES = ("AE", "AR", "CE", "CR")


def pacs_destination() -> str:
    s = get_settings()
    return f"{s.pacs_ae_title}@{s.pacs_host}:{s.pacs_port}"


def ris_destination() -> str:
    s = get_settings()
    return f"{s.ris_host}:{s.ris_port}"


def pacs_targets(report: Report) -> list[tuple[DeliveryKind, str]]:
    """(kind, message ID) of what the PACS gets of this version: the objects MEDREGA_PACS_OBJECTS
    names, a GSPS only when a sent abnormal finding has a box and a KOS only when one is on an
    image (a normal study has no key image). The GSPS delivery sends one presentation state per
    key image; its message ID is their common series."""
    wanted = get_settings().pacs_objects
    key = key_findings_of(finding_from_row(row) for row in report.findings)
    targets: list[tuple[DeliveryKind, str]] = []
    if "sr" in wanted:
        targets.append((DeliveryKind.SR, sr_uids(report.id, report.version).sop_instance_uid))
    if "gsps" in wanted and any(f.box is not None for f in key):
        targets.append((DeliveryKind.GSPS, gsps_series_uid(report.id, report.version)))
    if "kos" in wanted and key:
        targets.append((DeliveryKind.KOS, kos_uids(report.id, report.version).sop_instance_uid))
    return targets


def create_deliveries(session: Session, report: Report) -> list[Delivery]:
    """The rows of a version that is sent (draft, signed, corrected): what the PACS gets of it
    (SR, GSPS, KOS: `pacs_targets`), the ORU and, with MEDREGA_FHIR_SERVER_URL, the FHIR
    DiagnosticReport. Every kind follows the same order rules."""
    status = RESULT_STATUS[report.status]
    _cancel_superseded(session, report, status)
    pacs = pacs_destination()
    targets = [(kind, pacs, message_id) for kind, message_id in pacs_targets(report)] + [
        (DeliveryKind.HL7, ris_destination(), hl7_control_id(report.id, report.version))
    ]
    fhir_server = get_settings().fhir_server_url
    if fhir_server:  # the EHR's FHIR server, when one is configured: the DiagnosticReport
        targets.append((DeliveryKind.FHIR, fhir_server, fhir_message_id(report.id, report.version)))
    deliveries = [
        Delivery(
            report_id=report.id,
            study_id=report.study_id,
            report_version=report.version,
            result_status=status,
            kind=kind,
            destination=destination,
            message_id=message_id,
            state=DeliveryState.PENDING,
        )
        for kind, destination, message_id in targets
    ]
    session.add_all(deliveries)
    session.flush()
    return deliveries


def _cancel_superseded(session: Session, report: Report, status: str) -> None:
    """Older versions' preliminary messages (and, for a correction, older corrections) that have
    not gone out are cancelled: the new version carries everything they said."""
    cancel_statuses = [ResultStatus.PRELIMINARY] + (
        [ResultStatus.CORRECTED] if status == ResultStatus.CORRECTED else []
    )
    session.execute(
        update(Delivery)
        .where(
            Delivery.study_id == report.study_id,
            Delivery.report_version < report.version,
            Delivery.result_status.in_(cancel_statuses),
            Delivery.state.in_([*OPEN_STATES, DeliveryState.FAILED]),
        )
        .values(
            state=DeliveryState.CANCELLED,
            next_attempt_at=None,
            last_error=case(
                (
                    Delivery.attempts == 0,
                    f"superseded by version {report.version} before it went out",
                ),
                else_=f"superseded by version {report.version}; {MAYBE_RECEIVED}",
            ),
        )
        .execution_options(synchronize_session=False)
    )


Verdict = Literal["go", "wait", "cancel"]


@dataclass(frozen=True)
class OrderCheck:
    verdict: Verdict
    reason: str = ""


def order_check(session: Session, delivery: Delivery) -> OrderCheck:
    """May this message go now? (Call under the study's lifecycle lock.)"""
    others = session.execute(
        select(Delivery.report_version, Delivery.result_status, Delivery.state).where(
            Delivery.study_id == delivery.study_id,
            Delivery.kind == delivery.kind,
            Delivery.destination == delivery.destination,
            Delivery.id != delivery.id,
            Delivery.state != DeliveryState.CANCELLED,
        )
    ).all()
    superseded = session.scalar(
        select(Report.status == ReportStatus.SUPERSEDED).where(Report.id == delivery.report_id)
    )
    if superseded:  # a re-draft replaced this version while its message was in flight or failing
        return OrderCheck("cancel", "its version was superseded before it went out")
    sent_or_sending = (DeliveryState.IN_FLIGHT, DeliveryState.DELIVERED)
    newer_sent = [
        o
        for o in others
        if o.report_version > delivery.report_version and o.state in sent_or_sending
    ]
    if newer_sent:
        return OrderCheck(
            "cancel", f"version {max(o.report_version for o in newer_sent)} went out first"
        )
    if delivery.result_status == ResultStatus.PRELIMINARY and any(
        o.result_status != ResultStatus.PRELIMINARY for o in others
    ):
        return OrderCheck("cancel", "a final report supersedes this preliminary one")
    older_open = [
        o
        for o in others
        if o.report_version < delivery.report_version
        and o.state in (*OPEN_STATES, DeliveryState.IN_FLIGHT)
    ]
    if older_open:
        return OrderCheck(
            "wait", f"waiting for version {min(o.report_version for o in older_open)} to go first"
        )
    if delivery.result_status == ResultStatus.CORRECTED and not any(
        o.result_status == ResultStatus.FINAL and o.state == DeliveryState.DELIVERED for o in others
    ):
        return OrderCheck(
            "wait", "waiting for the final report to be delivered before its correction"
        )
    return OrderCheck("go")


ClaimResult = Literal["claimed", "waiting", "cancelled", "busy", "missing", "delivered", "failed"]


def claim(session: Session, delivery_id: int, now: datetime) -> ClaimResult:
    """Take the delivery for one attempt (state in_flight, lease, attempt counted) if it may go."""
    study_id = session.scalar(select(Delivery.study_id).where(Delivery.id == delivery_id))
    if study_id is None:
        return "missing"
    lock_study(session, study_id)  # before the row lock: the one lock order everywhere
    delivery = session.get(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    assert delivery is not None
    if delivery.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
        return delivery.state  # type: ignore[return-value]
    if delivery.state == DeliveryState.CANCELLED:
        return "cancelled"
    if (
        delivery.state == DeliveryState.IN_FLIGHT
        and delivery.lease_until
        and delivery.lease_until > now
    ):
        return "busy"
    if delivery.state == DeliveryState.IN_FLIGHT:  # lease ran out: the last attempt died
        _record_failure(
            delivery, "attempt abandoned: the worker died or overran its lease", True, now, None
        )
        if delivery.state == DeliveryState.FAILED:
            return "failed"
    check = order_check(session, delivery)
    if check.verdict == "cancel":
        delivery.state = DeliveryState.CANCELLED
        delivery.next_attempt_at = None
        delivery.last_error = (
            f"{check.reason}; {MAYBE_RECEIVED}" if delivery.attempts else check.reason
        )
        log.info("delivery %s cancelled: %s", delivery_id, check.reason)
        return "cancelled"
    if check.verdict == "wait":
        delivery.next_attempt_at = now + ORDER_WAIT
        delivery.last_error = check.reason  # shown on the study page: why it has not gone yet
        return "waiting"
    delivery.state = DeliveryState.IN_FLIGHT
    delivery.lease_until = now + ATTEMPT_LEASE
    delivery.attempts += 1
    delivery.last_attempt_at = now
    return "claimed"


def ack_policy() -> dict[str, bool]:
    """Per-RIS meaning of each negative ACK code: True = retry (bounded), False = fail now.
    From `MEDREGA_RIS_ACK_POLICY`, e.g. "AE=retry,AR=retry,CE=retry,CR=fail"."""
    policy = {code: True for code in ACK_CODES}
    for item in filter(None, (p.strip() for p in get_settings().ris_ack_policy.split(","))):
        code, _, action = item.partition("=")
        code, action = code.strip().upper(), action.strip().lower()
        if code not in ACK_CODES or action not in ("retry", "fail"):
            raise ValueError(f"MEDREGA_RIS_ACK_POLICY: bad item {item!r} (CODE=retry|fail)")
        policy[code] = action == "retry"
    return policy


def classify(error: BaseException) -> tuple[bool, str | None]:
    """(transient?, ack code) for any exception an attempt raised."""
    ack_code = getattr(error, "ack_code", None)
    if ack_code in ACK_CODES:
        return ack_policy()[ack_code], ack_code
    status = getattr(error, "status", None)
    if isinstance(status, int):  # a DIMSE status from the PACS
        ack_code = f"0x{status:04X}"
    declared = getattr(type(error), "transient", None)  # DeliveryError, StoreError
    if isinstance(declared, bool):
        return declared, ack_code
    # Unexpected: I/O and network trouble may pass; anything else (a bug, bad data) will not.
    return isinstance(error, OSError | TimeoutError), ack_code


def _record_failure(
    delivery: Delivery,
    detail: str,
    transient: bool,
    now: datetime,
    ack_code: str | None,
    policy: RetryPolicy | None = None,
) -> None:
    decision = after_failure(
        delivery.attempts, transient=transient, now=now, policy=policy or DEFAULT_POLICY
    )
    delivery.state = decision.state
    delivery.next_attempt_at = decision.next_attempt_at
    delivery.lease_until = None
    delivery.last_error = detail[:2000] or "unknown error"
    delivery.error_class = "transient" if transient else "permanent"
    delivery.ack_code = ack_code


def record_outcome(
    session: Session,
    delivery_id: int,
    now: datetime,
    *,
    ack_code: str | None = None,
    ack_detail: str | None = None,
    error: BaseException | None = None,
) -> str:
    """Write what one claimed attempt did. Only a success marks it delivered."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    assert delivery is not None
    if delivery.state != DeliveryState.IN_FLIGHT:
        # Taken back meanwhile (lease ran out); the next attempt re-sends the same message ID.
        log.warning("delivery %s: outcome of an attempt that lost its lease ignored", delivery_id)
        return delivery.state
    if error is None:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = now
        delivery.ack_code = ack_code
        delivery.ack_detail = ack_detail
        delivery.next_attempt_at = delivery.lease_until = None
        delivery.last_error = delivery.error_class = None
        return delivery.state
    transient, code = classify(error)
    known = isinstance(getattr(type(error), "transient", None), bool)  # our typed errors
    detail = str(error) if known else f"{type(error).__name__}: {error}"
    policy = None
    if code in ACK_CODES:
        delivery.ack_detail = getattr(error, "detail", None)
        settings = get_settings()
        policy = RetryPolicy(max_attempts=settings.ris_ack_max_attempts)
    _record_failure(delivery, detail, transient, now, code, policy)
    return delivery.state


def take_back_expired(session: Session, delivery_id: int, now: datetime) -> bool:
    """An in-flight attempt whose lease ran out (its worker died): record it and schedule a retry.
    The caller has made sure no live worker holds the delivery's advisory lock."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    if delivery is None or delivery.state != DeliveryState.IN_FLIGHT:
        return False
    if delivery.lease_until is not None and delivery.lease_until > now:
        return False
    _record_failure(
        delivery, "attempt abandoned: the worker died or overran its lease", True, now, None
    )
    return True


def retry_failed(session: Session, delivery: Delivery) -> None:
    """An admin's retry: a failed delivery goes back to pending with a fresh attempt budget. The
    order rules still apply when it is claimed (a superseded one is then cancelled)."""
    if delivery.state != DeliveryState.FAILED:
        raise ValueError(f"delivery is {delivery.state}, not failed")
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = None
