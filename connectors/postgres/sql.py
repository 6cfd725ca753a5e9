"""SQL text helpers shared by every module that builds PostgreSQL statements."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL. Identifiers never come from event text unchecked:
    callers only pass names of columns and tables read from the catalog or the configuration."""
    return '"' + name.replace('"', '""') + '"'


def qualified_ident(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"
