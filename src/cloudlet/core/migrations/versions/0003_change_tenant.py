"""change log: each write's tenant, so an agent with a scoped view watches only the tenants it runs something for;
an index of records by host

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=True))
    op.create_index("ix_resources_kind_host", "resources", ["kind", "host"])


def downgrade() -> None:
    op.drop_index("ix_resources_kind_host", "resources")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("tenant")
