"""What the GSPS and KOS builders share: which findings and images are 'key', the document
status they carry, the finding labels, and the finishing touches (character set, fixed times).

Both objects are built from a `ReportVersion` (shared/reports/domain.py), like the SR and the ORU,
and show its key findings (shared/reports/key_images.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from shared.dicom.sr_builder import needs_utf8  # the SR's rule, one for all
from shared.reports.domain import Language, RegionFindingResult, ReportVersion
from shared.reports.key_images import key_findings_of
from shared.vocab import VocabError, bilingual_label, load_vocab

MANUFACTURER = "medrega-pacs"


def key_findings(version: ReportVersion) -> list[RegionFindingResult]:
    """The findings a GSPS draws and a KOS flags: sent, abnormal, on a named image."""
    return key_findings_of(version.findings)


@dataclass(frozen=True)
class DocumentStatus:
    """How a presentation object says whose word it carries."""

    content_label: str  # CS: A-Z, 0-9, _ and space; 16 characters at most
    summary: str  # what a PACS user reads first (Content / Key Object Description)
    signed: bool


def document_status(version: ReportVersion) -> DocumentStatus:
    if not version.is_final:
        return DocumentStatus(
            "AI_DRAFT",
            f"AI draft, not verified ({version.model_name} {version.model_version})",
            signed=False,
        )
    signer = version.signer
    if signer is None:
        raise ValueError(f"a {version.status} report version needs its signer")
    label = "CORRECTED" if version.status == "corrected" else "SIGNED"
    verb = "Corrected" if version.status == "corrected" else "Signed"
    return DocumentStatus(label, f"{verb} by radiologist {_readable(signer.name_pn)}", signed=True)


def _readable(pn: str) -> str:
    """'Li^Wei' → 'Wei Li' for a description line (the PN itself stays in PN attributes)."""
    family, _, rest = pn.split("=")[0].partition("^")
    given = rest.split("^")[0]
    return " ".join(p for p in (given, family) if p) or pn


def finding_label(finding: RegionFindingResult, languages: tuple[Language, ...]) -> str:
    """The vocabulary's label of the finding with its side in each configured language, then the
    model's certainty: "Right pleural effusion / 右侧胸腔积液 (p 0.90)" (the SR and the review
    page name it the same way). A code the vocabulary no longer knows (an old report) falls
    back to the names stored with the finding."""
    if finding.finding_code is not None:
        try:
            return bilingual_label(
                finding.finding_code, finding.region_code, languages, finding.probability
            )
        except VocabError:
            pass
    parts = []
    for language in languages:
        if language == "en":
            name = finding.finding_name_en or "finding"
            parts.append(f"{name[:1].upper()}{name[1:]}, {finding.region_name_en}")
        else:
            parts.append(f"{finding.region_name_zh} {finding.finding_name_zh or '异常'}")
    label = " / ".join(parts)
    return label if finding.probability is None else f"{label} (p {finding.probability:.2f})"


def content_moment(version: ReportVersion) -> datetime:
    """When the content was made: signed at, else drafted at (the SR uses the same moment)."""
    return version.signer.signed_at if version.signer else version.created_at


def body_part(image: Dataset, domain: str) -> str:
    """Body Part Examined for our series: the image's own, else the report domain's (a PACS
    groups by it, and without it a validator cannot tell a paired from an unpaired part)."""
    own = str(image.get("BodyPartExamined") or "")
    if own:
        return own
    return load_vocab().domain(domain).body_part


def images_by_uid(images: Iterable[Dataset]) -> Mapping[str, Dataset]:
    return {str(image.SOPInstanceUID): image for image in images}


def source_image(images: Mapping[str, Dataset], finding: RegionFindingResult) -> Dataset:
    assert finding.image is not None
    image = images.get(finding.image.sop_instance_uid)
    if image is None:
        raise ValueError(
            f"finding {finding.region_code}/{finding.finding_code} points at SOP Instance UID "
            f"{finding.image.sop_instance_uid}, which is not among the source images"
        )
    return image


def finish(ds: Dataset, moment: datetime) -> None:
    """Fixed creation times (same version, same bytes) and UTF-8 only when a text needs it (a
    GB18030 or Latin-1 source must not decide how our Chinese labels are encoded)."""
    ds.InstanceCreationDate = DA(moment.date())
    ds.InstanceCreationTime = TM(moment.time())
    for equipment in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:  # highdicom stamps its own 'now'
            equipment.ContributionDateTime = DT(moment)
    for date_keyword, time_keyword in (
        ("PresentationCreationDate", "PresentationCreationTime"),
        ("ContentDate", "ContentTime"),
    ):
        if date_keyword in ds:
            setattr(ds, date_keyword, DA(moment.date()))
            setattr(ds, time_keyword, TM(moment.time()))
    if needs_utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
