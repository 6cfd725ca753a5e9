"""The schema-at-head check and ``cdcr purge`` (function and command) on a database of their own."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cdc_reconciler import migrations
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.store import discrepancies, runs, schema
from cdc_reconciler.store.discrepancies import NewDiscrepancy
from cdc_reconciler.store.purge import purge
from cdc_reconciler.store.runs import RunStatus

from .conftest import store_settings

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)


# --- schema at head -------------------------------------------------------------------------


def test_schema_at_head(store: sa.Engine) -> None:
    found = schema.require_head(store)
    assert found.at_head and found.current == schema.head_revision()


def test_schema_behind_head_or_missing_is_refused(store_url: str, store: sa.Engine) -> None:
    settings = store_settings(store_url)
    head = schema.head_revision()
    try:
        migrations.downgrade(settings, "0002")
        with store.connect() as c:
            assert schema.state(c).current == "0002"
        with pytest.raises(CdcrError, match=rf"at revision 0002, this version needs {head}"):
            schema.require_head(store)
        migrations.downgrade(settings, "base")
        with pytest.raises(CdcrError, match="service tables are missing.*cdcr migrate"):
            schema.require_head(store)
    finally:
        migrations.upgrade(settings, "head")
    assert schema.require_head(store).at_head


def test_schema_check_names_an_unreachable_target(store: sa.Engine) -> None:
    down = sa.create_engine(store.url.set(port=1), connect_args={"connect_timeout": 2})
    try:
        with pytest.raises(CdcrError, match=r"cannot reach the target database at .*:1/"):
            schema.require_head(down)
    finally:
        down.dispose()


# --- purge ----------------------------------------------------------------------------------


def _seed(engine: sa.Engine) -> dict[str, uuid.UUID]:
    """Old and recent rows of every kind purge looks at, and old rows it must keep."""
    ids = {k: uuid.uuid4() for k in ("old_clean", "recent", "old_open", "old_failed", "running")}
    with engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO cdcr.tombstones (table_name, key, position, deleted_at) VALUES "
                "('public.t', '[1]', 1, :old), ('public.t', '[2]', 2, :old), "
                "('public.t', '[3]', 3, :recent)"
            ),
            {"old": OLD, "recent": RECENT},
        )
        for name, status, when in (
            ("old_clean", RunStatus.CLEAN, OLD),
            ("recent", RunStatus.CLEAN, RECENT),
            ("old_open", RunStatus.UNRESOLVED, OLD - timedelta(days=1)),
            ("old_failed", RunStatus.FAILED, OLD),
        ):
            table = "s.failed" if name == "old_failed" else "s.t"
            runs.start(c, ids[name], table, OLD if name != "recent" else RECENT, when, when)
            runs.finish(c, ids[name], status, when, {})
        runs.start(c, ids["running"], "s.t", OLD, OLD, OLD)
        # Resolved items of the old clean run (go), an open one of an old run (stays with its run).
        discrepancies.insert(
            c, ids["old_clean"], "s.t", [NewDiscrepancy("[1]", "missing", "replayed")]
        )
        discrepancies.insert(
            c, ids["old_open"], "s.t", [NewDiscrepancy("[2]", "missing", "reported")]
        )
        discrepancies.insert(
            c, ids["recent"], "s.t", [NewDiscrepancy("[3]", "missing", "replayed")]
        )
        c.execute(
            sa.text(
                "UPDATE cdcr.discrepancies SET review_state = 'resolved', created_at = :old "
                "WHERE run_id = :r"
            ),
            {"old": OLD, "r": ids["old_clean"]},
        )
        c.execute(
            sa.text("UPDATE cdcr.discrepancies SET created_at = :old WHERE run_id = :r"),
            {"old": OLD, "r": ids["old_open"]},
        )
        c.execute(
            sa.text("UPDATE cdcr.discrepancies SET review_state = 'resolved' WHERE run_id = :r"),
            {"r": ids["recent"]},
        )
        c.execute(
            sa.text(
                "INSERT INTO cdcr.extra_rows_archive (run_id, table_name, key, row, archived_at) "
                "VALUES (NULL, 's.t', '[5]', '{}', :old), (NULL, 's.t', '[6]', '{}', :recent)"
            ),
            {"old": OLD, "recent": RECENT},
        )
        c.execute(
            sa.text(
                'INSERT INTO cdcr.dead_letters (topic, partition, "offset", error_kind, error, '
                "first_seen) VALUES ('t', 0, 1, 'k', 'e', :old), ('t', 0, 2, 'k', 'e', :recent)"
            ),
            {"old": OLD, "recent": RECENT},
        )
    return ids


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            t: int(c.execute(sa.text(f"SELECT count(*) FROM cdcr.{t}")).scalar() or 0)
            for t in (
                "tombstones",
                "reconcile_runs",
                "discrepancies",
                "extra_rows_archive",
                "dead_letters",
            )
        }


def test_purge_dry_run_counts_and_removes_nothing(clean: sa.Engine) -> None:
    _seed(clean)
    before = _counts(clean)
    result = purge(
        clean,
        now=NOW,
        tombstones_older_than=timedelta(days=30),
        audit_older_than=timedelta(days=30),
        dry_run=True,
    )
    assert (result.tombstones, result.runs, result.discrepancies) == (2, 1, 1)
    assert (result.archived_rows, result.dead_letters, result.total) == (1, 1, 6)
    assert result.dry_run and result.tombstones_before == NOW - timedelta(days=30)
    assert _counts(clean) == before


def test_purge_removes_old_rows_and_keeps_recent_open_failed_and_running(clean: sa.Engine) -> None:
    ids = _seed(clean)
    result = purge(
        clean,
        now=NOW,
        tombstones_older_than=timedelta(days=30),
        audit_older_than=timedelta(days=30),
    )
    assert (result.tombstones, result.runs, result.discrepancies, result.dry_run) == (
        2,
        1,
        1,
        False,
    )
    with clean.connect() as c:
        keys = c.execute(sa.text("SELECT key FROM cdcr.tombstones")).scalars().all()
        left = {r.run_id for r in runs.recent(c, 10)}
        open_items = discrepancies.items(c, table="s.t", kind=None, state="all", limit=10)
    assert keys == ["[3]"]
    # Gone: the old clean run. Kept: recent, with an open item, failed and uncovered, running.
    assert left == {ids["recent"], ids["old_open"], ids["old_failed"], ids["running"]}
    assert sorted(i.key for i in open_items) == ["[2]", "[3]"]
    assert _counts(clean) == {
        "tombstones": 1,
        "reconcile_runs": 4,
        "discrepancies": 2,
        "extra_rows_archive": 1,
        "dead_letters": 1,
    }
    # Nothing older than the cut is left to purge; a kind not asked for is left alone.
    again = purge(clean, now=NOW, tombstones_older_than=timedelta(days=1))
    assert (again.tombstones, again.runs, again.audit_before) == (1, 0, None)


def test_purge_rejects_a_naive_time_and_negative_ages(clean: sa.Engine) -> None:
    with pytest.raises(CdcrError, match="timezone-aware"):
        purge(clean, now=datetime(2026, 1, 1), audit_older_than=timedelta(days=1))  # noqa: DTZ001
    with pytest.raises(CdcrError, match="must not be negative"):
        purge(clean, now=NOW, tombstones_older_than=timedelta(days=-1))


def test_purge_command(
    clean: sa.Engine, store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cdc_reconciler.cli import app

    _seed(clean)
    monkeypatch.setenv("CDCR_TARGET__URL", store_url)
    cli = CliRunner()
    args = ["purge", "--tombstones-older-than", "30", "--audit-older-than", "30"]
    dry = cli.invoke(app, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    data = json.loads(dry.output)
    assert data["dry_run"] is True
    assert data["deleted"] == {
        "tombstones": 2,
        "reconcile_runs": 1,
        "discrepancies": 1,
        "extra_rows_archive": 1,
        "dead_letters": 1,
    }
    real = cli.invoke(app, args)
    assert real.exit_code == 0, real.output
    assert "removed 2 rows from cdcr.tombstones" in real.output
    assert _counts(clean)["tombstones"] == 1
    nothing = cli.invoke(app, ["purge"])
    assert nothing.exit_code == 1
    assert "FAILED: nothing to purge" in nothing.output
