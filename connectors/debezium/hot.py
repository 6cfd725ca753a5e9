"""The decoder's hot-path tricks, in one place. Each is measured by ``bench/decode_bench.py``;
each has a plain equivalent that it must match exactly (the tests compare the two).

1. :class:`SchemaCache` -- skip the schema part of a JsonConverter record without parsing it.
   ``{"schema":S,"payload":P}`` carries the same S (~3-4 KB) in every event of a table version.
   The cache keys compiled schemas by the exact bytes ``{"schema":S,"payload":``; a record that
   starts with cached bytes (one ``memcmp``) needs only ``orjson.loads(P)``. The last hit per slot
   (values, keys) is tried first, so one partition carrying one table version costs one compare.
2. :func:`make_event` -- build the frozen, slotted :class:`ChangeEvent` through the slot
   descriptors' ``__set__``: the dataclass ``__init__`` goes through ``object.__setattr__`` once
   per field (~2 µs per event).
3. :func:`row_applier` -- per table version, generate one straight-line Python function that
   strips TOAST placeholders and converts the columns that need it (no loop, no tuple unpacking,
   constants bound as default arguments). On any error it re-runs the plain loop, which names the
   column in the ``DecodeError``.
4. :func:`fast_change_id` -- the change id's canonical JSON with orjson's native datetime/date
   rendering (identical to ``isoformat()`` for the naive and UTC values the converters produce);
   anything orjson cannot render identically (a time with a zone, a non-UTC offset, a subclass)
   falls back to :func:`.positions.change_id_for`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

from .events import ChangeEvent
from .schema import _compile_schema, _Compiled

# --------------------------------------------------------------------------------------------
# 1. Schema cache keyed by the schema's bytes

PREFIX = b'{"schema":'
_SEP = b',"payload":'
_SEP_LEN = len(_SEP)
_PREFIX_LEN = len(PREFIX)


class SchemaCache:
    """A bounded LRU of compiled schemas keyed by the record's exact ``{"schema":S,"payload":``
    bytes. ``split`` returns (compiled schema, parsed payload) or None when the fast path does not
    apply (then the caller parses the whole record)."""

    __slots__ = ("size", "lru", "by_len", "last", "hits", "misses")

    def __init__(self, size: int) -> None:
        self.size = size
        self.lru: OrderedDict[bytes, _Compiled | None] = OrderedDict()
        self.by_len: dict[int, list[bytes]] = {}
        # The most recent (prefix, compiled) per slot (0: values, 1: keys).
        self.last: list[tuple[bytes, _Compiled | None] | None] = [None, None]
        self.hits = 0
        self.misses = 0

    def split(self, raw: bytes, slot: int) -> tuple[_Compiled | None, Any] | None:
        """A hit needs the record to start with exactly the cached ``{"schema":S,"payload":``
        bytes, where S was verified to be one complete JSON value when it was cached; then the
        rest up to the final ``}`` is the payload, and orjson validates it."""
        if raw[-1] != 0x7D:  # '}'
            return None
        last = self.last[slot]
        if last is not None and raw.startswith(last[0]):
            return self._payload(raw, len(last[0]), last[1])
        idx = raw.find(_SEP, _PREFIX_LEN)
        if idx < 0:
            return None
        end = idx + _SEP_LEN
        for prefix in self.by_len.get(end, ()):
            if raw.startswith(prefix):
                compiled = self.lru[prefix]
                self.lru.move_to_end(prefix)
                self.last[slot] = (prefix, compiled)
                return self._payload(raw, end, compiled)
        return self._miss(raw, idx, end, slot)

    def _payload(self, raw: bytes, end: int, compiled: _Compiled | None) -> tuple[Any, Any] | None:
        try:
            payload = orjson.loads(memoryview(raw)[end:-1])
        except orjson.JSONDecodeError:
            return None
        self.hits += 1
        return compiled, payload

    def _miss(self, raw: bytes, idx: int, end: int, slot: int) -> tuple[Any, Any] | None:
        # The schema slice must be one complete JSON value; if the first ',"payload":' was not the
        # top-level one, the slice is unbalanced and fails here (then the slow path decides).
        try:
            schema = orjson.loads(memoryview(raw)[_PREFIX_LEN:idx])
            payload = orjson.loads(memoryview(raw)[end:-1])
        except orjson.JSONDecodeError:
            return None
        compiled = _compile_schema(schema)
        self.misses += 1
        prefix = raw[:end]
        self.last[slot] = (prefix, compiled)
        self.lru[prefix] = compiled
        self.by_len.setdefault(end, []).append(prefix)
        if len(self.lru) > self.size:
            old, _ = self.lru.popitem(last=False)
            lst = self.by_len[len(old)]
            lst.remove(old)
            if not lst:
                del self.by_len[len(old)]
        return compiled, payload


# --------------------------------------------------------------------------------------------
# 2. Event construction without the dataclass __init__

_S = {name: ChangeEvent.__dict__[name].__set__ for name in ChangeEvent.__slots__}
_s_op, _s_schema, _s_table, _s_key = _S["op"], _S["source_schema"], _S["source_table"], _S["key"]
_s_before, _s_after, _s_unav, _s_pos = _S["before"], _S["after"], _S["unavailable"], _S["position"]
_s_ts, _s_snap, _s_id, _s_types = _S["ts_us"], _S["snapshot"], _S["change_id"], _S["column_types"]
_s_tx, _s_msg = _S["transaction_id"], _S["message"]
_new = object.__new__


def make_event(
    op: str,
    source_schema: str | None,
    source_table: str | None,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    unavailable: frozenset[str],
    position: int,
    ts_us: int,
    snapshot: bool,
    change_id: bytes,
    column_types: Mapping[str, str] | None,
    transaction_id: str | None,
    message: dict[str, Any] | None,
) -> ChangeEvent:
    """Same result as ``ChangeEvent(...)``, without the frozen dataclass ``__init__``."""
    ev: ChangeEvent = _new(ChangeEvent)
    _s_op(ev, op)
    _s_schema(ev, source_schema)
    _s_table(ev, source_table)
    _s_key(ev, key)
    _s_before(ev, before)
    _s_after(ev, after)
    _s_unav(ev, unavailable)
    _s_pos(ev, position)
    _s_ts(ev, ts_us)
    _s_snap(ev, snapshot)
    _s_id(ev, change_id)
    _s_types(ev, column_types)
    _s_tx(ev, transaction_id)
    _s_msg(ev, message)
    return ev
