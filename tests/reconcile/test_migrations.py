"""The migration chain upgrades, downgrades and upgrades again on a fresh database of the real
target server (created and dropped here, so the shared target database is never disturbed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from cdc_reconciler import migrations
from cdc_reconciler.config import Settings

RECONCILE_TABLES = {
    "watermarks",
    "reconcile_runs",
    "discrepancies",
    "extra_rows_archive",
    "deferred_keys",
}


@pytest.fixture()
def fresh_db_url(target_engine: sa.Engine) -> Iterator[str]:
    name = f"cdcr_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(target_engine.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = target_engine.url.set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'cdcr'"
                )
            )
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def _version(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM cdcr.alembic_version")).scalar()
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(fresh_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment wins over values passed in, so point the environment at the fresh database.
    monkeypatch.setenv("CDCR_TARGET__URL", fresh_db_url)
    settings = Settings()
    # The settings add the driver and a connect timeout; the database is the fresh one.
    assert sa.make_url(settings.target.url_str()).database == sa.make_url(fresh_db_url).database

    head = ScriptDirectory.from_config(migrations.alembic_config(settings)).get_current_head()
    migrations.upgrade(settings, "head")
    assert RECONCILE_TABLES <= _tables(fresh_db_url)
    assert _version(fresh_db_url) == head

    migrations.downgrade(settings, "0002")  # 0003: deferred keys, review decisions, orphans
    assert "deferred_keys" not in _tables(fresh_db_url)
    assert _version(fresh_db_url) == "0002"

    migrations.downgrade(settings, "0001")
    assert not (RECONCILE_TABLES & _tables(fresh_db_url))
    assert "applied_offsets" in _tables(fresh_db_url)
    assert _version(fresh_db_url) == "0001"

    migrations.downgrade(settings, "base")
    assert _tables(fresh_db_url) <= {"alembic_version"}

    migrations.upgrade(settings, "head")
    assert RECONCILE_TABLES <= _tables(fresh_db_url)
    assert _version(fresh_db_url) == head
