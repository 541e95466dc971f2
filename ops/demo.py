"""`make run`'s demo: phantom studies → Orthanc (storescu) → … → a table of what came back.

Writes a few phantom studies (every domain, normal and abnormal, Chinese-named patients), sends
each to the PACS with DCMTK's storescu as a modality would, waits until each study is drafted and
both deliveries are acknowledged (or the study ends 'not applicable'), and prints one row per
study: domain, findings, latency, SR found in the PACS, ORU ACK from the RIS.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from shared.config import Settings, get_settings
from shared.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    DraftJob,
    Report,
    ReportStatus,
    Study,
    StudyState,
)
from shared.db.session import get_engine

# (domain, test-split seed): chosen to cover normal and abnormal studies in every domain.
DEMO_STUDIES = [
    ("cxr", 2000000),
    ("cxr", 2000004),
    ("chest_ct", 2000001),
    ("abd_ct", 2000002),
    ("brain_mr", 2000003),
    ("abd_ct", 2000006),
]
TERMINAL_STUDY_STATES = {StudyState.NOT_APPLICABLE, StudyState.FAILED}


@dataclass
class Row:
    written: WrittenStudy
    sent_at: float
    finished_at: float | None = None
    state: str = "not received"
    findings: str = ""
    sr_in_pacs: bool = False
    oru_ack: str = ""


def fresh_uids(written: WrittenStudy, run_id: str) -> WrittenStudy:
    """Give this run's copy of a phantom its own UIDs, so every `make run` drafts anew.

    Phantom UIDs are deterministic per seed; re-sending last run's study would be (correctly)
    recognised as a duplicate and nothing new would happen.
    """

    def remap(uid: str) -> str:
        return str(generate_uid(entropy_srcs=[run_id, uid]))

    new_uids = []
    for path in written.files:
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, remap(getattr(ds, keyword)))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        new_uids.append(str(ds.SOPInstanceUID))
    return dataclasses.replace(
        written,
        study_instance_uid=remap(written.study_instance_uid),
        series_instance_uid=remap(written.series_instance_uid),
        sop_instance_uids=new_uids,
    )


def send_to_pacs(settings: Settings, files: list[Path]) -> None:
    env = dict(os.environ, TCP_NODELAY="1")
    result = subprocess.run(
        ["storescu", "-aet", "DEMO_MODALITY", "-aec", settings.pacs_ae_title,
         settings.pacs_host, str(settings.pacs_port), *map(str, files)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"storescu to the PACS failed:\n{result.stderr}")


def orthanc_has_instance(settings: Settings, sop_instance_uid: str) -> bool:
    request = urllib.request.Request(
        f"{settings.pacs_http_url}/tools/find",
        data=json.dumps(
            {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        ).encode(),
        method="POST",
    )
    token = base64.b64encode(
        f"{settings.pacs_http_user}:{settings.secret('pacs_http_password')}".encode()
    ).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return bool(json.loads(response.read()))


def _update(session: Session, settings: Settings, row: Row) -> bool:
    """Refresh one row from the database; True once the study is finished."""
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == row.written.study_instance_uid)
    )
    if study is None:
        return False
    row.state = study.state
    if study.state in TERMINAL_STUDY_STATES:
        job = session.scalar(
            select(DraftJob).where(DraftJob.study_id == study.id).order_by(DraftJob.id.desc())
        )
        row.findings = (job.reason or "")[:40] if job else ""
        row.finished_at = row.finished_at or time.monotonic()
        return True
    report = session.scalar(
        select(Report)
        .where(Report.study_id == study.id, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.version.desc())
    )
    if report is None:
        return False
    codes = sorted({f.finding_code for f in report.findings if f.finding_code})
    row.findings = ", ".join(codes) or "normal"
    deliveries = {
        d.kind: d for d in session.scalars(select(Delivery).where(Delivery.report_id == report.id))
    }
    sr, hl7 = deliveries.get(DeliveryKind.SR), deliveries.get(DeliveryKind.HL7)
    row.oru_ack = (hl7.ack_code or hl7.state) if hl7 else ""
    done = all(
        d.state in (DeliveryState.DELIVERED, DeliveryState.FAILED) for d in deliveries.values()
    )
    if done and deliveries:
        row.sr_in_pacs = sr is not None and orthanc_has_instance(settings, sr.message_id)
        row.finished_at = row.finished_at or time.monotonic()
    return done and bool(deliveries)


def print_table(rows: list[Row]) -> None:
    header = [
        "accession",
        "domain",
        "images",
        "state",
        "findings",
        "sent → delivered",
        "SR in PACS",
        "ORU ACK",
    ]
    lines = [header]
    for row in rows:
        latency = f"{row.finished_at - row.sent_at:.1f} s" if row.finished_at else "-"
        lines.append(
            [
                row.written.accession_number or "(none)",
                row.written.domain,
                str(len(row.written.files)),
                row.state,
                row.findings,
                latency,
                "yes" if row.sr_in_pacs else "no",
                row.oru_ack or "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait in all")
    parser.add_argument("--slices", type=int, default=24, help="slices per CT/MR series")
    args = parser.parse_args(argv)
    settings = get_settings()
    out = settings.run_dir / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    rows: list[Row] = []
    for domain, seed in DEMO_STUDIES:
        written = fresh_uids(
            write_phantom_study(domain, seed, out, n_slices=args.slices),  # type: ignore[arg-type]
            run_id=out.name,
        )
        send_to_pacs(settings, written.files)
        rows.append(Row(written, time.monotonic()))
        print(
            f"sent {written.domain:<9} {written.accession_number or '(no accession)'}"
            f" ({len(written.files)} images) to {settings.pacs_ae_title}",
            flush=True,
        )
    print(
        f"waiting for drafts and deliveries (PACS StableAge {settings.pacs_stable_age_s} s"
        f" + listener STABLE_AGE {settings.stable_age_s:g} s first) …",
        flush=True,
    )
    factory = sessionmaker(get_engine(), expire_on_commit=False)
    deadline = time.monotonic() + args.timeout
    pending = list(rows)
    while pending and time.monotonic() < deadline:
        with factory() as session:
            pending = [row for row in pending if not _update(session, settings, row)]
        time.sleep(1.0)
    print()
    print_table(rows)
    if pending:
        print(
            f"\n{len(pending)} study(ies) not finished within {args.timeout:g} s; "
            "see `ops/stack.sh status` and var/log/",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
