"""metrics: an id in write order, so the live stream follows metrics with a cursor as it does events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:40:00

The table is rebuilt (its primary key changes); the same steps run on SQLite and PostgreSQL. Existing
values get ids in (job, step, name) order; (job_id, name, step) stays unique.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "job_id, name, step, value, time"


def _value_columns() -> list[sa.Column]:
    return [
        sa.Column("job_id", sa.String(length=40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    ]


def _replace_metrics(new_table: str) -> None:
    op.execute(f"INSERT INTO {new_table} ({COLUMNS}) SELECT {COLUMNS} FROM metrics ORDER BY job_id, step, name")
    op.drop_table("metrics")
    op.rename_table(new_table, "metrics")


def upgrade() -> None:
    op.create_table(
        "metrics_with_ids",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        *_value_columns(),
        sa.PrimaryKeyConstraint("id", name="metrics_with_ids_pkey"),
        sa.UniqueConstraint("job_id", "name", "step", name="uq_metrics_job_name_step"),
    )
    _replace_metrics("metrics_with_ids")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX metrics_with_ids_pkey RENAME TO metrics_pkey")
        op.execute("ALTER SEQUENCE metrics_with_ids_id_seq RENAME TO metrics_id_seq")
    op.create_index("ix_metrics_job_id_id", "metrics", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_metrics_job_id_id", table_name="metrics")
    op.create_table(
        "metrics_by_step",
        *_value_columns(),
        sa.PrimaryKeyConstraint("job_id", "name", "step", name="metrics_by_step_pkey"),
    )
    _replace_metrics("metrics_by_step")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX metrics_by_step_pkey RENAME TO metrics_pkey")
