"""reconcile tables: watermarks, reconcile runs, discrepancies, archive of deleted extra rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "cdcr"


def upgrade() -> None:
    op.create_table(
        "watermarks",
        sa.Column("table_name", sa.Text, primary_key=True),  # source "<schema>.<table>"
        # Everything changed before this instant is verified; NULL = nothing reconciled yet.
        # Advanced only by compare-and-swap (store/watermarks.py).
        sa.Column("reconciled_through", sa.DateTime(timezone=True)),
        sa.Column("state", sa.Text, nullable=False, server_default="idle"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=S,
    )
    op.create_table(
        "reconcile_runs",
        sa.Column("run_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True)),
        # running | clean | repaired | open_extras | unresolved | superseded | failed
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("counts", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("checks", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=S,
    )
    op.create_index(
        "reconcile_runs_table_started",
        "reconcile_runs",
        ["table_name", sa.text("started DESC")],
        schema=S,
    )
    op.create_table(
        "discrepancies",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "run_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey(f"{S}.reconcile_runs.run_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),  # canonical JSON of the key, as in tombstones
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("columns", pg.ARRAY(sa.Text)),
        sa.Column("source_row", pg.JSONB),
        sa.Column("target_row", pg.JSONB),
        # reported | replayed | upserted | deleted | stale | vanished
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("review_state", sa.Text, nullable=False),  # open | resolved
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("kind IN ('missing', 'extra', 'mismatched')", name="discrepancies_kind"),
        schema=S,
    )
    op.create_index(
        "discrepancies_open",
        "discrepancies",
        ["table_name", "key"],
        schema=S,
        postgresql_where=sa.text("review_state = 'open'"),
    )
    op.create_index("discrepancies_run", "discrepancies", ["run_id"], schema=S)
    op.create_table(
        "extra_rows_archive",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "run_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey(f"{S}.reconcile_runs.run_id", ondelete="SET NULL"),
        ),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("row", pg.JSONB, nullable=False),  # the whole target row, _cdc_* included
        sa.Column(
            "archived_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("extra_rows_archive", schema=S)
    op.drop_index("discrepancies_run", table_name="discrepancies", schema=S)
    op.drop_index("discrepancies_open", table_name="discrepancies", schema=S)
    op.drop_table("discrepancies", schema=S)
    op.drop_index("reconcile_runs_table_started", table_name="reconcile_runs", schema=S)
    op.drop_table("reconcile_runs", schema=S)
    op.drop_table("watermarks", schema=S)
