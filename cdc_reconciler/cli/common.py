"""What every ``cdcr`` command shares: the options, the one time parser, the one JSON writer, the
small text renderers, and the one edge that turns a failure into ``FAILED: …`` and exit status 1.

Rules, stated once:

- Times given on the command line (``--from``, ``--to``) are ISO 8601; a time without a zone or
  offset is UTC (``2026-01-01T10:00`` is ``2026-01-01T10:00Z``), for every command.
- ``--json`` output is one document (a line, or indented) whose instants are written as ISO 8601
  in UTC with a ``Z`` (``2026-01-01T10:00:00Z``) and which always carries ``"schema_version"``.
- A :class:`~cdc_reconciler.errors.CdcrError`, a database error (SQLAlchemy, psycopg2) or a Kafka
  error (confluent-kafka) ends the command with one ``FAILED: …`` line on stderr and exit status 1
  (a command may ask for another status, as ``reconcile-file`` does with 2), never a traceback.

Nothing here imports SQLAlchemy, psycopg2 or confluent-kafka: the error edge recognises their
errors only when the command already imported them (``sys.modules``), so start-up stays fast.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import typer.core
from rich.console import Console

from cdc_reconciler.config import Settings, load_settings
from cdc_reconciler.errors import CdcrError, db_error_line, first_line

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")

# The version of every --json document; fields are only ever added within a version.
SCHEMA_VERSION = 1

out_console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file with settings and table mappings.",
        envvar="CDCR_CONFIG_FILE",
        exists=True,
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]

# The help of every option that takes a time: the one rule, said the same way everywhere.
TIME_HELP = "ISO 8601; a time without a zone is UTC (e.g. 2026-11-22T10:00Z)."


# -- settings and times ---------------------------------------------------------------------------


def settings(config: Path | None) -> Settings:
    """The effective settings (a bad configuration is a CdcrError, reported by the edge)."""
    return load_settings(config)


def parse_time(text: str, option: str) -> datetime:
    """ISO 8601 to an aware UTC datetime. A time without a zone or offset is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise CdcrError(
            f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_optional_time(text: str | None, option: str) -> datetime | None:
    return None if text is None else parse_time(text, option)


def iso_utc(value: datetime) -> str:
    """The one way an instant is written in JSON: ISO 8601, UTC, ``Z``. A naive datetime is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- JSON -----------------------------------------------------------------------------------------


# An instant the library already wrote with Python's isoformat() in UTC ("…+00:00").
_UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?\+00:00")


def _plain(value: Any) -> Any:
    """A JSON-ready copy: instants as :func:`iso_utc` (datetimes, and strings holding a UTC
    instant written as ``+00:00``), enums by value, dataclasses as dicts."""
    if isinstance(value, str):
        return value[:-6] + "Z" if _UTC_ISO.fullmatch(value) else value
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _plain(value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def to_json(data: Mapping[str, Any], *, indent: int | None = None, sort_keys: bool = False) -> str:
    """The one JSON writer: ``schema_version`` is added when the document has none (after the
    other keys, so a document's first key stays what it was), instants are ISO 8601 UTC with
    ``Z``; anything else JSON cannot hold (Decimal, UUID, …) is written as its ``str``."""
    doc = _plain(data)
    doc.setdefault("schema_version", SCHEMA_VERSION)
    return json.dumps(doc, indent=indent, sort_keys=sort_keys, default=str)


def echo_json(data: Mapping[str, Any], *, indent: int | None = None) -> None:
    typer.echo(to_json(data, indent=indent))


# -- small renderers ------------------------------------------------------------------------------


def short_time(t: datetime | str | None, *, none: str = "never") -> str:
    """An instant as ``YYYY-MM-DD HH:MM:SSZ`` (UTC) for tables and summaries."""
    if t is None:
        return none
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%SZ")


def ago(seconds: float) -> str:
    """A duration rounded to one unit: 45s, 12m, 5h, 3d."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def progress(*columns: Any, hidden: bool) -> Progress:
    """A progress display on stderr that disappears when done; ``hidden`` for --json (scripts).
    Off when stderr is not a terminal (a pipe, a log file): there a transient display leaves
    only an empty line behind (found by a new-user trial: a blank line before ``FAILED:``)."""
    from rich.progress import Progress

    off = hidden or not err_console.is_terminal
    return Progress(*columns, console=err_console, transient=True, disable=off)


def say(text: str, *, err: bool = False, markup: bool = True, soft_wrap: bool = False) -> None:
    """One line of human output (stdout, or stderr with ``err``), never syntax-highlighted."""
    (err_console if err else out_console).print(
        text, highlight=False, markup=markup, soft_wrap=soft_wrap
    )


# -- the error edge -------------------------------------------------------------------------------

# The exit status a command asked for (``error_exit(2)``) when its failures are not exit 1.
_error_exit: ContextVar[int | None] = ContextVar("cdcr_error_exit", default=None)


def error_exit(code: int) -> None:
    """Ask the edge to end this command's failures with ``code`` instead of 1."""
    _error_exit.set(code)


def failure_message(exc: BaseException) -> str | None:
    """The one-line message of a failure the edge reports, or None for anything else (a bug:
    its traceback is shown)."""
    db = _database_failure(exc)
    if db is not None:
        return db
    if isinstance(exc, CdcrError):
        cause = exc.__cause__
        wrapped = _database_failure(cause) if cause is not None else None
        # A wrapped connection failure is said in one line naming the host, whatever the command
        # -- unless the command's own message already names which database it could not reach.
        if (
            wrapped is not None
            and wrapped.startswith(("cannot connect", "cannot reach"))
            and not str(exc).startswith("cannot reach")
        ):
            return wrapped
        return str(exc)
    return _kafka_failure(exc)


def _database_failure(exc: BaseException) -> str | None:
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError):
        from cdc_reconciler.config import connection_failure

        cause = connection_failure(exc)
        if cause is not None:
            where = getattr(exc, "cdcr_database", None)  # set by wiring's engines
            if where:
                return f"cannot reach the {where}: {cause}"
            return f"cannot connect to PostgreSQL: {cause}"
        return f"database error: {db_error_line(exc)}"
    pg = sys.modules.get("psycopg2")
    if pg is not None and isinstance(exc, pg.Error):
        return f"database error: {db_error_line(exc)}"
    return None


def _kafka_failure(exc: BaseException) -> str | None:
    ck = sys.modules.get("confluent_kafka")
    if ck is None or not isinstance(exc, ck.KafkaException):
        return None
    err = exc.args[0] if exc.args else None
    if isinstance(err, ck.KafkaError):
        return f"Kafka error {err.name()}: {err.str()}"
    return f"Kafka error: {first_line(exc)}"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``FAILED: message`` on stderr and end the command with ``code``."""
    err_console.print(f"[bold red]FAILED:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def guarded(call: Callable[[], T], *, code: int = 1) -> T:
    """Run a command; the one place a CdcrError, a database error or a Kafka error becomes one
    ``FAILED: …`` line and exit status ``code`` (or the one the command asked for)."""
    token = _error_exit.set(None)
    try:
        return call()
    except Exception as exc:
        message = failure_message(exc)
        if message is None:
            raise
        fail(message, _error_exit.get() or code)
    finally:
        _error_exit.reset(token)


class GuardedGroup(typer.core.TyperGroup):
    """The root command group: every command and sub-command runs through :func:`guarded`."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        return guarded(lambda: super(GuardedGroup, self).invoke(ctx))
