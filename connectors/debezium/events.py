"""The decoder's results (:class:`ChangeEvent`, :class:`Tombstone`, :class:`TransactionMarker`)
and its one error type (:class:`DecodeError` with a stable ``kind`` from :data:`KINDS`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
