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

Where things live
-----------------
``events``     the results and ``DecodeError``;      ``logical``   logical-type converters;
``schema``     compiled schemas and row converters;   ``positions`` LSN/binlog positions, change ids;
``envelope``   the envelope read in named steps;      ``decoder``   :class:`DebeziumDecoder`;
``hot``        the hot-path tricks (schema cache by bytes, event construction), each commented.
"""

from __future__ import annotations

from .decoder import DebeziumDecoder
from .events import KINDS, ChangeEvent, DecodeError, Tombstone, TransactionMarker
from .logical import _PG_POS_INF_MS as _PG_POS_INF_MS  # tests check the infinity boundary
from .logical import (
    InfiniteDate,
    InfiniteTimestamp,
    bytes_from_b64,
    date_from_days,
    decimal_from_bytes,
    decimal_from_text,
    geometry,
    micro_duration,
    time_from_ms,
    time_from_ns,
    time_from_us,
    timestamp_from_ms,
    timestamp_from_ns,
    timestamp_from_us,
    variable_scale_decimal,
    zoned_time,
    zoned_timestamp,
)
from .positions import change_id_for

__all__ = [
    "KINDS",
    "ChangeEvent",
    "DebeziumDecoder",
    "DecodeError",
    "InfiniteDate",
    "InfiniteTimestamp",
    "Tombstone",
    "TransactionMarker",
    "bytes_from_b64",
    "change_id_for",
    "date_from_days",
    "decimal_from_bytes",
    "decimal_from_text",
    "geometry",
    "micro_duration",
    "time_from_ms",
    "time_from_ns",
    "time_from_us",
    "timestamp_from_ms",
    "timestamp_from_ns",
    "timestamp_from_us",
    "variable_scale_decimal",
    "zoned_time",
    "zoned_timestamp",
]
