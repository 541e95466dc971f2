"""The `mllm` backend when the served model misbehaves: down, slow, garbage, the wrong language —
each ends in a clear job state, and nothing received is lost. Real Postgres, a real HTTP peer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from services.worker.drafting import run_draft_job
from services.worker.relay import relay_once
from shared.config import Settings, get_settings
from shared.db.models import (
    DraftJob,
    DraftJobState,
    Instance,
    RegionFinding,
    Report,
    Study,
    StudyState,
)
from shared.inference.mllm_backend import MllmBackend
from shared.inference.study_images import thin_slices
from tests.support.chat_servers import ScriptedChatServer, prompt_of
from tests.support.listener_process import free_port
from tests.support.study_rows import draft_job_for, index_files, study_input
from tests.worker.conftest import phantom

# MedRegA's own published answer for a normal chest X-ray (REFERENCE.md), and a lesion answer.
MEDREGA_NORMAL = (
    "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref>"
    "<box>[[535, 128, 923, 889]]</box>: No focal consolidation, pleural effusion, or "
    "pneumothorax is seen."
)
EFFUSION_EN = (
    "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: A small right pleural effusion "
    "is seen at the base. <ref>left lung</ref><box>[[535, 128, 923, 889]]</box>: The left "
    "lung is clear."
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDREGA_DRAFT_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("MEDREGA_DRAFT_RETRY_BASE_S", "60")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _study(clean_db: Engine, tmp_path: Path) -> tuple[int, int]:
    written = phantom("cxr", tmp_path / "in", abnormal=True, max_side=512)
    with sessionmaker(clean_db).begin() as session:
        study = index_files(session, tmp_path / "storage", written.files)
        return study.id, draft_job_for(session, study).id


def _backend(url: str, **overrides: Any) -> MllmBackend:
    return MllmBackend(Settings(mllm_base_url=url, mllm_retries=0, **overrides))


def _job_row(engine: Engine, job_id: int) -> DraftJob:
    with sessionmaker(engine, expire_on_commit=False)() as session:
        job = session.get(DraftJob, job_id)
        assert job is not None
        return job


def _nothing_lost(engine: Engine, study_id: int) -> None:
    with sessionmaker(engine)() as session:
        count = session.scalar(select(func.count()).where(Instance.study_id == study_id))
        assert count == 1


@pytest.mark.usefixtures("env")
def test_server_down_waits_with_backoff_then_fails(clean_db: Engine, tmp_path: Path) -> None:
    study_id, job_id = _study(clean_db, tmp_path)
    backend = _backend(f"http://127.0.0.1:{free_port()}/v1")
    storage = tmp_path / "storage"

    outcome = run_draft_job(clean_db, job_id, backend, storage)
    job = _job_row(clean_db, job_id)
    assert outcome.state == DraftJobState.PENDING == job.state
    assert job.reason and "waiting for the model server (attempt 1 of 2" in job.reason
    assert "unreachable" in job.reason
    # Full jitter over the first backoff step (MEDREGA_DRAFT_RETRY_BASE_S=60).
    assert job.next_attempt_at is not None and job.finished_at is None
    assert job.next_attempt_at <= datetime.now(UTC) + timedelta(seconds=60)
    # The relay leaves it alone until the backoff is over, then publishes it again.
    published: list[tuple[str, int]] = []
    just_before = job.next_attempt_at - timedelta(microseconds=1)
    relay_once(clean_db, lambda kind, row: published.append((kind, row)), now=just_before)
    assert ("draft", job_id) not in published
    relay_once(clean_db, lambda kind, row: published.append((kind, row)), now=job.next_attempt_at)
    assert ("draft", job_id) in published

    outcome = run_draft_job(clean_db, job_id, backend, storage)
    job = _job_row(clean_db, job_id)
    assert outcome.state == DraftJobState.FAILED == job.state
    assert job.reason and job.reason.startswith("model server unavailable after 2 attempts")
    with sessionmaker(clean_db)() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.state == StudyState.FAILED
        assert session.scalar(select(func.count()).select_from(Report)) == 0
    _nothing_lost(clean_db, study_id)


@pytest.mark.usefixtures("env")
def test_a_slow_server_times_out_and_the_job_waits(clean_db: Engine, tmp_path: Path) -> None:
    study_id, job_id = _study(clean_db, tmp_path)
    with ScriptedChatServer(lambda body: (200, MEDREGA_NORMAL, 3.0)) as server:
        backend = _backend(server.url, mllm_timeout_s=0.5)
        outcome = run_draft_job(clean_db, job_id, backend, tmp_path / "storage")
    job = _job_row(clean_db, job_id)
    assert outcome.state == DraftJobState.PENDING
    assert job.reason and "timed out" in job.reason
    _nothing_lost(clean_db, study_id)


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    "answer",
    ["lorem ipsum dolor sit amet", "[[[[<ref><box>]]", "", "<ref>spleen-ish</ref>: fine"],
)
def test_garbage_answers_fail_the_job_with_what_the_model_said(
    clean_db: Engine, tmp_path: Path, answer: str
) -> None:
    study_id, job_id = _study(clean_db, tmp_path)
    with ScriptedChatServer(lambda body: (200, answer, 0.0)) as server:
        outcome = run_draft_job(clean_db, job_id, _backend(server.url), tmp_path / "storage")
    job = _job_row(clean_db, job_id)
    assert outcome.state == DraftJobState.FAILED == job.state
    assert job.reason and job.reason.startswith("model answer not usable: no grounded structure")
    assert answer[:20] in job.reason
    _nothing_lost(clean_db, study_id)


@pytest.mark.usefixtures("env")
def test_a_refused_request_fails_without_retrying(clean_db: Engine, tmp_path: Path) -> None:
    study_id, job_id = _study(clean_db, tmp_path)
    error = '{"error": {"message": "image too large", "type": "invalid_request_error"}}'
    with ScriptedChatServer(lambda body: (400, error, 0.0)) as server:
        run_draft_job(clean_db, job_id, _backend(server.url), tmp_path / "storage")
        assert len(server.requests) == 1
    job = _job_row(clean_db, job_id)
    assert job.state == DraftJobState.FAILED and "image too large" in (job.reason or "")


@pytest.mark.usefixtures("env")
def test_an_answer_in_the_wrong_language_is_kept_and_noted(
    clean_db: Engine, tmp_path: Path
) -> None:
    study_id, job_id = _study(clean_db, tmp_path)
    with ScriptedChatServer(lambda body: (200, EFFUSION_EN, 0.0)) as server:
        backend = _backend(server.url, mllm_language="zh")
        outcome = run_draft_job(clean_db, job_id, backend, tmp_path / "storage")
        assert "请定位并描述" in prompt_of(server.requests[0])  # asked in Chinese
    assert outcome.state == DraftJobState.DONE
    job = _job_row(clean_db, job_id)
    assert job.reason and "answered in English when asked for Chinese" in job.reason
    with sessionmaker(clean_db)() as session:
        report = session.scalar(select(Report).where(Report.study_id == study_id))
        assert report is not None and report.model_backend == "mllm"
        findings = session.scalars(
            select(RegionFinding)
            .where(RegionFinding.report_id == report.id)
            .order_by(RegionFinding.ordinal)
        ).all()
    effusion, left = findings
    assert (effusion.region_code, effusion.finding_code) == ("right_lung", "pleural_effusion")
    assert effusion.sentence_en == "A small right pleural effusion is seen at the base."
    assert effusion.sentence_zh.startswith("右肺底部见胸腔积液")  # from the vocabulary
    assert (left.region_code, left.finding_code) == ("left_lung", None)
    assert all(f.probability is None for f in findings)  # MedRegA gives none; none invented


def test_medregas_own_normal_answer_reads_as_two_normal_regions(tmp_path: Path) -> None:
    """One sentence grounded in two regions, with negated findings: two normal regions, one
    report sentence pointing at both."""
    written = phantom("cxr", tmp_path / "in", abnormal=False, max_side=512)
    with ScriptedChatServer(lambda body: (200, MEDREGA_NORMAL, 0.0)) as server:
        result = _backend(server.url).draft(study_input(written.files))
    assert result.applicable and result.backend == "mllm"
    assert [(f.region_code, f.finding_code) for f in result.findings] == [
        ("right_lung", None),
        ("left_lung", None),
    ]
    (sentence,) = [s for s in result.sentences if s.section == "findings"]
    assert sentence.finding_ordinals == [0, 1]
    assert sentence.en.startswith("No focal consolidation")
    assert "右肺" in sentence.zh and "左肺" in sentence.zh
    assert result.section_text("impression", "en") == "No acute abnormality."


def test_ct_slices_are_thinned_evenly_around_the_centre() -> None:
    assert thin_slices(list(range(5)), 0) == [0, 1, 2, 3, 4]
    assert thin_slices(list(range(40)), 1) == [20]
    kept = thin_slices(list(range(40)), 5)
    assert kept[0] == 0 and kept[-1] == 39 and 20 in kept and len(kept) <= 6


def test_unknown_names_and_bad_boxes_are_kept_as_text_and_noted(tmp_path: Path) -> None:
    answer = (
        "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: The right lung is clear. "
        "<ref>right mandible</ref><box>[[421, 351, 505, 470]]</box>: Partly seen. "
        "<ref>left lung</ref><box>[[900, 128, 535, 889]]</box>: The left lung is clear."
    )
    written = phantom("cxr", tmp_path / "in", abnormal=False, max_side=512)
    with ScriptedChatServer(lambda body: (200, answer, 0.0)) as server:
        result = _backend(server.url).draft(study_input(written.files))
    assert [(f.region_code, f.finding_code) for f in result.findings] == [("right_lung", None)]
    texts = [s.en for s in result.sentences if s.section == "findings"]
    assert texts == ["The right lung is clear.", "Partly seen.", "The left lung is clear."]
    assert result.sentences[-1].section == "impression"
    assert any("right mandible" in n for n in result.notes)
    assert any("1 box(es)" in n for n in result.notes)


def test_ct_slices_sent_to_the_model_are_thinned_to_the_limit(tmp_path: Path) -> None:
    answer = "<ref>liver</ref><box>[[100, 200, 500, 600]]</box>: The liver is unremarkable."
    written = phantom("abd_ct", tmp_path / "in", abnormal=False, slices=8, max_side=128)
    with ScriptedChatServer(lambda body: (200, answer, 0.0)) as server:
        result = _backend(server.url, mllm_max_slices=3).draft(study_input(written.files))
        assert len(server.requests) == 3  # first, centre and last of the 8 slices
    assert result.applicable and result.timings_ms["images"] == 3
    assert [f.region_code for f in result.findings] == ["liver"]
