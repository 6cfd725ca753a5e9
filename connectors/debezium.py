"""Decode Debezium change events (Kafka Connect ``JsonConverter``) into typed Python values.

Contract
--------
``DebeziumDecoder.decode(key, value)`` turns one Kafka record into exactly one of

* :class:`ChangeEvent` -- a row change (``op`` ``c``/``u``/``d``/``r``), a truncate (``t``) or a
  PostgreSQL logical-decoding message (``m``);
* :class:`Tombstone` -- a record with a null value (``None``, ``b"null"``, or the pre-KAFKA-3832
  rendering ``{"schema":null,"payload":null}``);
* :class:`TransactionMarker` -- a ``BEGIN``/``END`` record of the transaction topic;

or raises :class:`DecodeError`. For bad input it never raises anything else: the caller routes a
``DecodeError`` to the dead-letter path with ``kind`` as the reason code.

Accepted envelope forms (detected by content, never by key order):

* ``{"schema": {...}, "payload": {...}}`` (schemas.enable=true, the JsonConverter default);
* ``{"schema": null, "payload": {...}}`` and ``{"payload": {...}}``;
* the bare payload (schemas.enable=false);
* ExtractNewRecordState ("unwrap") rows carrying ``__op`` / ``__deleted`` and the other
  ``add.fields`` (``__lsn``, ``__table``, ``__db``, ``__source_ts_ms`` ...). Every ``__``-prefixed
  field is stripped from the row. ``__deleted == "true"`` becomes ``op='d'`` with ``before`` = the
  row. Without ``__op`` the op is ``'u'`` (an upsert).

Values are converted by the field's logical schema ``name`` when the schema is present (Decimal,
VariableScaleDecimal, Date, Time/MicroTime/NanoTime, Timestamp/MicroTimestamp/NanoTimestamp as
*naive* wall-clock datetimes, ZonedTimestamp/ZonedTime as UTC-aware values, MicroDuration as
``timedelta``, geometry as ``{"wkb": bytes, "srid": int | None}`` (a Point also keeps ``x``/``y``),
``bytes`` as ``bytes``, arrays item by item, other structs as dicts; Json, Uuid, Enum, EnumSet, Xml,
Year, Interval strings are kept as they are). Without a schema, JSON values are kept as they are.
PostgreSQL ``'infinity'`` / ``'-infinity'`` of ``timestamp``/``timestamptz``/``date`` become
:class:`InfiniteTimestamp`/:class:`InfiniteDate` sentinels (equal to ``datetime.max``/``min`` and
``date.max``/``min``) that the target writes back as the words; Debezium's overflowed day counts
for ``date`` infinities are recognised. ``interval.handling.mode=string`` values (ISO 8601) and
``decimal.handling.mode=string`` values are kept as text, which PostgreSQL reads back exactly
(the target maps ``NAN``/``POSITIVE_INFINITY``/``NEGATIVE_INFINITY`` by column type, see
stream/tables.py value adapters and docs/fidelity.md).

TOAST: a column whose value is the unavailable-value placeholder
(``"__debezium_unavailable_value"``, ``["__debezium_unavailable_value"]`` or the base64 of the
placeholder for bytes) is removed from ``after`` and its name is put into
``ChangeEvent.unavailable``; the apply engine must leave that column untouched.
Placeholders in ``before`` are removed too (not reported).

Position (``ChangeEvent.position``, a non-negative int, larger is newer):

* PostgreSQL: ``source.sequence`` is ``'["<lastCommitLsn>","<lsn>"]'`` and the position is
  ``(int(seq[0] or 0) << 64) | int(seq[1])``. Without a sequence it is ``source.lsn`` (that is,
  ``0 << 64 | lsn``), so a stream mixing old (< 1.3) and new connector versions is not comparable
  across the switch. Unwrapped rows use ``__sequence``/``__source_sequence`` else ``__lsn``.
* MySQL/MariaDB: ``(binlog file number << 64) | (pos << 24) | row`` from ``source.file``
  (``mysql-bin.000003`` -> 3), ``source.pos`` (< 2**40) and ``source.row`` (< 2**24). Monotonic
  while the binlog basename and server stay the same; binlog coordinates of different servers
  (failover) are not comparable.
* All rows of one snapshot share one position; order them by Kafka offset.

``change_id`` is ``blake2b(digest_size=16)`` over schema, table, op, position and the canonical
JSON (sorted keys) of the Kafka key, or when there is no key of ``after`` (else ``before``, else the
logical message). It depends only on the record, so a redelivered or replayed change has the same
id.

DecodeError kinds (stable reason codes)
---------------------------------------
``not_json``             the value bytes are not JSON (bad UTF-8, truncated, empty).
``not_an_envelope``      valid JSON, but no recognised Debezium shape (no op, not a transaction
                         marker, not an unwrapped row, ``source`` missing ...).
``unknown_op``           ``op`` is not one of ``c u d r t m``.
``bad_row``              ``before``/``after`` is not an object, or ``after`` is missing for
                         ``c``/``u``/``r``.
``bad_schema``           the ``schema`` part is malformed or does not describe the payload (for
                         example a schema without ``before``/``after`` fields for an envelope).
``bad_logical_value``    a value does not fit its logical type (bad base64, out-of-range time...).
``bad_key``              the Kafka key is not JSON, or its payload is not an object.
``missing_key``          a row change that cannot be tied to a row: no Kafka key and neither
                         ``after`` nor ``before``.
``invalid_position``     the source position is bogus (negative or over-range LSN, unparseable
                         ``sequence``, binlog file without a number).
``missing_position``     no position at all (for example an unwrapped row without ``__lsn``);
                         configure ``add.fields=lsn`` or pass ``allow_missing_position=True``.
``missing_timestamp``    no ``ts_us``/``ts_ms`` anywhere in the event.
``unsupported_connector`` a connector other than PostgreSQL or MySQL/MariaDB.
``schema_change_event``  a MySQL schema-change or schema-history record; those belong to other
                         topics and are not row changes.
``malformed_event``      any other structural surprise (a field of the wrong JSON type).
"""

from __future__ import annotations

import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from types import MappingProxyType
from typing import Any

import orjson

__all__ = [
    "KINDS",
    "InfiniteDate",
    "InfiniteTimestamp",
    "ChangeEvent",
    "DebeziumDecoder",
    "DecodeError",
    "Tombstone",
    "TransactionMarker",
]

KINDS: frozenset[str] = frozenset(
    {
        "not_json",
        "not_an_envelope",
        "unknown_op",
        "bad_row",
        "bad_schema",
        "bad_logical_value",
        "bad_key",
        "missing_key",
        "invalid_position",
        "missing_position",
        "missing_timestamp",
        "unsupported_connector",
        "schema_change_event",
        "malformed_event",
    }
)


class DecodeError(Exception):
    """A record that cannot be decoded. ``kind`` is one of :data:`KINDS` (a stable reason code for
    dead letters and metrics); ``message`` says what was wrong in words a data engineer can use."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One decoded change. See the module docstring for position, change_id and TOAST rules."""

    op: str
    source_schema: str | None
    source_table: str | None
    key: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    unavailable: frozenset[str]
    position: int
    ts_us: int
    snapshot: bool
    change_id: bytes
    column_types: Mapping[str, str] | None
    # Additions beyond the agreed API (defaults keep positional construction compatible):
    transaction_id: str | None = None  # payload.transaction.id when transaction metadata is on
    message: dict[str, Any] | None = None  # op 'm': {"prefix": str, "content": bytes | None}


_S = {name: ChangeEvent.__dict__[name].__set__ for name in ChangeEvent.__slots__}
_s_op, _s_schema, _s_table, _s_key = _S["op"], _S["source_schema"], _S["source_table"], _S["key"]
_s_before, _s_after, _s_unav, _s_pos = _S["before"], _S["after"], _S["unavailable"], _S["position"]
_s_ts, _s_snap, _s_id, _s_types = _S["ts_us"], _S["snapshot"], _S["change_id"], _S["column_types"]
_s_tx, _s_msg = _S["transaction_id"], _S["message"]
_new = object.__new__


def _make_event(
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
    """Same result as ``ChangeEvent(...)``; the frozen dataclass ``__init__`` costs ~2 µs per
    event (one ``object.__setattr__`` lookup per field), which matters on the hot path."""
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


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A Kafka record with a null value: the key's row is gone (follows a delete)."""

    key: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class TransactionMarker:
    """A BEGIN or END record of the ``<prefix>.transaction`` topic.

    ``id`` is Debezium's transaction id as given (PostgreSQL 2.x: ``"<txId>:<lsn>"``, which differs
    between BEGIN, END and the events; correlate on :attr:`txid_prefix`)."""

    status: str
    id: str
    ts_us: int | None = None
    event_count: int | None = None
    data_collections: tuple[tuple[str, int], ...] | None = None

    @property
    def txid_prefix(self) -> str:
        return self.id.split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# Constants

_OPS = frozenset({"c", "u", "d", "r", "t", "m"})
_ROW_OPS = frozenset({"c", "u", "d", "r"})
_TOAST = "__debezium_unavailable_value"
_TOAST_B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="
_NOT_SNAPSHOT = frozenset({"false", ""})
_MAX_LSN = 1 << 64
_EPOCH_NAIVE = datetime(1970, 1, 1)  # noqa: DTZ001 - wall clock of `timestamp without time zone`
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH_DATE.toordinal()
_fromordinal = date.fromordinal
_td = timedelta
_b64 = binascii.a2b_base64
_EMPTY: frozenset[str] = frozenset()
_MAX_PLAIN_US = 250_000_000_000_000_000  # within ±7900 years of 1970: no infinity check needed
_fromisoformat = datetime.fromisoformat


class InfiniteTimestamp(datetime):
    """PostgreSQL ``timestamp[tz] 'infinity'``/``'-infinity'``: compares as the largest/smallest
    datetime Python has, and is written back as the word (``pg_text``), so it arrives exactly."""

    __slots__ = ()

    @property
    def pg_text(self) -> str:
        return "infinity" if self.year == 9999 else "-infinity"


class InfiniteDate(date):
    """PostgreSQL ``date 'infinity'``/``'-infinity'`` (see :class:`InfiniteTimestamp`)."""

    __slots__ = ()

    @property
    def pg_text(self) -> str:
        return "infinity" if self.year == 9999 else "-infinity"


_NAIVE_MAX = InfiniteTimestamp(9999, 12, 31, 23, 59, 59, 999999)  # 'infinity'
_NAIVE_MIN = InfiniteTimestamp(1, 1, 1)  # '-infinity'
_AWARE_MAX = InfiniteTimestamp(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_AWARE_MIN = InfiniteTimestamp(1, 1, 1, tzinfo=UTC)
# PostgreSQL 'infinity'/'-infinity' as the Debezium PG connector emits them (ms and µs forms).
_PG_POS_INF_MS = 9223372036825200000
_PG_NEG_INF_MS = -9223372036832400000
# io.debezium.time.Timestamp (timestamp(0..3)) carries the same instants in milliseconds.
_PG_POS_INF_TS_MS = 9223372036825200
_PG_NEG_INF_TS_MS = -9223372036832400
# io.debezium.time.Date of 'infinity'/'-infinity': Debezium 3.6 overflows the day count to these
# int32 values (snapshot: JDBC, streaming: pgoutput); all lie far outside PostgreSQL's date range.
_DATE_INFINITY = {
    -622191234: InfiniteDate(9999, 12, 31),  # snapshot 'infinity'
    -625821272: InfiniteDate(1, 1, 1),  # snapshot '-infinity'
    -2147472692: InfiniteDate(9999, 12, 31),  # streaming 'infinity'
    -2147472691: InfiniteDate(1, 1, 1),  # streaming '-infinity'
}
_MIN_DAYS = date(1, 1, 1).toordinal() - date(1970, 1, 1).toordinal()
_MAX_DAYS = date(9999, 12, 31).toordinal() - date(1970, 1, 1).toordinal()
_DEC_CTX = Context(prec=1000)  # scaleb must never round a numeric(1000, s)
_PREFIX = b'{"schema":'
_SEP = b',"payload":'
_SEP_LEN = len(_SEP)
_blake2b = hashlib.blake2b
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME

_Conv = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# Logical type converters (module level so tests can call them directly)


def decimal_from_bytes(v: Any, scale: int) -> Decimal:
    """Kafka Connect Decimal: base64 of a big-endian two's-complement unscaled integer."""
    if v.__class__ is str:
        unscaled = int.from_bytes(_b64(v, strict_mode=True), "big", signed=True)
        return Decimal(unscaled).scaleb(-scale, _DEC_CTX)
    if isinstance(v, bool):
        raise TypeError("boolean is not a decimal")
    if isinstance(v, int | float):  # double handling mode
        return Decimal(str(v))
    raise TypeError(f"expected base64 string, got {type(v).__name__}")


def decimal_from_text(v: Any) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise TypeError(f"expected number or string, got {type(v).__name__}")
    d = Decimal(str(v))
    if not d.is_finite() and not isinstance(v, str):
        raise ValueError("non-finite decimal")
    return d


def variable_scale_decimal(v: Any) -> Decimal:
    """io.debezium.data.VariableScaleDecimal ``{"scale": s, "value": base64}``."""
    if isinstance(v, dict):
        return decimal_from_bytes(v["value"], int(v["scale"]))
    return decimal_from_text(v)


def date_from_days(v: int) -> date:
    if v.__class__ is not int:
        raise TypeError(f"expected integer days, got {type(v).__name__}")
    if _MIN_DAYS <= v <= _MAX_DAYS:
        return _fromordinal(_EPOCH_ORDINAL + v)
    inf = _DATE_INFINITY.get(v)
    if inf is None:
        raise ValueError(f"date out of Python's range: {v} days from 1970-01-01")
    return inf


def _time_from_us(us: int) -> time:
    if us.__class__ is not int or not 0 <= us < 86_400_000_000:
        raise ValueError(f"time of day out of range: {us} µs")
    s, us = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return time(h, m, s, us)


def time_from_ms(v: int) -> time:
    return _time_from_us(v * 1000)


def time_from_us(v: int) -> time:
    return _time_from_us(v)


def time_from_ns(v: int) -> time:
    return _time_from_us(v // 1000 if v.__class__ is int else v)


def timestamp_from_ms(v: int) -> datetime:
    if v.__class__ is not int:
        raise TypeError(f"expected integer, got {type(v).__name__}")
    if v >= _PG_POS_INF_TS_MS:
        return _NAIVE_MAX
    if v <= _PG_NEG_INF_TS_MS:
        return _NAIVE_MIN
    return _EPOCH_NAIVE + _td(0, 0, 0, v)


def timestamp_from_us(v: int) -> datetime:
    if v.__class__ is int and -_MAX_PLAIN_US < v < _MAX_PLAIN_US:
        return _EPOCH_NAIVE + _td(0, 0, v)
    if v.__class__ is not int:
        raise TypeError(f"expected integer, got {type(v).__name__}")
    if v >= _PG_POS_INF_MS:
        return _NAIVE_MAX
    if v <= _PG_NEG_INF_MS:
        return _NAIVE_MIN
    return _EPOCH_NAIVE + _td(0, 0, v)


def timestamp_from_ns(v: int) -> datetime:
    if v.__class__ is not int:
        raise TypeError(f"expected integer, got {type(v).__name__}")
    return _EPOCH_NAIVE + _td(0, 0, v // 1000)


def zoned_timestamp(v: str) -> datetime:
    """ISO-8601 string (Debezium normalises to ``Z``) -> aware datetime in UTC."""
    if v.__class__ is str and len(v) > 10:
        try:
            dt = _fromisoformat(v)
        except ValueError:
            pass
        else:
            if dt.tzinfo is UTC:
                return dt
    if v.__class__ is not str:
        raise TypeError(f"expected string, got {type(v).__name__}")
    if v == "infinity":
        return _AWARE_MAX
    if v == "-infinity":
        return _AWARE_MIN
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        raise ValueError(f"ZonedTimestamp without offset: {v!r}")
    if dt.utcoffset():
        dt = dt.astimezone(UTC)
    return dt


def zoned_time(v: str) -> time:
    if v.__class__ is not str:
        raise TypeError(f"expected string, got {type(v).__name__}")
    t = time.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError(f"ZonedTime without offset: {v!r}")
    return t


def micro_duration(v: int) -> timedelta:
    if v.__class__ is not int:
        raise TypeError(f"expected integer, got {type(v).__name__}")
    return _td(0, 0, v)


def bytes_from_b64(v: Any) -> bytes:
    if v.__class__ is not str:
        raise TypeError(f"expected base64 string, got {type(v).__name__}")
    return _b64(v, strict_mode=True)


def geometry(v: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"wkb": bytes_from_b64(v["wkb"]), "srid": v.get("srid")}
    if "x" in v:
        out["x"] = v["x"]
        out["y"] = v.get("y")
    return out


_BY_NAME: dict[str, _Conv] = {
    "io.debezium.data.VariableScaleDecimal": variable_scale_decimal,
    "io.debezium.time.Date": date_from_days,
    "io.debezium.time.Time": time_from_ms,
    "io.debezium.time.MicroTime": time_from_us,
    "io.debezium.time.NanoTime": time_from_ns,
    "io.debezium.time.Timestamp": timestamp_from_ms,
    "io.debezium.time.MicroTimestamp": timestamp_from_us,
    "io.debezium.time.NanoTimestamp": timestamp_from_ns,
    "io.debezium.time.ZonedTimestamp": zoned_timestamp,
    "io.debezium.time.ZonedTime": zoned_time,
    "io.debezium.time.MicroDuration": micro_duration,
    "io.debezium.data.geometry.Geometry": geometry,
    "io.debezium.data.geometry.Geography": geometry,
    "io.debezium.data.geometry.Point": geometry,
    # Kafka Connect's own logical types (rare with Debezium, cheap to support).
    "org.apache.kafka.connect.data.Date": date_from_days,
    "org.apache.kafka.connect.data.Time": time_from_ms,
    "org.apache.kafka.connect.data.Timestamp": timestamp_from_ms,
}
# Logical names whose JSON value is already the Python value we want.
_IDENTITY_NAMES = frozenset(
    {
        "io.debezium.data.Json",
        "io.debezium.data.Uuid",
        "io.debezium.data.Enum",
        "io.debezium.data.EnumSet",
        "io.debezium.data.Xml",
        "io.debezium.data.Ltree",
        "io.debezium.time.Year",
        "io.debezium.time.Interval",
    }
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
            return lambda v: decimal_from_bytes(v, scale)
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
    """Per-table-version compiled conversion of one struct (a row, or a key)."""

    __slots__ = ("convs", "toastable", "column_types")

    def __init__(
        self,
        convs: tuple[tuple[str, _Conv], ...],
        toastable: tuple[str, ...],
        column_types: Mapping[str, str],
    ) -> None:
        self.convs = convs
        self.toastable = toastable
        self.column_types = column_types

    @classmethod
    def compile(cls, struct: Mapping[str, Any], *, skip_meta: bool = False) -> _RowConverter:
        fields = struct.get("fields")
        if not isinstance(fields, list):
            raise ValueError("struct schema without a fields list")
        convs: list[tuple[str, _Conv]] = []
        toastable: list[str] = []
        types: dict[str, str] = {}
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("field"), str):
                raise ValueError("struct field without a name")
            fname: str = f["field"]
            if skip_meta and fname.startswith("__"):
                continue
            types[fname] = _short_type(f)
            conv = _build_converter(f)
            if conv is not None:
                convs.append((fname, conv))
            if f.get("type") in _TOASTABLE_TYPES and f.get("name") not in _NEVER_TOASTED:
                toastable.append(fname)
        return cls(tuple(convs), tuple(toastable), MappingProxyType(types))

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


def _is_placeholder(v: Any) -> bool:
    if v.__class__ is str:
        return v == _TOAST or v == _TOAST_B64
    return v.__class__ is list and len(v) == 1 and v[0] == _TOAST


def _strip_placeholders(row: dict[str, Any]) -> set[str] | None:
    gone = [k for k, v in row.items() if v is not None and _is_placeholder(v)]
    if not gone:
        return None
    for k in gone:
        del row[k]
    return set(gone)


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


# --------------------------------------------------------------------------------------------
# Source positions and times


def _lsn(v: Any, what: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            raise DecodeError("invalid_position", f"{what} is not an integer: {v!r}") from None
    if v.__class__ is not int:
        raise DecodeError("invalid_position", f"{what} is not an integer: {v!r}")
    if not 0 <= v < _MAX_LSN:
        raise DecodeError("invalid_position", f"{what} out of range: {v}")
    return int(v)


def _pg_sequence(seq: Any) -> int:
    if seq.__class__ is str:
        # Fast path for the exact Debezium rendering '["123","456"]' / '[null,"456"]'.
        a, sep, b = seq[1:-1].partition(",")
        if (
            sep
            and seq[0] == "["
            and seq[-1] == "]"
            and b[:1] == '"'
            and b[-1:] == '"'
            and (a == "null" or (a[:1] == '"' and a[-1:] == '"'))
        ):
            try:
                hi = 0 if a == "null" else int(a[1:-1])
                lo = int(b[1:-1])
            except ValueError:
                raise DecodeError("invalid_position", f"sequence {seq!r}") from None
            if 0 <= hi < _MAX_LSN and 0 <= lo < _MAX_LSN:
                return (hi << 64) | lo
            raise DecodeError("invalid_position", f"sequence out of range: {seq!r}")
        try:
            seq = orjson.loads(seq)
        except orjson.JSONDecodeError:
            raise DecodeError("invalid_position", f"sequence is not JSON: {seq!r}") from None
    if not isinstance(seq, list) or len(seq) != 2:
        raise DecodeError("invalid_position", f"sequence is not a pair: {seq!r}")
    hi = 0 if seq[0] is None else _lsn(seq[0], "sequence[0]")
    if seq[1] is None:
        raise DecodeError("invalid_position", "sequence[1] (the event LSN) is null")
    return (hi << 64) | _lsn(seq[1], "sequence[1]")


def _pg_position(seq: Any, lsn: Any) -> int | None:
    if seq is not None:
        return _pg_sequence(seq)
    if lsn is not None:
        return _lsn(lsn, "lsn")
    return None


def _mysql_position(file: Any, pos: Any, row: Any) -> int | None:
    if file is None and pos is None:
        return None
    if not isinstance(file, str) or pos.__class__ is not int:
        raise DecodeError("invalid_position", f"binlog coordinates file={file!r} pos={pos!r}")
    suffix = file.rsplit(".", 1)[-1]
    if not suffix.isdigit():
        raise DecodeError("invalid_position", f"binlog file without a number: {file!r}")
    row = 0 if row is None else row
    if row.__class__ is not int or not 0 <= row < (1 << 24) or not 0 <= pos < (1 << 40):
        raise DecodeError("invalid_position", f"binlog pos/row out of range: {pos!r}/{row!r}")
    return (int(suffix) << 64) | (pos << 24) | row


def _ts_us(us: Any, ms: Any, fallback_ms: Any) -> int | None:
    if us.__class__ is int:
        return int(us)
    if ms.__class__ is int:
        return int(ms) * 1000
    if fallback_ms.__class__ is int:
        return int(fallback_ms) * 1000
    return None


def _is_snapshot(op: str, snap: Any) -> bool:
    if op == "r":
        return True
    if snap is None or snap is False:
        return False
    if snap is True:
        return True
    return isinstance(snap, str) and snap.lower() not in _NOT_SNAPSHOT


def _canon_default(o: Any) -> Any:
    if isinstance(o, datetime | date | time):
        return o.isoformat()
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, timedelta):
        return f"{o // timedelta(microseconds=1)}us"
    if isinstance(o, frozenset | set):
        return sorted(o)
    raise TypeError(f"cannot canonicalise {type(o).__name__}")


def change_id_for(
    schema: str | None, table: str | None, op: str, position: int, ident: Any
) -> bytes:
    """The deterministic 16-byte id of a change (see the module docstring)."""
    head = f"{schema or ''}\x1f{table or ''}\x1f{op}\x1f{position}\x1f".encode()
    body = orjson.dumps(ident, default=_canon_default, option=_SORTED)
    return _blake2b(head + body, digest_size=16).digest()


# --------------------------------------------------------------------------------------------
# The decoder


class DebeziumDecoder:
    """Decodes Kafka records of Debezium topics. Keeps a bounded LRU of compiled schemas keyed by
    the exact schema bytes, so the schema part of a JsonConverter envelope is parsed once per
    table version, and only the payload per event. Not thread-safe (one per consumer thread).

    ``allow_missing_position``: decode events without any source position with ``position=0``
    (older than everything) instead of raising ``missing_position``.
    """

    def __init__(self, *, cache_size: int = 1024, allow_missing_position: bool = False) -> None:
        self._cache_size = cache_size
        self._allow_missing_position = allow_missing_position
        self._lru: OrderedDict[bytes, _Compiled | None] = OrderedDict()
        self._by_len: dict[int, list[bytes]] = {}
        # The most recent (prefix, compiled) per slot (0: values, 1: keys). A partition mostly
        # carries one table version, so one memcmp usually finds the schema without a search.
        self._last: list[tuple[bytes, _Compiled | None] | None] = [None, None]
        self.cache_hits = 0
        self.cache_misses = 0

    # -- parsing ------------------------------------------------------------------------------

    def _split(self, raw: bytes, slot: int) -> tuple[_Compiled | None, Any, bool] | None:
        """Fast path: ``{"schema":S,"payload":P}`` as JsonConverter writes it. Returns
        (compiled schema, parsed payload, True), or None when the fast path does not apply.

        A hit needs the record to start with exactly the cached ``{"schema":S,"payload":`` bytes,
        where S was verified to be one complete JSON value when it was cached; then the rest up to
        the final ``}`` is the payload, and orjson validates it."""
        if raw[-1] != 0x7D:  # '}'
            return None
        last = self._last[slot]
        if last is not None and raw.startswith(last[0]):
            try:
                payload = orjson.loads(memoryview(raw)[len(last[0]) : -1])
            except orjson.JSONDecodeError:
                return None
            self.cache_hits += 1
            return last[1], payload, True
        idx = raw.find(_SEP, 10)
        if idx < 0:
            return None
        end = idx + _SEP_LEN
        bucket = self._by_len.get(end)
        if bucket is not None:
            for prefix in bucket:
                if raw.startswith(prefix):
                    compiled = self._lru[prefix]
                    self._lru.move_to_end(prefix)
                    try:
                        payload = orjson.loads(memoryview(raw)[end:-1])
                    except orjson.JSONDecodeError:
                        return None
                    self.cache_hits += 1
                    self._last[slot] = (prefix, compiled)
                    return compiled, payload, True
        # The schema slice must be one complete JSON value; if the first ',"payload":' was not the
        # top-level one, the slice is unbalanced and fails here (then the slow path decides).
        try:
            schema = orjson.loads(memoryview(raw)[10:idx])
            payload = orjson.loads(memoryview(raw)[end:-1])
        except orjson.JSONDecodeError:
            return None
        compiled = _compile_schema(schema)
        self.cache_misses += 1
        prefix = raw[:end]
        self._last[slot] = (prefix, compiled)
        self._lru[prefix] = compiled
        self._by_len.setdefault(end, []).append(prefix)
        if len(self._lru) > self._cache_size:
            old, _ = self._lru.popitem(last=False)
            lst = self._by_len[len(old)]
            lst.remove(old)
            if not lst:
                del self._by_len[len(old)]
        return compiled, payload, True

    def _parse(self, raw: bytes, bad_kind: str, slot: int) -> tuple[_Compiled | None, Any, bool]:
        if raw.startswith(_PREFIX):
            fast = self._split(raw, slot)
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
            return _compile_schema(obj.get("schema")), obj["payload"], True
        return None, obj, False

    # -- keys ---------------------------------------------------------------------------------

    def decode_key(self, key: bytes | None) -> dict[str, Any] | None:
        """Decode a record key to ``{column: value}`` (temporal and numeric key fields converted
        when the key has a schema; ``__dbz__physicalTableIdentifier`` kept). ``None`` for a null
        key. Raises DecodeError("bad_key") for anything else."""
        if key is None:
            return None
        try:
            compiled, payload, _ = self._parse(key, "bad_key", 1)
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
        compiled, p, _wrapped = self._parse(value, "not_json", 0)
        if p is None:
            return Tombstone(self.decode_key(key))
        if not isinstance(p, dict):
            raise DecodeError("not_an_envelope", f"payload is {type(p).__name__}, not an object")
        op = p.get("op")
        if op is not None:
            return self._envelope(key, compiled, p, op)
        if compiled is not None and compiled.kind == "schema_change":
            raise DecodeError("schema_change_event", f"{compiled.name} record (schema topic)")
        if "ddl" in p or "historyRecord" in p or "tableChanges" in p:
            raise DecodeError("schema_change_event", "schema change / history record")
        if "__op" in p or "__deleted" in p:
            return self._unwrapped(key, compiled, p)
        if "status" in p and "id" in p:
            return _tx_marker(p)
        raise DecodeError("not_an_envelope", "no op, not a transaction marker, no __op/__deleted")

    def _envelope(
        self, key: bytes | None, compiled: _Compiled | None, p: dict[str, Any], op: Any
    ) -> ChangeEvent:
        if op.__class__ is not str or op not in _OPS:
            raise DecodeError("unknown_op", f"op {op!r}")
        src = p.get("source")
        if src.__class__ is not dict:
            raise DecodeError("not_an_envelope", "source block missing")
        if "ddl" in p or "historyRecord" in p:
            raise DecodeError("schema_change_event", "schema change record")
        sget = src.get
        connector = sget("connector")
        if connector == "postgresql" or (connector is None and "lsn" in src):
            seq = sget("sequence")
            if seq is not None:
                position: int | None = _pg_sequence(seq)
            else:
                lsn = sget("lsn")
                position = None if lsn is None else _lsn(lsn, "lsn")
            schema_name = sget("schema")
        elif connector in ("mysql", "mariadb") or (connector is None and "file" in src):
            position = _mysql_position(src.get("file"), src.get("pos"), src.get("row"))
            schema_name = src.get("db")
        else:
            raise DecodeError("unsupported_connector", f"connector {connector!r}")
        if position is None:
            position = self._missing_position()
        ts = sget("ts_us")
        if ts.__class__ is not int:
            ts = _ts_us(None, sget("ts_ms"), p.get("ts_ms"))
            if ts is None:
                raise DecodeError("missing_timestamp", "no source.ts_us/ts_ms nor ts_ms")
        before = p.get("before")
        after = p.get("after")
        if (before is not None and before.__class__ is not dict) or (
            after is not None and after.__class__ is not dict
        ):
            raise DecodeError("bad_row", "before/after is not an object")
        if after is None and op in ("c", "u", "r"):
            raise DecodeError("bad_row", f"op {op!r} without after")
        column_types: Mapping[str, str] | None = None
        unavailable: set[str] | None = None
        if before is not None or after is not None:
            if compiled is not None:
                if compiled.kind != "envelope" or compiled.row is None:
                    raise DecodeError(
                        "bad_schema",
                        f"schema {compiled.name!r} does not describe an envelope"
                        + (f" ({compiled.error})" if compiled.error else ""),
                    )
                rc = compiled.row
                column_types = rc.column_types
                if after is not None:
                    unavailable = rc.apply_row(after)
                if before is not None:
                    rc.apply_row(before)
            else:
                if after is not None:
                    unavailable = _strip_placeholders(after)
                if before is not None:
                    _strip_placeholders(before)
        message: dict[str, Any] | None = None
        if op == "m":
            message = _logical_message(p.get("message"))
        k = self.decode_key(key)
        ident: Any = k
        if ident is None:
            ident = after if after is not None else before
            if ident is None:
                if op in _ROW_OPS:
                    raise DecodeError("missing_key", f"op {op!r} without key, before or after")
                ident = message
        table = sget("table") or None
        schema_name = schema_name or None
        tx = p.get("transaction")
        tx_id = tx.get("id") if tx.__class__ is dict else None
        snap = sget("snapshot")
        snapshot = op == "r" or (
            snap is not None and snap != "false" and snap is not False and _is_snapshot(op, snap)
        )
        return _make_event(
            op,
            schema_name,
            table,
            k,
            before,
            after,
            frozenset(unavailable) if unavailable else _EMPTY,
            position,
            ts,
            snapshot,
            change_id_for(schema_name, table, op, position, ident),
            column_types,
            tx_id,
            message,
        )

    def _unwrapped(
        self, key: bytes | None, compiled: _Compiled | None, p: dict[str, Any]
    ) -> ChangeEvent:
        def meta(name: str) -> Any:
            v = p.get("__" + name)
            return p.get("__source_" + name) if v is None else v

        deleted = p.get("__deleted")
        is_deleted = deleted is True or (isinstance(deleted, str) and deleted.lower() == "true")
        op = meta("op")
        if is_deleted:
            op = "d"
        elif op is None:
            op = "u"
        if op.__class__ is not str or op not in _ROW_OPS:
            raise DecodeError("unknown_op", f"__op {op!r}")
        file, pos = meta("file"), meta("pos")
        is_mysql = file is not None or pos is not None
        if is_mysql:
            position = _mysql_position(file, pos, meta("row"))
        else:
            position = _pg_position(meta("sequence"), meta("lsn"))
        if position is None:
            position = self._missing_position()
        ts = _ts_us(meta("ts_us"), meta("ts_ms"), p.get("__ts_ms"))
        if ts is None:
            raise DecodeError("missing_timestamp", "unwrapped row without __source_ts_ms")
        schema_name = meta("schema")
        if schema_name is None and is_mysql:
            schema_name = meta("db")
        table = meta("table")
        row = {k: v for k, v in p.items() if not k.startswith("__")}
        column_types: Mapping[str, str] | None = None
        if compiled is not None:
            if compiled.kind != "struct" or compiled.unwrapped_row is None:
                raise DecodeError("bad_schema", f"schema {compiled.name!r} is not a row struct")
            rc = compiled.unwrapped_row
            column_types = rc.column_types
            unavailable = rc.apply_row(row)
        else:
            unavailable = _strip_placeholders(row)
        before, after = (row, None) if op == "d" else (None, row)
        k = self.decode_key(key)
        ident = k if k is not None else row
        return ChangeEvent(
            op,
            schema_name,
            table,
            k,
            before,
            after,
            frozenset(unavailable) if unavailable and after is not None else _EMPTY,
            position,
            ts,
            _is_snapshot(op, meta("snapshot")),
            change_id_for(schema_name, table, op, position, ident),
            column_types,
        )

    def _missing_position(self) -> int:
        if self._allow_missing_position:
            return 0
        raise DecodeError("missing_position", "event carries no LSN / binlog position")


def _logical_message(m: Any) -> dict[str, Any] | None:
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


def _tx_marker(p: dict[str, Any]) -> TransactionMarker:
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
