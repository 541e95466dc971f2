"""A burst's X-rays in one model pass: a draft run for an X-ray job takes the X-ray jobs waiting in
the lane with it, and every job is still drafted exactly once, each in its own transaction
(real Postgres, the real model)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from services.worker.drafting import run_draft_job
from services.worker.relay import relay_once
from shared.config import get_settings
from shared.db.advisory_locks import LockSpace
from shared.db.models import DraftJob, DraftJobState, Report
from shared.inference.backend import StudyInput
from shared.inference.onnx_backend import OnnxBackend
from shared.reports.domain import DraftResult, PixelBox
from tests.support.study_rows import draft_job_for, index_files, study_input
from tests.worker.conftest import phantom


@pytest.fixture(scope="module")
def backend() -> OnnxBackend:
    return OnnxBackend(get_settings().model_path)


def _xrays(out: Path, n: int) -> list[WrittenStudy]:
    return [write_phantom_study("cxr", s, out, max_side=512) for s in seeds("test", n)]


def _jobs(
    engine: Engine, storage: Path, studies: list[WrittenStudy], state: str = DraftJobState.QUEUED
) -> list[int]:
    with sessionmaker(engine, expire_on_commit=False).begin() as session:
        jobs = [draft_job_for(session, index_files(session, storage, s.files)) for s in studies]
        for job in jobs:
            job.state = state
        return [job.id for job in jobs]


def _states(engine: Engine) -> dict[int, tuple[str, float | None]]:
    with sessionmaker(engine)() as session:
        return {
            job.id: (job.state, (job.timings or {}).get("batch"))
            for job in session.scalars(select(DraftJob))
        }


def _reports(engine: Engine) -> dict[int, int]:
    """Reports per draft job."""
    with sessionmaker(engine)() as session:
        rows = session.execute(
            select(Report.draft_job_id, func.count()).group_by(Report.draft_job_id)
        ).all()
    return {job_id: count for job_id, count in rows if job_id is not None}


def test_an_xray_job_drafts_the_waiting_xray_jobs_with_it_once_each(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    first, *waiting = _jobs(clean_db, storage, _xrays(tmp_path / "in", 3))
    ct = _jobs(clean_db, storage, [phantom("chest_ct", tmp_path / "ct", slices=8, max_side=256)])[0]
    outcome = run_draft_job(clean_db, first, backend, storage, batch_max=8)
    assert outcome.job_id == first and outcome.state == DraftJobState.DONE
    states = _states(clean_db)
    assert {j: states[j] for j in [first, *waiting]} == {
        j: (DraftJobState.DONE, 3.0) for j in [first, *waiting]
    }
    assert states[ct] == (DraftJobState.QUEUED, None)  # a CT is never taken along
    # Each stored as soon as the model was done with it, not all at the end of the batch.
    with sessionmaker(clean_db)() as session:
        done_after = [session.get(DraftJob, j).timings["total_ms"] for j in [first, *waiting]]  # type: ignore[union-attr,index]
    assert done_after == sorted(done_after) and len(set(done_after)) == 3
    assert _reports(clean_db) == {first: 1, waiting[0]: 1, waiting[1]: 1}
    # Their own messages arrive later and change nothing.
    for job_id in waiting:
        again = run_draft_job(clean_db, job_id, backend, storage, batch_max=8)
        assert again.state == DraftJobState.DONE and again.report_id is None
    assert _reports(clean_db) == {first: 1, waiting[0]: 1, waiting[1]: 1}


def test_batch_of_one_and_a_ct_job_draft_only_their_own_job(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    first, waiting = _jobs(clean_db, storage, _xrays(tmp_path / "in", 2))
    ct = _jobs(clean_db, storage, [phantom("chest_ct", tmp_path / "ct", slices=8, max_side=256)])[0]
    assert run_draft_job(clean_db, first, backend, storage, batch_max=1).state == "done"
    assert run_draft_job(clean_db, ct, backend, storage, batch_max=8).state == "done"
    states = _states(clean_db)
    assert states[waiting] == (DraftJobState.QUEUED, None)
    assert states[first] == states[ct] == (DraftJobState.DONE, 1.0)


def test_a_waiting_job_another_worker_holds_is_left_to_it(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    first, held, free = _jobs(clean_db, storage, _xrays(tmp_path / "in", 3))
    with clean_db.connect() as other_worker:
        other_worker.execute(
            text("SELECT pg_advisory_lock(:space, :key)"),
            {"space": int(LockSpace.DRAFT_JOB), "key": held},
        )
        other_worker.commit()
        run_draft_job(clean_db, first, backend, storage, batch_max=8)
        states = _states(clean_db)
        assert states[held] == (DraftJobState.QUEUED, None)
        assert states[first] == states[free] == (DraftJobState.DONE, 2.0)
        other_worker.execute(
            text("SELECT pg_advisory_unlock(:space, :key)"),
            {"space": int(LockSpace.DRAFT_JOB), "key": held},
        )
        other_worker.commit()
    # The other worker let go: the job's own message drafts it, once.
    assert run_draft_job(clean_db, held, backend, storage, batch_max=8).state == "done"
    assert _reports(clean_db) == {first: 1, held: 1, free: 1}


def test_a_companion_that_cannot_be_read_does_not_cost_the_others_their_draft(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    studies = _xrays(tmp_path / "in", 3)
    first, broken, fine = _jobs(clean_db, storage, studies)
    for path in (storage / studies[1].study_instance_uid).rglob("*.dcm"):
        path.write_bytes(path.read_bytes()[:2000])  # truncated on disk after it was indexed
    run_draft_job(clean_db, first, backend, storage, batch_max=8)
    states = _states(clean_db)
    assert states[first][0] == states[fine][0] == DraftJobState.DONE
    assert states[broken][0] == DraftJobState.NOT_APPLICABLE
    assert _reports(clean_db) == {first: 1, fine: 1}


def test_draft_iter_answers_each_study_as_draft_alone(tmp_path: Path, backend: OnnxBackend) -> None:
    studies = [study_input(s.files) for s in _xrays(tmp_path, 3)]
    together = list(backend.draft_iter(studies))
    for study, batched in zip(studies, together, strict=True):
        alone = backend.draft(study)
        assert isinstance(batched, DraftResult)
        assert (batched.domain, batched.applicable) == (alone.domain, alone.applicable)
        assert [(f.region_code, f.finding_code, f.image) for f in batched.findings] == [
            (f.region_code, f.finding_code, f.image) for f in alone.findings
        ]
        for a, b in zip(batched.findings, alone.findings, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=1e-3)
            assert _box(a.box) == pytest.approx(_box(b.box), abs=1.0)


def _box(box: PixelBox | None) -> tuple[float, ...]:
    return () if box is None else (box.x1, box.y1, box.x2, box.y2)


def test_an_xray_waiting_while_a_ct_is_drafted_is_drafted_between_its_slice_batches(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    ct_study = phantom("chest_ct", tmp_path / "ct", slices=40, max_side=256)  # 3 model batches
    (ct,) = _jobs(clean_db, storage, [ct_study])
    (xray,) = _jobs(clean_db, storage, _xrays(tmp_path / "in", 1))
    outcome = run_draft_job(clean_db, ct, backend, storage, batch_max=8)
    assert outcome.state == DraftJobState.DONE
    with sessionmaker(clean_db)() as session:
        ct_job, xray_job = session.get(DraftJob, ct), session.get(DraftJob, xray)
        assert ct_job is not None and xray_job is not None
        assert xray_job.state == DraftJobState.DONE
        assert ct_job.started_at and ct_job.finished_at
        assert xray_job.started_at and xray_job.finished_at
        # Drafted inside the CT's run, not after it.
        assert ct_job.started_at < xray_job.started_at < xray_job.finished_at < ct_job.finished_at
        assert (ct_job.timings or {}).get("paused_ms", 0) > 0
    assert _reports(clean_db) == {ct: 1, xray: 1}
    # With batching off the series holds the model to its end.
    (xray2,) = _jobs(clean_db, storage, _xrays(tmp_path / "in2", 2)[1:])
    (ct2,) = _jobs(
        clean_db, storage, [phantom("abd_ct", tmp_path / "ct2", slices=40, max_side=256)]
    )
    run_draft_job(clean_db, ct2, backend, storage, batch_max=1)
    assert _states(clean_db)[xray2] == (DraftJobState.QUEUED, None)


class _DiesAfterFirstDraft:
    """The worker process dies (here: an exception no handler catches) once the first draft of
    its batch is stored: every lock it held goes, as with a SIGKILL."""

    name = "onnx"

    def __init__(self, backend: OnnxBackend) -> None:
        self.backend = backend

    def draft(self, study: StudyInput) -> DraftResult:
        return self.backend.draft(study)

    def draft_iter(
        self, studies: Sequence[StudyInput], **kwargs: Any
    ) -> Iterator[DraftResult | Exception]:
        drafts = self.backend.draft_iter(studies, **kwargs)
        yield next(drafts)
        yield next(drafts)  # the first is stored while this one is made
        raise KeyboardInterrupt


def test_a_batch_cut_short_leaves_every_job_to_be_drafted_exactly_once(
    clean_db: Engine, tmp_path: Path, backend: OnnxBackend
) -> None:
    storage = tmp_path / "storage"
    jobs = _jobs(clean_db, storage, _xrays(tmp_path / "in", 4))
    with pytest.raises(KeyboardInterrupt):
        run_draft_job(clean_db, jobs[0], _DiesAfterFirstDraft(backend), storage, batch_max=8)  # type: ignore[arg-type]
    states = _states(clean_db)
    assert [states[j][0] for j in jobs] == ["done", "done", "running", "running"]
    # The relay sees the running jobs nobody holds and publishes them again; each is drafted.
    published: list[tuple[str, int]] = []
    relay_once(clean_db, lambda kind, row_id, *_: published.append((kind, row_id)))
    redrafts = sorted(row_id for kind, row_id in published if kind == "draft")
    assert redrafts == [jobs[2], jobs[3]]
    for job_id in redrafts:
        run_draft_job(clean_db, job_id, backend, storage, batch_max=8)
    assert {j: s for j, (s, _) in _states(clean_db).items()} == {j: "done" for j in jobs}
    assert _reports(clean_db) == {j: 1 for j in jobs}
