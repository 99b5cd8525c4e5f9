"""key scopes: API keys get scopes, a name, an optional expiry and the time they were last used

Keys made before this revision could do everything the API offered then; they get `read` and `write`, which
is exactly that (`admin`, for the new key management, is given only to keys created with it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("scopes", sa.JSON(), nullable=False, server_default=sa.text('\'["read", "write"]\''))
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
        batch_op.drop_column("name")
