"""ACK parsing/building and the delivery retry policy (pure functions)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.delivery_policy import RetryPolicy, after_failure, next_attempt_at
from shared.hl7.ack import MalformedAck, build_ack, parse_ack

NOW = datetime(2026, 11, 28, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_built_ack_parses_back(code: str) -> None:
    ack = parse_ack(build_ack(code, "ORU1V1", text="db | down" if code != "AA" else ""))
    assert ack.code == code and ack.control_id == "ORU1V1"
    assert ack.accepted is (code == "AA")
    if code != "AA":
        assert "db | down" in ack.text


def test_parses_a_v23_ack_with_newlines_and_err1() -> None:
    ack = parse_ack(
        "MSH|^~\\&|RIS||X||2024||ACK|9|P|2.3\nMSA|AR|MR1|Unknown patient\nERR|PID^1^3^204&Unknown key\n"
    )
    assert (ack.code, ack.control_id) == ("AR", "MR1")
    assert "Unknown patient" in ack.text


def test_enhanced_mode_commit_accept_counts_as_accepted() -> None:
    assert parse_ack("MSH|^~\\&|RIS||||||ACK|9|P|2.5.1\rMSA|CA|MR1").accepted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "PID|1\rMSA|AA|X",
        "MSH|^~\\&|RIS||||||ACK|9|P|2.5.1\r",
        "MSH|^~\\&|R||||||ACK|9|P|2.5.1\rMSA|OK|X",
    ],
)
def test_malformed_acks(text: str) -> None:
    with pytest.raises(MalformedAck):
        parse_ack(text)


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base_s=5, cap_s=900, max_attempts=10)
    assert [policy.max_delay_s(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert policy.max_delay_s(9) == 900 and policy.max_delay_s(10_000) == 900


@given(st.integers(1, 9), st.integers(0, 2**32))
def test_full_jitter_stays_within_bounds(attempts: int, seed: int) -> None:
    policy = RetryPolicy()
    decision = after_failure(attempts, transient=True, now=NOW, rng=random.Random(seed))
    assert decision.state == "retrying" and decision.next_attempt_at is not None
    delay = (decision.next_attempt_at - NOW).total_seconds()
    assert 0 <= delay <= policy.max_delay_s(attempts) <= policy.cap_s


def test_jitter_spreads_retries() -> None:
    rng = random.Random(1)
    delays = {next_attempt_at(5, NOW, rng=rng) for _ in range(20)}
    assert len(delays) == 20  # not all at the same instant


def test_gives_up_after_max_attempts_and_on_permanent_errors() -> None:
    assert after_failure(10, transient=True, now=NOW).state == "failed"
    assert next_attempt_at(10, NOW) is None
    permanent = after_failure(1, transient=False, now=NOW)
    assert permanent.state == "failed" and permanent.next_attempt_at is None
    assert after_failure(9, transient=True, now=NOW).next_attempt_at <= NOW + timedelta(minutes=15)  # type: ignore[operator]


def test_invalid_policy() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base_s=10, cap_s=5)
