"""Schemas: what a JsonConverter ``schema`` says about its payload, compiled once per table version.

:func:`_compile_schema` turns the schema JSON into a :class:`_Compiled` (an envelope, a plain struct
-- a key or an unwrapped row --, a schema-change record, or something unusable, never raising);
:class:`_RowConverter` holds the per-column converters (chosen from the logical ``name`` in
:mod:`.logical`), the TOAST-able columns and the short column types of one struct.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .events import DecodeError
from .hot import row_applier
from .logical import (
    _BY_NAME,
    _IDENTITY_NAMES,
    _TOAST,
    _TOAST_B64,
    _Conv,
    bytes_from_b64,
    decimal_bytes_converter,
    decimal_from_text,
)

_TOASTABLE_TYPES = frozenset({"string", "bytes", "array", "map"})
# Fixed-size PostgreSQL types are never TOASTed, so their string renderings need no placeholder check.
_NEVER_TOASTED = frozenset(
    {
        "io.debezium.time.ZonedTimestamp",
        "io.debezium.time.ZonedTime",
        "io.debezium.time.Interval",
        "io.debezium.data.Uuid",
        "io.debezium.data.Enum",
    }
)


# Logical types converted to ``datetime.time``: orjson renders those unlike ``isoformat()``.
_TIME_NAMES = frozenset(
    {
        "io.debezium.time.Time",
        "io.debezium.time.MicroTime",
        "io.debezium.time.NanoTime",
        "io.debezium.time.ZonedTime",
        "org.apache.kafka.connect.data.Time",
    }
)


def _may_hold_time(schema: Any) -> bool:
    """Whether a field's converted value can be or contain a ``datetime.time``."""
    if not isinstance(schema, Mapping):
        return False
    if schema.get("name") in _TIME_NAMES:
        return True
    if schema.get("type") == "array":
        return _may_hold_time(schema.get("items"))
    fields = schema.get("fields") if schema.get("type") == "struct" else None
    return isinstance(fields, list) and any(_may_hold_time(f) for f in fields)


def _short_type(schema: Mapping[str, Any]) -> str:
    name = schema.get("name")
    if isinstance(name, str) and name:
        return name.rsplit(".", 1)[-1]
    typ = str(schema.get("type"))
    if typ == "array":
        items = schema.get("items")
        return f"array<{_short_type(items) if isinstance(items, Mapping) else '?'}>"
    return typ


def _build_converter(schema: Mapping[str, Any]) -> _Conv | None:
    """Compile one field schema into a converter; None means the JSON value is kept as is."""
    name = schema.get("name")
    typ = schema.get("type")
    if name == "org.apache.kafka.connect.data.Decimal":
        params = schema.get("parameters") or {}
        scale = int(params.get("scale", 0))
        if typ == "bytes":
            return decimal_bytes_converter(scale)
        return decimal_from_text
    if isinstance(name, str):
        if name in _IDENTITY_NAMES:
            return None
        conv = _BY_NAME.get(name)
        if conv is not None:
            return conv
    if typ == "bytes":
        return bytes_from_b64
    if typ == "array":
        items = schema.get("items")
        item_conv = _build_converter(items) if isinstance(items, Mapping) else None
        if item_conv is None:
            return None
        ic = item_conv
        return lambda v: [None if x is None else ic(x) for x in v]
    if typ == "struct":
        row = _RowConverter.compile(schema)
        if not row.convs:
            return None

        def struct_conv(v: Any) -> Any:
            if not isinstance(v, dict):
                raise TypeError(f"expected object, got {type(v).__name__}")
            return row.apply(v)

        return struct_conv
    return None


class _RowConverter:
    """Per-table-version compiled conversion of one struct (a row, or a key).

    ``apply``/``apply_row`` are the plain loops (the reference); ``fast_apply_row`` is the same
    as ``apply_row``, generated straight-line per table version (see :mod:`.hot`). ``native_json``
    says no converted value can be a ``time`` (then orjson may render the row's change id itself).
    """

    __slots__ = ("convs", "toastable", "column_types", "native_json", "fast_apply_row")

    def __init__(
        self,
        convs: tuple[tuple[str, _Conv], ...],
        toastable: tuple[str, ...],
        column_types: Mapping[str, str],
        native_json: bool = False,
    ) -> None:
        self.convs = convs
        self.toastable = toastable
        self.column_types = column_types
        self.native_json = native_json
        self.fast_apply_row = row_applier(convs, toastable, column_types)

    @classmethod
    def compile(cls, struct: Mapping[str, Any], *, skip_meta: bool = False) -> _RowConverter:
        fields = struct.get("fields")
        if not isinstance(fields, list):
            raise ValueError("struct schema without a fields list")
        convs: list[tuple[str, _Conv]] = []
        toastable: list[str] = []
        types: dict[str, str] = {}
        native_json = True
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("field"), str):
                raise ValueError("struct field without a name")
            fname: str = f["field"]
            if skip_meta and fname.startswith("__"):
                continue
            types[fname] = _short_type(f)
            native_json = native_json and not _may_hold_time(f)
            conv = _build_converter(f)
            if conv is not None:
                convs.append((fname, conv))
            if f.get("type") in _TOASTABLE_TYPES and f.get("name") not in _NEVER_TOASTED:
                toastable.append(fname)
        return cls(tuple(convs), tuple(toastable), MappingProxyType(types), native_json)

    def apply(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert ``row`` in place (no TOAST handling); raises DecodeError on a bad value."""
        name = ""
        get = row.get
        try:
            for name, fn in self.convs:
                v = get(name)
                if v is not None:
                    row[name] = fn(v)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(
                "bad_logical_value",
                f"column {name!r} ({self.column_types.get(name)}): {type(exc).__name__}: {exc}",
            ) from None
        return row

    def apply_row(self, row: dict[str, Any]) -> set[str] | None:
        """TOAST placeholders out (returned), then conversion in place."""
        gone: set[str] | None = None
        get = row.get
        for name in self.toastable:
            v = get(name)
            # Inline for speed: the str checks first, a one-item list for arrays.
            if v is not None and (
                v == _TOAST
                or v == _TOAST_B64
                or (v.__class__ is list and len(v) == 1 and v[0] == _TOAST)
            ):
                del row[name]
                if gone is None:
                    gone = set()
                gone.add(name)
        self.apply(row)
        return gone


class _Compiled:
    """What a schema says about its payload: an envelope (row converter for before/after), a plain
    struct (a key, or an unwrapped row), a schema-change value, or something unusable."""

    __slots__ = ("kind", "row", "unwrapped_row", "error", "name")

    def __init__(
        self,
        kind: str,
        row: _RowConverter | None = None,
        unwrapped_row: _RowConverter | None = None,
        error: str | None = None,
        name: str | None = None,
    ) -> None:
        self.kind = kind
        self.row = row
        self.unwrapped_row = unwrapped_row
        self.error = error
        self.name = name


def _compile_schema(schema: Any) -> _Compiled | None:
    """Never raises: problems are recorded and reported when the payload needs the schema."""
    if schema is None:
        return None
    if not isinstance(schema, Mapping):
        return _Compiled("invalid", error="schema is not an object")
    name = schema.get("name")
    name = name if isinstance(name, str) else None
    try:
        if name is not None and name.endswith("SchemaChangeValue"):
            return _Compiled("schema_change", name=name)
        if schema.get("type") != "struct":
            return _Compiled("invalid", error=f"schema type {schema.get('type')!r}", name=name)
        fields = schema.get("fields")
        if not isinstance(fields, list):
            return _Compiled("invalid", error="struct schema without fields", name=name)
        by_field = {f.get("field"): f for f in fields if isinstance(f, Mapping)}
        value_schema = by_field.get("after") or by_field.get("before")
        if (
            isinstance(value_schema, Mapping)
            and value_schema.get("type") == "struct"
            and "op" in by_field
        ):
            return _Compiled("envelope", row=_RowConverter.compile(value_schema), name=name)
        return _Compiled(
            "struct",
            row=_RowConverter.compile(schema),
            unwrapped_row=_RowConverter.compile(schema, skip_meta=True),
            name=name,
        )
    except (ValueError, TypeError, KeyError) as exc:
        return _Compiled("invalid", error=str(exc), name=name)
