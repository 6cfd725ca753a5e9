"""The ``cdcr`` command line. The only place that turns CdcrError into ``FAILED: …`` and an exit
status; every command's work lives in a library function it calls."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from cdc_reconciler import __version__
from cdc_reconciler.config import Settings, load_settings
from cdc_reconciler.errors import CdcrError

app = typer.Typer(
    name="cdcr",
    help=(
        "cdc-reconciler: apply Debezium change events to a target database idempotently, "
        "and prove window by window that source and target agree.\n\n"
        "Configuration comes from CDCR_* environment variables (nesting with __, e.g. "
        "CDCR_KAFKA__BOOTSTRAP_SERVERS) and an optional YAML file given with --config."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

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


def fail(exc: CdcrError) -> NoReturn:
    from cdc_reconciler.config import connection_failure

    # A wrapped connection failure is said in one line naming the host, whatever the command.
    cause = connection_failure(exc.__cause__) if exc.__cause__ is not None else None
    message = f"cannot connect to PostgreSQL: {cause}" if cause else str(exc)
    err_console.print(f"[bold red]FAILED:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def settings_or_fail(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except CdcrError as exc:
        fail(exc)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"cdcr {__version__}")
        raise typer.Exit()


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration, secrets redacted."""
    settings = settings_or_fail(config)
    data = settings.redacted()
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=True), nl=False)


@app.command()
def migrate(
    config: ConfigOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Upgrade the service's own tables in the target database (Alembic) to REVISION."""
    from cdc_reconciler import migrations

    settings = settings_or_fail(config)
    try:
        migrations.upgrade(settings, revision, sql=sql)
    except CdcrError as exc:
        fail(exc)
    if not sql:
        err_console.print(f"target database at revision {revision}")


@app.command()
def doctor(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    connector: Annotated[
        list[str] | None,
        typer.Option("--connector", help="Check only this connector (repeatable)."),
    ] = None,
) -> None:
    """List the source columns the Debezium connectors' current settings cannot carry exactly,
    with the option that fixes each (docs/fidelity.md). Exit 1 when something is lossy."""
    from cdc_reconciler.connectors import doctor as doc

    settings = settings_or_fail(config)
    try:
        report = doc.diagnose(settings, connector)
    except CdcrError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        doc.print_report(report, Console())
    if report.lossy:
        raise typer.Exit(code=1)


# Commands defined in their own packages. Imported here, after the shared options above, because
# those modules import them from this one.
from cdc_reconciler.reconcile import cli as reconcile_cli  # noqa: E402
from cdc_reconciler.reconcile import file_cli, review_cli  # noqa: E402
from cdc_reconciler.store import purge_cli  # noqa: E402
from cdc_reconciler.stream import cli as stream_cli  # noqa: E402
from cdc_reconciler.stream import lag_cli  # noqa: E402

stream_cli.register(app)
lag_cli.register(app)
reconcile_cli.register(app)
file_cli.register(app)
review_cli.register(app)
purge_cli.register(app)


# Width of tables when the output is not a terminal (a pipe, a file, a CI log): Rich would
# otherwise cut every column to fit 80, so topic and table names became "t1c…".
PIPED_WIDTH = 240


def main() -> None:
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        os.environ["COLUMNS"] = str(PIPED_WIDTH)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except CdcrError as exc:
        # A command that let a user-facing failure through still ends in one FAILED line.
        try:
            fail(exc)
        except typer.Exit:
            sys.exit(1)
    except Exception as exc:
        # The one safety net for every command: a database that cannot be reached (refused,
        # unknown host, timeout, wrong password) is a FAILED line naming the host, not a traceback.
        from cdc_reconciler.config import connection_failure

        cause = connection_failure(exc)
        if cause is None:
            raise
        err_console.print(
            f"[bold red]FAILED:[/] cannot connect to PostgreSQL: {cause}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
