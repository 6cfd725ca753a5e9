"""Logical types: Debezium / Kafka Connect field values -> Python values.

One converter per logical schema ``name`` (module level, so tests call them directly), and the
PostgreSQL infinity sentinels. Each converter takes the JSON value (never ``None``) and returns the
Python value, or raises ``TypeError``/``ValueError`` (the row converter turns that into
``DecodeError("bad_logical_value")`` naming the column). Which converter a field gets is decided
once per schema in :mod:`.schema`.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any

_Conv = Callable[[Any], Any]

# TOAST: the value Debezium sends for a column that did not change and was not logged.
_TOAST = "__debezium_unavailable_value"
_TOAST_B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="  # the same, base64, for bytes columns

_EPOCH_NAIVE = datetime(1970, 1, 1)  # noqa: DTZ001 - wall clock of `timestamp without time zone`
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH_DATE.toordinal()
_fromordinal = date.fromordinal
_td = timedelta
_MAX_PLAIN_US = 250_000_000_000_000_000  # within ±7900 years of 1970: no infinity check needed
_fromisoformat = datetime.fromisoformat
_b64 = binascii.a2b_base64


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


def decimal_bytes_converter(scale: int) -> _Conv:
    """``decimal_from_bytes`` with the scale bound, the base64 case inlined (one call per value)."""
    neg = -scale

    def conv(v: Any) -> Decimal:
        if v.__class__ is str:
            unscaled = int.from_bytes(_b64(v, strict_mode=True), "big", signed=True)
            return Decimal(unscaled).scaleb(neg, _DEC_CTX)
        return decimal_from_bytes(v, scale)

    return conv


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
