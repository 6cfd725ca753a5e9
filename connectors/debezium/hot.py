"""The decoder's hot-path tricks, in one place. Each was measured (``bench/decode_bench.py`` and
an interleaved A/B against the previous decoder; figures in the commit messages) and each has a
plain equivalent that it must match exactly; tests/connectors/test_debezium_hot.py compares them.

1. :class:`SchemaCache` -- skip the schema part of a JsonConverter record without parsing it.
   ``{"schema":S,"payload":P}`` carries the same S (~3-4 KB) in every event of a table version.
   The cache keys compiled schemas by the exact bytes ``{"schema":S,"payload":``; a record that
   starts with cached bytes (one ``memcmp``) needs only ``orjson.loads(P)``. The last hit per slot
   (values, keys) is tried first, so one partition carrying one table version costs one compare.
   Plain equivalent: ``orjson.loads`` of the whole record and ``_compile_schema`` of its schema.
2. :class:`EventShell` -- build the frozen, slotted :class:`ChangeEvent` as a mutable twin with
   the same slots, then switch its ``__class__``: the dataclass ``__init__`` goes through
   ``object.__setattr__`` once per field. ``EventShell(...).freeze()`` costs ~0.7 µs, the
   dataclass ~2.9 µs, the slot-descriptor ``__set__`` calls used before ~1.4 µs. Plain
   equivalent: ``ChangeEvent(...)``.
3. :func:`row_applier` -- per table version, generate one straight-line function that strips
   TOAST placeholders and converts the columns that need it, column by column (no loop, no tuple
   unpacking, one ``row.get`` per column, constants bound as default arguments). Plain equivalent:
   ``_RowConverter.apply_row``; -0.25 µs of ~2 µs per 10-column row.
4. :func:`fast_change_id` -- the change id's canonical JSON with orjson's own datetime/date
   rendering instead of a Python callback per value. orjson writes naive and UTC ``datetime`` and
   ``date`` exactly as ``isoformat()`` (tested), but ``time`` differently (the pinned orjson drops
   the leading zeros of the microseconds: ``.029724`` -> ``.29724``), so it is used only when
   the schema says no ``time`` can occur (``_RowConverter.native_json``) or there is no schema
   (plain JSON values). Keys keep
   :func:`.positions.change_id_for` (small, no gain). Saves ~2 µs per keyless event.
5. :func:`strip_placeholders` -- schemaless rows: three ``in`` tests over ``row.values()`` (C
   loops) rule out the common case of no TOAST placeholder before any per-column Python work.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .events import ChangeEvent, DecodeError
from .logical import _TOAST, _TOAST_B64, _Conv
from .positions import _canon_default

if TYPE_CHECKING:
    from .schema import _Compiled

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

    __slots__ = ("size", "compile", "lru", "by_len", "last", "hits", "misses")

    def __init__(self, size: int, compile: Callable[[Any], _Compiled | None]) -> None:
        self.size = size
        self.compile = compile
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
        if last is not None and raw.startswith(last[0]):  # the common case, inlined
            try:
                payload = orjson.loads(memoryview(raw)[len(last[0]) : -1])
            except orjson.JSONDecodeError:
                return None
            self.hits += 1
            return last[1], payload
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
        compiled = self.compile(schema)
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


class EventShell:
    """Same slots, same order, same base as :class:`ChangeEvent`, but mutable: a plain
    ``__init__`` stores the 14 fields with the interpreter's slot stores, then the instance
    becomes a ``ChangeEvent`` by ``__class__`` assignment (allowed: identical layouts). The frozen
    dataclass ``__init__`` calls ``object.__setattr__`` once per field instead."""

    __slots__ = ChangeEvent.__slots__

    def __init__(
        self,
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
    ) -> None:
        self.op = op
        self.source_schema = source_schema
        self.source_table = source_table
        self.key = key
        self.before = before
        self.after = after
        self.unavailable = unavailable
        self.position = position
        self.ts_us = ts_us
        self.snapshot = snapshot
        self.change_id = change_id
        self.column_types = column_types
        self.transaction_id = transaction_id
        self.message = message

    def freeze(self) -> ChangeEvent:
        """This very object, now a ``ChangeEvent`` (frozen from here on)."""
        ev: Any = self
        ev.__class__ = ChangeEvent
        return ev  # type: ignore[no-any-return]


# A field added to ChangeEvent must be added to the shell too; fail at import, not at run time.
_init = EventShell.__init__.__code__
if _init.co_varnames[1 : _init.co_argcount] != ChangeEvent.__slots__:
    raise RuntimeError("ChangeEvent's fields changed: update EventShell")


# --------------------------------------------------------------------------------------------
# 3. Generated straight-line row converters

RowApplier = Callable[[dict[str, Any]], "set[str] | None"]


def row_applier(
    convs: tuple[tuple[str, _Conv], ...],
    toastable: tuple[str, ...],
    column_types: Mapping[str, str],
) -> RowApplier:
    """Generate ``apply_row`` for one struct: TOAST placeholders out (returned as a set, or None),
    then each converted column in place; a failing converter raises
    ``DecodeError("bad_logical_value")`` naming the column, exactly as the plain loop does.

    Column names enter the generated code only through ``repr()`` (a string literal) and the
    converters only as default arguments, so no schema text is ever executed as code."""
    conv_index = {name: i for i, (name, _fn) in enumerate(convs)}
    toast = set(toastable)
    order = [n for n in column_types if n in toast or n in conv_index]
    order += [n for n in (*toastable, *conv_index) if n not in column_types]
    lines = ["def apply_row(row, _T=_T, _TB=_TB, _list=list, _bad=_bad, _DE=_DE, _ct=_ct"]
    lines[0] += "".join(f", _c{i}=_c{i}" for i in range(len(convs))) + "):"
    lines += ["    gone = None", "    get = row.get", "    name = ''", "    try:"]
    for name in order:
        n = repr(name)
        lines.append(f"        v = get({n})")
        # One column at a time: a placeholder is removed (and so not converted), any other
        # value converted. Columns are independent, so this equals "strip all, then convert".
        if name in toast:
            lines += [
                "        if v is not None and (v == _T or v == _TB or"
                " (v.__class__ is _list and len(v) == 1 and v[0] == _T)):",
                f"            del row[{n}]",
                f"            gone = {{{n}}} if gone is None else gone | {{{n}}}",
            ]
            if name in conv_index:
                lines.append("            v = None")
        if name in conv_index:
            lines += [
                "        if v is not None:",
                f"            name = {n}",
                f"            row[{n}] = _c{conv_index[name]}(v)",
            ]
    if not order:
        lines.append("        pass")
    lines += [
        "    except _DE:",
        "        raise",
        "    except Exception as exc:",
        "        raise _bad(_ct, name, exc) from None",
    ]
    lines.append("    return gone")
    namespace: dict[str, Any] = {
        "_T": _TOAST,
        "_TB": _TOAST_B64,
        "_bad": bad_value,
        "_DE": DecodeError,
        "_ct": column_types,
    }
    namespace.update({f"_c{i}": fn for i, (_name, fn) in enumerate(convs)})
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from repr()'d names only
    fn: RowApplier = namespace["apply_row"]
    return fn


def bad_value(column_types: Mapping[str, str], name: str, exc: Exception) -> DecodeError:
    """The DecodeError of a value that does not fit its column's logical type."""
    return DecodeError(
        "bad_logical_value",
        f"column {name!r} ({column_types.get(name)}): {type(exc).__name__}: {exc}",
    )


# --------------------------------------------------------------------------------------------
# 4. Change ids with orjson's own datetime rendering

_NATIVE = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_blake2b = hashlib.blake2b


def fast_change_id(
    schema: str | None, table: str | None, op: str, position: int, ident: Any
) -> bytes:
    """``change_id_for`` for an identity that holds no ``datetime.time`` (the caller knows that
    from the schema: ``_RowConverter.native_json``, or no schema at all). orjson renders naive and
    UTC ``datetime``/``date`` values exactly as ``isoformat()`` does (tested), without calling
    back into Python; it renders ``time`` microseconds differently, hence the condition."""
    head = f"{schema or ''}\x1f{table or ''}\x1f{op}\x1f{position}\x1f".encode()
    body = orjson.dumps(ident, default=_canon_default, option=_NATIVE)
    return _blake2b(head + body, digest_size=16).digest()


# --------------------------------------------------------------------------------------------
# 5. TOAST placeholders of schemaless rows

_TOAST_LIST = [_TOAST]


def is_placeholder(v: Any) -> bool:
    if v.__class__ is str:
        return v == _TOAST or v == _TOAST_B64
    return v.__class__ is list and len(v) == 1 and v[0] == _TOAST


def strip_placeholders(row: dict[str, Any]) -> set[str] | None:
    """Remove placeholder values from ``row``; return their columns (None when there are none)."""
    values = row.values()
    if not (_TOAST in values or _TOAST_B64 in values or _TOAST_LIST in values):
        return None
    gone = [k for k, v in row.items() if v is not None and is_placeholder(v)]
    for k in gone:
        del row[k]
    return set(gone)
