"""The chaos benchmark's counts, from what the receivers hold and what the database says.

Pure functions over plain records (no services, no clock), so each count's definition can be
tested on hand-made inputs; `ops/bench/chaos.py` gathers the records and documents the counts.

Records:
- `RisRecord`: one line of the RIS sink's log ("received #N control_id=… obr25=… reply=…"),
  in log order (the order the sink took the messages; the log survives sink restarts).
- `PacsSr`: one SR instance in Orthanc, with the sequence number of its NewInstance change.
- `DbDelivery` / `DbReport` / `DbStudy`: rows of the bench's database after settling.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

SINK_LINE = re.compile(
    r"received #(?P<index>\d+) control_id=(?P<control_id>\S+) type=(?P<type>\S+) "
    r"obr25=(?P<obr25>\S+) obx=\d+ bytes=\d+ reply=(?P<reply>\w+)"
)
CONTROL_ID = re.compile(r"^ORU(?P<report_id>\d+)V(?P<version>\d+)$")
FINAL = ("F", "C")
TERMINAL_JOB_STATES = {"done", "not_applicable", "failed", "superseded"}
TERMINAL_DELIVERY_STATES = {"delivered", "failed", "cancelled"}
UNSETTLED_STUDY_STATES = {"receiving", "stable", "drafting"}
FINAL_REPORT_STATUSES = {"signed", "corrected"}


@dataclass(frozen=True)
class RisRecord:
    control_id: str
    obr25: str
    reply: str


@dataclass(frozen=True)
class PacsSr:
    seq: int  # Orthanc change sequence of its NewInstance: the order the PACS stored them
    orthanc_id: str
    sop_instance_uid: str
    study_instance_uid: str
    verification_flag: str  # VERIFIED | UNVERIFIED
    completion_flag: str  # COMPLETE | PARTIAL


@dataclass(frozen=True)
class DbDelivery:
    id: int
    report_id: int
    study_id: int
    report_version: int
    result_status: str  # P | F | C
    kind: str  # sr | hl7
    message_id: str
    state: str
    attempts: int = 0


@dataclass(frozen=True)
class DbReport:
    id: int
    study_id: int
    version: int
    status: str
    model_authored: bool  # author_user_id IS NULL
    covered_instances: int | None  # its draft job's instance count
    signed_at: float | None = None  # epoch seconds, final versions only


@dataclass
class DbStudy:
    id: int
    study_instance_uid: str
    state: str
    new_images_after_signoff: bool
    instance_uids: set[str] = field(default_factory=set)
    received_at: dict[str, float] = field(default_factory=dict)  # SOP UID -> epoch seconds


def parse_sink_log(text: str) -> list[RisRecord]:
    records = []
    for line in text.splitlines():
        match = SINK_LINE.search(line)
        if match:
            records.append(RisRecord(match["control_id"], match["obr25"], match["reply"]))
    return records


def hl7_content_digest(payload: bytes) -> str:
    """sha256 of an ER7 message without MSH-7 (the send time: a re-send differs only there)."""
    segments = payload.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    normalised = []
    for segment in segments:
        if segment.startswith(b"MSH"):
            fields = segment.split(b"|")
            if len(fields) > 6:
                fields[6] = b""
            segment = b"|".join(fields)
        normalised.append(segment)
    return hashlib.sha256(b"\r".join(s for s in normalised if s)).hexdigest()


@dataclass(frozen=True)
class Message:
    """One message as a receiver took it, placed in its study's history."""

    receiver: str  # ris | pacs
    message_id: str
    study_id: int
    version: int
    status: str  # P | F | C


def order_violations(messages: Iterable[Message]) -> list[str]:
    """Per receiver and study, in arrival order: P after F/C, C before any F, version going down.

    A re-send of the same message (same ID) is not a new event and is skipped."""
    seen: set[tuple[str, str]] = set()
    history: dict[tuple[str, int], list[Message]] = defaultdict(list)
    problems = []
    for message in messages:
        if (message.receiver, message.message_id) in seen:
            continue
        seen.add((message.receiver, message.message_id))
        earlier = history[(message.receiver, message.study_id)]
        where = f"{message.receiver} study {message.study_id} {message.message_id}"
        if message.status == "P" and any(m.status in FINAL for m in earlier):
            problems.append(f"{where}: preliminary after a final")
        elif message.status == "C" and not any(m.status == "F" for m in earlier):
            problems.append(f"{where}: correction before any final")
        elif any(m.version > message.version for m in earlier):
            problems.append(f"{where}: version {message.version} after a higher one")
        earlier.append(message)
    return problems


def ris_messages(records: list[RisRecord], by_control_id: dict[str, DbDelivery]) -> list[Message]:
    """The accepted (AA) ORUs in the order the sink took them, tied to their study."""
    messages = []
    for record in records:
        if record.reply != "AA":
            continue
        delivery = by_control_id.get(record.control_id)
        if delivery is None:
            continue  # counted as unknown by the caller
        messages.append(
            Message("ris", record.control_id, delivery.study_id, delivery.report_version,
                    record.obr25 if record.obr25 != "-" else delivery.result_status)
        )  # fmt: skip
    return messages


def pacs_messages(srs: list[PacsSr], by_sop_uid: dict[str, DbDelivery]) -> list[Message]:
    messages = []
    for sr in sorted(srs, key=lambda s: s.seq):
        delivery = by_sop_uid.get(sr.sop_instance_uid)
        if delivery is None:
            continue
        status = delivery.result_status if sr.verification_flag == "VERIFIED" else "P"
        messages.append(
            Message("pacs", sr.sop_instance_uid, delivery.study_id, delivery.report_version,
                    status)
        )  # fmt: skip
    return messages


def ris_resends(records: list[RisRecord]) -> int:
    """Accepted (AA) copies of a control ID beyond the first: at-least-once re-sends."""
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        if record.reply == "AA":
            counts[record.control_id] += 1
    return sum(n - 1 for n in counts.values() if n > 1)


def duplicate_deliveries(
    ris_digests: dict[str, set[str]],
    srs: list[PacsSr],
    by_sop_uid: dict[str, DbDelivery],
    study_uid_of: dict[int, str],
) -> list[str]:
    """A control ID the RIS took with different content; an SR SOP Instance UID stored twice in
    the PACS, or stored with content that is not the version its delivery row names."""
    problems = [
        f"ris {control_id}: {len(digests)} different contents accepted"
        for control_id, digests in sorted(ris_digests.items())
        if len(digests) > 1
    ]
    by_uid: dict[str, list[PacsSr]] = defaultdict(list)
    for sr in srs:
        by_uid[sr.sop_instance_uid].append(sr)
    for uid, copies in sorted(by_uid.items()):
        if len(copies) > 1:
            problems.append(f"pacs {uid}: stored {len(copies)} times")
        delivery = by_sop_uid.get(uid)
        if delivery is None:
            continue
        sr = copies[0]
        expected_verified = delivery.result_status in FINAL
        if (sr.verification_flag == "VERIFIED") != expected_verified or (
            sr.completion_flag == "COMPLETE"
        ) != expected_verified:
            problems.append(
                f"pacs {uid}: {sr.verification_flag}/{sr.completion_flag} stored for a "
                f"{delivery.result_status} delivery"
            )
        if study_uid_of.get(delivery.study_id) not in (None, sr.study_instance_uid):
            problems.append(f"pacs {uid}: stored under another study")
    return problems


# What the receivers are audited for: the SR (`pacs_uids` are the SR instances in the PACS) and
# the ORU. GSPS and KOS deliveries follow the same rules but are not looked for at the PACS.
AUDITED_KINDS = ("sr", "hl7")


def cancelled_but_received(
    deliveries: list[DbDelivery], ris_accepted: set[str], pacs_uids: set[str]
) -> list[str]:
    """A delivery recorded 'cancelled' before any attempt whose message reached its receiver.

    One that was attempted may have gone out on an attempt whose answer was lost (a SIGKILLed
    worker, an ACK timeout); its row says so, and where it arrived is judged by the order rules
    at the receiver (`order_violations`), so it is not counted here."""
    problems = []
    for d in deliveries:
        if d.state != "cancelled" or d.attempts > 0:
            continue
        received = ris_accepted if d.kind == "hl7" else pacs_uids
        if d.message_id in received:
            problems.append(f"{d.kind} {d.message_id}: cancelled in the database, yet received")
    return problems


def stuck(
    job_states: list[str], deliveries: list[DbDelivery], study_states: list[str]
) -> dict[str, int]:
    return {
        "draft_jobs": sum(1 for s in job_states if s not in TERMINAL_JOB_STATES),
        "deliveries": sum(1 for d in deliveries if d.state not in TERMINAL_DELIVERY_STATES),
        "studies": sum(1 for s in study_states if s in UNSETTLED_STUDY_STATES),
    }


def refused_by_model(sent_uids: set[str], study: DbStudy | None, reports: list[DbReport]) -> bool:
    """Every instance in, no draft, the study ended 'not_applicable': the model declined it
    (a terminal outcome with its reason on the job, counted apart from `lost`)."""
    return (
        study is not None
        and study.state == "not_applicable"
        and sent_uids <= study.instance_uids
        and not any(r.model_authored for r in reports)
    )


def lost_reasons(
    sent_uids: set[str],
    study: DbStudy | None,
    reports: list[DbReport],
    deliveries: list[DbDelivery],
    ris_accepted: set[str],
    pacs_uids: set[str],
) -> list[str]:
    """Why one sent study counts as lost (empty: it is not lost).

    The study's outcome is its highest final (signed/corrected) version, or without one its
    highest model draft; that version's SR and ORU must be delivered and held by the PACS and
    the RIS. A draft must cover every instance sent; a final version covers what the study held
    when it was signed, and instances received later must have the study flagged "new images
    after sign-off". Every delivery the database calls delivered must be at its receiver."""
    if study is None:
        return ["study not in the database"]
    reasons = []
    missing = sent_uids - study.instance_uids
    if missing:
        reasons.append(f"{len(missing)} instance(s) not in the database")
    finals = [r for r in reports if r.status in FINAL_REPORT_STATUSES]
    drafts = [r for r in reports if r.model_authored]
    outcome = max(finals or drafts, key=lambda r: r.version, default=None)
    if outcome is None:
        reasons.append(f"no report (study {study.state})")
        return reasons
    mine = {d.kind: d for d in deliveries if d.report_id == outcome.id}
    for kind in ("sr", "hl7"):
        delivery = mine.get(kind)
        if delivery is None:
            reasons.append(f"v{outcome.version} has no {kind} delivery")
        elif delivery.state != "delivered":
            reasons.append(f"v{outcome.version} {kind} delivery {delivery.state}")
    for d in deliveries:
        if d.state == "delivered" and d.kind in AUDITED_KINDS:
            held = ris_accepted if d.kind == "hl7" else pacs_uids
            if d.message_id not in held:
                reasons.append(f"{d.kind} {d.message_id} delivered but not at the receiver")
    if outcome.status in FINAL_REPORT_STATUSES and outcome.signed_at is not None:
        # A signature covers the images the study had when it was signed (the viewer showed
        # them); anything later must be flagged for the radiologist.
        later = [u for u in sent_uids if study.received_at.get(u, 0.0) > outcome.signed_at]
        if later and not study.new_images_after_signoff:
            reasons.append(
                f"{len(later)} instance(s) arrived after v{outcome.version} was signed, "
                "and the study is not flagged"
            )
    elif outcome.covered_instances is not None and outcome.covered_instances < len(sent_uids):
        reasons.append(
            f"v{outcome.version} ({outcome.status}) covers {outcome.covered_instances} of "
            f"{len(sent_uids)} instances"
        )
    return reasons


def signed_uncovered(sent_uids: set[str], study: DbStudy | None, reports: list[DbReport]) -> bool:
    """Reported apart, not a goal count: the latest final version was signed on a draft that did
    not cover instances the study already held, and the study is not flagged (the radiologist
    may not have seen them: the re-draft they would have caused was dropped by the signature)."""
    finals = [r for r in reports if r.status in FINAL_REPORT_STATUSES and r.signed_at is not None]
    if study is None or not finals or study.new_images_after_signoff:
        return False
    outcome = max(finals, key=lambda r: r.version)
    assert outcome.signed_at is not None
    held = sum(1 for u in sent_uids if study.received_at.get(u, 1e300) <= outcome.signed_at)
    return outcome.covered_instances is not None and outcome.covered_instances < held


def signed_overwritten(
    study: DbStudy, reports: list[DbReport], display_status: str | None, seen_unsigned: bool
) -> list[str]:
    """A final report followed by a model draft, or a signed study whose state went back."""
    finals = [r.version for r in reports if r.status in FINAL_REPORT_STATUSES]
    if not finals:
        return []
    first_final = min(finals)
    reasons = [
        f"model draft v{r.version} after final v{first_final}"
        for r in reports
        if r.model_authored and r.version > first_final
    ]
    if study.state != "signed":
        reasons.append(f"study state {study.state} after sign-off")
    if display_status not in (None, "signed", "delivery_failed"):
        reasons.append(f"worklist shows {display_status}")
    if seen_unsigned:
        reasons.append("state left 'signed' while the bench watched")
    return reasons
