"""instance copies: a second copy of a SOP Instance is kept beside the first, never over it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 14:10:00

The same SOP Instance UID received again with different bytes: the first copy (which reports
reference) stays the `instances` row; each different copy is one `instance_copies` row, and the
study is flagged `conflicting_instances` (services/listener/indexer.py). The trigger is the
database's guard behind it: an instance row's stored bytes (path, size, sha256, transfer syntax)
never change, and a copy row never changes at all.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORED_BYTES_GUARD = """
CREATE FUNCTION medrega_stored_bytes_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'instance_copies' THEN
    RAISE EXCEPTION 'instance copy % is immutable', OLD.id USING ERRCODE = 'check_violation';
  END IF;
  IF (NEW.file_path, NEW.size_bytes, NEW.sha256, NEW.transfer_syntax_uid)
     IS DISTINCT FROM (OLD.file_path, OLD.size_bytes, OLD.sha256, OLD.transfer_syntax_uid) THEN
    RAISE EXCEPTION 'instance % was acknowledged with these bytes; they are never replaced',
      OLD.sop_instance_uid USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER instances_stored_bytes_guard BEFORE UPDATE ON instances
  FOR EACH ROW EXECUTE FUNCTION medrega_stored_bytes_guard();
CREATE TRIGGER instance_copies_stored_bytes_guard BEFORE UPDATE ON instance_copies
  FOR EACH ROW EXECUTE FUNCTION medrega_stored_bytes_guard();
"""


def upgrade() -> None:
    op.add_column(
        "studies",
        sa.Column("conflicting_instances", sa.Boolean(), server_default="false", nullable=False),
    )
    op.create_table(
        "instance_copies",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=False),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_copies_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_copies")),
        sa.UniqueConstraint("instance_id", "sha256", name=op.f("uq_instance_copies_instance_id")),
    )
    op.execute(STORED_BYTES_GUARD)


def downgrade() -> None:
    op.execute("DROP TRIGGER instance_copies_stored_bytes_guard ON instance_copies")
    op.execute("DROP TRIGGER instances_stored_bytes_guard ON instances")
    op.execute("DROP FUNCTION medrega_stored_bytes_guard()")
    op.drop_table("instance_copies")
    op.drop_column("studies", "conflicting_instances")
