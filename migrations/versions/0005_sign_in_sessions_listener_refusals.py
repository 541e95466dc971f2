"""sign-in throttle, server-side web sessions, counted listener refusals

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 13:15:00

- `login_attempts`: failures per (source address, username), updated under a row lock, so
  parallel wrong passwords cannot all be checked (services/web/login_throttle.py);
- `web_sessions`: the cookie names a row; sign-out, password changes and an admin's "sign out
  everywhere" revoke rows, so a copied cookie dies with its session (services/web/sessions.py);
- `listener_refusals`: associations the listener refused, one counted row per
  (reason, source address, calling AE) (services/listener/refusals.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now_column(name: str) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("remote_addr", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        _now_column("next_allowed_at"),
        _now_column("last_attempt_at"),
        sa.Column("audited_failure", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("audited_throttle", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("remote_addr", "username", name=op.f("pk_login_attempts")),
    )
    op.create_index(
        "ix_login_attempts_last_attempt_at", "login_attempts", ["last_attempt_at"], unique=False
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        _now_column("created_at"),
        _now_column("last_seen_at"),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=32), nullable=True),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_web_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"], unique=False)
    op.create_table(
        "listener_refusals",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        _now_column("first_at"),
        _now_column("last_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_listener_refusals")),
        sa.UniqueConstraint(
            "reason", "remote_addr", "calling_ae_title", name=op.f("uq_listener_refusals_peer")
        ),
    )


def downgrade() -> None:
    op.drop_table("listener_refusals")
    op.drop_index(op.f("ix_web_sessions_user_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_index("ix_login_attempts_last_attempt_at", table_name="login_attempts")
    op.drop_table("login_attempts")
