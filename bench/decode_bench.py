"""Micro benchmark of the Debezium decoder (one core, no services).

Builds distinct events of a realistic 10-column PostgreSQL table (int, text, numeric as Decimal,
timestamptz as ZonedTimestamp, jsonb as Json, timestamp as MicroTimestamp, bool, uuid, date, text)
in the JsonConverter schema envelope, schemaless, and as ExtractNewRecordState ("unwrap") rows,
then decodes them and prints events/s (wall clock) and CPU µs/event (process time, which a busy
machine disturbs less than the wall clock).

    .venv/bin/python bench/decode_bench.py [N]
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from collections.abc import Sequence

import orjson

from cdc_reconciler.connectors.debezium import ChangeEvent, DebeziumDecoder

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000


def _f(field: str, typ: str, name: str | None = None, **extra: object) -> dict[str, object]:
    d: dict[str, object] = {"type": typ, "optional": field != "id", "field": field}
    if name:
        d["name"] = name
        d["version"] = 1
    d.update(extra)
    return d


VALUE_FIELDS = [
    _f("id", "int32", default=0),
    _f("name", "string"),
    _f(
        "price",
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        parameters={"scale": "2", "connect.decimal.precision": "12"},
    ),
    _f("updated_at", "string", "io.debezium.time.ZonedTimestamp"),
    _f("attrs", "string", "io.debezium.data.Json"),
    _f("created_local", "int64", "io.debezium.time.MicroTimestamp"),
    _f("active", "boolean"),
    _f("ref", "string", "io.debezium.data.Uuid"),
    _f("day", "int32", "io.debezium.time.Date"),
    _f("note", "string"),
]
VALUE = {
    "type": "struct",
    "fields": VALUE_FIELDS,
    "optional": True,
    "name": "pg.public.items.Value",
}
SOURCE = {
    "type": "struct",
    "name": "io.debezium.connector.postgresql.Source",
    "optional": False,
    "fields": [
        _f("version", "string"),
        _f("connector", "string"),
        _f("name", "string"),
        _f("ts_ms", "int64"),
        _f(
            "snapshot",
            "string",
            "io.debezium.data.Enum",
            parameters={"allowed": "true,last,false,incremental"},
            default="false",
        ),
        _f("db", "string"),
        _f("sequence", "string"),
        _f("ts_us", "int64"),
        _f("ts_ns", "int64"),
        _f("schema", "string"),
        _f("table", "string"),
        _f("txId", "int64"),
        _f("lsn", "int64"),
        _f("xmin", "int64"),
    ],
    "field": "source",
}
TX = {
    "type": "struct",
    "name": "event.block",
    "version": 1,
    "optional": True,
    "field": "transaction",
    "fields": [
        _f("id", "string"),
        _f("total_order", "int64"),
        _f("data_collection_order", "int64"),
    ],
}
SCHEMA = {
    "type": "struct",
    "name": "pg.public.items.Envelope",
    "version": 2,
    "optional": False,
    "fields": [
        dict(VALUE, field="before"),
        dict(VALUE, field="after"),
        SOURCE,
        TX,
        _f("op", "string"),
        _f("ts_ms", "int64"),
        _f("ts_us", "int64"),
        _f("ts_ns", "int64"),
    ],
}
KEY_SCHEMA = {
    "type": "struct",
    "name": "pg.public.items.Key",
    "optional": False,
    "fields": [_f("id", "int32", default=0)],
}


def payload(i: int) -> dict[str, object]:
    lsn = 24_000_000 + i * 64
    ts_ms = 1_725_875_246_492 + i
    return {
        "before": None,
        "after": {
            "id": i,
            "name": f"item {i}",
            "price": base64.b64encode((123_456 + i).to_bytes(4, "big", signed=True)).decode(),
            "updated_at": "2024-09-09T04:34:56.123456Z",
            "attrs": '{"color": "red", "size": 42}',
            "created_local": 1_725_885_296_000_000 + i,
            "active": i % 2 == 0,
            "ref": str(uuid.UUID(int=i)),
            "day": 19_975,
            "note": "lorem ipsum dolor sit amet",
        },
        "source": {
            "version": "2.7.2.Final",
            "connector": "postgresql",
            "name": "pg",
            "ts_ms": ts_ms,
            "snapshot": "false",
            "db": "wdl",
            "sequence": f'["{lsn - 64}","{lsn}"]',
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
            "schema": "public",
            "table": "items",
            "txId": 772 + i,
            "lsn": lsn,
            "xmin": None,
        },
        "transaction": None,
        "op": "u",
        "ts_ms": ts_ms + 250,
        "ts_us": (ts_ms + 250) * 1000,
        "ts_ns": (ts_ms + 250) * 1_000_000,
    }


def unwrapped(i: int) -> dict[str, object]:
    """The same row as ExtractNewRecordState writes it with add.fields=op,lsn,source.ts_ms,..."""
    p = payload(i)
    src = p["source"]
    assert isinstance(src, dict) and isinstance(p["after"], dict)
    return dict(
        p["after"],
        __op="u",
        __lsn=src["lsn"],
        __source_ts_ms=src["ts_ms"],
        __schema="public",
        __table="items",
        __deleted="false",
    )


def run(label: str, records: Sequence[tuple[bytes | None, bytes]]) -> float:
    dec = DebeziumDecoder()
    decode = dec.decode
    t0 = time.perf_counter()
    c0 = time.process_time()
    for k, v in records:
        decode(k, v)
    cpu = time.process_time() - c0
    dt = time.perf_counter() - t0
    rate = len(records) / dt
    print(
        f"{label:<40} {rate:>10,.0f} events/s  ({dt * 1e6 / len(records):.2f} µs/event, "
        f"CPU {cpu * 1e6 / len(records):.2f} µs/event)"
    )
    return rate


def main() -> None:
    with_schema = []
    with_schema_key = []
    schemaless = []
    unwrapped_rows = []
    for i in range(N):
        p = payload(i)
        v = orjson.dumps({"schema": SCHEMA, "payload": p})
        k = orjson.dumps({"schema": KEY_SCHEMA, "payload": {"id": i}})
        with_schema.append((None, v))
        with_schema_key.append((k, v))
        schemaless.append((orjson.dumps({"id": i}), orjson.dumps(p)))
        unwrapped_rows.append((orjson.dumps({"id": i}), orjson.dumps(unwrapped(i))))
    ev = DebeziumDecoder().decode(*with_schema_key[1])
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    print(
        f"{N:,} events, value {len(with_schema[0][1])} bytes with schema, "
        f"{len(schemaless[0][1])} bytes schemaless"
    )
    t0 = time.perf_counter()
    for _k, v in with_schema:
        orjson.loads(v)
    print(
        f"{'baseline: orjson.loads(full envelope)':<40} {N / (time.perf_counter() - t0):>10,.0f}"
        " events/s  (parse only, no conversion)"
    )
    run("schema envelope, value only", with_schema)
    run("schema envelope, value + schema key", with_schema_key)
    run("schemaless, value + key", schemaless)
    run("unwrapped row, schemaless, value + key", unwrapped_rows)


if __name__ == "__main__":
    main()
