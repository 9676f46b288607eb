"""SQLAlchemy table definitions; the schema itself is created and migrated by Alembic (core/migrations)."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["metadata", "resources", "events", "tokens", "ip_allocations", "changes"]

metadata = sa.MetaData()

resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("parent", sa.String(64), nullable=False, server_default=""),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("status", sa.JSON, nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("observed_generation", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(26), nullable=True),
    sa.Column("host", sa.String(64), nullable=True),
    sa.Column("zone", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("deleted_at", sa.Float, nullable=True),
    sa.Column("finalizers", sa.JSON, nullable=False),
    sa.UniqueConstraint("tenant", "kind", "parent", "name", name="uq_resource_name"),
    sa.Index("ix_resources_kind_tenant", "kind", "tenant"),
    sa.Index("ix_resources_kind_host", "kind", "host"),  # a host's records: agents' listings, drains, recovery
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("resource_id", sa.String(26), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("uid", sa.String(64), nullable=True, unique=True),
)

# One row per write to a record: its revision is what watchers resume from (DESIGN.md section 1).
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("rev", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("resource_id", sa.String(26), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("host", sa.String(64), nullable=True),
    sa.Column("writer", sa.String(64), nullable=True),  # the host whose agent wrote it; None: the control plane
    sa.Column("tenant", sa.String(64), nullable=True),  # the record's: an agent with a scoped view watches by it
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("role", sa.String(80), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

ip_allocations = sa.Table(
    "ip_allocations",
    metadata,
    sa.Column("network_id", sa.String(26), primary_key=True),
    sa.Column("address", sa.String(45), primary_key=True),
    sa.Column("owner_id", sa.String(26), nullable=False, index=True),
)
