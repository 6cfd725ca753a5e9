"""The envelope, read in named steps: which record it is, where in the source log it sits, when
it happened, its rows (TOAST placeholders out, logical values converted) and its identity.

Two shapes carry a row change: the Debezium envelope (``op``, ``before``, ``after``, ``source``,
``transaction``, ``message``) and the ExtractNewRecordState ("unwrap") row (columns plus
``__``-prefixed metadata). Transaction markers and logical messages are read here too.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

from .events import DecodeError, TransactionMarker
from .hot import strip_placeholders
from .logical import bytes_from_b64
from .positions import _is_snapshot, _lsn, _mysql_position, _pg_position, _pg_sequence, _ts_us
from .schema import _Compiled

OPS = frozenset({"c", "u", "d", "r", "t", "m"})
ROW_OPS = frozenset({"c", "u", "d", "r"})
EMPTY: frozenset[str] = frozenset()
_NEEDS_AFTER = frozenset({"c", "u", "r"})


# --------------------------------------------------------------------------------------------
# Classifying a payload


def check_not_schema_change(compiled: _Compiled | None, p: dict[str, Any]) -> None:
    """MySQL schema-change and schema-history records belong to other topics."""
    if compiled is not None and compiled.kind == "schema_change":
        raise DecodeError("schema_change_event", f"{compiled.name} record (schema topic)")
    if "ddl" in p or "historyRecord" in p or "tableChanges" in p:
        raise DecodeError("schema_change_event", "schema change / history record")


def source_block(p: dict[str, Any], op: Any) -> dict[str, Any]:
    """Check ``op`` and return the envelope's ``source`` block."""
    if op.__class__ is not str or op not in OPS:
        raise DecodeError("unknown_op", f"op {op!r}")
    src = p.get("source")
    if src.__class__ is not dict:
        raise DecodeError("not_an_envelope", "source block missing")
    if "ddl" in p or "historyRecord" in p:
        raise DecodeError("schema_change_event", "schema change record")
    return src  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Source position and time


def source_position(src: dict[str, Any]) -> tuple[str | None, int | None]:
    """(source schema or database, position or None when the source carries none)."""
    connector = src.get("connector")
    if connector == "postgresql" or (connector is None and "lsn" in src):
        seq = src.get("sequence")
        if seq is not None:
            return src.get("schema"), _pg_sequence(seq)
        lsn = src.get("lsn")
        return src.get("schema"), None if lsn is None else _lsn(lsn, "lsn")
    if connector in ("mysql", "mariadb") or (connector is None and "file" in src):
        return src.get("db"), _mysql_position(src.get("file"), src.get("pos"), src.get("row"))
    raise DecodeError("unsupported_connector", f"connector {connector!r}")


def envelope_ts_us(src: dict[str, Any], p: dict[str, Any]) -> int:
    ts = src.get("ts_us")
    if ts.__class__ is int:
        return ts  # type: ignore[no-any-return]
    ts = _ts_us(None, src.get("ts_ms"), p.get("ts_ms"))
    if ts is None:
        raise DecodeError("missing_timestamp", "no source.ts_us/ts_ms nor ts_ms")
    return ts


def envelope_snapshot(op: str, src: dict[str, Any]) -> bool:
    snap = src.get("snapshot")
    return op == "r" or (
        snap is not None and snap != "false" and snap is not False and _is_snapshot(op, snap)
    )


# --------------------------------------------------------------------------------------------
# Rows


def envelope_rows(p: dict[str, Any], op: str) -> tuple[Any, Any]:
    """(before, after), each a dict or None, checked against ``op``."""
    before = p.get("before")
    after = p.get("after")
    if (before is not None and before.__class__ is not dict) or (
        after is not None and after.__class__ is not dict
    ):
        raise DecodeError("bad_row", "before/after is not an object")
    if after is None and op in _NEEDS_AFTER:
        raise DecodeError("bad_row", f"op {op!r} without after")
    return before, after


def convert_envelope_rows(
    compiled: _Compiled | None, before: Any, after: Any
) -> tuple[Mapping[str, str] | None, frozenset[str], bool]:
    """Strip TOAST placeholders and convert logical values of ``before``/``after`` in place.
    Returns (column types when the schema is known, columns unavailable in ``after``, whether the
    rows can hold no ``datetime.time`` -- see :func:`.hot.fast_change_id`)."""
    if compiled is None:
        if before is not None:
            strip_placeholders(before)
        gone = None if after is None else strip_placeholders(after)
        return None, frozenset(gone) if gone else EMPTY, True
    rc = compiled.row
    if compiled.kind != "envelope" or rc is None:
        raise DecodeError(
            "bad_schema",
            f"schema {compiled.name!r} does not describe an envelope"
            + (f" ({compiled.error})" if compiled.error else ""),
        )
    unavailable = None if after is None else rc.fast_apply_row(after)
    if before is not None:
        rc.fast_apply_row(before)
    return rc.column_types, frozenset(unavailable) if unavailable else EMPTY, rc.native_json


def row_identity(op: str, key: Any, before: Any, after: Any, message: Any) -> Any:
    """What the change id hashes: the Kafka key, else ``after``, else ``before``, else the logical
    message (row changes need one of the first three)."""
    if key is not None:
        return key
    if after is not None:
        return after
    if before is not None:
        return before
    if op in ROW_OPS:
        raise DecodeError("missing_key", f"op {op!r} without key, before or after")
    return message


def transaction_id(p: dict[str, Any]) -> str | None:
    tx = p.get("transaction")
    return tx.get("id") if tx.__class__ is dict else None  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Unwrapped (ExtractNewRecordState) rows


class UnwrappedMeta:
    """The ``__``-prefixed metadata of an unwrapped row (``__x``, else ``__source_x``)."""

    __slots__ = ("p",)

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p

    def __call__(self, name: str) -> Any:
        v = self.p.get("__" + name)
        return self.p.get("__source_" + name) if v is None else v

    def op(self) -> str:
        deleted = self.p.get("__deleted")
        if deleted is True or (isinstance(deleted, str) and deleted.lower() == "true"):
            return "d"
        op = self("op")
        if op is None:
            return "u"
        if op.__class__ is not str or op not in ROW_OPS:
            raise DecodeError("unknown_op", f"__op {op!r}")
        return op  # type: ignore[no-any-return]

    def is_mysql(self) -> bool:
        return self("file") is not None or self("pos") is not None

    def position(self) -> int | None:
        if self.is_mysql():
            return _mysql_position(self("file"), self("pos"), self("row"))
        return _pg_position(self("sequence"), self("lsn"))

    def ts_us(self) -> int:
        ts = _ts_us(self("ts_us"), self("ts_ms"), self.p.get("__ts_ms"))
        if ts is None:
            raise DecodeError("missing_timestamp", "unwrapped row without __source_ts_ms")
        return ts

    def schema_name(self) -> Any:
        schema_name = self("schema")
        if schema_name is None and self.is_mysql():
            return self("db")
        return schema_name


def convert_unwrapped_row(
    compiled: _Compiled | None, row: dict[str, Any]
) -> tuple[Mapping[str, str] | None, set[str] | None, bool]:
    """(column types when the schema is known, unavailable columns, whether the row can hold no
    ``datetime.time``) for an unwrapped row."""
    if compiled is None:
        return None, strip_placeholders(row), True
    rc = compiled.unwrapped_row
    if compiled.kind != "struct" or rc is None:
        raise DecodeError("bad_schema", f"schema {compiled.name!r} is not a row struct")
    return rc.column_types, rc.fast_apply_row(row), rc.native_json


# --------------------------------------------------------------------------------------------
# Logical messages and transaction markers


def logical_message(m: Any) -> dict[str, Any] | None:
    if m is None:
        return None
    if not isinstance(m, dict):
        raise DecodeError("malformed_event", "message is not an object")
    content = m.get("content")
    try:
        data = None if content is None else bytes_from_b64(content)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise DecodeError("bad_logical_value", f"message content: {exc}") from None
    return {"prefix": m.get("prefix"), "content": data}


def tx_marker(p: dict[str, Any]) -> TransactionMarker:
    status, tx_id = p.get("status"), p.get("id")
    if status not in ("BEGIN", "END") or not isinstance(tx_id, str):
        raise DecodeError("not_an_envelope", f"transaction record status={status!r} id={tx_id!r}")
    count = p.get("event_count")
    cols = p.get("data_collections")
    collections: tuple[tuple[str, int], ...] | None = None
    if isinstance(cols, list):
        collections = tuple((str(c["data_collection"]), int(c["event_count"])) for c in cols)
    return TransactionMarker(
        status=status,
        id=tx_id,
        ts_us=_ts_us(p.get("ts_us"), p.get("ts_ms"), None),
        event_count=count if count.__class__ is int else None,
        data_collections=collections,
    )
