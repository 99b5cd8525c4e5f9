"""probe_pooling: which hidden states a probe reads (`pooling`: mean or cls; `layer`: -1 the last, k block k)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("probe_runs") as batch_op:
        batch_op.add_column(sa.Column("pooling", sa.String(length=8), nullable=False, server_default="mean"))
        batch_op.add_column(sa.Column("layer", sa.Integer(), nullable=False, server_default="-1"))


def downgrade() -> None:
    with op.batch_alter_table("probe_runs") as batch_op:
        batch_op.drop_column("layer")
        batch_op.drop_column("pooling")
