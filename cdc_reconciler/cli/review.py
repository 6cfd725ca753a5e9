"""``cdcr review list / show / resolve``: a thin layer over reconcile/review.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cdc_reconciler.cli.common import ConfigOpt, JsonOpt, echo_json, out_console, say, settings
from cdc_reconciler.errors import CdcrError

if TYPE_CHECKING:
    from cdc_reconciler.reconcile.review import Shown
    from cdc_reconciler.store.discrepancies import ReviewItem

# The decisions of `review resolve`, one option each.
DECISIONS = ("apply_source", "keep_target", "delete_target")


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group to the ``cdcr`` application."""
    review_app = typer.Typer(
        help="The review queue: rows only in the target, orphan rows and differences repair "
        "could not fix, decided by a person.",
        no_args_is_help=True,
    )
    app.add_typer(review_app, name="review")
    review_app.command("list")(list_)
    review_app.command("show")(show)
    review_app.command("resolve")(resolve)


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

    items = review.list_items(settings(config), table=table, kind=kind, state=state, limit=limit)
    if as_json:
        echo_json({"items": [review.item_json(i) for i in items]}, indent=2)
    elif not items:
        say(f"no {'' if state == 'all' else state + ' '}review items")
    else:
        out_console.print(_items_table(items))


def _items_table(items: list[ReviewItem]) -> Table:
    t = Table(box=None, pad_edge=False)
    for col in ("id", "table", "kind", "key", "state", "found"):
        t.add_column(col, overflow="fold")
    for i in items:
        state_txt = str(i.review_state)
        if i.resolution:
            state_txt = f"{i.resolution} by {i.resolved_by}"
        found = "" if i.created_at is None else i.created_at.isoformat()
        t.add_row(str(i.id), i.table_name, i.kind, i.key, state_txt, found[:19].replace("T", " "))
    return t


def show(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="A review item id.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One item: what was found, and the source and target rows as they are now."""
    from cdc_reconciler.reconcile import review

    item = review.show(settings(config), item_id)
    if as_json:
        echo_json(item.as_json(), indent=2)
    else:
        _print_item(item)


def _print_item(shown: Shown) -> None:
    from cdc_reconciler.reconcile.review import item_json

    item = shown.item
    plain = item_json(item)  # instants as ISO text, as before
    for k in ("id", "table_name", "key", "kind", "action", "review_state", "created_at"):
        say(f"{k}: {plain[k]}")
    if item.columns:
        say(f"columns: {', '.join(item.columns)}")
    if item.resolution:
        say(
            f"resolved: {item.resolution} by {item.resolved_by} at "
            f"{plain['resolved_at']}" + (f" ({item.note})" if item.note else "")
        )
    now = shown.now
    if now.error is not None:
        say(f"rows now: unavailable ({now.error})")
        return
    say(f"source row now: {json.dumps(now.source_row)}")
    say(f"target row now: {json.dumps(now.target_row)}")


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

    flags = (apply_source, keep_target, delete_target)
    chosen = [d for d, on in zip(DECISIONS, flags, strict=True) if on]
    if len(chosen) != 1:
        raise CdcrError("choose exactly one of --apply-source, --keep-target, --delete-target")
    done = review.resolve(settings(config), ids, chosen[0], by=by, note=note)
    if as_json:
        echo_json({"resolved": [d.as_json() for d in done]}, indent=2)
        return
    for d in done:
        say(f"{d.id} {d.table} {d.key}: {d.outcome}" + (f" ({d.detail})" if d.detail else ""))
