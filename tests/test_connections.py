"""Item 1 of issue 9: plain ``postgresql://``/``postgres://`` URLs work for every command, the
driver is psycopg2 whatever SQLAlchemy's default, and a database that cannot be reached is one
``FAILED:`` line naming the host and the cause, within seconds, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from cdc_reconciler.config import DatabaseSettings, engine_url
from cdc_reconciler.errors import ConfigError
from tests.conftest import Services

# -------------------------------------------------------------------------- URL normalisation


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db?connect_timeout=10"),
        ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db?connect_timeout=10"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg2://u:p@h/db?connect_timeout=10"),
        (
            "postgresql://u:p@h/db?connect_timeout=3",
            "postgresql+psycopg2://u:p@h/db?connect_timeout=3",
        ),
        ("postgresql://u:p%40ss@h/db", "postgresql+psycopg2://u:p%40ss@h/db?connect_timeout=10"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("", ""),
    ],
)
def test_plain_postgres_urls_get_the_psycopg2_driver(given: str, expected: str) -> None:
    assert engine_url(given) == expected
    assert DatabaseSettings(url=SecretStr(given)).url_str() == expected


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg", "pg8000"])
def test_another_postgres_driver_is_refused_by_name(driver: str) -> None:
    with pytest.raises(ConfigError, match=f"postgresql\\+{driver}"):
        engine_url(f"postgresql+{driver}://u:p@h/db")


def test_a_missing_driver_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 -> ImportError
    with pytest.raises(ConfigError, match="psycopg2 cannot be imported"):
        engine_url("postgresql://u:p@h/db")


# -------------------------------------------------------------------------- every command

COMMANDS = [
    ["migrate"],
    ["status"],
    ["reconcile", "--once", "--table", "public.x"],
    ["tables", "sync", "public.x"],
    ["run"],
    ["lag", "--group", "g", "--json"],
]


def _cdcr(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    import os

    full = {**os.environ, **env}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_reconciler", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _url(services: Services, *, port: int | None = None, password: str | None = None) -> str:
    """The target's URL in its plain form, with the port or password replaced when given."""
    u = sa.engine.make_url(services.target_url).set(
        drivername="postgresql", port=port, password=password
    )
    return u.render_as_string(hide_password=False)


@pytest.mark.services
@pytest.mark.parametrize("args", [a for a in COMMANDS if a[0] != "lag"], ids=lambda a: a[0])
@pytest.mark.parametrize("case", ["refused", "wrong_password"])
def test_unreachable_database_is_one_failed_line(
    services: Services, args: list[str], case: str
) -> None:
    url = _url(services, port=1) if case == "refused" else _url(services, password="wrong-pw")
    rc, out, took = _cdcr(args, {"CDCR_TARGET__URL": url, "CDCR_SOURCE__URL": url})
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED:")]
    assert rc == 1, out
    assert "Traceback" not in out, out
    assert len(failed) == 1, out
    assert '"127.0.0.1"' in failed[0], out
    if args[0] != "migrate":  # Alembic builds its own engine: the generic line
        # The line says which database it could not reach (found by a new-user trial).
        assert re.search(
            r"cannot reach the (target|source) database at 127\.0\.0\.1:\d+/", failed[0]
        ), out
    cause = "Connection refused" if case == "refused" else "password authentication failed"
    assert cause in failed[0], out
    assert took < 15, f"{args}: {took:.1f}s"


@pytest.mark.services
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_missing_driver_is_one_failed_line(
    services: Services, args: list[str], tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg2'] = None\n")
    url = _url(services)
    rc, out, took = _cdcr(
        args, {"CDCR_TARGET__URL": url, "CDCR_SOURCE__URL": url, "PYTHONPATH": str(tmp_path)}
    )
    assert "Traceback" not in out, out
    assert rc == 1, out
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED:")]
    assert len(failed) == 1 and "psycopg2 cannot be imported" in failed[0], out


@pytest.mark.services
def test_lag_reports_an_unreachable_target_without_a_traceback(services: Services) -> None:
    # `cdcr lag` reads Kafka; the target only adds applied offsets, so it says why they are absent.
    url = _url(services, port=1)
    rc, out, took = _cdcr(
        ["lag", "--group", f"g{uuid.uuid4().hex[:6]}", "--json"], {"CDCR_TARGET__URL": url}
    )
    assert "Traceback" not in out, out
    assert took < 15


@pytest.fixture()
def fresh_target(target_engine: sa.Engine) -> Iterator[str]:
    name = f"cdcr_url_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(target_engine.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield target_engine.url.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.services
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_urls_work_for_migrate_status_and_tables_sync(
    services: Services, source_engine: sa.Engine, fresh_target: str, scheme: str
) -> None:
    target = fresh_target.replace("postgresql://", f"{scheme}://", 1)
    source = sa.engine.make_url(services.source_url).set(drivername=scheme)
    source_url = source.render_as_string(hide_password=False)
    table = f"url_{uuid.uuid4().hex[:8]}"
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"create table public.{table} (id int primary key, v text)"))
    try:
        env = {"CDCR_TARGET__URL": target, "CDCR_SOURCE__URL": source_url}
        for args in (["migrate"], ["status", "--json"], ["tables", "sync", f"public.{table}"]):
            rc, out, _ = _cdcr(args, env)
            assert rc == 0, f"{args}: {out}"
            assert "Traceback" not in out
        check = sa.create_engine(engine_url(target))
        with check.connect() as conn:
            assert conn.execute(sa.text(f"select to_regclass('public.{table}')")).scalar()
            assert conn.execute(sa.text("select to_regclass('cdcr.applied_offsets')")).scalar()
        check.dispose()
    finally:
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists public.{table}"))
