"""draft jobs: next_attempt_at, for durable backoff while the model server is unreachable

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "draft_jobs", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("draft_jobs", "next_attempt_at")
