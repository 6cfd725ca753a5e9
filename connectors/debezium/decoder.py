"""The decoder: one Kafka record (key bytes, value bytes) -> one decoded result or DecodeError.

Reads as the steps of :mod:`.envelope`; the order of the steps is the order in which problems are
reported (the first one found names the ``DecodeError`` kind).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from .envelope import (
    EMPTY,
    UnwrappedMeta,
    check_not_schema_change,
    convert_envelope_rows,
    convert_unwrapped_row,
    envelope_rows,
    envelope_snapshot,
    envelope_ts_us,
    logical_message,
    row_identity,
    source_block,
    source_position,
    transaction_id,
    tx_marker,
)
from .events import ChangeEvent, DecodeError, Tombstone, TransactionMarker
from .hot import PREFIX, EventShell, SchemaCache, fast_change_id
from .positions import _is_snapshot, change_id_for
from .schema import _compile_schema, _Compiled


class DebeziumDecoder:
    """Decodes Kafka records of Debezium topics. Keeps a bounded LRU of compiled schemas keyed by
    the exact schema bytes, so the schema part of a JsonConverter envelope is parsed once per
    table version, and only the payload per event. Not thread-safe (one per consumer thread).

    ``allow_missing_position``: decode events without any source position with ``position=0``
    (older than everything) instead of raising ``missing_position``.
    """

    def __init__(self, *, cache_size: int = 1024, allow_missing_position: bool = False) -> None:
        self._allow_missing_position = allow_missing_position
        self._schemas = SchemaCache(cache_size, _compile_schema)
        self._lru: OrderedDict[bytes, _Compiled | None] = self._schemas.lru  # the same objects
        self._by_len: dict[int, list[bytes]] = self._schemas.by_len
        # Records the fast path does not take (pretty-printed JSON, a trailing newline, fields in
        # another order): their parsed schema, keyed by its canonical bytes, so that the schema is
        # compiled once per table version there too, not once per record.
        self._slow: dict[bytes, _Compiled | None] = {}
        self._slow_size = cache_size

    @property
    def cache_hits(self) -> int:
        return self._schemas.hits

    @property
    def cache_misses(self) -> int:
        return self._schemas.misses

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, raw: bytes, bad_kind: str, slot: int) -> tuple[_Compiled | None, Any]:
        """(compiled schema or None, payload). A JsonConverter ``{"schema":..,"payload":..}``
        record (or ``{"payload":..}``) yields its payload; anything else is a bare payload."""
        if raw.startswith(PREFIX):
            fast = self._schemas.split(raw, slot)
            if fast is not None:
                return fast
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(bad_kind, f"not JSON: {exc}") from None
        if (
            isinstance(obj, dict)
            and "payload" in obj
            and len(obj) <= 2
            and (len(obj) == 1 or "schema" in obj)
        ):
            return self._compiled(obj.get("schema")), obj["payload"]
        return None, obj

    def _compiled(self, schema: Any) -> _Compiled | None:
        if schema is None:
            return _compile_schema(None)
        k = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        try:
            return self._slow[k]
        except KeyError:
            if len(self._slow) >= self._slow_size:
                self._slow.clear()
            found = self._slow[k] = _compile_schema(schema)
            return found

    # -- keys ---------------------------------------------------------------------------------

    def decode_key(self, key: bytes | None) -> dict[str, Any] | None:
        """Decode a record key to ``{column: value}`` (temporal and numeric key fields converted
        when the key has a schema; ``__dbz__physicalTableIdentifier`` kept). ``None`` for a null
        key. Raises DecodeError("bad_key") for anything else."""
        if key is None:
            return None
        try:
            compiled, payload = self._parse(key, "bad_key", 1)
        except DecodeError as exc:
            raise DecodeError("bad_key", exc.message) from None
        if payload is None:
            return None
        if not isinstance(payload, dict):
            raise DecodeError("bad_key", f"key payload is {type(payload).__name__}, not an object")
        if compiled is not None:
            if compiled.row is None:
                raise DecodeError("bad_key", f"key schema unusable: {compiled.error}")
            try:
                if compiled.row.convs:
                    compiled.row.apply(payload)
            except DecodeError as exc:
                raise DecodeError("bad_key", exc.message) from None
        return payload

    # -- values -------------------------------------------------------------------------------

    def decode(
        self, key: bytes | None, value: bytes | None
    ) -> ChangeEvent | Tombstone | TransactionMarker:
        """Decode one Kafka record. Raises DecodeError (and nothing else) for undecodable input."""
        try:
            return self._decode(key, value)
        except DecodeError:
            raise
        except Exception as exc:  # a safety net: bad input must surface as a DecodeError
            raise DecodeError("malformed_event", f"{type(exc).__name__}: {exc}") from None

    def _decode(
        self, key: bytes | None, value: bytes | None
    ) -> ChangeEvent | Tombstone | TransactionMarker:
        if value is None:
            return Tombstone(self.decode_key(key))
        compiled, p = self._parse(value, "not_json", 0)
        if p is None:
            return Tombstone(self.decode_key(key))
        if not isinstance(p, dict):
            raise DecodeError("not_an_envelope", f"payload is {type(p).__name__}, not an object")
        op = p.get("op")
        if op is not None:
            return self._envelope(key, compiled, p, op)
        check_not_schema_change(compiled, p)
        if "__op" in p or "__deleted" in p:
            return self._unwrapped(key, compiled, p)
        if "status" in p and "id" in p:
            return tx_marker(p)
        raise DecodeError("not_an_envelope", "no op, not a transaction marker, no __op/__deleted")

    def _envelope(
        self, key: bytes | None, compiled: _Compiled | None, p: dict[str, Any], op: Any
    ) -> ChangeEvent:
        src = source_block(p, op)
        schema_name, position = source_position(src)
        if position is None:
            position = self._missing_position()
        ts = envelope_ts_us(src, p)
        before, after = envelope_rows(p, op)
        column_types, unavailable, native = (
            (None, EMPTY, True)
            if before is None and after is None
            else convert_envelope_rows(compiled, before, after)
        )
        message = logical_message(p.get("message")) if op == "m" else None
        k = self.decode_key(key)
        ident = row_identity(op, k, before, after, message)
        table = src.get("table") or None
        schema_name = schema_name or None
        return EventShell(
            op,
            schema_name,
            table,
            k,
            before,
            after,
            unavailable,
            position,
            ts,
            envelope_snapshot(op, src),
            (fast_change_id if native and k is None else change_id_for)(
                schema_name, table, op, position, ident
            ),
            column_types,
            transaction_id(p),
            message,
        ).freeze()

    def _unwrapped(
        self, key: bytes | None, compiled: _Compiled | None, p: dict[str, Any]
    ) -> ChangeEvent:
        meta = UnwrappedMeta(p)
        op = meta.op()
        position = meta.position()
        if position is None:
            position = self._missing_position()
        ts = meta.ts_us()
        schema_name = meta.schema_name()
        table = meta("table")
        row = {k: v for k, v in p.items() if not k.startswith("__")}
        column_types, unavailable, native = convert_unwrapped_row(compiled, row)
        before, after = (row, None) if op == "d" else (None, row)
        k = self.decode_key(key)
        return EventShell(
            op,
            schema_name,
            table,
            k,
            before,
            after,
            frozenset(unavailable) if unavailable and after is not None else EMPTY,
            position,
            ts,
            _is_snapshot(op, meta("snapshot")),
            (fast_change_id if native and k is None else change_id_for)(
                schema_name, table, op, position, k if k is not None else row
            ),
            column_types,
            None,
            None,
        ).freeze()

    def _missing_position(self) -> int:
        if self._allow_missing_position:
            return 0
        raise DecodeError("missing_position", "event carries no LSN / binlog position")
