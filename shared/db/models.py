"""SQLAlchemy 2 typed models: the whole system's schema, the source of truth.

State columns are short strings guarded by CHECK constraints (not PostgreSQL ENUM types) so that
adding a state later is a one-line migration. Every state value lives in one Enum class below.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _check_in(column: str, values: type[enum.Enum], name: str | None = None) -> CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name or f"{column}_valid")


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"  # instances arriving; not yet idle for STABLE_AGE
    STABLE = "stable"  # idle long enough; a draft job exists for its instance set
    DRAFTING = "drafting"
    DRAFTED = "drafted"  # a current draft exists
    NOT_APPLICABLE = "not_applicable"  # unsupported modality/content: no draft, reason on the job
    SIGNED = "signed"
    FAILED = "failed"


class DraftJobState(enum.StrEnum):
    PENDING = "pending"  # recorded; the outbox relay publishes it
    QUEUED = "queued"  # published to the broker
    RUNNING = "running"
    DONE = "done"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer instance set arrived before it ran


class ReportStatus(enum.StrEnum):
    DRAFT = "draft"  # written by the model
    EDITED = "edited"  # changed by a radiologist, not yet signed
    SIGNED = "signed"  # final
    CORRECTED = "corrected"  # changed after signing; final again
    SUPERSEDED = "superseded"  # an unsigned draft replaced by a re-draft


class FindingReview(enum.StrEnum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ADJUSTED = "adjusted"


class DeliveryKind(enum.StrEnum):
    SR = "sr"
    HL7 = "hl7"
    GSPS = "gsps"  # presentation state with the findings' boxes, for any PACS viewer
    KOS = "kos"  # key object selection of the findings' images
    FHIR = "fhir"  # DiagnosticReport pushed to the EHR's FHIR server


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"  # gave up after the retry limit; visible, an admin may retry
    CANCELLED = "cancelled"  # superseded before it went out (recorded, never sent late)


class ResultStatus(enum.StrEnum):
    """What a message says about its report version: HL7 OBR-25 / OBX-11, SR completion."""

    PRELIMINARY = "P"  # a draft
    FINAL = "F"  # signed
    CORRECTED = "C"  # signed again after a change


class UserRole(enum.StrEnum):
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (_check_in("state", StudyState),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician: Mapped[str | None] = mapped_column(String(324))
    specific_character_set: Mapped[str | None] = mapped_column(String(128))
    # The requested procedure's code (ORU OBR-4); null where the modality sent none.
    procedure_code_value: Mapped[str | None] = mapped_column(String(16))
    procedure_code_scheme: Mapped[str | None] = mapped_column(String(16))
    procedure_code_meaning: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24), default=StudyState.RECEIVING, index=True)
    critical: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Instances arrived after the study's current draft job was created.
    needs_redraft: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Instances arrived that the signed report does not cover: the radiologist decides.
    new_images_after_signoff: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="false"
    )
    # The same SOP Instance UID arrived again with different bytes: both copies are kept (the
    # first in `instances`, the others in `instance_copies`); someone should look.
    conflicting_instances: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="false"
    )
    instance_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_received_at: Mapped[datetime] = _now()
    last_received_at: Mapped[datetime] = _now()
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )

    series: Mapped[list[Series]] = relationship(back_populates="study")
    draft_jobs: Mapped[list[DraftJob]] = relationship(back_populates="study")
    reports: Mapped[list[Report]] = relationship(back_populates="study")


# The stability sweeper looks for receiving studies by last arrival time.
Index("ix_studies_receiving_last", Study.state, Study.last_received_at)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    # Our own output (SR) coming back from the PACS: never drafted, never counted as new input.
    is_own_output: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = _now()

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    file_path: Mapped[str] = mapped_column(Text)  # relative to the storage directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = _now()
    # The node whose storage directory holds the file (None: this machine's; single box).
    storage_node: Mapped[str | None] = mapped_column(String(64))

    series: Mapped[Series] = relationship(back_populates="instances")
    copies: Mapped[list[InstanceCopy]] = relationship(back_populates="instance")


class InstanceCopy(Base):
    """A different copy received under an instance's SOP Instance UID, kept beside the first.

    The `instances` row keeps the first copy (what reports reference); rows here and the
    instance's stored-bytes columns are never updated (trigger, migration 0004).
    """

    __tablename__ = "instance_copies"
    __table_args__ = (UniqueConstraint("instance_id", "sha256"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    file_path: Mapped[str] = mapped_column(Text)  # relative to the storage directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = _now()
    storage_node: Mapped[str | None] = mapped_column(String(64))  # as on Instance

    instance: Mapped[Instance] = relationship(back_populates="copies")


class StorageNode(Base):
    """A node's file endpoint (services/listener/file_server.py registers it at start)."""

    __tablename__ = "storage_nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    read_url: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = _now()


class DraftJob(Base):
    """One per (study, instance set): exactly one current draft per instance set."""

    __tablename__ = "draft_jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "instance_set_sha256", name="uq_draft_jobs_instance_set"),
        _check_in("state", DraftJobState),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    # sha256 over the sorted SOP Instance UIDs the job covers.
    instance_set_sha256: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), default=DraftJobState.PENDING, index=True)
    # Why 'not_applicable' or 'failed'; on a 'pending' job, why it waits; on a 'done' one, a note.
    reason: Mapped[str | None] = mapped_column(Text)
    # A 'pending' job is not published before this (the model server was unreachable).
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    # {"load_ms":…, "preprocess_ms":…, "inference_ms":…, "compose_ms":…}
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()

    study: Mapped[Study] = relationship(back_populates="draft_jobs")


class Report(Base):
    """One row per version; the current one is the highest non-superseded version."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("study_id", "version", name="uq_reports_study_version"),
        _check_in("status", ReportStatus),
        CheckConstraint(
            "status NOT IN ('signed', 'corrected') "
            "OR (signed_at IS NOT NULL AND signed_by_user_id IS NOT NULL)",
            name="final_is_signed",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    draft_job_id: Mapped[int | None] = mapped_column(ForeignKey("draft_jobs.id"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ReportStatus.DRAFT)
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"))
    author_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # null: the model
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_backend: Mapped[str | None] = mapped_column(String(16))
    domain: Mapped[str | None] = mapped_column(String(32))  # e.g. cxr, chest_ct
    findings_en: Mapped[str] = mapped_column(Text, default="")
    findings_zh: Mapped[str] = mapped_column(Text, default="")
    impression_en: Mapped[str] = mapped_column(Text, default="")
    impression_zh: Mapped[str] = mapped_column(Text, default="")
    # [{"section": "findings", "en": …, "zh": …, "finding_ordinals": [0, 2]}, …]
    sentences: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = _now()

    study: Mapped[Study] = relationship(back_populates="reports")
    findings: Mapped[list[RegionFinding]] = relationship(
        back_populates="report", order_by="RegionFinding.ordinal"
    )
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="report")


class RegionFinding(Base):
    __tablename__ = "region_findings"
    __table_args__ = (
        UniqueConstraint("report_id", "ordinal", name="uq_region_findings_report_ordinal"),
        _check_in("review", FindingReview),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)  # position in the report; sentences refer to it
    region_code: Mapped[str] = mapped_column(String(64))
    region_name_en: Mapped[str] = mapped_column(String(128))
    region_name_zh: Mapped[str] = mapped_column(String(128))
    finding_code: Mapped[str | None] = mapped_column(String(64))  # null: a normal region
    finding_name_en: Mapped[str | None] = mapped_column(String(128))
    finding_name_zh: Mapped[str | None] = mapped_column(String(128))
    probability: Mapped[float | None] = mapped_column(Float)  # null where the model gives none
    critical: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    size_mm: Mapped[float | None] = mapped_column(Float)
    # The box, in source-image pixels of the key image (SOP Instance UID + 1-based frame).
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    frame_number: Mapped[int | None] = mapped_column(Integer)
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    box_flag: Mapped[str | None] = mapped_column(String(64))  # e.g. out_of_range (mllm backend)
    sentence_en: Mapped[str] = mapped_column(Text, default="")
    sentence_zh: Mapped[str] = mapped_column(Text, default="")
    review: Mapped[str] = mapped_column(String(16), default=FindingReview.PROPOSED)

    report: Mapped[Report] = relationship(back_populates="findings")


class Delivery(Base):
    """One message (SR or ORU) for one report version to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("report_id", "kind", "destination", name="uq_deliveries_target"),
        _check_in("kind", DeliveryKind),
        _check_in("state", DeliveryState),
        _check_in("result_status", ResultStatus),
        CheckConstraint(
            "error_class IS NULL OR error_class IN ('transient', 'permanent')",
            name="error_class_valid",
        ),
        # No delivery is ever stuck: a claimed attempt has a lease, a failure has its error.
        CheckConstraint(
            "state <> 'in_flight' OR lease_until IS NOT NULL", name="in_flight_has_lease"
        ),
        CheckConstraint(
            "state NOT IN ('failed', 'retrying', 'cancelled') OR last_error IS NOT NULL",
            name="failure_recorded",
        ),
        CheckConstraint(
            "state <> 'retrying' OR next_attempt_at IS NOT NULL", name="retry_scheduled"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    # Denormalised from the report (fixed at creation) so the ordering guard needs no join.
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    report_version: Mapped[int] = mapped_column(Integer)
    result_status: Mapped[str] = mapped_column(String(1))  # ResultStatus
    kind: Mapped[str] = mapped_column(String(8))
    destination: Mapped[str] = mapped_column(String(255))  # "AE@host:port" or "host:port"
    # SR SOP Instance UID or HL7 message control ID, derived from (report, version, kind).
    message_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # While 'in_flight': the attempt's deadline; past it the relay takes the row back.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(16))  # transient | permanent
    ack_code: Mapped[str | None] = mapped_column(String(8))  # MSA-1 or DIMSE status (hex)
    ack_detail: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()

    report: Mapped[Report] = relationship(back_populates="deliveries")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (_check_in("role", UserRole),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(128))
    # DICOM Person Name for the SR's Verifying Observer, e.g. "Li^Wei".
    dicom_person_name: Mapped[str | None] = mapped_column(String(324))
    role: Mapped[str] = mapped_column(String(16), default=UserRole.RADIOLOGIST)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class AuditEvent(Base):
    """Who saw, edited or signed what, when, from where. Never deleted by the application."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = _now()
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str | None] = mapped_column(String(64))  # kept if the user is deleted
    action: Mapped[str] = mapped_column(String(32), index=True)  # login, view, edit, sign, …
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


Index("ix_audit_log_at", AuditEvent.at)


class LoginAttempts(Base):
    """Sign-in failures per (source address, username): the throttle's state (services/web/
    login_throttle.py). A storm from one address never slows the same user at another."""

    __tablename__ = "login_attempts"

    remote_addr: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Attempts counted in the current run of failures (reserved before the password is checked).
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # No attempt is checked before this (progressive delay; after the limit, the whole window).
    next_allowed_at: Mapped[datetime] = _now()
    last_attempt_at: Mapped[datetime] = _now()
    # The run's audit rows are written (first failure, throttle engaged): at most two per run.
    audited_failure: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    audited_throttle: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")


Index("ix_login_attempts_last_attempt_at", LoginAttempts.last_attempt_at)


class WebSession(Base):
    """A signed-in session, server-side: the cookie names it (by `sid`), this row says whether it
    still stands. Sign-out, a password change and "sign out everywhere" revoke rows."""

    __tablename__ = "web_sessions"

    # sha256 of the cookie's random session id: the table alone cannot be replayed as cookies.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    remote_addr: Mapped[str | None] = mapped_column(String(64))


class ListenerRefusal(Base):
    """Associations the listener refused, counted per (reason, source address, calling AE)."""

    __tablename__ = "listener_refusals"
    __table_args__ = (
        UniqueConstraint(
            "reason", "remote_addr", "calling_ae_title", name="uq_listener_refusals_peer"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))  # peer_not_allowed, storage_low, error
    remote_addr: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(64))  # as printable() wrote it
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    first_at: Mapped[datetime] = _now()
    last_at: Mapped[datetime] = _now()
