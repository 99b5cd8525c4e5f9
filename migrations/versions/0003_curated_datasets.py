"""datasets: curated mixtures of corpora, and the dataset a job trains on

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("source_corpora", sa.JSON(), nullable=False),
        sa.Column("evaluation_corpora", sa.JSON(), nullable=False),
        sa.Column("curation_key", sa.String(length=64), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_datasets_tenant_created", "datasets", ["tenant_id", "created_at", "id"])
    op.create_index("ix_datasets_curation_key", "datasets", ["curation_key"])
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("dataset_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            "fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index("ix_jobs_dataset_id", ["dataset_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_dataset_id")
        batch_op.drop_constraint("fk_jobs_dataset_id_datasets", type_="foreignkey")
        batch_op.drop_column("dataset_id")
    op.drop_index("ix_datasets_curation_key", table_name="datasets")
    op.drop_index("ix_datasets_tenant_created", table_name="datasets")
    op.drop_table("datasets")
