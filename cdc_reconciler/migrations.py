"""Alembic, driven from the settings. The migration scripts live in the repository's
``alembic/`` folder (installed as ``cdc_reconciler.migrations_scripts``)."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from alembic import command
from cdc_reconciler import wiring
from cdc_reconciler.config import Settings
from cdc_reconciler.errors import CdcrError, db_error_line


def script_location() -> Path:
    """The folder holding env.py and versions/: installed with the package, or, in an editable
    install from a checkout, the checkout's own ``alembic/`` folder."""
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    if (checkout / "env.py").is_file():
        return checkout
    if importlib.util.find_spec("cdc_reconciler.migrations_scripts") is None:
        raise CdcrError("the migration scripts are not installed with this package")
    return Path(str(resources.files("cdc_reconciler.migrations_scripts")))


def alembic_config(settings: Settings) -> Config:
    url = wiring.require_url(settings.target, "target")  # the service's tables live there
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["target_url"] = url
    return cfg


def upgrade(settings: Settings, revision: str = "head", *, sql: bool = False) -> None:
    """Upgrade the target's service tables to ``revision``. Raises CdcrError on failure."""
    try:
        command.upgrade(alembic_config(settings), revision, sql=sql)
    except SQLAlchemyError as exc:
        raise CdcrError(f"migration to {revision} failed: {db_error_line(exc)}") from exc


def downgrade(settings: Settings, revision: str) -> None:
    try:
        command.downgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise CdcrError(f"downgrade to {revision} failed: {exc}") from exc
