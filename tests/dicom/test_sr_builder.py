"""SR builder: real files, validated with dciodvfy, read with dsrdump, round-tripped with highdicom."""

from __future__ import annotations

import subprocess
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from shared.dicom.sr_builder import build_report_sr
from shared.dicom.sr_content import (
    PredecessorRef,
    SrContext,
    SrLanguage,
    SrReport,
    VerifyingObserver,
)
from shared.dicom.uids import is_own_uid
from shared.reports.domain import (
    DraftResult,
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
)
from shared.reports.message_ids import sr_uids
from shared.vocab.loader import load_vocab
from tests.dicom.sr_sources import read_header, write_ct_series, write_dx

DRAFTED_AT = datetime(2026, 11, 28, 3, 58, 12)
SIGNED_AT = datetime(2026, 11, 28, 9, 15, 0)
RADIOLOGIST = VerifyingObserver(
    name="李^伟", organization="Demo Hospital 示范医院", verified_at=SIGNED_AT
)
VOCAB = load_vocab()


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A chest DX of a patient with a Chinese name (ISO_IR 192 source)."""
    path = write_dx(tmp_path_factory.mktemp("dx"), patient_name="王^小明", charset="ISO_IR 192")
    return read_header(path)


@pytest.fixture(scope="module")
def dx_ascii(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return read_header(write_dx(tmp_path_factory.mktemp("dx_ascii"), patient_name="Doe^Jane"))


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    paths = write_ct_series(tmp_path_factory.mktemp("ct"), slices=3, patient_name="Roe^Richard")
    return [read_header(p) for p in paths]


def region_finding(
    image: Dataset | None,
    region_code: str,
    finding_code: str | None,
    box: PixelBox | None,
    probability: float | None = None,
    size_mm: float | None = None,
    frame: int = 1,
) -> RegionFindingResult:
    region = VOCAB.region(region_code)
    finding = VOCAB.finding(finding_code) if finding_code else None
    if finding is not None:
        en = finding.sentence("en", region, size_mm or 10)
        zh = finding.sentence("zh", region, size_mm or 10)
    else:
        en = VOCAB.normal.region_sentence("en", region.en)
        zh = VOCAB.normal.region_sentence("zh", region.zh)
    return RegionFindingResult(
        region_code=region.code,
        region_name_en=region.en,
        region_name_zh=region.zh,
        finding_code=finding.code if finding else None,
        finding_name_en=finding.en if finding else None,
        finding_name_zh=finding.zh if finding else None,
        probability=probability,
        image=ImageRef(image.SOPInstanceUID, image.SOPClassUID, frame) if image else None,
        box=box,
        sentence_en=en,
        sentence_zh=zh,
        size_mm=size_mm,
    )


def report_of(domain: str, findings: list[RegionFindingResult]) -> SrReport:
    abnormal = [f for f in findings if f.finding_code]
    impression_en = " ".join(
        VOCAB.finding(f.finding_code).impression("en", VOCAB.region(f.region_code))
        for f in abnormal
        if f.finding_code
    ) or VOCAB.normal.impression("en")
    impression_zh = "".join(
        VOCAB.finding(f.finding_code).impression("zh", VOCAB.region(f.region_code))
        for f in abnormal
        if f.finding_code
    ) or VOCAB.normal.impression("zh")
    return SrReport(
        domain=domain,
        findings=findings,
        findings_text={
            "en": " ".join(f.sentence_en for f in findings),
            "zh": "".join(f.sentence_zh for f in findings),
        },
        impression_text={"en": impression_en, "zh": impression_zh},
    )


def cxr_report(dx: Dataset, *, with_probabilities: bool) -> SrReport:
    return report_of(
        "cxr",
        [
            region_finding(
                dx,
                "right_lung",
                "lung_nodule",
                PixelBox(10.5, 20.0, 30.25, 41.0),
                probability=0.873 if with_probabilities else None,
                size_mm=12.0,
            ),
            region_finding(dx, "left_lung", None, PixelBox(44.0, 18.0, 76.0, 80.0)),
        ],
    )


def context(
    images: list[Dataset],
    *,
    status: Literal["draft", "final", "corrected"] = "draft",
    language: SrLanguage = "both",
    version: int = 1,
    report_id: str = "report-17",
    predecessor: PredecessorRef | None = None,
) -> SrContext:
    signed = status != "draft"
    return SrContext(
        report_id=report_id,
        version=version,
        status=status,
        source_images=images,
        model_name="medrega-reference",
        model_version="2026.11.0",
        content_datetime=SIGNED_AT if signed else DRAFTED_AT,
        language=language,
        verifying_observer=RADIOLOGIST if signed else None,
        predecessor=predecessor,
        device_serial_number="GPU-NODE-1",
        software_version="0.4.0",
        institution_name="Demo Hospital",
    )


def predecessor_of(report_id: str, version: int, study_uid: str) -> PredecessorRef:
    uids = sr_uids(report_id, version)
    return PredecessorRef(
        study_instance_uid=study_uid,
        series_instance_uid=uids.series_instance_uid,
        sop_instance_uid=uids.sop_instance_uid,
    )


def save_and_validate(sr: Dataset, path: Path) -> Dataset:
    """Write, check, read back.

    dciodvfy checks the IOD (modules, attributes, flags) but not the content tree; dsrdump
    parses the tree against the Comprehensive 3D SR relationship constraints and fails on a
    violation, so both must be clean.
    """
    sr.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "Error" in line]
    assert errors == [], output
    dsrdump(path)
    return pydicom.dcmread(path)


def dsrdump(path: Path) -> str:
    result = subprocess.run(
        ["dsrdump", "+U8", "+Pl", "+Pu", str(path)], capture_output=True, timeout=30
    )
    stderr = result.stderr.decode(errors="replace")
    problems = [line for line in stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert result.returncode == 0 and problems == [], stderr
    return result.stdout.decode("utf-8")


def text_items(ds: Dataset, section: Code) -> list[tuple[str, str | None]]:
    """(text, language code or None) of the TEXT items in a root narrative container."""
    out = []
    for item in ds.ContentSequence:
        if item.ValueType != "CONTAINER":
            continue
        if item.ConceptNameCodeSequence[0].CodeValue != section.value:
            continue
        for text in item.ContentSequence:
            lang = None
            for mod in text.get("ContentSequence", []):
                lang = mod.ConceptCodeSequence[0].CodeValue
            out.append((text.TextValue, lang))
    return out


def measurement_report(ds: Dataset) -> hd.sr.MeasurementReport:
    content = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def comments_of(group: Dataset) -> list[str]:
    """The group's Comment (DCM 121106) texts: the label a viewer shows."""
    return [
        str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]


def tracking_identifier_of(group: Dataset) -> str:
    [item] = [
        item
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "112039"
    ]
    return str(item.TextValue)


def roi_of(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> hd.sr.ImageRegion:
    roi = group.roi
    assert isinstance(roi, hd.sr.ImageRegion)
    return roi


def root_language(ds: Dataset) -> str:
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121049":
            return str(item.ConceptCodeSequence[0].CodeValue)
    raise AssertionError("no Language of Content Item and Descendants at the root")


# ---------------------------------------------------------------- drafts


@pytest.mark.parametrize("language", ["en", "zh", "both"])
@pytest.mark.parametrize("with_probabilities", [True, False], ids=["prob", "noprob"])
def test_draft_cxr_validates_and_round_trips(
    dx: Dataset, tmp_path: Path, language: SrLanguage, with_probabilities: bool
) -> None:
    report = cxr_report(dx, with_probabilities=with_probabilities)
    ds = save_and_validate(
        build_report_sr(report, context([dx], language=language)), tmp_path / "draft.dcm"
    )

    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.Modality == "SR"
    assert (ds.PreliminaryFlag, ds.VerificationFlag, ds.CompletionFlag) == (
        "PRELIMINARY",
        "UNVERIFIED",
        "PARTIAL",
    )
    assert "VerifyingObserverSequence" not in ds
    assert "PredecessorDocumentsSequence" not in ds
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # Chinese patient name, whatever the language
    assert str(ds.PatientName) == "王^小明"
    assert ds.StudyInstanceUID == dx.StudyInstanceUID
    assert ds.AccessionNumber == dx.AccessionNumber
    [request] = ds.ReferencedRequestSequence
    assert (request.AccessionNumber, request.StudyInstanceUID) == ("ACC0001", dx.StudyInstanceUID)
    assert ds.SeriesInstanceUID != dx.SeriesInstanceUID
    assert ds.SeriesNumber == 9901
    assert ds.SeriesDescription == "AI draft report (medrega-pacs)"
    assert ds.Manufacturer == "medrega-pacs"
    assert ds.InstanceNumber == 1
    assert ds.ContentDate == "20261128" and ds.ContentTime.startswith("035812")

    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert [e[2] for e in sr.get_evidence()] == [dx.SOPInstanceUID]
    content = measurement_report(ds)

    # Abnormal finding: finding type / site codes, polyline = the input box, key image.
    [nodule] = content.get_planar_roi_measurement_groups(
        finding_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule")
    )
    box = report.findings[0].box
    assert box is not None
    np.testing.assert_allclose(roi_of(nodule).value, np.array(box.polyline()))
    assert roi_of(nodule).GraphicType == "POLYLINE"
    assert roi_of(nodule).value.shape == (5, 2)
    np.testing.assert_array_equal(roi_of(nodule).value[0], roi_of(nodule).value[-1])  # closed
    source = roi_of(nodule).ContentSequence[0]
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID
    assert source.ReferencedSOPSequence[0].ReferencedSOPClassUID == dx.SOPClassUID
    assert "ReferencedFrameNumber" not in source.ReferencedSOPSequence[0]  # single-frame image
    [site] = nodule.finding_sites
    assert site.value == hd.sr.CodedConcept("39607008", "SCT", "Lung")
    assert site.laterality == hd.sr.CodedConcept("24028007", "SCT", "Right")
    assert nodule.tracking_uid is not None and is_own_uid(nodule.tracking_uid)
    # The box's group holds no NUM (OHIF reads a tracked group's coordinates from its first
    # NUM) and is labelled with the finding, its side and the certainty (OHIF's label).
    assert nodule.get_measurements() == []
    certainty_text = " (p 0.87)" if with_probabilities else ""
    label = {
        "en": "Right pulmonary nodule",
        "zh": "右肺结节",
        "both": "Right pulmonary nodule / 右肺结节",
    }[language]
    assert comments_of(nodule) == [label + certainty_text]
    assert tracking_identifier_of(nodule) == (
        "1: 右肺结节" if language == "zh" else "1: Right pulmonary nodule"
    )

    # Its numbers: a TID 1501 group of the same finding (same tracking UID), each NUM inferred
    # from the same box on the same image.
    [numbers] = content.get_image_measurement_groups(tracking_uid=nodule.tracking_uid)
    assert numbers.finding_type == nodule.finding_type
    certainty = numbers.get_measurements(name=codes.DCM.CertaintyOfFinding)
    if with_probabilities:
        assert [m.value for m in certainty] == [87.3]
        assert certainty[0].unit == codes.UCUM.Percent
    else:
        assert certainty == []
    [diameter] = numbers.get_measurements(name=codes.SCT.Diameter)
    assert diameter.value == 12.0
    for measurement in numbers.get_measurements():
        [scoord] = measurement.referenced_coordinates or []
        np.testing.assert_allclose(scoord.value, np.array(box.polyline()))
        [selected] = scoord.ContentSequence
        assert selected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID

    # The normal region is said in the narrative only: no "Normal" group to bury the finding.
    assert content.get_planar_roi_measurement_groups(finding_type=codes.SCT.Normal) == []
    narrative = " ".join(t for t, _ in text_items(ds, codes.DCM.Findings))
    assert "left lung is unremarkable" in narrative or "左肺未见明显异常" in narrative

    # Algorithm identification in every group, device observer at the root.
    for group in (nodule, numbers):
        names = {
            item.ConceptNameCodeSequence[0].CodeMeaning: item for item in group[0].ContentSequence
        }
        assert names["Algorithm Name"].TextValue == "medrega-reference"
        assert names["Algorithm Version"].TextValue == "2026.11.0"
        assert names["Algorithm Family"].ConceptCodeSequence[0].CodeValue == "123110"
    [device] = content.get_observer_contexts(observer_type=codes.DCM.Device)
    assert content.get_observer_contexts(observer_type=codes.DCM.Person) == []
    device_attributes = device.observer_identifying_attributes
    assert isinstance(device_attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device_attributes.name == "medrega-reference"
    assert device_attributes.serial_number == "GPU-NODE-1"

    # Image Library present (OHIF), procedure reported.
    meanings = [i.ConceptNameCodeSequence[0].CodeMeaning for i in ds.ContentSequence]
    assert "Image Library" in meanings
    [procedure] = [
        i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure.ConceptCodeSequence[0].CodeValue == "399208008"

    # Narrative in the configured language(s), Chinese marked as such when both are present.
    findings = text_items(ds, codes.DCM.Findings)
    impressions = text_items(ds, codes.DCM.Impressions)
    if language == "en":
        assert root_language(ds) == "en-US"
        assert findings == [(report.findings_text["en"], None)]
        assert impressions == [(report.impression_text["en"], None)]
    elif language == "zh":
        assert root_language(ds) == "zh-CN"
        assert findings == [(report.findings_text["zh"], None)]
        assert impressions == [(report.impression_text["zh"], None)]
    else:
        assert root_language(ds) == "en-US"
        assert findings == [
            (report.findings_text["en"], None),
            (report.findings_text["zh"], "zh-CN"),
        ]
        assert impressions == [
            (report.impression_text["en"], None),
            (report.impression_text["zh"], "zh-CN"),
        ]

    dump = dsrdump(tmp_path / "draft.dcm")
    assert "PRELIMINARY" in dump and "UNVERIFIED" in dump
    assert '"Findings"' in dump and '"Impressions"' in dump
    for text, _ in findings + impressions:
        assert text in dump
    if language != "en":
        assert "右肺见一结节影，大小约12 mm。" in dump


def test_ascii_report_has_no_specific_character_set(dx_ascii: Dataset, tmp_path: Path) -> None:
    ds = save_and_validate(
        build_report_sr(
            cxr_report(dx_ascii, with_probabilities=True), context([dx_ascii], language="en")
        ),
        tmp_path / "ascii.dcm",
    )
    assert "SpecificCharacterSet" not in ds
    # …and a Chinese narrative on an ASCII source switches to UTF-8.
    ds_zh = save_and_validate(
        build_report_sr(
            cxr_report(dx_ascii, with_probabilities=True), context([dx_ascii], language="zh")
        ),
        tmp_path / "zh.dcm",
    )
    assert ds_zh.SpecificCharacterSet == "ISO_IR 192"
    assert "右肺" in text_items(ds_zh, codes.DCM.Findings)[0][0]


def test_latin1_source_is_re_encoded_as_utf8(tmp_path: Path) -> None:
    header = read_header(write_dx(tmp_path, patient_name="Müller^Jürgen", charset="ISO_IR 100"))
    ds = save_and_validate(
        build_report_sr(
            cxr_report(header, with_probabilities=False), context([header], language="en")
        ),
        tmp_path / "latin1.dcm",
    )
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"


def test_from_draft_result(dx: Dataset, tmp_path: Path) -> None:
    findings = list(cxr_report(dx, with_probabilities=True).findings)
    draft = DraftResult(
        domain="cxr",
        applicable=True,
        reason=None,
        model_name="medrega-reference",
        model_version="2026.11.0",
        backend="onnx",
        findings=findings,
        sentences=[
            ReportSentence("findings", findings[0].sentence_en, findings[0].sentence_zh, [0]),
            ReportSentence("findings", findings[1].sentence_en, findings[1].sentence_zh, [1]),
            ReportSentence("impression", "Right lung nodule.", "右肺结节。", [0]),
        ],
    )
    report = SrReport.from_draft(draft)
    ds = save_and_validate(build_report_sr(report, context([dx])), tmp_path / "from_draft.dcm")
    assert text_items(ds, codes.DCM.Impressions) == [
        ("Right lung nodule.", None),
        ("右肺结节。", "zh-CN"),
    ]
    with pytest.raises(ValueError, match="not applicable"):
        SrReport.from_draft(DraftResult("cxr", False, "lateral view", "m", "1", "onnx"))


# ---------------------------------------------------------------- signed and corrected


def test_final_and_corrected_ct_reference_their_predecessors(
    ct: list[Dataset], tmp_path: Path
) -> None:
    key = ct[1]
    report = report_of(
        "chest_ct",
        [
            region_finding(
                key, "left_lung", "lung_nodule", PixelBox(5, 6, 20, 22), 0.61, size_mm=8
            ),
            region_finding(None, "right_lung", None, None),  # normal, narrative only
        ],
    )
    study_uid = key.StudyInstanceUID
    draft = save_and_validate(build_report_sr(report, context(ct, version=1)), tmp_path / "d.dcm")

    final = save_and_validate(
        build_report_sr(
            report,
            context(
                ct, status="final", version=2, predecessor=predecessor_of("report-17", 1, study_uid)
            ),
        ),
        tmp_path / "f.dcm",
    )
    assert (final.PreliminaryFlag, final.VerificationFlag, final.CompletionFlag) == (
        "FINAL",
        "VERIFIED",
        "COMPLETE",
    )
    [observer] = final.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "李^伟"
    assert observer.VerifyingOrganization == "Demo Hospital 示范医院"
    assert observer.VerificationDateTime == "20261128091500"
    [study_ref] = final.PredecessorDocumentsSequence
    assert study_ref.StudyInstanceUID == study_uid
    [series_ref] = study_ref.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == draft.SeriesInstanceUID
    [sop_ref] = series_ref.ReferencedSOPSequence
    assert sop_ref.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    assert sop_ref.ReferencedSOPClassUID == draft.SOPClassUID
    assert final.SeriesDescription == "Signed report" and final.SeriesNumber == 9902
    assert final.SOPInstanceUID != draft.SOPInstanceUID

    content = measurement_report(final)
    [person] = content.get_observer_contexts(observer_type=codes.DCM.Person)
    person_attributes = person.observer_identifying_attributes
    assert isinstance(person_attributes, hd.sr.PersonObserverIdentifyingAttributes)
    assert str(person_attributes.name) == "李^伟"
    assert person_attributes.organization_name == "Demo Hospital 示范医院"
    # Only the abnormal finding is a group (the normal region has no box); it points at slice 2.
    [group] = content.get_planar_roi_measurement_groups()
    assert (
        roi_of(group).ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == key.SOPInstanceUID
    )
    np.testing.assert_allclose(roi_of(group).value, np.array(PixelBox(5, 6, 20, 22).polyline()))
    # The same finding keeps its tracking UID from the draft to the signed report.
    [draft_group] = measurement_report(draft).get_planar_roi_measurement_groups()
    assert group.tracking_uid == draft_group.tracking_uid
    procedure = [
        i for i in final.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "169069000"
    assert "Signed report" in dsrdump(tmp_path / "f.dcm")

    corrected = save_and_validate(
        build_report_sr(
            report,
            context(
                ct,
                status="corrected",
                version=3,
                predecessor=predecessor_of("report-17", 2, study_uid),
            ),
        ),
        tmp_path / "c.dcm",
    )
    assert (corrected.PreliminaryFlag, corrected.VerificationFlag) == ("FINAL", "VERIFIED")
    ref = (
        corrected.PredecessorDocumentsSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
    )
    assert ref.ReferencedSOPInstanceUID == final.SOPInstanceUID
    assert corrected.SeriesDescription == "Corrected report"


# ---------------------------------------------------------------- idempotency


def test_uids_are_deterministic_per_report_version(dx: Dataset) -> None:
    report = cxr_report(dx, with_probabilities=True)
    first = build_report_sr(report, context([dx], version=1))
    again = build_report_sr(report, context([dx], version=1))
    other_version = build_report_sr(report, context([dx], version=2))
    other_report = build_report_sr(report, context([dx], version=1, report_id="report-18"))

    assert first.SOPInstanceUID == again.SOPInstanceUID == sr_uids("report-17", 1).sop_instance_uid
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert is_own_uid(first.SOPInstanceUID) and is_own_uid(first.SeriesInstanceUID)
    assert (
        len({first.SOPInstanceUID, other_version.SOPInstanceUID, other_report.SOPInstanceUID}) == 3
    )
    assert first.SeriesInstanceUID != other_version.SeriesInstanceUID
    assert first.SOPInstanceUID != first.SeriesInstanceUID
    # Not only the UIDs: a re-send carries the very same bytes.
    assert _bytes(first) == _bytes(again)


def _bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- other shapes of report


def test_normal_study_without_boxes_has_one_study_level_group(dx: Dataset, tmp_path: Path) -> None:
    report = report_of(
        "cxr",
        [
            region_finding(None, "right_lung", None, None),
            region_finding(None, "left_lung", None, None),
        ],
    )
    ds = save_and_validate(
        build_report_sr(report, context([dx], language="en")), tmp_path / "normal.dcm"
    )
    content = measurement_report(ds)
    assert content.get_planar_roi_measurement_groups() == []
    [group] = content.get_image_measurement_groups()
    assert group.finding_type == hd.sr.CodedConcept.from_code(codes.SCT.Normal)
    assert text_items(ds, codes.DCM.Impressions) == [("No acute abnormality.", None)]


def test_abnormal_finding_without_box_is_an_image_level_group(dx: Dataset, tmp_path: Path) -> None:
    report = report_of("cxr", [region_finding(dx, "right_lung", "consolidation", None, 0.42)])
    ds = save_and_validate(build_report_sr(report, context([dx])), tmp_path / "nobox.dcm")
    content = measurement_report(ds)
    [group] = content.get_image_measurement_groups()
    assert group.finding_type == hd.sr.CodedConcept("95436008", "SCT", "Lung consolidation")
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [dx.SOPInstanceUID]
    assert [m.value for m in group.get_measurements(name=codes.DCM.CertaintyOfFinding)] == [42.0]


def test_multiframe_reference_carries_the_frame_number(dx: Dataset, tmp_path: Path) -> None:
    header = deepcopy(dx)  # recast as a multi-frame secondary capture with 3 frames
    header.SOPClassUID = pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    header.SOPInstanceUID = pydicom.uid.generate_uid()
    header.NumberOfFrames = 3
    report = report_of(
        "cxr", [region_finding(header, "right_lung", "lung_nodule", PixelBox(1, 2, 3, 4), frame=2)]
    )
    ds = save_and_validate(build_report_sr(report, context([header])), tmp_path / "mf.dcm")
    [group] = measurement_report(ds).get_planar_roi_measurement_groups()
    assert roi_of(group).ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == 2


def test_image_without_library_descriptors_is_still_listed(dx: Dataset, tmp_path: Path) -> None:
    header = deepcopy(dx)
    del header.ImagerPixelSpacing  # e.g. a CR that does not say
    report = cxr_report(header, with_probabilities=True)
    ds = save_and_validate(build_report_sr(report, context([header])), tmp_path / "nolib.dcm")
    library = [
        i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    ]
    entry = library[0].ContentSequence[0].ContentSequence[0]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID
    assert ds.get("Modality") == "SR" and header.Modality == "DX"  # the view never leaks


# ---------------------------------------------------------------- bad input, eager errors


def test_bad_input_is_refused_with_the_attribute_named(dx: Dataset, ct: list[Dataset]) -> None:
    good = cxr_report(dx, with_probabilities=True)

    outside = report_of(
        "cxr", [region_finding(dx, "right_lung", "lung_nodule", PixelBox(10, 10, 81, 20))]
    )
    with pytest.raises(ValueError, match="Columns"):
        build_report_sr(outside, context([dx]))

    elsewhere = report_of(
        "cxr", [region_finding(ct[0], "right_lung", "lung_nodule", PixelBox(1, 1, 2, 2))]
    )
    with pytest.raises(ValueError, match="not among the source images"):
        build_report_sr(elsewhere, context([dx]))

    bad_frame = report_of(
        "cxr", [region_finding(dx, "right_lung", "lung_nodule", PixelBox(1, 1, 2, 2), frame=2)]
    )
    with pytest.raises(ValueError, match="ReferencedFrameNumber"):
        build_report_sr(bad_frame, context([dx]))

    with pytest.raises(ValueError, match="probability"):
        report_of(
            "cxr", [region_finding(dx, "right_lung", "lung_nodule", PixelBox(1, 1, 2, 2), 1.5)]
        )

    with pytest.raises(ValueError, match="StudyInstanceUID"):
        context([dx, ct[0]])
    with pytest.raises(ValueError, match="VerifyingObserverSequence"):
        SrContext(
            "r", 2, "final", [dx], "m", "1", SIGNED_AT, predecessor=predecessor_of("r", 1, "1.2")
        )
    # A final SR whose draft never reached the PACS replaces nothing: no predecessor, still built.
    alone = build_report_sr(
        good, SrContext("r", 2, "final", [dx], "m", "1", SIGNED_AT, verifying_observer=RADIOLOGIST)
    )
    assert "PredecessorDocumentsSequence" not in alone and alone.CompletionFlag == "COMPLETE"
    with pytest.raises(ValueError, match="UNVERIFIED"):
        SrContext("r", 1, "draft", [dx], "m", "1", DRAFTED_AT, verifying_observer=RADIOLOGIST)
    with pytest.raises(ValueError, match="VerifyingObserverName"):
        VerifyingObserver("NoCaretName", "Org", SIGNED_AT)
    with pytest.raises(ValueError, match="InstanceNumber"):
        context([dx], version=0)
    missing = deepcopy(dx)
    del missing.Rows
    with pytest.raises(ValueError, match="Rows"):
        context([missing])
    with pytest.raises(ValueError, match="itself"):
        build_report_sr(
            good,
            context(
                [dx], status="final", version=1, predecessor=predecessor_of("report-17", 1, "1.2")
            ),
        )

    english_only = SrReport("cxr", good.findings, {"en": "Text."}, {"en": "Text."})
    with pytest.raises(ValueError, match="'zh'"):
        build_report_sr(english_only, context([dx], language="both"))


def test_normal_region_groups_can_be_turned_on(dx: Dataset, tmp_path: Path) -> None:
    """A site that wants every region drawn: each normal region is its own labelled group,
    after the finding."""
    report = cxr_report(dx, with_probabilities=True)
    ctx = context([dx])
    drawn = SrContext(**{**ctx.__dict__, "normal_region_groups": True})
    ds = save_and_validate(build_report_sr(report, drawn), tmp_path / "drawn.dcm")
    groups = measurement_report(ds).get_planar_roi_measurement_groups()
    assert [g.finding_type for g in groups] == [
        hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        hd.sr.CodedConcept.from_code(codes.SCT.Normal),
    ]
    normal = groups[1]
    assert normal.finding_sites[0].laterality == hd.sr.CodedConcept("7771000", "SCT", "Left")
    assert normal.get_measurements() == []
    assert comments_of(normal) == ["Left lung: normal / 左肺：未见异常"]


def test_source_without_type2_patient_study_attributes(dx_ascii: Dataset, tmp_path: Path) -> None:
    header = deepcopy(dx_ascii)
    for keyword in ("AccessionNumber", "PatientBirthDate", "StudyID", "ReferringPhysicianName"):
        delattr(header, keyword)
    report = cxr_report(header, with_probabilities=False)
    ds = save_and_validate(build_report_sr(report, context([header])), tmp_path / "sparse.dcm")
    assert ds.AccessionNumber in (None, "")
    assert "ReferencedRequestSequence" not in ds  # no accession: the request is unknown
    assert ds.PatientID == dx_ascii.PatientID
    assert "AccessionNumber" not in header  # the caller's header is not modified


def test_validators_catch_a_broken_sr(dx: Dataset, tmp_path: Path) -> None:
    """The checks really look at our SR: a missing flag and a bad relationship are reported."""
    sr = build_report_sr(cxr_report(dx, with_probabilities=True), context([dx]))
    no_flag = deepcopy(sr)
    del no_flag.VerificationFlag
    with pytest.raises(AssertionError, match="VerificationFlag"):
        save_and_validate(no_flag, tmp_path / "no_flag.dcm")
    bad_tree = deepcopy(sr)
    bad_tree.ContentSequence[0].RelationshipType = "INFERRED FROM"  # not from a CONTAINER
    with pytest.raises(AssertionError, match="Invalid by-value Relationship"):
        save_and_validate(bad_tree, tmp_path / "bad_tree.dcm")
