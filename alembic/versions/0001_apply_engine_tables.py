"""apply engine tables: applied offsets, tombstones, dead letters, batch counts

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "cdcr"


def upgrade() -> None:
    op.create_table(
        "applied_offsets",
        sa.Column("consumer_group", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        # The next offset to consume (Kafka's convention): last applied offset + 1.
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("last_event_time", sa.DateTime(timezone=True)),
        sa.Column("consumed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skipped_duplicate", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skipped_stale", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dead_lettered", sa.BigInteger, nullable=False, server_default="0"),
        # Tombstones, transaction markers and logical messages: consumed, nothing to apply.
        sa.Column("skipped_noop", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=S,
    )
    op.create_table(
        "tombstones",
        sa.Column("table_name", sa.Text, primary_key=True),  # target "<schema>.<table>"
        sa.Column("key", sa.Text, primary_key=True),  # canonical JSON of the key columns
        sa.Column("position", sa.Numeric(40, 0), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary),
        sa.Column("error_kind", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column(
            "first_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("topic", "partition", "offset", name="dead_letters_position"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("dead_letters", schema=S)
    op.drop_table("tombstones", schema=S)
    op.drop_table("applied_offsets", schema=S)
