"""Fixtures of the store tests: a database of their own on the real target server, migrated to
head (created and dropped here), so purges and global reads never see other tests' rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from cdc_reconciler import migrations, wiring
from cdc_reconciler.config import DatabaseSettings, Settings


@pytest.fixture(scope="module")
def store_url(migrated_target: str) -> Iterator[str]:
    base = sa.engine.make_url(migrated_target)
    name = f"cdcr_store_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(store_settings(url), "head")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def store_settings(url: str) -> Settings:
    return Settings.model_construct(target=DatabaseSettings(url=SecretStr(url)))


@pytest.fixture(scope="module")
def store(store_url: str) -> Iterator[sa.Engine]:
    engine = wiring.target_engine(store_settings(store_url))
    yield engine
    engine.dispose()


@pytest.fixture()
def clean(store: sa.Engine) -> sa.Engine:
    """The store's database with every service table empty."""
    with store.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE cdcr.applied_offsets, cdcr.tombstones, cdcr.dead_letters, "
                "cdcr.watermarks, cdcr.reconcile_runs, cdcr.discrepancies, "
                "cdcr.extra_rows_archive, cdcr.deferred_keys"
            )
        )
    return store
