"""What the chaos benchmark reads: the database (SQL on the migrated schema), the web API as a
radiologist, the RIS sink's log and inbox, and Orthanc's REST API. The counts themselves are
defined in `ops/bench/chaos_counts.py`."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from ops.bench import chaos_counts as counts
from ops.bench.chaos_stack import ChaosStack
from ops.bench.harness import create_radiologist, sign_in_to_api
from services.pacs.local_orthanc import OrthancClient

if TYPE_CHECKING:
    from ops.bench.chaos import BenchStudy, Run

PASSWORD = "chaos-bench-radiologist-pw"
USERNAME = "chaos.reader"
TERMINAL_JOBS = tuple(counts.TERMINAL_JOB_STATES)
TERMINAL_DELIVERIES = tuple(counts.TERMINAL_DELIVERY_STATES)


class Database:
    """One autocommit connection shared by the bench's threads (queries are tiny)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in range(2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self.dsn, autocommit=True)
                    return list(self._conn.execute(sql, params).fetchall())
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt:
                        raise
        return []

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def has_model_draft(self, study_uid: str) -> bool:
        return bool(
            self.value(
                "SELECT EXISTS (SELECT 1 FROM reports r JOIN studies s ON s.id = r.study_id "
                "WHERE s.study_instance_uid = %s AND r.author_user_id IS NULL)",
                (study_uid,),
            )
        )

    def draft_or_final(self, study_uid: str) -> bool:
        """A model draft exists, or the study ended without one (not applicable, failed)."""
        return bool(
            self.value(
                "SELECT s.state IN ('not_applicable', 'failed') OR EXISTS (SELECT 1 FROM reports "
                "r WHERE r.study_id = s.id AND r.author_user_id IS NULL) "
                "FROM studies s WHERE s.study_instance_uid = %s",
                (study_uid,),
            )
        )

    def study_id(self, study_uid: str) -> int | None:
        return self.value("SELECT id FROM studies WHERE study_instance_uid = %s", (study_uid,))

    def count_instances(self, study_uid: str, uids: list[str]) -> int:
        return int(
            self.value(
                "SELECT count(*) FROM instances WHERE sop_instance_uid = ANY(%s)", (list(uids),)
            )
            or 0
        )

    def redraft_job_state(self, study_uid: str, instances: int) -> str | None:
        """State of the newest draft job covering at least `instances` instances, if any."""
        return self.value(
            "SELECT j.state FROM draft_jobs j JOIN studies s ON s.id = j.study_id "
            "WHERE s.study_instance_uid = %s AND j.instance_count >= %s "
            "ORDER BY j.id DESC LIMIT 1",
            (study_uid, instances),
        )

    def study_states(self, ids: list[int]) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self.rows(
            "SELECT id, state FROM studies WHERE id = ANY(%s)", (ids,))]  # fmt: skip


class RadiologistApi:
    """A radiologist on the JSON API: signed in once (login form CSRF, then X-CSRF-Token)."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30)
        self.lock = threading.Lock()  # one sign-in session; requests are serialised
        self.calls: dict[str, int] = defaultdict(int)

    @classmethod
    def create(cls, stack: ChaosStack, database_url: str) -> RadiologistApi:
        create_radiologist(stack.env, USERNAME, PASSWORD, "Chaos Reader", "Reader^Chaos")
        api = cls(stack.web_url)
        api.sign_in()
        return api

    def sign_in(self) -> None:
        sign_in_to_api(self.client, USERNAME, PASSWORD)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with self.lock:
            response = self.client.request(method, path, json=body)
        self.calls[f"{method} {path.rsplit('/', 1)[-1]} {response.status_code}"] += 1
        return response

    def status(self, study_id: int) -> dict[str, Any]:
        response = self._call("GET", f"/api/v1/studies/{study_id}/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def _sign_current(self, study_id: int, log: list[str], *, want_status: str) -> int | None:
        """Sign whatever version is current; reload and try again on 409 (a re-draft won)."""
        for _ in range(12):
            try:
                status = self.status(study_id)
                version = status.get("report_version")
                if version is None:
                    time.sleep(1.0)
                    continue
                response = self._call(
                    "POST",
                    f"/api/v1/studies/{study_id}/report/sign",
                    {"base_version": version, "confirm": True},
                )
                if response.status_code == 200:
                    report = response.json()["report"]
                    log.append(f"signed v{report['version']} ({report['status']}) on v{version}")
                    return int(report["version"])
                log.append(f"sign v{version}: {response.status_code} {response.text[:160]}")
                if response.status_code == 409 and status.get("status") == want_status:
                    return int(version)  # already done (an earlier answer was lost)
            except httpx.HTTPError as exc:
                log.append(f"sign: {exc!r}")
            time.sleep(0.5)
        return None

    def sign(self, study_id: int, log: list[str]) -> int | None:
        return self._sign_current(study_id, log, want_status="signed")

    def amend(self, study_id: int, log: list[str]) -> int | None:
        """An addendum as an edit of the signed version, then sign again (corrected)."""
        for _ in range(6):
            try:
                version = self.status(study_id).get("report_version")
                response = self._call(
                    "POST",
                    f"/api/v1/studies/{study_id}/report/edits",
                    {"base_version": version, "operations": [
                        {"op": "add_sentence", "section": "impression",
                         "en": "Addendum: reviewed again (chaos bench)."}]},
                )  # fmt: skip
                if response.status_code == 200:
                    log.append(f"amend: edit on v{version}")
                    return self._sign_current(study_id, log, want_status="signed")
                log.append(f"amend v{version}: {response.status_code} {response.text[:160]}")
            except httpx.HTTPError as exc:
                log.append(f"amend: {exc!r}")
            time.sleep(0.5)
        return None


class InboxWatcher:
    """Hashes every RIS inbox file whenever it changes: the sink keeps only the latest copy of a
    control ID, so a re-send with other content would otherwise leave no trace."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.digests: dict[str, set[str]] = defaultdict(set)
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inbox-watcher", daemon=True)

    def start(self) -> InboxWatcher:
        self._thread.start()
        return self

    def scan(self) -> None:
        for path in self.inbox.glob("*.hl7"):
            try:
                stat = path.stat()
                key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if self._seen.get(path.name) == key:
                    continue
                self.digests[path.stem].add(counts.hl7_content_digest(path.read_bytes()))
                self._seen[path.name] = key
            except FileNotFoundError:  # replaced between listing and reading
                continue

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.scan()


def pacs_srs(client: OrthancClient) -> list[counts.PacsSr]:
    """Every SR instance Orthanc holds, with the sequence number of its arrival."""
    seq_of: dict[str, int] = {}
    since = 0
    for _ in range(1000):
        page = client.get_json(f"/changes?since={since}&limit=1000")
        for change in page["Changes"]:
            if change["ChangeType"] == "NewInstance":
                seq_of.setdefault(change["ID"], int(change["Seq"]))
        since = int(page["Last"])
        if page["Done"]:
            break
    srs = []
    for series in client.get_json("/series?expand"):
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for instance_id in series["Instances"]:
            tags = client.get_json(f"/instances/{instance_id}/simplified-tags")
            srs.append(
                counts.PacsSr(
                    seq=seq_of.get(instance_id, -1),
                    orthanc_id=instance_id,
                    sop_instance_uid=str(tags.get("SOPInstanceUID", "")),
                    study_instance_uid=str(tags.get("StudyInstanceUID", "")),
                    verification_flag=str(tags.get("VerificationFlag", "")),
                    completion_flag=str(tags.get("CompletionFlag", "")),
                )
            )
    return srs


def settled(db: Database, studies: list[BenchStudy]) -> bool:
    """Nothing left to do: every row terminal, every instance in, every study delivered."""
    busy = db.value(
        "SELECT (SELECT count(*) FROM draft_jobs WHERE state <> ALL(%s)) "
        "+ (SELECT count(*) FROM deliveries WHERE state <> ALL(%s)) "
        "+ (SELECT count(*) FROM studies WHERE state IN ('receiving', 'stable', 'drafting'))",
        (list(TERMINAL_JOBS), list(TERMINAL_DELIVERIES)),
    )
    if busy:
        return False
    uids = [u for s in studies for u in s.all_uids]
    if db.value("SELECT count(*) FROM instances WHERE sop_instance_uid = ANY(%s)", (uids,)) < len(
        uids
    ):
        return False
    undelivered = db.value(
        "SELECT count(*) FROM studies s WHERE s.study_instance_uid = ANY(%s) "
        "AND s.state <> 'not_applicable' AND NOT EXISTS ("
        " SELECT 1 FROM deliveries d WHERE d.study_id = s.id AND d.kind = 'hl7'"
        " AND d.state = 'delivered')",
        ([s.study_uid for s in studies],),
    )
    known = db.value(
        "SELECT count(*) FROM studies WHERE study_instance_uid = ANY(%s)",
        ([s.study_uid for s in studies],),
    )
    return bool(undelivered == 0 and known == len(studies))


def _db_snapshot(
    db: Database,
) -> tuple[
    dict[str, counts.DbStudy], list[counts.DbReport], list[counts.DbDelivery], list[str]
]:  # fmt: skip
    studies = {
        row[1]: counts.DbStudy(row[0], row[1], row[2], bool(row[3]))
        for row in db.rows(
            "SELECT id, study_instance_uid, state, new_images_after_signoff FROM studies"
        )
    }
    by_id = {s.id: s for s in studies.values()}
    for study_id, uid, received in db.rows(
        "SELECT i.study_id, i.sop_instance_uid, extract(epoch FROM i.received_at)::float8 "
        "FROM instances i JOIN series se ON se.id = i.series_id WHERE NOT se.is_own_output"
    ):
        by_id[study_id].instance_uids.add(uid)
        by_id[study_id].received_at[uid] = float(received)
    reports = [
        counts.DbReport(row[0], row[1], row[2], row[3], row[4] is None, row[5], row[6])
        for row in db.rows(
            "SELECT r.id, r.study_id, r.version, r.status, r.author_user_id, j.instance_count, "
            "extract(epoch FROM r.signed_at)::float8 "
            "FROM reports r LEFT JOIN draft_jobs j ON j.id = r.draft_job_id ORDER BY r.id"
        )
    ]
    deliveries = [
        counts.DbDelivery(*row)
        for row in db.rows(
            "SELECT id, report_id, study_id, report_version, result_status, kind, message_id, "
            "state, attempts FROM deliveries ORDER BY id"
        )
    ]
    jobs = [row[0] for row in db.rows("SELECT state FROM draft_jobs")]
    return studies, reports, deliveries, jobs


def audit(
    run: Run, studies: list[BenchStudy], stack: ChaosStack, inbox: InboxWatcher
) -> tuple[dict[str, object], dict[str, object]]:
    """The counts (first) and the evidence behind every non-zero one (second)."""
    inbox.stop()
    db_studies, reports, deliveries, job_states = _db_snapshot(run.db)
    sink_log = (stack.log_dir / "ris-sink.log").read_text(errors="replace")
    records = counts.parse_sink_log(sink_log)
    ris_accepted = {r.control_id for r in records if r.reply == "AA"}
    assert stack.orthanc is not None
    srs = pacs_srs(stack.orthanc.client)
    pacs_uids = {sr.sop_instance_uid for sr in srs}
    hl7_by_id = {d.message_id: d for d in deliveries if d.kind == "hl7"}
    sr_by_uid = {d.message_id: d for d in deliveries if d.kind == "sr"}
    study_uid_of = {s.id: s.study_instance_uid for s in db_studies.values()}
    reports_of: dict[int, list[counts.DbReport]] = defaultdict(list)
    for report in reports:
        reports_of[report.study_id].append(report)
    deliveries_of: dict[int, list[counts.DbDelivery]] = defaultdict(list)
    for delivery in deliveries:
        deliveries_of[delivery.study_id].append(delivery)

    lost, overwritten, bench_errors, refused, uncovered = [], [], [], [], []
    drafted = 0
    for study in studies:
        row = db_studies.get(study.study_uid)
        mine = reports_of.get(row.id, []) if row else []
        drafted += any(r.model_authored for r in mine)
        if counts.refused_by_model(study.all_uids, row, mine):
            assert row is not None
            reason = run.db.value(
                "SELECT reason FROM draft_jobs WHERE study_id = %s ORDER BY id DESC LIMIT 1",
                (row.id,),
            )
            refused.append(f"{study.domain} #{study.index} {study.study_uid}: {reason}")
            continue
        reasons = counts.lost_reasons(
            study.all_uids, row, mine, deliveries_of.get(row.id, []) if row else [],
            ris_accepted, pacs_uids,
        )  # fmt: skip
        if counts.signed_uncovered(study.all_uids, row, mine):
            uncovered.append(f"{study.domain} #{study.index} {study.study_uid}")
        if reasons:
            lost.append(f"{study.domain} #{study.index} {study.study_uid}: {'; '.join(reasons)}")
        if row is not None:
            display = None
            if any(r.status in counts.FINAL_REPORT_STATUSES for r in mine):
                try:
                    display = run.api.status(row.id).get("status")
                except httpx.HTTPError as exc:
                    bench_errors.append(f"status of study {row.id}: {exc!r}")
            why = counts.signed_overwritten(row, mine, display, row.id in run.seen_unsigned)
            if why:
                overwritten.append(f"study {row.id} #{study.index}: {'; '.join(why)}")
        bench_errors += [f"#{study.index}: {e}" for e in study.errors]

    failed = [
        f"study {d.study_id} v{d.report_version} {d.result_status} {d.kind}: {error}"
        for d, error in _failed_deliveries(run.db, deliveries)
    ]
    unknown = sorted(ris_accepted - set(hl7_by_id))
    ordered = counts.order_violations(
        counts.ris_messages(records, hl7_by_id) + counts.pacs_messages(srs, sr_by_uid)
    )
    ordered += counts.cancelled_but_received(deliveries, ris_accepted, pacs_uids)
    duplicates = counts.duplicate_deliveries(inbox.digests, srs, sr_by_uid, study_uid_of)
    stuck_rows = counts.stuck(job_states, deliveries, [s.state for s in db_studies.values()])
    result: dict[str, object] = {
        "drafted": drafted,
        "lost": len(lost),
        "duplicate_deliveries": len(duplicates),
        "stuck": sum(stuck_rows.values()),
        "order_violations": len(ordered),
        "signed_overwritten": len(overwritten),
        "not_applicable": len(refused),
        "signed_uncovered_unflagged": len(uncovered),
        "failed_deliveries": len(failed),
        "late_resent": sum(1 for s in studies if s.late),
        "signed": sum(1 for s in studies if s.signed_version is not None),
        "amended": sum(
            1
            for s in studies
            if s.amend and s.signed_version and not any("amend" in e for e in s.errors)
        ),  # fmt: skip
        "ris_accepted": len(ris_accepted),
        "pacs_srs": len(srs),
        "ris_resends": counts.ris_resends(records),
        "ris_unknown_control_ids": len(unknown),
        "bench_errors": len(bench_errors),
    }
    details: dict[str, object] = {
        "lost": lost,
        "duplicate_deliveries": duplicates,
        "stuck": [f"{k}: {v}" for k, v in stuck_rows.items() if v],
        "order_violations": ordered,
        "signed_overwritten": overwritten,
        "not_applicable": refused,
        "signed_uncovered_unflagged": uncovered,
        "failed_deliveries": failed,
        "bench_errors": bench_errors + [f"RIS took unknown control ID {c}" for c in unknown],
        "api_calls": dict(run.api.calls),
        "delivery_states": _tally(d.state for d in deliveries),
        "report_statuses": _tally(r.status for r in reports),
        "sign_races": _tally(str(s.redraft_job_at_sign) for s in studies if s.sign),
    }
    return result, details


def _failed_deliveries(
    db: Database, deliveries: list[counts.DbDelivery]
) -> list[tuple[counts.DbDelivery, str]]:
    errors = dict(db.rows("SELECT id, last_error FROM deliveries WHERE state = 'failed'"))
    return [(d, str(errors.get(d.id))) for d in deliveries if d.state == "failed"]


def _tally(values: Any) -> dict[str, int]:
    tally: dict[str, int] = defaultdict(int)
    for value in values:
        tally[value] += 1
    return dict(tally)
