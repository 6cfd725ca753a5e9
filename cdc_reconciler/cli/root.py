"""The ``cdcr`` application: the root options, ``config show``, ``migrate`` and ``doctor``, the
command groups registered from their modules, and ``main`` (the console script)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from cdc_reconciler import __version__
from cdc_reconciler.cli import common, file, lag, reconcile, review, status, stream
from cdc_reconciler.cli.common import ConfigOpt, JsonOpt, echo_json, say

app = typer.Typer(
    name="cdcr",
    cls=common.GuardedGroup,
    help=(
        "cdc-reconciler: apply Debezium change events to a target database idempotently, "
        "and prove window by window that source and target agree.\n\n"
        "Configuration comes from CDCR_* environment variables (nesting with __, e.g. "
        "CDCR_KAFKA__BOOTSTRAP_SERVERS) and an optional YAML file given with --config.\n\n"
        "Times on the command line (--from, --to) are ISO 8601; a time without a zone is UTC. "
        "--json output writes instants as ISO 8601 UTC with Z and carries schema_version. "
        "A failure is one FAILED: line on stderr and exit status 1."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


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
    data = common.settings(config).redacted()
    if as_json:
        typer.echo(common.to_json(data, indent=2, sort_keys=True))
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

    migrations.upgrade(common.settings(config), revision, sql=sql)
    if not sql:
        say(f"target database at revision {revision}", err=True)


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

    report = doc.diagnose(common.settings(config), connector)
    if as_json:
        echo_json(report.as_dict(), indent=2)
    else:
        doc.print_report(report, Console())
    if report.lossy:
        raise typer.Exit(code=1)


for _module in (stream, lag, reconcile, status, file, review):
    _module.register(app)


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
