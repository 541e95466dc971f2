"""GSPS and KOS builders: real files, dciodvfy-clean, read by DCMTK, round-tripped with pydicom.

DCMTK's `dcmp2pgm` is the GSPS-aware reader: it renders the image through the presentation
state (its VOI window) and parses the graphic layer, text and graphic objects (`-v`). It does
not draw annotations itself (its man page: "textual and graphical annotations will not be
visible in the output image"), so the picture for a human (MEDREGA_GSPS_RENDER_OUT) has the
boxes and labels DCMTK parsed drawn onto DCMTK's own rendering, and the pixel assertions check
that the box DCMTK read encloses the lesion in DCMTK's rendering.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage, KeyObjectSelectionDocumentStorage

from shared.dicom.gsps_builder import build_presentation_states, presentation_state_uids
from shared.dicom.kos_builder import build_key_object_selection
from shared.dicom.uids import is_own_uid
from shared.reports.domain import PixelBox
from shared.reports.message_ids import gsps_uids, kos_uids
from shared.vocab import bilingual_label
from tests.dicom.gsps_kos_sources import (
    BACKGROUND,
    LESION,
    LESION_BOX,
    finding,
    lesion_dx,
    multiframe_sc,
    version_of,
)
from tests.dicom.test_sr_builder import dsrdump

CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


def dciodvfy_clean(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if line.startswith("Error")] == [], output
    return pydicom.dcmread(path)


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


# ---------------------------------------------------------------- GSPS


def test_a_draft_gsps_boxes_each_finding_with_its_bilingual_label(tmp_path: Path) -> None:
    dx = header(lesion_dx(tmp_path))
    nodule = finding(
        dx, PixelBox(120.0, 20.0, 150.0, 44.0), region=("left_lung", "left lung", "左肺"),
        what=("lung_nodule", "lung nodule", "肺结节"), probability=None,
    )  # fmt: skip
    normal = finding(dx, PixelBox(0, 0, 10, 10), what=None)  # said in the SR narrative only
    rejected = finding(dx, PixelBox(5, 5, 30, 30), review="rejected")
    version = version_of(dx, [finding(dx), nodule, normal, rejected])

    (state,) = build_presentation_states(version, [dx])
    read = dciodvfy_clean(state, tmp_path / "gsps.dcm")

    assert read.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    uids = gsps_uids(41, 1, dx.SOPInstanceUID)
    assert (read.SOPInstanceUID, read.SeriesInstanceUID) == (
        uids.sop_instance_uid,
        uids.series_instance_uid,
    )
    assert is_own_uid(read.SOPInstanceUID) and presentation_state_uids(version) == [
        read.SOPInstanceUID
    ]
    assert read.ContentLabel == "AI_DRAFT"
    assert read.ContentDescription.startswith("AI draft, not verified (medrega-ref 1.2.0)")
    assert read.SpecificCharacterSet == "ISO_IR 192" and read.PatientName == "王^小明"
    assert read.BodyPartExamined == "CHEST"
    assert read.StudyInstanceUID == dx.StudyInstanceUID
    (series,) = read.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == dx.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedImageSequence] == [
        dx.SOPInstanceUID
    ]
    assert (read.SoftcopyVOILUTSequence[0].WindowCenter, read.SoftcopyVOILUTSequence[0].WindowWidth) == (2048, 4096)  # fmt: skip
    (annotation,) = read.GraphicAnnotationSequence
    assert annotation.GraphicLayer == "AI FINDINGS"
    assert "ReferencedFrameNumber" not in annotation.ReferencedImageSequence[0]
    boxes = [
        (g.GraphicType, g.GraphicAnnotationUnits, [float(v) for v in g.GraphicData])
        for g in annotation.GraphicObjectSequence
    ]
    assert boxes == [
        ("POLYLINE", "PIXEL", [40, 60, 110, 60, 110, 140, 40, 140, 40, 60]),
        ("POLYLINE", "PIXEL", [120, 20, 150, 20, 150, 44, 120, 44, 120, 20]),
    ]
    labels = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert labels == [
        "Right pleural effusion / 右侧胸腔积液 (p 0.90)",
        bilingual_label("lung_nodule", "left_lung"),  # the vocabulary's wording
    ]
    for text in annotation.TextObjectSequence:  # each label inside the image
        top_left, bottom_right = (
            text.BoundingBoxTopLeftHandCorner,
            text.BoundingBoxBottomRightHandCorner,
        )
        assert 0 <= top_left[0] < bottom_right[0] <= 160 and 0 <= top_left[1] < bottom_right[1] <= 200  # fmt: skip


def test_a_signed_gsps_says_so_and_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    dx = header(lesion_dx(tmp_path, patient_name="Doe^Jane"))
    signed = version_of(dx, [finding(dx)], status="signed", number=2)
    first = build_presentation_states(signed, [dx], languages=("en",))[0]
    again = build_presentation_states(signed, [dx], languages=("en",))[0]
    first.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    again.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()

    read = dciodvfy_clean(first, tmp_path / "signed.dcm")
    assert read.ContentLabel == "SIGNED"
    assert read.ContentDescription == "Signed by radiologist Wei Li: 1 finding"
    assert read.ContentCreatorName == "Li^Wei"
    assert read.SeriesNumber == 9912
    label = read.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert label == "Right pleural effusion (p 0.90)"
    # DCMTK's own presentation-state checker passes it (its VR checker reads ASCII only)
    check = subprocess.run(
        ["dcmpschk", str(tmp_path / "signed.dcm")], capture_output=True, text=True, timeout=30
    )
    output = check.stdout + check.stderr
    assert check.returncode == 0 and "E:" not in output and "Test passed" in output, output
    draft = build_presentation_states(version_of(dx, [finding(dx)]), [dx])[0]
    assert draft.SOPInstanceUID != read.SOPInstanceUID  # a new version, a new object


def test_boxes_on_frames_of_a_multiframe_image_name_their_frames(tmp_path: Path) -> None:
    image = header(multiframe_sc(tmp_path))
    version = version_of(
        image,
        [
            finding(image, PixelBox(4, 4, 20, 20), frame=1),
            finding(image, PixelBox(30, 30, 60, 50), frame=3),
            finding(image, PixelBox(10, 40, 20, 60), frame=3),
        ],
    )
    (state,) = build_presentation_states(version, [image])
    read = dciodvfy_clean(state, tmp_path / "mf.dcm")
    per_frame = {
        int(a.ReferencedImageSequence[0].ReferencedFrameNumber): len(a.GraphicObjectSequence)
        for a in read.GraphicAnnotationSequence
    }
    assert per_frame == {1: 1, 3: 2}

    with pytest.raises(ValueError, match="frame 4 outside 1..3"):
        build_presentation_states(version_of(image, [finding(image, PixelBox(1, 1, 9, 9), frame=4)]), [image])  # fmt: skip


def test_bad_input_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    dx = header(lesion_dx(tmp_path, window=False))
    with pytest.raises(ValueError, match="outside the image's Columns x Rows 160 x 200"):
        build_presentation_states(version_of(dx, [finding(dx, PixelBox(100, 100, 170, 150))]), [dx])  # fmt: skip
    with pytest.raises(ValueError, match="not among the source images"):
        build_presentation_states(version_of(dx, [finding(dx)]), [])
    with pytest.raises(ValueError, match="has no window .* pass the full dataset"):
        build_presentation_states(version_of(dx, [finding(dx)]), [dx])
    signed_without_signer = version_of(dx, [finding(dx)], status="signed")
    signed_without_signer.signer = None
    with pytest.raises(ValueError, match="needs its signer"):
        build_presentation_states(signed_without_signer, [pydicom.dcmread(dx.filename)])


def _dcmp2pgm(image: Path, state: Path | None, out: Path) -> tuple[np.ndarray, str]:
    command = ["dcmp2pgm", "-v", str(image), str(out)]
    if state is not None:
        command[1:1] = ["-p", str(state)]
    result = subprocess.run(command, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return np.array(Image.open(out)), result.stdout.decode() + result.stderr.decode()


def _parsed(dump: str) -> tuple[list[list[tuple[float, float]]], list[str]]:
    """The graphic objects' points and the texts as DCMTK's presentation state parser read them."""
    polylines = [
        [tuple(float(v) for v in point.split("\\")) for point in line.strip(" ,").split(", ")]
        for line in re.findall(r"coordinates: (.*)", dump)
    ]
    texts = re.findall(r'text \d+: "(.*)"', dump)
    return polylines, texts  # type: ignore[return-value]


def test_dcmtk_renders_the_image_through_the_gsps_and_reads_the_box_on_the_lesion(
    tmp_path: Path,
) -> None:
    """A window-less DX: the GSPS carries its pixel range as the window, so DCMTK renders the
    lesion white on black (without the GSPS it maps the 12-bit range: two greys)."""
    dx_path = lesion_dx(tmp_path, window=False)
    version = version_of(header(dx_path), [finding(header(dx_path))])
    (state,) = build_presentation_states(version, [pydicom.dcmread(dx_path)])
    read = dciodvfy_clean(state, tmp_path / "gsps.dcm")
    assert read.SoftcopyVOILUTSequence[0].WindowWidth == LESION - BACKGROUND

    rendered, dump = _dcmp2pgm(dx_path, tmp_path / "gsps.dcm", tmp_path / "with.pgm")
    plain, _ = _dcmp2pgm(dx_path, None, tmp_path / "without.pgm")
    assert rendered.shape == (200, 160)
    lesion, background = rendered[60:140, 40:110], np.delete(rendered, np.s_[60:140], axis=0)
    assert lesion.min() >= 250 and background.max() <= 5
    assert plain[100, 80] < 250 and plain[0, 0] > 5  # not how it looks without the GSPS

    assert "Presentation Label: AI_DRAFT" in dump and "Graphic Layer #1 [AI FINDINGS]" in dump
    (polyline,), texts = _parsed(dump)
    assert texts == ["Right pleural effusion / 右侧胸腔积液 (p 0.90)"]
    xs, ys = [p[0] for p in polyline], [p[1] for p in polyline]
    assert polyline[0] == polyline[-1] and len(polyline) == 5  # closed
    x1, x2, y1, y2 = int(min(xs)), int(max(xs)), int(min(ys)), int(max(ys))
    # the box DCMTK read lies on the lesion's edges in DCMTK's rendering: inside white, outside black
    assert rendered[y1:y2, x1].min() >= 250 and rendered[y1:y2, x1 - 1].max() <= 5
    assert rendered[y1:y2, x2 - 1].min() >= 250 and rendered[y1:y2, x2].max() <= 5
    assert rendered[y1, x1:x2].min() >= 250 and rendered[y1 - 1, x1:x2].max() <= 5
    assert rendered[y2 - 1, x1:x2].min() >= 250 and rendered[y2, x1:x2].max() <= 5
    assert (x1, y1, x2, y2) == (LESION_BOX.x1, LESION_BOX.y1, LESION_BOX.x2, LESION_BOX.y2)

    picture = _draw(rendered, polyline, texts[0], read.GraphicAnnotationSequence[0])
    picture.save(tmp_path / "gsps-rendered.png")
    if os.environ.get("MEDREGA_GSPS_RENDER_OUT"):
        shutil.copy(tmp_path / "gsps-rendered.png", os.environ["MEDREGA_GSPS_RENDER_OUT"])


def _draw(
    rendered: np.ndarray, polyline: list[tuple[float, float]], text: str, annotation: Dataset
) -> Image.Image:
    """DCMTK's rendering, 4x, with the box and label DCMTK parsed drawn on it."""
    scale = 4
    picture = (
        Image.fromarray(rendered)
        .convert("RGB")
        .resize((rendered.shape[1] * scale, rendered.shape[0] * scale), Image.Resampling.NEAREST)
    )
    draw = ImageDraw.Draw(picture)
    draw.line([(x * scale, y * scale) for x, y in polyline], fill=(255, 220, 0), width=2)
    box = annotation.TextObjectSequence[0]
    top_left = box.BoundingBoxTopLeftHandCorner
    size = int((box.BoundingBoxBottomRightHandCorner[1] - top_left[1]) * scale * 0.7)
    font = ImageFont.truetype(str(CJK_FONT), size) if CJK_FONT.exists() else None
    draw.text((top_left[0] * scale, top_left[1] * scale), text, fill=(255, 220, 0), font=font)
    return picture


# ---------------------------------------------------------------- KOS


def test_the_kos_flags_the_key_images_as_of_interest_and_points_at_their_gsps(
    tmp_path: Path,
) -> None:
    dx = header(lesion_dx(tmp_path))
    image = header(multiframe_sc(tmp_path, study=dx))
    findings = [
        finding(dx),
        finding(image, PixelBox(4, 4, 20, 20), frame=2),
        finding(image, None, frame=3, what=("lung_nodule", "lung nodule", "肺结节")),
        finding(dx, PixelBox(0, 0, 9, 9), what=None),  # normal: not a key finding
    ]
    version = version_of(dx, findings)
    states = build_presentation_states(version, [dx, image])
    assert len(states) == 2
    kos = build_key_object_selection(version, [dx, image], presentation_states=states)
    read = dciodvfy_clean(kos, tmp_path / "kos.dcm")
    dump = dsrdump(tmp_path / "kos.dcm")

    assert read.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert read.SOPInstanceUID == kos_uids(41, 1).sop_instance_uid
    title = read.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113000",
        "DCM",
        "Of Interest",
    )
    items = {i.ValueType: i for i in read.ContentSequence if i.ValueType in ("TEXT",)}
    description = items["TEXT"].TextValue
    assert description.splitlines() == [
        "AI draft, not verified (medrega-ref 1.2.0).",
        "- Right pleural effusion / 右侧胸腔积液 (p 0.90)",
        "- Right pleural effusion / 右侧胸腔积液 (p 0.90)",
        "- " + bilingual_label("lung_nodule", "right_lung", probability=0.9),
    ]
    references = [
        i.ReferencedSOPSequence[0] for i in read.ContentSequence if i.ValueType == "IMAGE"
    ]
    assert [r.ReferencedSOPInstanceUID for r in references] == [
        dx.SOPInstanceUID,
        image.SOPInstanceUID,
    ]
    assert "ReferencedFrameNumber" not in references[0]
    assert list(references[1].ReferencedFrameNumber) == [2, 3]
    assert [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in references] == [
        s.SOPInstanceUID for s in states
    ]
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in read.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {dx.SOPInstanceUID, image.SOPInstanceUID} | {
        s.SOPInstanceUID for s in states
    }
    assert "Of Interest" in dump and "Device Observer Name" in dump


def test_a_signed_kos_names_the_radiologist_and_without_gsps_points_at_images_only(
    tmp_path: Path,
) -> None:
    dx = header(lesion_dx(tmp_path))
    version = version_of(dx, [finding(dx)], status="signed", number=2)
    read = dciodvfy_clean(
        build_key_object_selection(version, [dx], languages=("zh",)), tmp_path / "kos.dcm"
    )
    texts = [i.TextValue for i in read.ContentSequence if i.ValueType == "TEXT"]
    assert "Signed by radiologist Wei Li.\n- 右侧胸腔积液 (p 0.90)" in texts
    persons = [i.PersonName for i in read.ContentSequence if i.ValueType == "PNAME"]
    assert persons == ["Li^Wei"]
    (image_item,) = [i for i in read.ContentSequence if i.ValueType == "IMAGE"]
    assert "ReferencedSOPSequence" not in image_item.ReferencedSOPSequence[0]
    assert read.SeriesNumber == 9922

    normal = version_of(dx, [finding(dx, what=None)])
    with pytest.raises(ValueError, match="no key image"):
        build_key_object_selection(normal, [dx])


def test_a_code_the_vocabulary_no_longer_knows_is_labelled_from_the_stored_names(
    tmp_path: Path,
) -> None:
    dx = header(lesion_dx(tmp_path))
    old = finding(dx, what=("retired_finding", "old finding", "旧发现"), probability=None)
    (state,) = build_presentation_states(version_of(dx, [old]), [dx])
    text = state.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert text == "Old finding, right lung / 右肺 旧发现"
