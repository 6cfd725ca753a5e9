"""Is the target's ``cdcr`` schema at Alembic head? Asked once at start-up by ``cdcr run``,
``cdcr replay`` and the Faust agent, so a service never writes into tables of another version."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from cdc_reconciler.config import database_address
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.migrations import script_location
from cdc_reconciler.store import SCHEMA


@dataclass(frozen=True, slots=True)
class SchemaState:
    """``current``: the target's Alembic revision (None: never migrated); ``head``: this code's."""

    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def head_revision() -> str:
    script = ScriptDirectory(str(script_location()))
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise CdcrError("the migration scripts have no head revision")
    return head


def current_revision(conn: sa.Connection) -> str | None:
    """The revision recorded in ``cdcr.alembic_version``; None when the table does not exist."""
    exists = conn.execute(sa.text(f"SELECT to_regclass('{SCHEMA}.alembic_version')")).scalar()
    if exists is None:
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {SCHEMA}.alembic_version")).scalar()


def state(conn: sa.Connection) -> SchemaState:
    return SchemaState(current_revision(conn), head_revision())


def require_head(engine: sa.Engine) -> SchemaState:
    """Raise CdcrError unless the target is reachable and its service tables are at head."""
    try:
        with engine.connect() as conn:
            found = state(conn)
    except sa.exc.OperationalError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise CdcrError(
            f"cannot reach the target database at {database_address(engine.url)}: {detail}; "
            "check CDCR_TARGET__URL"
        ) from exc
    if found.current is None:
        raise CdcrError("the service tables are missing in the target: run `cdcr migrate` first")
    if not found.at_head:
        raise CdcrError(
            f"the service tables in the target are at revision {found.current}, this version "
            f"needs {found.head}: run `cdcr migrate` first"
        )
    return found
