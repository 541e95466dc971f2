"""Web benchmark: worklist and review latency with 10,000 studies, and server-side rendering.

    .venv/bin/python -m ops.bench.web [--studies 10000] [--requests 200] [--renders 10] [--keep]

A scratch database (migrated with Alembic, dropped afterwards unless --keep) gets `--studies`
studies shaped like a busy department: most drafted, some signed, receiving, drafting or not
applicable, ~5 % critical, a few failed deliveries; each drafted study has a grounded report of
13 findings (a chest X-ray's worth) with its sentences, some have edited and signed versions.

Latency is server-side: requests go through the whole ASGI app (middleware, auth, database,
templates) in-process, without a network hop.
- worklist: GET /api/v1/worklist, cycling through no filter, a status, a modality, a text
  search and a deep page; plus the worklist page itself;
- review: GET /studies/{id} (the page with the embedded study detail and its audit row);
- render: an uncached PNG of a 2,500 × 3,000 16-bit X-ray and of a 512 × 512 CT slice (the
  render cache is emptied before each request: this is the cost of the first look).
The last line is JSON: {"worklist_p95_ms", "review_p95_ms", "render_xray_ms", "render_ct_ms"}
(render figures are medians).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from sqlalchemy import Engine, create_engine, insert, text

from ops.bench.harness import sign_in_to_api

PG_ADMIN_DSN = os.environ.get(
    "MEDREGA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
UID_ROOT = "1.2.826.0.1.3680043.8.498.97."
FINDINGS_PER_REPORT = 13
PASSWORD = "bench-password-123"


def _sqlalchemy_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


# ---------------------------------------------------------------- data
def _write_image(path: Path, *, rows: int, columns: int, modality: str) -> tuple[str, str]:
    """A synthetic 16-bit image: a smooth body with noise, realistic enough to window."""
    rng = np.random.default_rng(rows * columns)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    body = np.exp(
        -(((yy - rows / 2) / (rows / 2.6)) ** 2 + ((xx - columns / 2) / (columns / 2.8)) ** 2)
    )
    meta = FileMetaDataset()
    ds = Dataset()
    if modality == "CT":
        pixels = (body * 1100 - 1000 + rng.normal(0, 25, body.shape)).astype(np.int16) + 1024
        meta.MediaStorageSOPClassUID = CTImageStorage
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.astype(np.int16).tobytes()
    else:
        pixels = (body * 3000 + rng.normal(0, 40, body.shape)).clip(0, 4095).astype(np.uint16)
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.WindowCenter, ds.WindowWidth = 2000, 3500
        ds.PixelRepresentation = 0
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelData = pixels.tobytes()
    uid = generate_uid(prefix=UID_ROOT)
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (
        16,
        (16 if modality == "CT" else 12),
        (15 if modality == "CT" else 11),
    )
    ds.PixelSpacing = [0.7, 0.7] if modality == "CT" else [0.143, 0.143]
    ds.save_as(path, enforce_file_format=True)
    return uid, str(ds.SOPClassUID)


def _populate(engine: Engine, n_studies: int, storage: Path) -> dict[str, Any]:
    from services.web.passwords import hash_password
    from shared.db.models import (
        AuditEvent,
        Delivery,
        DraftJob,
        Instance,
        RegionFinding,
        Report,
        Series,
        Study,
        User,
    )
    from shared.vocab import load_vocab

    rng = random.Random(7)
    vocab = load_vocab()
    regions = vocab.regions_for("cxr")
    nodule = vocab.finding("lung_nodule")
    now = datetime.now(UTC)
    family = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Smith", "Brown", "Garcia", "Müller"]
    given = ["Wei", "Fang", "Min", "Jing", "Lei", "Anna", "John", "Maria", "Yan", "Hui"]
    with engine.begin() as conn:
        radiologist = conn.execute(
            insert(User).returning(User.id),
            {"username": "bench.rad", "password_hash": hash_password(PASSWORD), "full_name": "Bench Rad",
             "dicom_person_name": "Rad^Bench", "role": "radiologist"},
        ).scalar_one()  # fmt: skip
        conn.execute(
            insert(User),
            {"username": "bench.admin", "password_hash": hash_password(PASSWORD),
             "full_name": "Bench Admin", "role": "admin"},
        )  # fmt: skip
        xray_uid, xray_class = _write_image(
            storage / "xray.dcm", rows=3000, columns=2500, modality="DX"
        )
        ct_uid, ct_class = _write_image(storage / "ct.dcm", rows=512, columns=512, modality="CT")

        batch = 1000
        drafted_ids: list[int] = []
        for start in range(0, n_studies, batch):
            studies = []
            for i in range(start, min(start + batch, n_studies)):
                roll = rng.random()
                state = ("receiving" if roll < 0.05 else "drafting" if roll < 0.08 else
                         "not_applicable" if roll < 0.11 else "signed" if roll < 0.3 else "drafted")  # fmt: skip
                received = now - timedelta(minutes=i * 3 + rng.random())
                studies.append(
                    {
                        "study_instance_uid": f"{UID_ROOT}1.{i}",
                        "patient_id": f"P{i:08d}",
                        "patient_name": f"{rng.choice(family)}^{rng.choice(given)}",
                        "patient_birth_date": f"19{rng.randint(30, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
                        "patient_sex": rng.choice("FM"),
                        "accession_number": f"A{i:010d}",
                        "study_date": received.strftime("%Y%m%d"),
                        "study_description": "XR CHEST PA",
                        "state": state,
                        "critical": state in ("drafted", "signed") and rng.random() < 0.05,
                        "instance_count": 1,
                        "first_received_at": received,
                        "last_received_at": received,
                    }
                )
            ids = conn.execute(insert(Study).returning(Study.id, Study.state), studies).all()
            series = conn.execute(
                insert(Series).returning(Series.id, Series.study_id),
                [{"study_id": sid, "series_instance_uid": f"{UID_ROOT}2.{sid}", "modality": "DX" if sid % 7 else "CR",
                  "series_number": 1} for sid, _ in ids],
            ).all()  # fmt: skip
            conn.execute(
                insert(Instance),
                [{"series_id": se, "study_id": sid, "sop_instance_uid": f"{UID_ROOT}3.{sid}",
                  "sop_class_uid": xray_class, "transfer_syntax_uid": ExplicitVRLittleEndian,
                  "instance_number": 1, "rows": 3000, "columns": 2500, "number_of_frames": 1,
                  "file_path": "xray.dcm", "size_bytes": 15_000_000, "sha256": "0" * 64}
                 for se, sid in series],
            )  # fmt: skip
            with_report = [(sid, st) for sid, st in ids if st in ("drafted", "signed")]
            jobs = conn.execute(
                insert(DraftJob).returning(DraftJob.id, DraftJob.study_id),
                [{"study_id": sid, "instance_set_sha256": f"{sid:064d}", "instance_count": 1, "state": "done",
                  "finished_at": now, "timings": {"total_ms": 900.0 + rng.random() * 300}}
                 for sid, _ in with_report],
            ).all()  # fmt: skip
            job_of = {sid: jid for jid, sid in jobs}
            report_rows = []
            for sid, st in with_report:
                versions = [("draft", None)] + (
                    [("edited", radiologist), ("signed", radiologist)] if st == "signed" else []
                )
                for v, (status, author) in enumerate(versions, start=1):
                    report_rows.append(
                        {"study_id": sid, "draft_job_id": job_of[sid], "version": v, "status": status,
                         "author_user_id": author, "model_name": "medrega-ref", "model_version": "bench",
                         "model_backend": "onnx", "domain": "cxr",
                         "findings_en": "", "findings_zh": "", "impression_en": "", "impression_zh": "",
                         "sentences": [{"section": "findings", "en": f"Sentence {k}.", "zh": f"句子{k}。",
                                        "finding_ordinals": [k]} for k in range(FINDINGS_PER_REPORT)],
                         "signed_at": now if status == "signed" else None,
                         "signed_by_user_id": radiologist if status == "signed" else None}
                    )  # fmt: skip
            reports = conn.execute(
                insert(Report).returning(Report.id, Report.study_id, Report.version, Report.status),
                report_rows,
            ).all()
            findings = []
            # Only the versions that carry deliveries in reality: the draft's preliminary and
            # the signed version's final result.
            deliveries: dict[str, list[dict[str, object]]] = {"P": [], "F": []}
            for rid, sid, version, status in reports:
                for k in range(FINDINGS_PER_REPORT):
                    region = regions[k % len(regions)]
                    abnormal = k == 0
                    x = 200 + (k % 4) * 500
                    findings.append(
                        {"report_id": rid, "ordinal": k, "region_code": region.code,
                         "region_name_en": region.en, "region_name_zh": region.zh,
                         "finding_code": nodule.code if abnormal else None,
                         "finding_name_en": nodule.en if abnormal else None,
                         "finding_name_zh": nodule.zh if abnormal else None,
                         "probability": 0.9, "critical": False, "sop_instance_uid": f"{UID_ROOT}3.{sid}",
                         "frame_number": 1, "x1": x, "y1": 300 + k * 100, "x2": x + 400, "y2": 700 + k * 100,
                         "sentence_en": f"Sentence {k}.", "sentence_zh": f"句子{k}。", "review": "proposed"}
                    )  # fmt: skip
                result_status = {"draft": "P", "signed": "F"}.get(status)
                for kind in ("sr", "hl7") if result_status else ():
                    deliveries[result_status].append(
                        {"report_id": rid, "study_id": sid, "report_version": version,
                         "result_status": result_status, "kind": kind,
                         "destination": "PACS@127.0.0.1:4242" if kind == "sr" else "127.0.0.1:2575",
                         "message_id": f"{kind}{rid}", "attempts": 1, "lease_until": now,
                         # one key set for every row (a multi-row INSERT takes the first's)
                         **({"state": "failed", "last_error": "AE: RIS down"} if rng.random() < 0.01
                            else {"state": "in_flight", "last_error": None})}
                    )  # fmt: skip
            conn.execute(insert(RegionFinding), findings)
            # Migration 0003's guard: 'delivered' only from in_flight, and no final result in
            # flight before the preliminary one is done — so preliminaries first, then finals.
            for rows in deliveries.values():
                if rows:
                    conn.execute(insert(Delivery), rows)
                conn.execute(
                    text(
                        "UPDATE deliveries SET state = 'delivered', lease_until = NULL"
                        " WHERE state = 'in_flight'"
                    )
                )
            drafted_ids.extend(sid for sid, _ in with_report)
        # A year of audit rows makes the audit table realistic in size for the review's insert.
        conn.execute(
            insert(AuditEvent),
            [{"user_id": radiologist, "username": "bench.rad", "action": "view", "object_type": "report",
              "object_id": str(i), "study_id": None, "details": {"version": 1}} for i in range(20_000)],
        )  # fmt: skip
        conn.execute(text("ANALYZE"))
    return {"drafted_ids": drafted_ids, "xray_uid": xray_uid, "ct_uid": ct_uid}


def _attach_render_images(engine: Engine, xray_uid: str, ct_uid: str, study_id: int) -> None:
    from shared.db.models import Instance, Series

    with engine.begin() as conn:
        for uid, name, rows, columns, modality in (
            (xray_uid, "xray.dcm", 3000, 2500, "DX"),
            (ct_uid, "ct.dcm", 512, 512, "CT"),
        ):
            series_id = conn.execute(
                insert(Series).returning(Series.id),
                {"study_id": study_id, "series_instance_uid": generate_uid(prefix=UID_ROOT), "modality": modality},
            ).scalar_one()  # fmt: skip
            conn.execute(
                insert(Instance),
                {"series_id": series_id, "study_id": study_id, "sop_instance_uid": uid,
                 "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1", "transfer_syntax_uid": ExplicitVRLittleEndian,
                 "rows": rows, "columns": columns, "number_of_frames": 1, "file_path": name,
                 "size_bytes": 1, "sha256": "0" * 64},
            )  # fmt: skip


# ---------------------------------------------------------------- timing
def _time(call: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def run(n_studies: int, n_requests: int, n_renders: int, keep: bool) -> dict[str, float]:
    dbname = f"medrega_bench_web_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = _sqlalchemy_url(dbname)
    storage = Path(tempfile.mkdtemp(prefix="medrega-bench-web-"))
    os.environ["MEDREGA_DATABASE_URL"] = url
    os.environ["MEDREGA_STORAGE_DIR"] = str(storage)
    os.environ.setdefault("MEDREGA_ENVIRONMENT", "test")
    from alembic import command
    from alembic.config import Config

    from shared.config import REPO_ROOT, get_settings

    get_settings.cache_clear()
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        data = _populate(engine, n_studies, storage)
        print(
            f"populated {n_studies} studies in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        _attach_render_images(engine, data["xray_uid"], data["ct_uid"], data["drafted_ids"][0])

        from fastapi.testclient import TestClient

        from services.web import rendering
        from services.web.app import app

        rng = random.Random(11)
        results: dict[str, list[float]] = {}
        with TestClient(app) as client:
            sign_in_to_api(client, "bench.rad", PASSWORD)
            queries = ["", "status=draft_ready", "modality=CR", "q=wang%20wei", "q=A00000012",
                       "status=delivery_failed", "page=40"]  # fmt: skip
            for q in queries:  # warm-up: plans cached, pool filled
                client.get("/api/v1/worklist?" + q)
            counter = iter(range(10**9))
            results["worklist_api"] = _time(
                lambda: client.get("/api/v1/worklist?" + queries[next(counter) % len(queries)]),
                n_requests,
            )
            results["worklist_page"] = _time(
                lambda: client.get("/worklist"), max(20, n_requests // 5)
            )
            ids = data["drafted_ids"]
            for sid in ids[:5]:
                client.get(f"/studies/{sid}")

            def review() -> None:
                response = client.get(f"/studies/{rng.choice(ids)}")
                assert response.status_code == 200

            results["review_page"] = _time(review, n_requests)
            results["study_api"] = _time(
                lambda: client.get(f"/api/v1/studies/{rng.choice(ids)}"), max(20, n_requests // 5)
            )

            def render(uid: str) -> Callable[[], None]:
                def call() -> None:
                    rendering.cache = rendering.RenderCache()
                    response = client.get(f"/api/v1/images/{uid}/frames/1")
                    assert response.status_code == 200, response.text

                return call

            render(data["xray_uid"])()  # warm-up: imports, page cache
            results["render_xray"] = _time(render(data["xray_uid"]), n_renders)
            results["render_ct"] = _time(render(data["ct_uid"]), n_renders)
    finally:
        engine.dispose()
        from shared.db.session import get_engine

        get_engine.cache_clear()
        if not keep:
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            for path in storage.iterdir():
                path.unlink()
            storage.rmdir()

    print(f"{'measure':<14} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for name, samples in results.items():
        print(f"{name:<14} {len(samples):>5} {percentile(samples, 50):>9.1f} "
              f"{percentile(samples, 95):>9.1f} {max(samples):>9.1f}")  # fmt: skip
    return {
        "worklist_p95_ms": round(percentile(results["worklist_api"], 95), 1),
        "review_p95_ms": round(percentile(results["review_page"], 95), 1),
        "render_xray_ms": round(statistics.median(results["render_xray"]), 1),
        "render_ct_ms": round(statistics.median(results["render_ct"]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--renders", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    summary = run(args.studies, args.requests, args.renders, args.keep)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
