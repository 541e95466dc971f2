"""which node holds each stored file, and where each node serves its files

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 15:30:00

Scale-out with no shared disk: every listener writes into its own node's storage folder, so a
worker on another machine must know whose folder a file is in.
- `instances.storage_node` / `instance_copies.storage_node`: the name of the node whose listener
  stored the file (`MEDREGA_NODE_NAME`); NULL for a single-box install (and for rows stored
  before this revision), meaning "this machine's storage folder".
- `storage_nodes`: each node's file endpoint (services/listener/file_server.py registers itself
  at start), so a node can move to a new address without rewriting any instance row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_nodes",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("read_url", sa.Text(), nullable=False),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column("instances", sa.Column("storage_node", sa.String(length=64)))
    op.add_column("instance_copies", sa.Column("storage_node", sa.String(length=64)))


def downgrade() -> None:
    op.drop_column("instance_copies", "storage_node")
    op.drop_column("instances", "storage_node")
    op.drop_table("storage_nodes")
