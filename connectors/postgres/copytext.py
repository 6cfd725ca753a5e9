"""Values in PostgreSQL COPY text format (:func:`copy_field`): the write hot path, called once
per value of every staged row. Dispatch is on the exact type (one dict lookup per value); the
escape pass runs only when the text holds one of the four characters COPY escapes."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

from cdc_reconciler.connectors.debezium import InfiniteDate, InfiniteTimestamp

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _array_item(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, list):
        return "{" + ",".join(_array_item(x) for x in v) + "}"
    s = _scalar_text(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bytes_text(v: Any) -> str:
    return "\\x" + bytes(v).hex()


def _bool_text(v: bool) -> str:
    return "t" if v else "f"


def _interval_text(v: timedelta) -> str:
    return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds"


def _list_text(v: list[Any]) -> str:
    return "{" + ",".join(_array_item(x) for x in v) + "}"


def _dict_text(v: dict[str, Any]) -> str:
    wkb = v.get("wkb")
    if isinstance(wkb, bytes | bytearray) and set(v) <= {"wkb", "srid", "x", "y"}:
        return "\\x" + bytes(wkb).hex()
    return orjson.dumps(v, default=str).decode()


def _infinite_text(v: InfiniteTimestamp | InfiniteDate) -> str:
    return str(v.pg_text)


# Exact-type dispatch: one dict lookup per value on the hot path.
_TEXT: dict[type, Any] = {
    int: int.__repr__,
    float: float.__repr__,
    Decimal: Decimal.__str__,
    bool: _bool_text,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: _interval_text,
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
    list: _list_text,
    dict: _dict_text,
    # PostgreSQL's ±infinity, decoded as sentinels, go back as the words.
    InfiniteTimestamp: _infinite_text,
    InfiniteDate: _infinite_text,
}


def _scalar_text(v: Any) -> str:
    if type(v) is str:
        return v
    f = _TEXT.get(type(v))
    if f is not None:
        return str(f(v))
    for t, g in _TEXT.items():  # subclasses (e.g. an IntEnum)
        if isinstance(v, t):
            return str(g(v))
    return str(v)


def copy_field(v: Any) -> str:
    """One value in PostgreSQL COPY text format."""
    if v is None:
        return "\\N"
    if type(v) is str:
        s = v
    else:
        f = _TEXT.get(type(v))
        s = f(v) if f is not None else _scalar_text(v)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        return s.translate(_COPY_ESCAPES)
    return s
