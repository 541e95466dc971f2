"""report lifecycle guards: final reports are immutable, deliveries never go backwards

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:45:00

The rules live in `shared/reports/` (lifecycle.py, deliveries.py); these triggers are the
database's guard behind them, so a bug or a second writer cannot break them either:
- `reports`: a signed or corrected version is never changed; an unsigned one may only become
  'superseded'; no model-authored draft is inserted once the study has a final report.
- `deliveries`: a message is claimed for sending ('in_flight') only in order: never a
  preliminary (P) once a final (F/C) exists for the same study, kind and destination; a
  correction (C) only after an F went out; never a version older than one already sent; never
  while an earlier version is still waiting to go. 'delivered' only from 'in_flight'.
Both take the study's lifecycle lock (a transaction-level advisory lock) so that two
transactions cannot each pass the check before the other commits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Must match shared.db.advisory_locks.LockSpace.STUDY_LIFECYCLE.
STUDY_LIFECYCLE_SPACE = 0x4D10

DELIVERY_STATES = ("pending", "in_flight", "delivered", "retrying", "failed", "cancelled")
OLD_DELIVERY_STATES = ("pending", "in_flight", "delivered", "retrying", "failed")

REPORTS_GUARD = f"""
CREATE FUNCTION medrega_reports_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({STUDY_LIFECYCLE_SPACE}, (NEW.study_id % 2147483647)::int);
  IF TG_OP = 'UPDATE' THEN
    IF OLD.status IN ('signed', 'corrected') THEN
      RAISE EXCEPTION 'report % version % is final (%) and cannot be changed',
        OLD.study_id, OLD.version, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NOT (NEW.status = OLD.status OR NEW.status = 'superseded') OR
       (to_jsonb(NEW) - 'status') IS DISTINCT FROM (to_jsonb(OLD) - 'status') THEN
      RAISE EXCEPTION 'report versions are immutable; only draft/edited -> superseded'
        USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
  END IF;
  IF NEW.author_user_id IS NULL AND EXISTS (
      SELECT 1 FROM reports r
      WHERE r.study_id = NEW.study_id AND r.status IN ('signed', 'corrected')) THEN
    RAISE EXCEPTION 'study % has a signed report: no model draft may follow it', NEW.study_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reports_guard BEFORE INSERT OR UPDATE ON reports
  FOR EACH ROW EXECUTE FUNCTION medrega_reports_guard();
"""

DELIVERIES_GUARD = f"""
CREATE FUNCTION medrega_deliveries_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  previous_state text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.state ELSE NULL END;
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.study_id, NEW.report_id, NEW.report_version, NEW.result_status,
      NEW.kind, NEW.destination, NEW.message_id) IS DISTINCT FROM (OLD.study_id, OLD.report_id,
      OLD.report_version, OLD.result_status, OLD.kind, OLD.destination, OLD.message_id) THEN
    RAISE EXCEPTION 'a delivery''s target and message are fixed at creation'
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.state = 'delivered' AND previous_state IS DISTINCT FROM 'delivered'
     AND previous_state IS DISTINCT FROM 'in_flight' THEN
    RAISE EXCEPTION 'delivery % can only be delivered from in_flight, not %', NEW.id, previous_state
      USING ERRCODE = 'check_violation';
  END IF;
  IF previous_state IN ('delivered', 'cancelled') AND NEW.state IS DISTINCT FROM previous_state THEN
    RAISE EXCEPTION 'delivery % is % and final', NEW.id, previous_state
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.state = 'in_flight' AND previous_state IS DISTINCT FROM 'in_flight' THEN
    PERFORM pg_advisory_xact_lock({STUDY_LIFECYCLE_SPACE}, (NEW.study_id % 2147483647)::int);
    IF NEW.result_status = 'P' AND EXISTS (
        SELECT 1 FROM deliveries d WHERE d.study_id = NEW.study_id AND d.kind = NEW.kind
          AND d.destination = NEW.destination AND d.result_status IN ('F', 'C')
          AND d.state <> 'cancelled') THEN
      RAISE EXCEPTION 'delivery %: a preliminary result after a final one', NEW.id
        USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.result_status = 'C' AND NOT EXISTS (
        SELECT 1 FROM deliveries d WHERE d.study_id = NEW.study_id AND d.kind = NEW.kind
          AND d.destination = NEW.destination AND d.result_status = 'F'
          AND d.state = 'delivered') THEN
      RAISE EXCEPTION 'delivery %: a correction before any final result went out', NEW.id
        USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (
        SELECT 1 FROM deliveries d WHERE d.study_id = NEW.study_id AND d.kind = NEW.kind
          AND d.destination = NEW.destination AND d.id <> NEW.id AND (
            (d.report_version > NEW.report_version AND d.state IN ('in_flight', 'delivered'))
            OR (d.report_version < NEW.report_version
                AND d.state IN ('pending', 'retrying', 'in_flight')))) THEN
      RAISE EXCEPTION 'delivery %: out of order with another version of the study', NEW.id
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER deliveries_guard BEFORE INSERT OR UPDATE ON deliveries
  FOR EACH ROW EXECUTE FUNCTION medrega_deliveries_guard();
"""


def upgrade() -> None:
    op.add_column(
        "studies",
        sa.Column(
            "new_images_after_signoff", sa.Boolean(), server_default="false", nullable=False
        ),
    )
    for name, column in (
        ("study_id", sa.Column("study_id", sa.BigInteger(), nullable=True)),
        ("report_version", sa.Column("report_version", sa.Integer(), nullable=True)),
        ("result_status", sa.Column("result_status", sa.String(1), nullable=True)),
        ("lease_until", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)),
        ("error_class", sa.Column("error_class", sa.String(16), nullable=True)),
    ):
        op.add_column("deliveries", column)
    # Existing rows: derive the new columns from their report.
    op.execute(
        """
        UPDATE deliveries d SET study_id = r.study_id, report_version = r.version,
          result_status = CASE r.status WHEN 'signed' THEN 'F' WHEN 'corrected' THEN 'C'
                                        ELSE 'P' END
        FROM reports r WHERE r.id = d.report_id
        """
    )
    op.alter_column("deliveries", "study_id", nullable=False)
    op.alter_column("deliveries", "report_version", nullable=False)
    op.alter_column("deliveries", "result_status", nullable=False)
    op.create_foreign_key(
        "fk_deliveries_study_id_studies",
        "deliveries",
        "studies",
        ["study_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index("ix_deliveries_study_id", "deliveries", ["study_id"])
    op.drop_constraint(op.f("ck_deliveries_state_valid"), "deliveries", type_="check")
    op.create_check_constraint(
        op.f("ck_deliveries_state_valid"), "deliveries", "state IN (" + ", ".join(f"'{s}'" for s in DELIVERY_STATES) + ")"
    )
    op.create_check_constraint(op.f("ck_deliveries_result_status_valid"), "deliveries", "result_status IN ('P', 'F', 'C')")
    op.create_check_constraint(
        op.f("ck_deliveries_error_class_valid"), "deliveries", "error_class IS NULL OR error_class IN ('transient', 'permanent')"
    )
    # No delivery is ever stuck: a claimed attempt has a lease, a failure has its error.
    op.create_check_constraint(
        op.f("ck_deliveries_in_flight_has_lease"), "deliveries", "state <> 'in_flight' OR lease_until IS NOT NULL"
    )
    op.create_check_constraint(
        op.f("ck_deliveries_failure_recorded"),
        "deliveries",
        "state NOT IN ('failed', 'retrying', 'cancelled') OR last_error IS NOT NULL",
    )
    op.create_check_constraint(
        op.f("ck_deliveries_retry_scheduled"), "deliveries", "state <> 'retrying' OR next_attempt_at IS NOT NULL"
    )
    op.create_check_constraint(
        op.f("ck_reports_final_is_signed"),
        "reports",
        "status NOT IN ('signed', 'corrected') "
        "OR (signed_at IS NOT NULL AND signed_by_user_id IS NOT NULL)",
    )
    op.execute(REPORTS_GUARD)
    op.execute(DELIVERIES_GUARD)


def downgrade() -> None:
    op.execute("DROP TRIGGER deliveries_guard ON deliveries")
    op.execute("DROP FUNCTION medrega_deliveries_guard()")
    op.execute("DROP TRIGGER reports_guard ON reports")
    op.execute("DROP FUNCTION medrega_reports_guard()")
    op.drop_constraint(op.f("ck_reports_final_is_signed"), "reports", type_="check")
    for name in (
        "retry_scheduled",
        "failure_recorded",
        "in_flight_has_lease",
        "error_class_valid",
        "result_status_valid",
        "state_valid",
    ):
        op.drop_constraint(op.f(f"ck_deliveries_{name}"), "deliveries", type_="check")
    op.execute("UPDATE deliveries SET state = 'failed' WHERE state = 'cancelled'")
    op.create_check_constraint(
        op.f("ck_deliveries_state_valid"),
        "deliveries",
        "state IN (" + ", ".join(f"'{s}'" for s in OLD_DELIVERY_STATES) + ")",
    )
    op.drop_index("ix_deliveries_study_id", "deliveries")
    op.drop_constraint("fk_deliveries_study_id_studies", "deliveries", type_="foreignkey")
    for name in ("error_class", "lease_until", "result_status", "report_version", "study_id"):
        op.drop_column("deliveries", name)
    op.drop_column("studies", "new_images_after_signoff")
