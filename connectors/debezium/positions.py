"""Positions, event times and change ids.

* PostgreSQL: ``source.sequence`` ``'["<lastCommitLsn>","<lsn>"]'`` -> ``(hi << 64) | lo``, else
  ``source.lsn``; MySQL/MariaDB: ``(binlog file number << 64) | (pos << 24) | row``.
* ``change_id_for``: blake2b-128 over schema, table, op, position and the canonical JSON of the
  row identity (see the package docstring).
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

from .events import DecodeError

_MAX_LSN = 1 << 64
_NOT_SNAPSHOT = frozenset({"false", ""})
_blake2b = hashlib.blake2b
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


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
    """``source.sequence`` -> position: the exact Debezium rendering by hand (hot path), anything
    else (other spacing, numbers instead of strings) through JSON."""
    if seq.__class__ is str:
        fast = _pg_sequence_text(seq)
        if fast is not None:
            return fast
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


def _pg_sequence_text(seq: str) -> int | None:
    """Fast path for exactly ``'["123","456"]'`` / ``'[null,"456"]'``; None for any other shape."""
    a, sep, b = seq[1:-1].partition(",")
    if not (
        sep
        and seq[0] == "["
        and seq[-1] == "]"
        and b[:1] == '"'
        and b[-1:] == '"'
        and (a == "null" or (a[:1] == '"' and a[-1:] == '"'))
    ):
        return None
    try:
        hi = 0 if a == "null" else int(a[1:-1])
        lo = int(b[1:-1])
    except ValueError:
        raise DecodeError("invalid_position", f"sequence {seq!r}") from None
    if 0 <= hi < _MAX_LSN and 0 <= lo < _MAX_LSN:
        return (hi << 64) | lo
    raise DecodeError("invalid_position", f"sequence out of range: {seq!r}")


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
