"""reconcile: deferred (in-flight) keys, review decisions on discrepancies, orphan kind

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "cdcr"


def upgrade() -> None:
    # Keys a reconcile found different but could not confirm because a change to them was still
    # in flight (reconcile/inflight.py). Re-checked on every pass; once deferred for longer than
    # reconcile.deferred_bound_s they are reported as real discrepancies.
    op.create_table(
        "deferred_keys",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),  # canonical JSON of the key
        sa.Column("kind", sa.Text, nullable=False),  # missing | extra | mismatched when last seen
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("first_deferred", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_deferred", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times", sa.Integer, nullable=False, server_default="1"),
        schema=S,
    )
    # The review queue: who decided what, when, and why.
    op.add_column("discrepancies", sa.Column("resolution", sa.Text), schema=S)
    op.add_column("discrepancies", sa.Column("resolved_by", sa.Text), schema=S)
    op.add_column("discrepancies", sa.Column("resolved_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("discrepancies", sa.Column("note", sa.Text), schema=S)
    op.drop_constraint("discrepancies_kind", "discrepancies", schema=S)
    op.create_check_constraint(
        "discrepancies_kind",
        "discrepancies",
        "kind IN ('missing', 'extra', 'mismatched', 'orphan')",
        schema=S,
    )
    op.create_index(
        "discrepancies_state", "discrepancies", ["review_state", "table_name", "kind"], schema=S
    )


def downgrade() -> None:
    op.drop_index("discrepancies_state", table_name="discrepancies", schema=S)
    op.execute(f"DELETE FROM {S}.discrepancies WHERE kind = 'orphan'")
    op.drop_constraint("discrepancies_kind", "discrepancies", schema=S)
    op.create_check_constraint(
        "discrepancies_kind",
        "discrepancies",
        "kind IN ('missing', 'extra', 'mismatched')",
        schema=S,
    )
    for col in ("note", "resolved_at", "resolved_by", "resolution"):
        op.drop_column("discrepancies", col, schema=S)
    op.drop_table("deferred_keys", schema=S)
