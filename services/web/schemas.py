"""Request and response bodies of the JSON API (they are the OpenAPI schema).

Inputs are strict: unknown fields are refused, strings are bounded, numbers finite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.web.web_settings import MIN_PASSWORD_LENGTH

Text = Annotated[str, Field(max_length=2000)]
Coordinate = Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
Uid = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Box(Strict):
    x1: Coordinate
    y1: Coordinate
    x2: Coordinate
    y2: Coordinate

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError("box needs x2 > x1 and y2 > y1")
        return self


# --- edit operations ---------------------------------------------------------------------------
class ReviewOp(Strict):
    op: Literal["review"]
    ordinal: Annotated[int, Field(ge=0, le=10_000)]
    review: Literal["accepted", "rejected", "proposed"]


class AdjustBoxOp(Strict):
    op: Literal["adjust_box"]
    ordinal: Annotated[int, Field(ge=0, le=10_000)]
    box: Box
    sop_instance_uid: Uid | None = None  # move the box to another image of the study
    frame: Annotated[int, Field(ge=1, le=100_000)] | None = None


class RelabelOp(Strict):
    op: Literal["relabel"]
    ordinal: Annotated[int, Field(ge=0, le=10_000)]
    region_code: Code
    finding_code: Code | None  # null: the region is normal


class EditSentenceOp(Strict):
    op: Literal["edit_sentence"]
    index: Annotated[int, Field(ge=0, le=10_000)]
    en: Text | None = None
    zh: Text | None = None

    @model_validator(mode="after")
    def _something(self) -> EditSentenceOp:
        if self.en is None and self.zh is None:
            raise ValueError("give en, zh or both")
        return self


class AddSentenceOp(Strict):
    op: Literal["add_sentence"]
    section: Literal["findings", "impression"]
    en: Text = ""
    zh: Text = ""


class DeleteSentenceOp(Strict):
    op: Literal["delete_sentence"]
    index: Annotated[int, Field(ge=0, le=10_000)]


EditOperation = Annotated[
    ReviewOp | AdjustBoxOp | RelabelOp | EditSentenceOp | AddSentenceOp | DeleteSentenceOp,
    Field(discriminator="op"),
]


class EditRequest(Strict):
    base_version: Annotated[int, Field(ge=1, le=1_000_000)]
    operations: Annotated[list[EditOperation], Field(min_length=1, max_length=50)]


class SignRequest(Strict):
    base_version: Annotated[int, Field(ge=1, le=1_000_000)]
    confirm: bool


class LocateRequest(Strict):
    sop_instance_uid: Uid
    frame: Annotated[int, Field(ge=1, le=100_000)] = 1
    query: Annotated[str, Field(min_length=1, max_length=128)]


class IdentifyRequest(Strict):
    sop_instance_uid: Uid
    frame: Annotated[int, Field(ge=1, le=100_000)] = 1
    box: Box


class CreateUserRequest(Strict):
    username: Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    full_name: Annotated[str, Field(min_length=1, max_length=128)]
    dicom_person_name: Annotated[str, Field(max_length=324)] | None = None
    role: Literal["radiologist", "admin"]
    # Length is checked again, with the rest of the policy, by password_policy.check_password.
    password: Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=256)]


# --- responses ---------------------------------------------------------------------------------
class WorklistItem(BaseModel):
    id: int
    patient_name: str | None
    patient_id: str | None
    patient_sex: str | None
    patient_birth_date: str | None
    accession_number: str | None
    study_description: str | None
    study_date: str | None
    modalities: list[str]
    domain: str | None
    domain_en: str | None
    domain_zh: str | None
    received_at: datetime
    state: str
    status: str  # display status: receiving, drafting, draft_ready, in_review, signed, …
    critical: bool
    # Images arrived that the signed report does not cover: the radiologist decides (no draft).
    new_images_after_signoff: bool = False
    # An instance was received again with different bytes (both copies kept).
    conflicting_instances: bool = False
    report_version: int | None
    report_status: str | None
    delivery: str | None  # delivered, pending, failed (current report's messages)


class Worklist(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[WorklistItem]


class FindingOut(BaseModel):
    ordinal: int
    region_code: str
    region_en: str
    region_zh: str
    finding_code: str | None
    finding_en: str | None
    finding_zh: str | None
    # The vocabulary's wording, as the SR, GSPS and OHIF show it: "Right pleural effusion".
    label_en: str
    label_zh: str
    probability: float | None
    critical: bool
    size_mm: float | None
    sop_instance_uid: str | None
    frame: int | None
    box: Box | None
    box_flag: str | None
    sentence_en: str
    sentence_zh: str
    review: str


class SentenceOut(BaseModel):
    index: int
    section: str
    en: str
    zh: str
    finding_ordinals: list[int]
    excluded: bool
    stale: str | None  # the language not updated after an edit of the other


class PersonOut(BaseModel):
    id: int
    username: str
    full_name: str


class ReportOut(BaseModel):
    id: int
    version: int
    status: str
    final: bool
    domain: str | None
    domain_en: str | None
    domain_zh: str | None
    model_name: str | None
    model_version: str | None
    author: PersonOut | None  # null: written by the model
    created_at: datetime
    signed_at: datetime | None
    signed_by: PersonOut | None
    findings_en: str
    findings_zh: str
    impression_en: str
    impression_zh: str
    sentences: list[SentenceOut]
    findings: list[FindingOut]


class VersionOut(BaseModel):
    id: int
    version: int
    status: str
    author: str | None
    created_at: datetime


class ImageOut(BaseModel):
    sop_instance_uid: str
    instance_number: int | None
    frames: int
    rows: int | None
    columns: int | None


class SeriesOut(BaseModel):
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    images: list[ImageOut]


class DeliveryOut(BaseModel):
    id: int
    kind: str
    state: str
    report_version: int
    report_status: str
    destination: str
    attempts: int
    last_error: str | None
    ack_code: str | None
    delivered_at: datetime | None
    created_at: datetime


class JobOut(BaseModel):
    id: int
    state: str
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


class StudyOut(BaseModel):
    id: int
    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    state: str
    status: str
    critical: bool
    new_images_after_signoff: bool = False
    conflicting_instances: bool = False
    received_at: datetime


class Preset(BaseModel):
    code: str
    en: str
    zh: str


class Permissions(BaseModel):
    edit: bool
    sign: bool
    retry: bool


class StudyDetail(BaseModel):
    study: StudyOut
    job: JobOut | None
    report: ReportOut | None
    versions: list[VersionOut]
    series: list[SeriesOut]
    deliveries: list[DeliveryOut]
    presets: list[Preset]
    permissions: Permissions


class StudyStatus(BaseModel):
    state: str
    status: str
    report_version: int | None
    deliveries: list[DeliveryOut]


class LocateOut(BaseModel):
    region_code: str | None
    name_en: str | None
    name_zh: str | None
    sop_instance_uid: str
    frame: int
    boxes: list[Box]
    probability: float | None


class IdentifyOut(BaseModel):
    region_code: str | None
    name_en: str
    name_zh: str
    probability: float | None


class RegionOption(BaseModel):
    code: str
    en: str
    zh: str
    synonyms: list[str]
    domains: list[str]


class FindingOption(BaseModel):
    code: str
    en: str
    zh: str
    regions: list[str]
    domains: list[str]


class Vocabulary(BaseModel):
    regions: list[RegionOption]
    findings: list[FindingOption]


class AuditOut(BaseModel):
    id: int
    at: datetime
    username: str | None
    action: str
    object_type: str | None
    object_id: str | None
    study_id: int | None
    remote_addr: str | None
    details: dict[str, object] | None


class AuditPage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[AuditOut]


class UserOut(BaseModel):
    id: int
    username: str
    full_name: str
    dicom_person_name: str | None
    role: str
    active: bool
    last_login_at: datetime | None
