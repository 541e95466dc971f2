"""Stateful property test of the report lifecycle over the real database.

Hypothesis interleaves re-drafts (late images), edits, sign-offs (also stale ones), amendments,
delivery attempts with every outcome (AA, AE, AR, timeout, an unexpected exception), workers
dying mid-attempt (lease taken back by the relay) and admin retries. After every step:
1. no model draft follows a signed/corrected version, and final versions never change;
2. what the receivers got, per kind and destination, never goes backwards: no P after an F/C,
   no C before an F, no older version after a newer one;
3. every delivery is in a recorded state (a retry scheduled, a failure with its error);
and at the end, with the peers answering AA (and failed ones retried by an admin), everything
settles: no delivery is left open, and the final version's messages are delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Delivery, DeliveryState, Report, Study
from shared.hl7.errors import AckError, AckRejected, RisTimeout
from shared.reports import deliveries, lifecycle
from shared.reports.lifecycle import LifecycleViolation
from tests.reports.world import make_study, make_user, model_result, running_job

OUTCOMES = ("AA", "AE", "AR", "timeout", "exception")


def _error(outcome: str) -> BaseException | None:
    return {
        "AA": None,
        "AE": AckError("AE: database busy", ack_code="AE"),
        "AR": AckRejected("AR: not now", ack_code="AR"),
        "timeout": RisTimeout("no ACK within 10 s"),
        "exception": ValueError("a bug in a message builder"),
    }[outcome]


class Lifecycle(RuleBasedStateMachine):
    engine: Engine

    def __init__(self) -> None:
        super().__init__()
        self.factory = sessionmaker(self.engine, expire_on_commit=False)
        with self.factory.begin() as session:
            self.study_id = make_study(session).id
            self.user_id = make_user(session).id
        self.sets = 0
        self.sent: list[tuple[str, str, int, str]] = []  # (kind, destination, version, P/F/C)
        self.finals: dict[int, dict[str, Any]] = {}

    # --- what people and machines do ---

    @rule(abnormal=st.booleans())
    def redraft(self, abnormal: bool) -> None:
        """New images arrived; the worker drafts them."""
        self.sets += 1
        with self.factory.begin() as session:
            final = lifecycle.final_exists(session, self.study_id)
            job = running_job(session, session.get(Study, self.study_id), f"set{self.sets}")
            report = lifecycle.store_draft(session, job, model_result(abnormal))
            assert (report is None) == final

    def _current_version(self, session: Session) -> int | None:
        current = lifecycle.current_report(session, self.study_id)
        return current.version if current else None

    @rule(text=st.sampled_from(["Small right pleural effusion.", "No effusion.", "积液少量。"]))
    def edit(self, text: str) -> None:
        with self.factory.begin() as session:
            base = self._current_version(session)
            if base is None:
                return
            study, user = session.get(Study, self.study_id), make_user(session)
            version = lifecycle.editable_version(session, study, base)
            version.sentences[0].en = text
            lifecycle.new_edited_version(
                session, study, user, base, version.findings, version.sentences
            )

    @rule(stale=st.booleans())
    def sign(self, stale: bool) -> None:
        with self.factory() as session:
            base = self._current_version(session)
            if base is None:
                return
            current = lifecycle.current_report(session, self.study_id)
            assert current is not None
            expect_ok = not stale and current.status in ("draft", "edited")
            try:
                lifecycle.sign(
                    session, session.get(Study, self.study_id), make_user(session), base - stale
                )
                session.commit()
                assert expect_ok
            except LifecycleViolation:
                session.rollback()
                assert not expect_ok

    def _open(self) -> list[int]:
        with self.factory() as session:
            return list(
                session.scalars(
                    select(Delivery.id)
                    .where(
                        Delivery.study_id == self.study_id,
                        Delivery.state.in_(["pending", "retrying"]),
                    )
                    .order_by(Delivery.id)
                )
            )

    def _attempt(self, delivery_id: int, outcome: str) -> str:
        with self.factory.begin() as session:
            claimed = deliveries.claim(session, delivery_id, datetime.now(UTC))
        if claimed != "claimed":
            return claimed
        with self.factory.begin() as session:
            row = session.get(Delivery, delivery_id)
            state = deliveries.record_outcome(
                session, delivery_id, datetime.now(UTC), ack_code="AA", error=_error(outcome)
            )
            if state == DeliveryState.DELIVERED:
                self.sent.append((row.kind, row.destination, row.report_version, row.result_status))
            return state

    @rule(pick=st.integers(0, 7), outcome=st.sampled_from(OUTCOMES))
    def attempt(self, pick: int, outcome: str) -> None:
        open_ids = self._open()
        if open_ids:
            self._attempt(open_ids[pick % len(open_ids)], outcome)

    @rule(pick=st.integers(0, 7))
    def worker_dies_mid_attempt(self, pick: int) -> None:
        open_ids = self._open()
        if not open_ids:
            return
        delivery_id = open_ids[pick % len(open_ids)]
        with self.factory.begin() as session:
            if deliveries.claim(session, delivery_id, datetime.now(UTC)) != "claimed":
                return
        later = datetime.now(UTC) + deliveries.ATTEMPT_LEASE + timedelta(seconds=1)
        with self.factory.begin() as session:  # the relay, after the lease ran out
            assert deliveries.take_back_expired(session, delivery_id, later)

    @rule()
    def admin_retries_failed(self) -> None:
        with self.factory.begin() as session:
            for row in session.scalars(
                select(Delivery).where(
                    Delivery.study_id == self.study_id, Delivery.state == "failed"
                )
            ):
                deliveries.retry_failed(session, row)

    # --- what must always hold ---

    @invariant()
    def signed_is_final(self) -> None:
        with self.factory() as session:
            rows = session.scalars(
                select(Report).where(Report.study_id == self.study_id).order_by(Report.version)
            ).all()
            first_final = next((r.version for r in rows if r.status in lifecycle.FINAL), None)
            if first_final is not None:
                assert all(r.author_user_id is not None for r in rows if r.version > first_final)
            for r in rows:
                if r.status in lifecycle.FINAL:
                    snapshot = session.execute(
                        text("SELECT to_jsonb(r) FROM reports r WHERE id = :id"), {"id": r.id}
                    ).scalar()
                    assert self.finals.setdefault(r.id, snapshot) == snapshot

    @invariant()
    def messages_never_go_backwards(self) -> None:
        for kind, destination in {(k, d) for k, d, _, _ in self.sent}:
            seen = [(v, s) for k, d, v, s in self.sent if (k, d) == (kind, destination)]
            versions = [v for v, _ in seen]
            assert versions == sorted(versions), seen
            statuses = "".join(s for _, s in seen)
            assert "P" not in statuses.lstrip("P"), seen  # no P once an F/C went
            assert statuses.find("C") == -1 or 0 <= statuses.find("F") < statuses.find("C"), seen

    @invariant()
    def every_delivery_is_recorded(self) -> None:
        with self.factory() as session:
            for row in session.scalars(select(Delivery).where(Delivery.study_id == self.study_id)):
                assert row.state != DeliveryState.IN_FLIGHT  # nobody is mid-attempt between steps
                if row.state in ("failed", "cancelled", "retrying"):
                    assert row.last_error
                if row.state == "retrying":
                    assert row.next_attempt_at is not None

    def teardown(self) -> None:
        """The peers answer AA from now on: everything settles, nothing stays open."""
        for _ in range(50):
            self.admin_retries_failed()
            open_ids = self._open()
            if not open_ids:
                break
            for delivery_id in open_ids:
                self._attempt(delivery_id, "AA")
        self.messages_never_go_backwards()
        with self.factory() as session:
            states = session.execute(
                select(Delivery.report_version, Delivery.kind, Delivery.state).where(
                    Delivery.study_id == self.study_id
                )
            ).all()
            assert all(s in ("delivered", "cancelled") for _, _, s in states), states
            current = lifecycle.current_report(session, self.study_id)
            if current is not None and current.status in ("draft", "signed", "corrected"):
                mine = {(k, s) for v, k, s in states if v == current.version}
                # the SR (and GSPS/KOS where the version has key images) and the ORU
                kinds = {kind for kind, _ in deliveries.pacs_targets(current)} | {"hl7"}
                assert mine == {(kind, "delivered") for kind in kinds}, states


def test_lifecycle_invariants_hold_under_any_interleaving(clean_db: Engine) -> None:
    Lifecycle.engine = clean_db
    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
