"""Reshaping decoded values for the target's COPY text input (:func:`value_adapters`).

Debezium carries some types in a shape the target's COPY text input does not read (NaN numerics
as Java enum names, hstore as JSON, bit strings as little-endian bytes, points as objects, types
it has no schema for as the bytes of their text); an adapter turns the decoded value into that
text, chosen by the target column's type (:attr:`TargetTable.column_kinds`). Tables without such
columns get no adapters, so the hot path pays nothing for them. An adapter raises ValueError or
TypeError on a value it cannot reshape (the caller dead-letters the event ``bad_value``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from cdc_reconciler.connectors.postgres.table import TargetTable

_NUMERIC_SPECIAL = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}


def _numeric(v: Any) -> Any:
    # decimal.handling.mode=string spells NaN/±Infinity as Java enum names.
    if v.__class__ is str and v[-1:] in ("N", "Y"):
        return _NUMERIC_SPECIAL.get(v, v)
    return v


def _hstore_item(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hstore(v: Any) -> Any:
    """hstore.handling.mode=json (a JSON object as text) or map (an object): hstore text."""
    if v.__class__ is str:
        if not v.startswith("{"):
            return v
        v = orjson.loads(v)
    if isinstance(v, dict):
        return ", ".join(
            f"{_hstore_item(str(k))}=>{'NULL' if x is None else _hstore_item(str(x))}"
            for k, x in v.items()
        )
    return v


def _bits(width: int | None) -> Callable[[Any], Any]:
    """io.debezium.data.Bits: little-endian bytes of the bit string read as a number; bit(1)
    arrives as a boolean. bit(n) is padded to n; varbit's leading zeros are not carried."""

    def conv(v: Any) -> Any:
        if v is True or v is False:
            return "1" if v else "0"
        if isinstance(v, bytes | bytearray):
            n = int.from_bytes(v, "little")
            text = format(n, "b") if n or width else ""
            return text.zfill(width) if width else text
        return v

    return conv


def _point(v: Any) -> Any:
    if isinstance(v, dict) and "x" in v:
        return f"({float(v['x'])!r},{float(v['y'])!r})"
    return v


def _text_of_bytes(v: Any) -> Any:
    """include.unknown.datatypes=true: types Debezium has no schema for (line, lseg, box, path,
    polygon, circle, multiranges, composites) arrive as the bytes of their text form."""
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8")
    return v


# Built-in types of category U that Debezium has a schema for (they never arrive as bytes).
_BUILTIN_USER_CATEGORY = frozenset(
    {"bytea", "json", "jsonb", "uuid", "xml", "tsvector", "tsquery", "pg_lsn", "jsonpath"}
)


def value_adapters(table: TargetTable) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    out: list[tuple[str, Callable[[Any], Any]]] = []
    for col, kind, typ in zip(
        table.columns,
        table.column_kinds,
        table.column_types or ("",) * len(table.columns),
        strict=False,
    ):
        head, _, name = kind.partition(":")
        fn: Callable[[Any], Any] | None = None
        if name == "numeric":
            fn = _numeric
        elif name == "hstore":
            fn = _hstore
        elif name in ("bit", "varbit"):
            width = None
            if name == "bit" and "(" in typ:
                width = int(typ[typ.index("(") + 1 : typ.index(")")])
            fn = _bits(width if name == "bit" else None)
        elif name == "point":
            fn = _point
        elif (
            head[:1] in ("c", "m")
            or head[1:] == "G"
            or (head[1:] == "U" and name not in _BUILTIN_USER_CATEGORY)
        ):
            fn = _text_of_bytes
        if fn is not None:
            out.append((col, fn))
    return tuple(out)
