"""``cdcr review list / show / resolve``: a thin typer layer over reconcile/review.py."""

# No `from __future__ import annotations`: typer reads the option types at registration.

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cdc_reconciler.errors import CdcrError

_out = Console()


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group to the ``cdcr`` application."""
    from cdc_reconciler.cli import ConfigOpt, JsonOpt, fail, settings_or_fail

    review_app = typer.Typer(
        help="The review queue: rows only in the target, orphan rows and differences repair "
        "could not fix, decided by a person.",
        no_args_is_help=True,
    )
    app.add_typer(review_app, name="review")

    @review_app.command("list")
    def list_(
        table: Annotated[
            str | None, typer.Option("--table", "-t", help="Only this source table.")
        ] = None,
        kind: Annotated[
            str | None,
            typer.Option("--kind", help="missing, extra, mismatched or orphan."),
        ] = None,
        state: Annotated[
            str, typer.Option("--state", help="open (default), resolved or all.")
        ] = "open",
        limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 200,
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Items of the review queue, oldest first."""
        from cdc_reconciler.reconcile import review

        settings = settings_or_fail(config)
        try:
            items = review.list_items(settings, table=table, kind=kind, state=state, limit=limit)
        except CdcrError as exc:
            fail(exc)
        if as_json:
            typer.echo(json.dumps({"items": items}, indent=2, default=str))
            return
        if not items:
            _out.print(f"no {'' if state == 'all' else state + ' '}review items", highlight=False)
            return
        t = Table(box=None, pad_edge=False)
        for col in ("id", "table", "kind", "key", "state", "found"):
            t.add_column(col, overflow="fold")
        for i in items:
            state_txt = i["review_state"]
            if i["resolution"]:
                state_txt = f"{i['resolution']} by {i['resolved_by']}"
            t.add_row(
                str(i["id"]),
                i["table_name"],
                i["kind"],
                i["key"],
                state_txt,
                (i["created_at"] or "")[:19].replace("T", " "),
            )
        _out.print(t)

    @review_app.command("show")
    def show(
        item_id: Annotated[int, typer.Argument(metavar="ID", help="A review item id.")],
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One item: what was found, and the source and target rows as they are now."""
        from cdc_reconciler.reconcile import review

        settings = settings_or_fail(config)
        try:
            item = review.show(settings, item_id)
        except CdcrError as exc:
            fail(exc)
        if as_json:
            typer.echo(json.dumps(item, indent=2, default=str))
            return
        for k in ("id", "table_name", "key", "kind", "action", "review_state", "created_at"):
            _out.print(f"{k}: {item[k]}", highlight=False)
        if item.get("columns"):
            _out.print(f"columns: {', '.join(item['columns'])}", highlight=False)
        if item.get("resolution"):
            _out.print(
                f"resolved: {item['resolution']} by {item['resolved_by']} at "
                f"{item['resolved_at']}" + (f" ({item['note']})" if item.get("note") else ""),
                highlight=False,
            )
        now = item.get("now", {})
        if "error" in now:
            _out.print(f"rows now: unavailable ({now['error']})", highlight=False)
            return
        for side in ("source_row", "target_row"):
            _out.print(
                f"{side.replace('_', ' ')} now: {json.dumps(now.get(side))}", highlight=False
            )

    @review_app.command("resolve")
    def resolve(
        ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Review item ids.")],
        apply_source: Annotated[
            bool,
            typer.Option(
                "--apply-source",
                help="Set the target row to the source row now (archive and delete it when the "
                "source has none).",
            ),
        ] = False,
        keep_target: Annotated[
            bool, typer.Option("--keep-target", help="Leave the target row as it is.")
        ] = False,
        delete_target: Annotated[
            bool, typer.Option("--delete-target", help="Archive the target row, then delete it.")
        ] = False,
        note: Annotated[str | None, typer.Option("--note", help="Why, for the record.")] = None,
        by: Annotated[
            str | None, typer.Option("--by", help="Who decides (default: the OS user).")
        ] = None,
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Decide items of the review queue. Writes through the versioned writer (a later real
        change still wins); idempotent: resolving an item again changes nothing."""
        from cdc_reconciler.reconcile import review

        chosen = [
            d
            for d, on in (
                ("apply_source", apply_source),
                ("keep_target", keep_target),
                ("delete_target", delete_target),
            )
            if on
        ]
        if len(chosen) != 1:
            fail(CdcrError("choose exactly one of --apply-source, --keep-target, --delete-target"))
        settings = settings_or_fail(config)
        try:
            done = review.resolve(settings, ids, chosen[0], by=by, note=note)
        except CdcrError as exc:
            fail(exc)
        if as_json:
            typer.echo(json.dumps({"resolved": [d.as_json() for d in done]}, indent=2))
            return
        for d in done:
            _out.print(
                f"{d.id} {d.table} {d.key}: {d.outcome}" + (f" ({d.detail})" if d.detail else ""),
                highlight=False,
            )
