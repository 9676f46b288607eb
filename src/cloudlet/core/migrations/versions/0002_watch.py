"""watch API: a change log with a revision per write; event uids so an agent's replayed events are kept once

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("rev", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("resource_id", sa.String(26), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("host", sa.String(64), nullable=True),
        sa.Column("writer", sa.String(64), nullable=True),
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("uid", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_event_uid", ["uid"])
    with op.batch_alter_table("tokens") as batch:  # host agents' roles: "host:" and a 63-character name
        batch.alter_column("role", type_=sa.String(80), existing_type=sa.String(16))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.alter_column("role", type_=sa.String(16), existing_type=sa.String(80))
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_event_uid")
        batch.drop_column("uid")
    op.drop_table("changes")
