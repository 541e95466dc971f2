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
        backend = _backend(server.url, mllm_concurrency=2)
        run_draft_job(clean_db, job_id, backend, tmp_path / "storage")
        # Not retried, and the rest of the study's plan is not sent: at most the requests
        # already in flight when the first refusal came back.
        assert 1 <= len(server.requests) <= 2 < backend.plan("DX", None).cost(1)
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
        assert all("你是一个医疗助手" in prompt_of(r) for r in server.requests)  # asked in Chinese
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
    assert effusion.sentence_zh.startswith("右侧胸腔积液，液深约")  # from the vocabulary
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
    # The inverted box is in every grounded answer (the scripted server answers every prompt
    # alike): once per phrase-grounding and disease-localisation request.
    grounded = int(result.timings_ms["requests"]) - 1  # the plain report has no boxes
    assert f"{grounded} box(es) in the answer could not be used" in " ".join(result.notes)


def test_ct_slices_sent_to_the_model_are_thinned_to_the_limit(tmp_path: Path) -> None:
    answer = "<ref>liver</ref><box>[[100, 200, 500, 600]]</box>: The liver is unremarkable."
    written = phantom("abd_ct", tmp_path / "in", abnormal=False, slices=8, max_side=128)
    with ScriptedChatServer(lambda body: (200, answer, 0.0)) as server:
        backend = _backend(server.url, mllm_max_slices=3)
        result = backend.draft(study_input(written.files))
        # first, centre and last of the 8 slices; per slice one phrase-grounding request per
        # abdominal region group and one disease localisation per abdominal finding; one report
        plan = backend.plan("CT", "ABDOMEN")
        assert (len(plan.groups), len(plan.findings)) == (4, 3)
        assert len(server.requests) == 3 * 7 + 1 == result.timings_ms["requests"]
    assert result.applicable and result.timings_ms["images"] == 3
    assert [f.region_code for f in result.findings] == ["liver"]


def test_the_request_budget_thins_slices_further(tmp_path: Path) -> None:
    answer = "<ref>liver</ref><box>[[100, 200, 500, 600]]</box>: The liver is unremarkable."
    written = phantom("abd_ct", tmp_path / "in", abnormal=False, slices=8, max_side=128)
    with ScriptedChatServer(lambda body: (200, answer, 0.0)) as server:
        backend = _backend(server.url, mllm_max_requests=25)
        result = backend.draft(study_input(written.files))
        # 8 slices would cost 8 * 7 + 1; the evenly spaced thinning (centre included) that fits
        # keeps first, centre and last.
        assert len(server.requests) == 3 * 7 + 1 <= 25
    assert result.timings_ms["images"] == 3


def test_the_plan_follows_the_body_part_and_the_settings() -> None:
    backend = _backend("http://127.0.0.1:9/v1")
    cxr = backend.plan("DX", None)
    assert cxr.groups[0] == ("right_lung", "left_lung")  # MedRegA's own pairing
    assert cxr.cost(1) == len(cxr.groups) + len(cxr.findings) + 1
    # CT without a body part: both CT domains' groups and findings, the answers decide.
    unknown = backend.plan("CT", None)
    assert {d.code for d in unknown.domains} == {"chest_ct", "abd_ct"}
    assert backend.plan("CT", "chest").domains[0].code == "chest_ct"
    lean = _backend(
        "http://127.0.0.1:9/v1", mllm_disease_prompts=False, mllm_report_generation=False
    )
    assert lean.plan("DX", None).cost(1) == len(cxr.groups)
    with pytest.raises(ValueError, match="MEDREGA_MLLM_MAX_REQUESTS=5"):
        _backend("http://127.0.0.1:9/v1", mllm_max_requests=5)


def test_several_boxes_for_one_name_are_one_finding_each(tmp_path: Path) -> None:
    """Bilateral effusions in one answer: two findings, each on its lung, one box each."""

    def script(body: dict[str, Any]) -> tuple[int, str, float]:
        prompt = prompt_of(body)
        if "disease localization" in prompt and "pleural effusion" in prompt:
            return (
                200,
                "<ref>pleural effusion</ref><box>[[150, 700, 420, 880], [580, 720, 860, 890]]"
                "</box>: Bilateral pleural effusions.",
                0.0,
            )
        if "disease localization" in prompt:
            return (200, "No such lesion is seen in this image.", 0.0)
        if "report generation" in prompt:
            return (200, "Findings: Bilateral effusions. Impression: Bilateral effusions.", 0.0)
        return (200, MEDREGA_NORMAL, 0.0)

    written = phantom("cxr", tmp_path / "in", abnormal=False, max_side=512)
    with ScriptedChatServer(script) as server:
        result = _backend(server.url).draft(study_input(written.files))
    effusions = [f for f in result.findings if f.finding_code == "pleural_effusion"]
    assert sorted(f.region_code for f in effusions) == ["left_lung", "right_lung"]
    assert all(f.box is not None for f in effusions) and effusions[0].box != effusions[1].box
    # Both lungs are abnormal: no normal-lung finding is left beside them.
    assert not [f for f in result.findings if f.finding_code is None and "lung" in f.region_code]
    # "Bilateral effusions." affirms what the draft holds: the model's impression is used.
    (impression,) = [s for s in result.sentences if s.section == "impression"]
    assert impression.en == "Bilateral effusions."
    assert sorted(impression.finding_ordinals) == sorted(
        result.findings.index(f) for f in effusions
    )
    assert "胸腔积液" in impression.zh  # the other language from the vocabulary
    assert result.notes == []
