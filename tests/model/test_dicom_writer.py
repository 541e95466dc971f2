"""The phantom DICOM writer: valid IODs (dciodvfy), exact pixel round trips, deterministic UIDs.

Hand-built PhantomStudy objects pin the pixel values (every storage variant, clipping included);
the real generator is then written at a small matrix and through the CLI as a user runs it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from model.phantoms import __main__ as phantoms_cli
from model.phantoms import dicom_writer
from model.phantoms.demographics import synthesize_demographics
from model.phantoms.dicom_writer import (
    GROUND_TRUTH_FILENAME,
    PHANTOM_UID_ROOT,
    TransferSyntaxUnavailableError,
    acquisition_profile,
    available_transfer_syntaxes,
    resolve_transfer_syntax,
    write_study,
)
from model.phantoms.generator import generate_study
from model.phantoms.splits import SPLITS
from model.phantoms.types import (
    DOMAINS,
    Domain,
    FindingBox,
    PhantomImage,
    PhantomStudy,
    RegionBox,
    StudyFinding,
)

# pydicom warns (rather than fails) on a value that does not fit its VR; here that is a bug.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
DCIODVFY = shutil.which("dciodvfy")

# Physical value ranges the hand-built images cover, deliberately a little outside what the
# stored representation can hold so that clipping is exercised too.
_PHYSICAL_RANGE: dict[Domain, tuple[float, float]] = {
    "cxr": (-20.0, 4120.0),
    "chest_ct": (-1100.0, 3000.0),
    "abd_ct": (-1100.0, 3000.0),
    "brain_mr": (0.0, 1200.0),
}
_WINDOW: dict[Domain, tuple[float, float]] = {
    "cxr": (2100.0, 3600.0),
    "chest_ct": (-600.0, 1500.0),
    "abd_ct": (40.0, 400.0),
    "brain_mr": (450.0, 900.0),
}


def hand_built_study(domain: Domain, seed: int, n_slices: int = 3) -> PhantomStudy:
    """A small study whose pixels depend on the domain only, not the seed (so that two seeds
    with different storage choices carry the same physical image)."""
    rng = np.random.default_rng(DOMAINS.index(domain))
    low, high = _PHYSICAL_RANGE[domain]
    shape = (70, 90) if domain == "cxr" else (48, 56)
    spacing = (0.35, 0.35) if domain == "cxr" else (0.78125, 0.8)
    count = 1 if domain == "cxr" else n_slices
    images = []
    for index in range(count):
        pixels = rng.uniform(low, high, shape).astype(np.float32)
        images.append(
            PhantomImage(
                pixels=pixels,
                pixel_spacing_mm=spacing,
                window=_WINDOW[domain],
                regions=[RegionBox("right_lung", (3.0, 4.5, 30.25, 40.0))],
                findings=[FindingBox("nodule", "right_lung", (10.0, 12.0, 16.5, 18.0), 9.5)]
                if index == 0
                else [],
                slice_index=index,
                slice_position_mm=0.0 if domain == "cxr" else -60.0 + 2.5 * index,
                slice_thickness_mm=0.0 if domain == "cxr" else 2.5,
            )
        )
    findings = [StudyFinding("nodule", "right_lung", 9.5)]
    return PhantomStudy(domain=domain, seed=seed, images=images, findings=findings)


def seed_where(domain: Domain, predicate: object, *, start: int = 0) -> int:
    """The first seed whose acquisition profile satisfies `predicate`."""
    assert callable(predicate)
    for seed in range(start, start + 500):
        if predicate(acquisition_profile(domain, seed)):
            return seed
    raise AssertionError(f"no seed for {domain} satisfies the predicate")


def dciodvfy_problems(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for one file."""
    assert DCIODVFY, "dicom3tools' dciodvfy is required (ops/stack.sh install provides it)"
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid_iod(path: Path) -> None:
    errors, warnings = dciodvfy_problems(path)
    assert not errors, f"{path.name}: {errors}"
    # Optional-attribute warnings are tolerable, attributes outside the IOD are our mistake.
    assert not [w for w in warnings if "not present in standard DICOM IOD" in w], warnings


def stored_expectation(pixels: np.ndarray, domain: Domain, seed: int) -> np.ndarray:
    """The physical values the file can represent: rounded and clipped to the stored range."""
    storage = acquisition_profile(domain, seed).storage
    low = storage.stored_min + storage.rescale_intercept
    high = storage.stored_max + storage.rescale_intercept
    return np.clip(np.rint(pixels.astype(np.float64)), low, high)


# One seed per storage variant, so every branch of the writer is validated and round-tripped.
VARIANT_SEEDS: list[tuple[Domain, int]] = [
    ("cxr", seed_where("cxr", lambda p: p.modality == "DX" and p.storage.monochrome1)),
    ("cxr", seed_where("cxr", lambda p: p.modality == "DX" and not p.storage.monochrome1)),
    ("cxr", seed_where("cxr", lambda p: p.modality == "CR" and p.storage.monochrome1)),
    ("cxr", seed_where("cxr", lambda p: p.modality == "CR" and not p.storage.monochrome1)),
    ("chest_ct", seed_where("chest_ct", lambda p: p.storage.signed)),
    ("chest_ct", seed_where("chest_ct", lambda p: not p.storage.signed)),
    ("abd_ct", seed_where("abd_ct", lambda p: p.storage.signed)),
    ("abd_ct", seed_where("abd_ct", lambda p: not p.storage.signed)),
    ("brain_mr", seed_where("brain_mr", lambda p: p.storage.bits_stored == 12)),
    ("brain_mr", seed_where("brain_mr", lambda p: p.storage.bits_stored == 16)),
]


@pytest.fixture(scope="module")
def written_variants(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[Domain, int], dicom_writer.WrittenStudy]:
    root = tmp_path_factory.mktemp("variants")
    return {
        (domain, seed): write_study(hand_built_study(domain, seed), root / f"{domain}_{seed}")
        for domain, seed in VARIANT_SEEDS
    }


@pytest.mark.parametrize(("domain", "seed"), VARIANT_SEEDS)
def test_every_variant_is_a_valid_iod(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
    domain: Domain,
    seed: int,
) -> None:
    written = written_variants[(domain, seed)]
    expected_sop_class = {
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
        "CR": "1.2.840.10008.5.1.4.1.1.1",
        "CT": "1.2.840.10008.5.1.4.1.1.2",
        "MR": "1.2.840.10008.5.1.4.1.1.4",
    }[acquisition_profile(domain, seed).modality]
    assert written.sop_class_uid == expected_sop_class
    for path in written.files:
        assert_valid_iod(path)


@pytest.mark.parametrize(("domain", "seed"), VARIANT_SEEDS)
def test_pixels_round_trip_to_physical_values(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
    domain: Domain,
    seed: int,
) -> None:
    study = hand_built_study(domain, seed)
    written = written_variants[(domain, seed)]
    profile = acquisition_profile(domain, seed)
    for image, path in zip(study.images, written.files, strict=True):
        ds = pydicom.dcmread(path)
        assert ds.BitsStored == profile.storage.bits_stored
        assert ds.PixelRepresentation == int(profile.storage.signed)
        stored = ds.pixel_array
        if ds.PhotometricInterpretation == "MONOCHROME1":
            # A reader that wants the phantom's "brighter = more attenuation" value inverts.
            stored = (1 << int(ds.BitsStored)) - 1 - stored.astype(np.int64)
        physical = apply_modality_lut(stored, ds)
        expected = stored_expectation(image.pixels, domain, seed)
        # Rescale slope is 1, so the quantisation step is 1 physical unit: exact after rounding.
        np.testing.assert_array_equal(physical, expected)
        unclipped = (image.pixels >= expected.min()) & (image.pixels <= expected.max())
        assert np.abs(physical - image.pixels)[unclipped].max() <= 0.5 + 1e-3


def test_monochrome1_displays_like_monochrome2(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
) -> None:
    # VARIANT_SEEDS[0] and [1]: the same DX image stored MONOCHROME1 and MONOCHROME2.
    mono1 = pydicom.dcmread(written_variants[VARIANT_SEEDS[0]].files[0])
    mono2 = pydicom.dcmread(written_variants[VARIANT_SEEDS[1]].files[0])
    assert (mono1.PhotometricInterpretation, mono2.PhotometricInterpretation) == (
        "MONOCHROME1",
        "MONOCHROME2",
    )
    assert (mono1.PresentationLUTShape, mono2.PresentationLUTShape) == ("INVERSE", "IDENTITY")
    np.testing.assert_array_equal(mono1.pixel_array, 4095 - mono2.pixel_array.astype(np.int64))
    # PS3.3 C.11.2.1.2 windowing, then MONOCHROME1's inversion, must give the same picture.
    shown_mono2 = apply_voi_lut(mono2.pixel_array, mono2).astype(np.float64)
    shown_mono1 = 4095 - apply_voi_lut(mono1.pixel_array, mono1).astype(np.float64)
    np.testing.assert_allclose(shown_mono1, shown_mono2, atol=1e-6)
    assert 0 < np.mean(shown_mono2 == 0) < 1  # the window actually clips something


def test_ct_and_mr_series_geometry_is_consistent(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
) -> None:
    for (domain, seed), written in written_variants.items():
        if domain == "cxr":
            continue
        study = hand_built_study(domain, seed)
        datasets = [pydicom.dcmread(path) for path in written.files]
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
        assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(datasets) + 1))
        for ds, image in zip(datasets, study.images, strict=True):
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            assert z == pytest.approx(image.slice_position_mm)
            assert float(ds.SliceLocation) == pytest.approx(image.slice_position_mm)
            assert float(ds.SliceThickness) == pytest.approx(image.slice_thickness_mm)
            # The image is centred on the patient axis: the centre pixel maps to x = y = 0.
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
            assert x + (ds.Columns - 1) / 2 * column_spacing == pytest.approx(0, abs=1e-3)
            assert y + (ds.Rows - 1) / 2 * row_spacing == pytest.approx(0, abs=1e-3)
            assert (row_spacing, column_spacing) == pytest.approx(image.pixel_spacing_mm)
        if domain == "brain_mr":
            assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(2.5)
            assert datasets[0].MagneticFieldStrength in (1.5, 3.0)
        else:
            assert datasets[0].RescaleType == "HU"


def test_chest_xray_header(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
) -> None:
    for (domain, _seed), written in written_variants.items():
        if domain != "cxr":
            continue
        ds = pydicom.dcmread(written.files[0])
        assert ds.ViewPosition == "PA"
        assert list(ds.PatientOrientation) == ["L", "F"]
        assert ds.BodyPartExamined == "CHEST"
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert ds.ImageLaterality == "U"


def test_chinese_name_survives_with_utf8(tmp_path: Path) -> None:
    demographics = synthesize_demographics("cxr", 0)
    name = "Wang^Xiaoming=王^小明"
    custom = dataclasses.replace(
        demographics,
        patient_name=name,
        referring_physician_name="Li^Wei",
        institution_name="Medrega Phantom General Hospital",
    )
    written = write_study(hand_built_study("cxr", 0), tmp_path, demographics=custom)
    ds = pydicom.dcmread(written.files[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == name
    assert ds.PatientName.ideographic == "王^小明"
    assert ds.PatientName.family_name == "Wang"
    assert_valid_iod(written.files[0])


def test_synthetic_demographics_cover_chinese_names_and_missing_accessions() -> None:
    people = [synthesize_demographics(domain, seed) for domain in DOMAINS for seed in range(60)]
    chinese = [p for p in people if "=" in p.patient_name]
    assert 0.3 < len(chinese) / len(people) < 0.7
    assert all(not p.patient_name.split("=")[1].isascii() for p in chinese)
    missing = [p for p in people if p.accession_number is None]
    assert 0 < len(missing) < 0.25 * len(people)
    accessions = [p.accession_number for p in people if p.accession_number]
    assert len(set(accessions)) == len(accessions)
    # One seed is one person in every domain: a PACS must never see one Patient ID with two
    # names or birth dates.
    patient_keys = {
        (d.patient_id, d.patient_name, d.patient_birth_date, d.patient_sex)
        for d in (synthesize_demographics(domain, 7) for domain in DOMAINS)
    }
    assert len(patient_keys) == 1
    for person in people:
        birth = dt.datetime.strptime(person.patient_birth_date, "%Y%m%d").date()
        study = dt.datetime.strptime(person.study_date, "%Y%m%d").date()
        completed_years = (
            study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        )
        assert person.patient_age == f"{completed_years:03d}Y"
        assert 18 <= completed_years <= 91
    assert synthesize_demographics("abd_ct", 7) == synthesize_demographics("abd_ct", 7)


def test_character_set_only_when_needed_and_empty_accession_is_present(tmp_path: Path) -> None:
    ascii_seed = next(
        seed
        for seed in range(200)
        if not synthesize_demographics("cxr", seed).has_non_ascii_text
        and synthesize_demographics("cxr", seed).accession_number is None
    )
    written = write_study(hand_built_study("cxr", ascii_seed), tmp_path)
    ds = pydicom.dcmread(written.files[0])
    assert "SpecificCharacterSet" not in ds
    assert "AccessionNumber" in ds and ds.AccessionNumber == ""
    assert written.accession_number is None
    assert_valid_iod(written.files[0])


def test_uids_are_deterministic_per_domain_and_seed(tmp_path: Path) -> None:
    first = write_study(hand_built_study("chest_ct", 11), tmp_path / "a")
    again = write_study(hand_built_study("chest_ct", 11), tmp_path / "b")
    other_seed = write_study(hand_built_study("chest_ct", 12), tmp_path / "c")
    other_domain = write_study(hand_built_study("abd_ct", 11), tmp_path / "d")
    assert first.study_instance_uid == again.study_instance_uid
    assert first.sop_instance_uids == again.sop_instance_uids
    assert (tmp_path / "a" / "IM0002.dcm").read_bytes() == (
        tmp_path / "b" / "IM0002.dcm"
    ).read_bytes()
    all_uids = [
        uid
        for written in (first, other_seed, other_domain)
        for uid in (
            written.study_instance_uid,
            written.series_instance_uid,
            *written.sop_instance_uids,
        )
    ]
    assert len(set(all_uids)) == len(all_uids)
    for uid in all_uids:
        assert uid.startswith(PHANTOM_UID_ROOT) and UID(uid).is_valid
    # Fewer slices are different images: same study, but never the same series or instances.
    thinner = write_study(hand_built_study("chest_ct", 11, n_slices=2), tmp_path / "e")
    assert thinner.study_instance_uid == first.study_instance_uid
    assert thinner.series_instance_uid != first.series_instance_uid
    assert not set(thinner.sop_instance_uids) & set(first.sop_instance_uids)


def test_ground_truth_sidecar(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
) -> None:
    domain, seed = VARIANT_SEEDS[4]  # chest CT
    written = written_variants[(domain, seed)]
    study = hand_built_study(domain, seed)
    truth = json.loads((written.study_dir / GROUND_TRUTH_FILENAME).read_text(encoding="utf-8"))
    assert written.ground_truth_path == written.study_dir / GROUND_TRUTH_FILENAME
    assert truth["domain"] == domain and truth["seed"] == seed
    assert truth["study_instance_uid"] == written.study_instance_uid
    assert truth["findings"] == [{"code": "nodule", "region_code": "right_lung", "size_mm": 9.5}]
    assert list(truth["instances"]) == written.sop_instance_uids
    for sop_uid, path, image in zip(
        written.sop_instance_uids, written.files, study.images, strict=True
    ):
        entry = truth["instances"][sop_uid]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == sop_uid and entry["file"] == path.name
        assert (entry["rows"], entry["columns"]) == image.pixels.shape
        assert [r["box"] for r in entry["regions"]] == [list(r.box) for r in image.regions]
        assert [f["box"] for f in entry["findings"]] == [list(f.box) for f in image.findings]


@pytest.mark.parametrize("name", sorted(set(dicom_writer.TRANSFER_SYNTAXES) - {"explicit"}))
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
    tmp_path: Path,
    name: str,
) -> None:
    if name not in available_transfer_syntaxes():
        with pytest.raises(TransferSyntaxUnavailableError, match="cannot encode"):
            resolve_transfer_syntax(name)
        pytest.skip(f"{name} encoder not installed here")
    uid = dicom_writer.TRANSFER_SYNTAXES[name]
    # One variant of each storage kind: unsigned 12-bit (X-ray, CT), signed 16-bit CT, 16-bit MR.
    for domain, seed in VARIANT_SEEDS[0:1] + VARIANT_SEEDS[4:6] + VARIANT_SEEDS[9:10]:
        reference = written_variants[(domain, seed)]
        compressed = write_study(
            hand_built_study(domain, seed), tmp_path / f"{domain}_{seed}", transfer_syntax=name
        )
        assert compressed.sop_instance_uids == reference.sop_instance_uids
        for reference_path, compressed_path in zip(reference.files, compressed.files, strict=True):
            ds = pydicom.dcmread(compressed_path)
            assert ds.file_meta.TransferSyntaxUID == uid
            assert compressed_path.stat().st_size < reference_path.stat().st_size * 1.2
            np.testing.assert_array_equal(
                ds.pixel_array, pydicom.dcmread(reference_path).pixel_array
            )
        assert_valid_iod(compressed.files[0])


@pytest.mark.parametrize(("name", "dcmtk_decoder"), [("rle", "dcmdrle"), ("jpeg-ls", "dcmdjpls")])
def test_dcmtk_decodes_our_compressed_files_to_the_same_pixels(
    written_variants: dict[tuple[Domain, int], dicom_writer.WrittenStudy],
    tmp_path: Path,
    name: str,
    dcmtk_decoder: str,
) -> None:
    """An independent decoder agrees with pydicom (signed JPEG-LS is where codecs differ)."""
    decoder = shutil.which(dcmtk_decoder)
    assert decoder, f"DCMTK's {dcmtk_decoder} is required (ops/stack.sh install provides it)"
    if name not in available_transfer_syntaxes():
        pytest.skip(f"{name} encoder not installed here")
    for domain, seed in VARIANT_SEEDS[0:1] + VARIANT_SEEDS[4:6] + VARIANT_SEEDS[9:10]:
        reference = written_variants[(domain, seed)]
        compressed = write_study(
            hand_built_study(domain, seed, n_slices=1),
            tmp_path / f"{domain}_{seed}",
            transfer_syntax=name,
        )
        decoded_path = tmp_path / f"{domain}_{seed}_decoded.dcm"
        subprocess.run([decoder, str(compressed.files[0]), str(decoded_path)], check=True)
        np.testing.assert_array_equal(
            pydicom.dcmread(decoded_path).pixel_array,
            pydicom.dcmread(reference.files[0]).pixel_array,
        )


def test_transfer_syntax_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unsupported Transfer Syntax"):
        resolve_transfer_syntax("1.2.840.10008.1.2.4.50")  # lossy JPEG baseline
    assert resolve_transfer_syntax("explicit") == ExplicitVRLittleEndian
    assert resolve_transfer_syntax(str(dicom_writer.RLELossless)) == dicom_writer.RLELossless

    class MissingEncoder:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-openjpeg"]

    monkeypatch.setattr(dicom_writer, "get_encoder", lambda uid: MissingEncoder())
    with pytest.raises(TransferSyntaxUnavailableError, match="pylibjpeg-openjpeg"):
        write_study(
            hand_built_study("cxr", 0),
            Path("/nonexistent/never-written"),
            transfer_syntax="jpeg2000",
        )


# --- the CLI -------------------------------------------------------------------------------


def test_cli_round_robin_seeds_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CLI logic with a stand-in generator whose calls are recorded."""
    calls: list[tuple[str, int, int | None]] = []

    def fake_generate_study(
        domain: Domain, seed: int, n_slices: int | None = None, max_side: int | None = None
    ) -> PhantomStudy:
        calls.append((domain, seed, n_slices))
        return hand_built_study(domain, seed, n_slices or 3)

    monkeypatch.setattr(phantoms_cli, "generate_study", fake_generate_study)

    exit_code = phantoms_cli.main(
        [
            "--out",
            str(tmp_path),
            "--count",
            "5",
            "--domains",
            "cxr,brain_mr",
            "--split",
            "val",
            "--seed-start",
            "10",
            "--slices",
            "2",
            "--transfer-syntax",
            "rle",
        ]
    )
    assert exit_code == 0
    val = SPLITS["val"][0]
    assert calls == [
        ("cxr", val + 10, 2),
        ("brain_mr", val + 11, 2),
        ("cxr", val + 12, 2),
        ("brain_mr", val + 13, 2),
        ("cxr", val + 14, 2),
    ]
    stdout_lines = capsys.readouterr().out.splitlines()
    assert stdout_lines[0].split()[:3] == ["study", "folder", "domain"]
    assert len(stdout_lines) == 6
    for (domain, seed, _), line in zip(calls, stdout_lines[1:], strict=True):
        folder = tmp_path / phantoms_cli.study_folder_name(domain, seed)  # type: ignore[arg-type]
        assert line.startswith(folder.name)
        demographics = synthesize_demographics(domain, seed)  # type: ignore[arg-type]
        assert demographics.patient_name in line
        assert (demographics.accession_number or "(none)") in line
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == (1 if domain == "cxr" else 2)
        assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == dicom_writer.RLELossless
        assert (folder / GROUND_TRUTH_FILENAME).is_file()


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        phantoms_cli.parse_args(["--out", "x", "--count", "1", "--domains", "cxr,knee_mr"])
    with pytest.raises(SystemExit):
        phantoms_cli.parse_args(["--out", "x", "--count", "1", "--split", "holdout"])
    assert "knee_mr" not in capsys.readouterr().out


# --- the real generator -------------------------------------------------------------------

# Small renders keep this fast; 12 test-split studies cover DX and CR, MONOCHROME1 and 2, signed
# and unsigned CT and both MR bit depths (asserted below, so a change of seeds cannot hide one).
REAL_STUDY_COUNT = 12
REAL_SLICES = 2
REAL_MAX_SIDE = 128


@pytest.fixture(scope="module")
def real_studies(tmp_path_factory: pytest.TempPathFactory) -> list[dicom_writer.WrittenStudy]:
    return phantoms_cli.write_phantom_studies(
        tmp_path_factory.mktemp("real"),
        REAL_STUDY_COUNT,
        split="test",
        n_slices=REAL_SLICES,
        max_side=REAL_MAX_SIDE,
    )


def test_real_phantoms_cover_every_storage_variant(
    real_studies: list[dicom_writer.WrittenStudy],
) -> None:
    variants = set()
    for written in real_studies:
        storage = acquisition_profile(written.domain, written.seed).storage
        variants.add((written.modality, storage.monochrome1, storage.signed, storage.bits_stored))
    # (modality, MONOCHROME1, signed, bits stored)
    assert variants >= {
        ("DX", False, False, 12),
        ("CR", True, False, 12),
        ("CT", False, True, 16),
        ("CT", False, False, 12),
        ("MR", False, False, 12),
        ("MR", False, False, 16),
    }


def test_real_phantoms_are_valid_and_round_trip(
    real_studies: list[dicom_writer.WrittenStudy],
) -> None:
    for written in real_studies:
        study = generate_study(
            written.domain, written.seed, n_slices=REAL_SLICES, max_side=REAL_MAX_SIDE
        )
        truth = json.loads(written.ground_truth_path.read_text(encoding="utf-8"))
        assert truth["findings"] == [
            {"code": f.code, "region_code": f.region_code, "size_mm": f.size_mm}
            for f in study.findings
        ]
        for image, path, sop_uid in zip(
            study.images, written.files, written.sop_instance_uids, strict=True
        ):
            assert_valid_iod(path)
            ds = pydicom.dcmread(path)
            stored = ds.pixel_array.astype(np.int64)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                stored = (1 << int(ds.BitsStored)) - 1 - stored
            expected = stored_expectation(image.pixels, written.domain, written.seed)
            np.testing.assert_array_equal(apply_modality_lut(stored, ds), expected)
            entry = truth["instances"][sop_uid]
            assert [r["code"] for r in entry["regions"]] == [r.code for r in image.regions]
            assert [tuple(r["box"]) for r in entry["regions"]] == [r.box for r in image.regions]
            assert [tuple(f["box"]) for f in entry["findings"]] == [f.box for f in image.findings]


@pytest.mark.parametrize("domain", DOMAINS)
def test_full_resolution_phantoms_are_valid(tmp_path: Path, domain: Domain) -> None:
    """The demo writes full-size matrices; their spacing and windows must format as well."""
    study = generate_study(domain, SPLITS["test"][0] + 1000, n_slices=2)
    written = write_study(study, tmp_path)
    for path in written.files:
        assert_valid_iod(path)
    ds = pydicom.dcmread(written.files[0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == study.images[0].pixels.shape


def test_cli_as_a_user_runs_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.phantoms",
            "--out",
            str(tmp_path),
            "--count",
            "4",
            "--slices",
            "2",
            "--max-side",
            "96",
            "--split",
            "val",
            "--transfer-syntax",
            "jpeg-ls",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    study_dirs = sorted(path for path in tmp_path.iterdir() if path.is_dir())
    assert len(study_dirs) == 4 and len(result.stdout.splitlines()) == 5
    domains = set()
    for study_dir in study_dirs:
        assert study_dir.name in result.stdout
        truth = json.loads((study_dir / GROUND_TRUTH_FILENAME).read_text(encoding="utf-8"))
        domains.add(truth["domain"])
        assert truth["transfer_syntax_uid"] == dicom_writer.JPEGLSLossless
        assert_valid_iod(study_dir / "IM0001.dcm")
    assert domains == set(DOMAINS)


def test_cli_reports_a_missing_encoder_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class MissingEncoder:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg is not installed"]

    monkeypatch.setattr(dicom_writer, "get_encoder", lambda uid: MissingEncoder())
    exit_code = phantoms_cli.main(
        ["--out", str(tmp_path), "--count", "1", "--transfer-syntax", "jpeg2000"]
    )
    assert exit_code == 2
    assert "pylibjpeg-openjpeg is not installed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
