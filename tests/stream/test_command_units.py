"""`cdcr tables sync` names: a source table and a mapping's `target` are both "schema.table"; a
bare name is refused (read naively, `target = "t2"` would pass the key columns on as the table
name and look up the schema "t2"). No services: the names are checked before any connection."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cdc_reconciler.config import DatabaseSettings, Settings, TableMapping
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.command import sync_tables, table_names


@pytest.mark.parametrize("target", [None, ""])
def test_target_defaults_to_the_source_name(target: str | None) -> None:
    mapping = TableMapping(target=target)
    assert table_names("public.t", mapping) == (("public", "t"), ("public", "t"))


def test_target_of_the_mapping_is_split_into_schema_and_table() -> None:
    mapping = TableMapping(target="archive.t2", key_columns=["id"])
    assert table_names("public.t", mapping) == (("public", "t"), ("archive", "t2"))


@pytest.mark.parametrize("target", ["t2", ".t2", "archive."])
def test_a_target_not_written_schema_table_is_refused(target: str) -> None:
    with pytest.raises(CdcrError) as info:
        table_names("public.t", TableMapping(target=target, key_columns=["id"]))
    assert str(info.value) == f"table 'public.t': target {target!r}: write it as schema.table"


@pytest.mark.parametrize("name", ["t", "public.", ".t"])
def test_a_source_name_not_written_schema_table_is_refused(name: str) -> None:
    with pytest.raises(CdcrError, match="write it as schema.table"):
        table_names(name, TableMapping())


def test_sync_refuses_a_bare_target_before_connecting() -> None:
    # Nothing listens on port 1: reaching a connection would fail with a database error instead.
    nowhere = DatabaseSettings(url=SecretStr("postgresql://nobody@127.0.0.1:1/none"))
    settings = Settings(
        source=nowhere,
        target=nowhere,
        tables={
            "public.ok": TableMapping(),
            "public.t": TableMapping(target="t2", key_columns=["id"]),
        },
    )
    with pytest.raises(CdcrError, match=r"target 't2': write it as schema\.table"):
        sync_tables(settings, [])


def test_sync_with_no_table_named_or_configured_fails_instead_of_doing_nothing() -> None:
    """`cdcr tables sync` without a table used to print "created 0 table(s)" and exit 0 without
    reading either database."""
    nowhere = DatabaseSettings(url=SecretStr("postgresql://nobody@127.0.0.1:1/none"))
    settings = Settings(source=nowhere, target=nowhere, tables={})
    with pytest.raises(CdcrError, match=r"no tables to sync: name them"):
        sync_tables(settings, [])
