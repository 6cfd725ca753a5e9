"""Unit tests of the Debezium decoder's logical-type converters, positions, change ids, the
schema-cache fast path and the rejection of garbage. No services."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdc_reconciler.connectors import debezium as dbz
from cdc_reconciler.connectors.debezium import (
    KINDS,
    ChangeEvent,
    DebeziumDecoder,
    DecodeError,
    Tombstone,
)


def b64_int(n: int, length: int) -> str:
    return base64.b64encode(n.to_bytes(length, "big", signed=True)).decode()


# ---------------------------------------------------------------------------- converters


@pytest.mark.parametrize(
    ("b64", "scale", "want"),
    [
        ("AN3h", 2, Decimal("568.01")),
        ("W6A=", 6, Decimal("0.023456")),
        ("ALxhTg==", 2, Decimal("123456.78")),  # money
        (b64_int(-56801, 3), 2, Decimal("-568.01")),
        (b64_int(-1, 1), 0, Decimal("-1")),
        (b64_int(-(10**40) - 7, 18), 6, Decimal("-10000000000000000000000000000000000.000007")),
        (b64_int(12300, 2), 2, Decimal("123.00")),
    ],
)
def test_decimal_from_base64(b64: str, scale: int, want: Decimal) -> None:
    got = dbz.decimal_from_bytes(b64, scale)
    assert got == want
    assert str(got) == str(want)  # scale kept, no rounding of wide numerics


def test_decimal_in_double_and_string_modes() -> None:
    assert dbz.decimal_from_bytes(123.12, 2) == Decimal("123.12")
    assert dbz.decimal_from_text("50.50") == Decimal("50.50")
    assert dbz.decimal_from_text(7) == Decimal(7)


def test_variable_scale_decimal() -> None:
    assert dbz.variable_scale_decimal({"scale": 3, "value": "B1vNFQ=="}) == Decimal("123456.789")
    neg = {"scale": 1, "value": b64_int(-15, 1)}
    assert dbz.variable_scale_decimal(neg) == Decimal("-1.5")


def test_temporal_converters() -> None:
    assert dbz.date_from_days(0) == date(1970, 1, 1)
    assert dbz.date_from_days(-1) == date(1969, 12, 31)
    assert dbz.date_from_days(19975) == date(2024, 9, 9)
    assert dbz.time_from_ms(64822000) == time(18, 0, 22)
    assert dbz.time_from_us(45296000001) == time(12, 34, 56, 1)
    assert dbz.time_from_ns(45296000001000) == time(12, 34, 56, 1)
    naive = datetime(1930, 3, 1)  # noqa: DTZ001 - timestamp without time zone
    assert dbz.timestamp_from_us(-1257206400000000) == naive
    assert dbz.timestamp_from_ms(-1257206400000) == naive
    assert dbz.timestamp_from_ns(-1257206400000000000) == naive
    assert dbz.timestamp_from_us(1725885296000000).tzinfo is None
    assert dbz.timestamp_from_us(dbz._PG_POS_INF_MS) == datetime.max  # noqa: DTZ901
    zoned = dbz.zoned_timestamp("2024-09-09T04:34:56.000000Z")
    assert zoned == datetime(2024, 9, 9, 4, 34, 56, tzinfo=UTC) and zoned.tzinfo is not None
    assert dbz.zoned_timestamp("2011-11-11T03:11:11Z").microsecond == 0
    shifted = dbz.zoned_timestamp("2024-01-01T02:00:00+02:00")
    assert shifted == datetime(2024, 1, 1, tzinfo=UTC) and shifted.utcoffset() == timedelta(0)
    assert dbz.zoned_time("04:34:56Z") == time(4, 34, 56, tzinfo=UTC)
    assert dbz.micro_duration(37_091_106_000_000) == timedelta(days=429, seconds=25506)
    assert dbz.micro_duration(-1) == timedelta(microseconds=-1)


@pytest.mark.parametrize(
    ("fn", "bad"),
    [
        (dbz.time_from_us, 86_400_000_000),  # '24:00:00' does not fit datetime.time
        (dbz.time_from_us, -1),
        (dbz.date_from_days, "19975"),
        (dbz.zoned_timestamp, "2024-09-09T04:34:56"),  # no offset
        (dbz.zoned_time, "04:34:56"),
        (dbz.bytes_from_b64, "not base64!"),
        (dbz.timestamp_from_us, 10**18),  # beyond year 9999, not 'infinity'
    ],
)
def test_converters_reject_bad_values(fn: Any, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError)):
        fn(bad)


def test_geometry_and_bytes() -> None:
    got = dbz.geometry({"wkb": "AQEAAAAAAAAAAADwPwAAAAAAAPA/", "srid": 4326})
    assert got == {"wkb": bytes.fromhex("0101000000000000000000f03f000000000000f03f"), "srid": 4326}
    assert dbz.bytes_from_b64("ASNFZ4mrze8=") == bytes.fromhex("0123456789abcdef")


# ---------------------------------------------------------------------------- whole events


def field(name: str, typ: str, logical: str | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": typ, "optional": True, "field": name}
    if logical:
        d["name"] = logical
    d.update(extra)
    return d


ROW_FIELDS = [
    field("id", "int32", optional=False),
    field("amount", "bytes", "org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"}),
    field("at", "string", "io.debezium.time.ZonedTimestamp"),
    field("local", "int64", "io.debezium.time.MicroTimestamp"),
    field("day", "int32", "io.debezium.time.Date"),
    field("doc", "string", "io.debezium.data.Json"),
    field("blob", "bytes"),
    field("tags", "array", items={"type": "string", "optional": True}),
    field("days", "array", items={"type": "int32", "name": "io.debezium.time.Date"}),
    field("note", "string"),
]
VALUE_SCHEMA = {
    "type": "struct",
    "name": "srv.public.t.Value",
    "optional": True,
    "fields": ROW_FIELDS,
}
SOURCE_SCHEMA = {
    "type": "struct",
    "name": "io.debezium.connector.postgresql.Source",
    "field": "source",
    "fields": [field("lsn", "int64")],
}
ENVELOPE = {
    "type": "struct",
    "name": "srv.public.t.Envelope",
    "fields": [
        dict(VALUE_SCHEMA, field="before"),
        dict(VALUE_SCHEMA, field="after"),
        SOURCE_SCHEMA,
        field("op", "string"),
        field("ts_ms", "int64"),
    ],
}
KEY_SCHEMA = {
    "type": "struct",
    "name": "srv.public.t.Key",
    "fields": [field("id", "int32", default=0)],
}


def row(i: int = 1, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": i,
        "amount": "AN3h",
        "at": "2024-09-09T04:34:56.000000Z",
        "local": -1257206400000000,
        "day": 19975,
        "doc": '{"a": 1}',
        "blob": "ASNFZ4mrze8=",
        "tags": ["x", "y"],
        "days": [0, None],
        "note": "hello",
    }
    r.update(over)
    return r


def payload(
    op: str = "u",
    lsn: int = 34415840,
    commit: int | None = 34400000,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    **src: Any,
) -> dict[str, Any]:
    sequence = orjson.dumps([None if commit is None else str(commit), str(lsn)]).decode()
    source = {
        "version": "2.7.2.Final",
        "connector": "postgresql",
        "name": "srv",
        "ts_ms": 1746440315942,
        "snapshot": "false",
        "db": "postgres",
        "sequence": sequence,
        "schema": "public",
        "table": "t",
        "txId": 777,
        "lsn": lsn,
    }
    source.update(src)
    return {
        "before": before,
        "after": row() if after is None and op != "d" else after,
        "source": source,
        "op": op,
        "ts_ms": 1746440316214,
    }


def with_schema(p: dict[str, Any], schema: dict[str, Any] = ENVELOPE) -> bytes:
    return orjson.dumps({"schema": schema, "payload": p})


def key_bytes(i: int = 1) -> bytes:
    return orjson.dumps({"schema": KEY_SCHEMA, "payload": {"id": i}})


def decode(value: bytes | None, key: bytes | None = None, **kw: Any) -> ChangeEvent:
    ev = DebeziumDecoder(**kw).decode(key, value)
    assert isinstance(ev, ChangeEvent)
    return ev


def test_schema_envelope_converts_every_column() -> None:
    ev = decode(with_schema(payload()), key_bytes())
    assert ev.after == {
        "id": 1,
        "amount": Decimal("568.01"),
        "at": datetime(2024, 9, 9, 4, 34, 56, tzinfo=UTC),
        "local": datetime(1930, 3, 1),  # noqa: DTZ001
        "day": date(2024, 9, 9),
        "doc": '{"a": 1}',
        "blob": bytes.fromhex("0123456789abcdef"),
        "tags": ["x", "y"],
        "days": [date(1970, 1, 1), None],
        "note": "hello",
    }
    assert ev.key == {"id": 1}
    assert ev.position == (34400000 << 64) | 34415840
    assert ev.ts_us == 1746440315942000
    assert ev.column_types is not None
    assert ev.column_types["amount"] == "Decimal"
    assert ev.column_types["days"] == "array<Date>"
    assert ev.column_types["blob"] == "bytes"


def test_toast_placeholders_are_removed_and_reported() -> None:
    after = row(
        note="__debezium_unavailable_value",
        tags=["__debezium_unavailable_value"],
        blob="X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
    )
    for raw in (with_schema(payload(after=after)), orjson.dumps(payload(after=dict(after)))):
        ev = decode(raw, key_bytes())
        assert ev.unavailable == frozenset({"note", "tags", "blob"})
        assert ev.after is not None
        assert not {"note", "tags", "blob"} & set(ev.after)
        assert ev.after["id"] == 1


def test_schemaless_values_are_kept_as_sent() -> None:
    ev = decode(orjson.dumps(payload()), b'{"id": 1}')
    assert ev.after == row()
    assert ev.column_types is None


def test_pre_1970_negative_values_in_keys_and_rows() -> None:
    key_schema = {
        "type": "struct",
        "fields": [field("id", "int32"), field("at", "int64", "io.debezium.time.Timestamp")],
    }
    key = orjson.dumps({"schema": key_schema, "payload": {"id": 1, "at": -1257206400000}})
    assert DebeziumDecoder().decode_key(key) == {"id": 1, "at": datetime(1930, 3, 1)}  # noqa: DTZ001


def test_change_id_is_deterministic() -> None:
    raw = with_schema(payload())
    a = decode(raw, key_bytes())
    b = decode(raw, key_bytes())
    assert a.change_id == b.change_id and len(a.change_id) == 16
    # the same change rendered without a schema has the same id
    assert decode(orjson.dumps(payload()), b'{"id": 1}').change_id == a.change_id
    # a different position, op or key is a different change
    assert decode(with_schema(payload(lsn=34415841)), key_bytes()).change_id != a.change_id
    assert decode(with_schema(payload(op="c")), key_bytes()).change_id != a.change_id
    assert decode(raw, key_bytes(2)).change_id != a.change_id
    # without a key the row identifies the change; still deterministic
    assert decode(raw).change_id == decode(raw).change_id != a.change_id


def test_position_forms() -> None:
    assert decode(with_schema(payload(commit=None)), key_bytes()).position == 34415840
    no_seq = payload(sequence=None, lsn=99)
    assert decode(orjson.dumps(no_seq), b'{"id":1}').position == 99
    later = decode(with_schema(payload(commit=34500000, lsn=34500008)), key_bytes())
    earlier = decode(with_schema(payload(commit=34400000, lsn=34499999)), key_bytes())
    assert later.position > earlier.position
    mysql = payload(connector="mysql", file="mysql-bin.000004", pos=1276, row=2, db="inv")
    ev = decode(orjson.dumps(mysql), b'{"id":1}')
    assert ev.position == (4 << 64) | (1276 << 24) | 2
    assert ev.source_schema == "inv"


@pytest.mark.parametrize(
    "src",
    [
        {"sequence": '[null,"-9223372036854775808"]'},
        {"sequence": None, "lsn": -9223372036854776000},
        {"sequence": None, "lsn": 1 << 64},
        {"sequence": "[1,2,3]"},
        {"sequence": "garbage"},
        {"connector": "mysql", "file": "binlog", "pos": 4},
    ],
)
def test_invalid_positions(src: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        # stdlib json: orjson refuses integers beyond 64 bits, the decoder must not
        DebeziumDecoder().decode(b'{"id":1}', json.dumps(payload(**src)).encode())
    assert info.value.kind == "invalid_position"


def test_snapshot_flag() -> None:
    for snap, want in [
        ("false", False),
        (False, False),
        (None, False),
        ("true", True),
        (True, True),
        ("first", True),
        ("last_in_data_collection", True),
        ("incremental", True),
    ]:
        assert decode(orjson.dumps(payload(snapshot=snap)), b'{"id":1}').snapshot is want
    assert decode(orjson.dumps(payload(op="r", snapshot="false")), b'{"id":1}').snapshot


def test_unwrapped_delete_rewrite() -> None:
    raw = orjson.dumps(
        {
            "id": 7,
            "name": "x",
            "__op": "d",
            "__deleted": "true",
            "__lsn": 500,
            "__table": "t",
            "__source_ts_ms": 1000,
        }
    )
    ev = decode(raw, b'{"id": 7}')
    assert (ev.op, ev.before, ev.after, ev.position, ev.ts_us) == (
        "d",
        {"id": 7, "name": "x"},
        None,
        500,
        1_000_000,
    )
    kept = orjson.dumps({"id": 7, "__deleted": "false", "__lsn": 501, "__source_ts_ms": 1000})
    ev2 = decode(kept, b'{"id": 7}')
    assert (ev2.op, ev2.after) == ("u", {"id": 7})


def test_truncate_and_message() -> None:
    t = payload(op="t")
    t["after"] = None
    ev = decode(orjson.dumps(t))
    assert (ev.op, ev.key, ev.after) == ("t", None, None)
    m = payload(op="m", sequence=None)
    m["after"] = None
    m["message"] = {"prefix": "foo", "content": "Ymfy"}
    ev = decode(orjson.dumps(m))
    assert ev.message == {"prefix": "foo", "content": b"bg\xf2"}


# ---------------------------------------------------------------------------- fast path


def test_schema_cache_fast_path_matches_slow_path() -> None:
    raw = with_schema(payload())
    fast_dec = DebeziumDecoder()
    fast = [fast_dec.decode(key_bytes(), raw) for _ in range(3)]
    assert fast_dec.cache_misses == 2 and fast_dec.cache_hits == 4  # one value + one key schema
    # pretty-printed JSON never takes the fast path (it does not start with {"schema":)
    pretty = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2)
    slow_dec = DebeziumDecoder()
    slow = slow_dec.decode(key_bytes(), pretty)
    assert (slow_dec.cache_hits, slow_dec.cache_misses) == (0, 1)  # only the key was cached
    assert all(f == slow for f in fast)


def test_fast_path_sees_schema_changes_and_column_named_payload() -> None:
    dec = DebeziumDecoder()
    a = decode(with_schema(payload()), key_bytes())
    assert a.after is not None and a.after["amount"] == Decimal("568.01")
    # same bytes length, different scale: must not reuse the cached converter
    schema3 = orjson.loads(orjson.dumps(ENVELOPE).replace(b'"scale":"2"', b'"scale":"3"'))
    ev = dec.decode(key_bytes(), with_schema(payload(), schema3))
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    assert ev.after["amount"] == Decimal("56.801")
    # a column named "payload" inside the payload does not confuse the split
    p = payload()
    p["after"] = dict(row(), payload='{"x":1}')
    ev = dec.decode(key_bytes(), with_schema(p))
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    assert ev.after["payload"] == '{"x":1}'


def test_cache_is_bounded() -> None:
    dec = DebeziumDecoder(cache_size=4)
    for scale in range(10):
        s = orjson.loads(
            orjson.dumps(ENVELOPE).replace(b'"scale":"2"', f'"scale":"{scale}"'.encode())
        )
        dec.decode(b'{"id":1}', with_schema(payload(), s))
    assert len(dec._lru) <= 4
    assert sum(len(v) for v in dec._by_len.values()) == len(dec._lru)


# ---------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"\xff", "not_json"),
        (b"", "not_json"),
        (b'{"schema":{"type":"struct"},"payload":{"op":"c"', "not_json"),  # truncated
        (b'{"before":null,"after":{"id":1', "not_json"),
        (b"[]", "not_an_envelope"),
        (b"{}", "not_an_envelope"),
        (b"42", "not_an_envelope"),
        (b'{"op":"x","source":{}}', "unknown_op"),
        (b'{"op":"c","after":{"id":1}}', "not_an_envelope"),  # no source block
        (
            b'{"op":"c","after":[1],"source":{"connector":"postgresql","lsn":1,"ts_ms":1}}',
            "bad_row",
        ),
        (
            b'{"op":"c","after":null,"source":{"connector":"postgresql","lsn":1,"ts_ms":1}}',
            "bad_row",
        ),
        (
            b'{"op":"c","after":{"id":1},"source":{"connector":"sqlserver","ts_ms":1}}',
            "unsupported_connector",
        ),
        (
            b'{"op":"c","after":{"id":1},"source":{"connector":"postgresql","lsn":1}}',
            "missing_timestamp",
        ),
        (
            b'{"op":"c","after":{"id":1},"source":{"connector":"postgresql","ts_ms":1}}',
            "missing_position",
        ),
        (b'{"status":"MAYBE","id":"1"}', "not_an_envelope"),
        (
            b'{"databaseName":"db","ddl":"CREATE TABLE x (id int)","source":{}}',
            "schema_change_event",
        ),
    ],
)
def test_garbage_is_a_decode_error_with_a_kind(value: bytes, kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        DebeziumDecoder().decode(None, value)
    assert info.value.kind == kind
    assert info.value.kind in KINDS
    assert info.value.message


def test_bad_logical_value_names_the_column() -> None:
    with pytest.raises(DecodeError) as info:
        DebeziumDecoder().decode(key_bytes(), with_schema(payload(after=row(amount="%%%"))))
    assert info.value.kind == "bad_logical_value"
    assert "amount" in info.value.message


def test_bad_keys() -> None:
    dec = DebeziumDecoder()
    for bad in (b"\xff", b"[1]", b'"id"', b"{"):
        with pytest.raises(DecodeError) as info:
            dec.decode_key(bad)
        assert info.value.kind == "bad_key"
    assert dec.decode_key(None) is None
    assert dec.decode_key(b"null") is None
    assert dec.decode(None, None) == Tombstone(None)


def test_random_bytes_never_raise_anything_but_decode_error() -> None:
    import random

    rng = random.Random(7)
    base = with_schema(payload())
    dec = DebeziumDecoder()
    for _ in range(300):
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = bytes(b[: rng.randrange(len(b) + 1)]) if rng.random() < 0.3 else bytes(b)
        try:
            dec.decode(key_bytes(), cut)
        except DecodeError as exc:
            assert exc.kind in KINDS


# ---------------------------------------------------------------------------- lossless encodings
# (issue 9 item 5). The shapes are the ones Debezium 3.6.1 emitted for tests/fidelity_schema.py in
# tests/stream/test_types_e2e.py (snapshot and streaming), read from its PostgresValueConverter.


@pytest.mark.parametrize(
    ("days", "text"),
    [
        (-622191234, "infinity"),  # snapshot (JDBC) rendering
        (-625821272, "-infinity"),
        (-2147472692, "infinity"),  # streaming (pgoutput) rendering
        (-2147472691, "-infinity"),
    ],
)
def test_date_infinity_decodes_to_a_sentinel_that_copies_as_the_word(days: int, text: str) -> None:
    from cdc_reconciler.connectors.postgres.copytext import copy_field

    d = dbz.date_from_days(days)
    assert isinstance(d, dbz.InfiniteDate)
    assert copy_field(d) == text
    assert copy_field([d, None]) == '{"' + text + '",NULL}'


def test_dates_at_pythons_range_edges_and_beyond() -> None:
    assert dbz.date_from_days(-719162) == date(1, 1, 1)
    assert dbz.date_from_days(2932896) == date(9999, 12, 31)
    with pytest.raises(ValueError, match="out of Python's range"):
        dbz.date_from_days(2932897)


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (dbz.timestamp_from_ms, 9223372036825200, "infinity"),  # timestamp(0..3)
        (dbz.timestamp_from_ms, -9223372036832400, "-infinity"),
        (dbz.timestamp_from_us, 9223372036825200000, "infinity"),  # MicroTimestamp
        (dbz.timestamp_from_us, -9223372036832400000, "-infinity"),
        (dbz.zoned_timestamp, "infinity", "infinity"),
        (dbz.zoned_timestamp, "-infinity", "-infinity"),
    ],
)
def test_timestamp_infinity_copies_as_the_word(fn: Any, value: Any, text: str) -> None:
    from cdc_reconciler.connectors.postgres.copytext import copy_field

    got = fn(value)
    assert isinstance(got, dbz.InfiniteTimestamp)
    assert copy_field(got) == text


def test_ordinary_timestamps_stay_plain_datetimes() -> None:
    from cdc_reconciler.connectors.postgres.copytext import copy_field

    got = dbz.timestamp_from_ms(946684799999)
    assert type(got) is datetime
    assert copy_field(got) == "1999-12-31T23:59:59.999000"


def _envelope_with(field: dict[str, Any], value: Any) -> bytes:
    schema = {
        "type": "struct",
        "fields": [
            {
                "type": "struct",
                "field": "before",
                "optional": True,
                "fields": [{"type": "int32", "field": "id"}, field],
            },
            {
                "type": "struct",
                "field": "after",
                "optional": True,
                "fields": [{"type": "int32", "field": "id"}, field],
            },
            {"type": "struct", "field": "source", "fields": []},
            {"type": "string", "field": "op"},
            {"type": "int64", "field": "ts_ms", "optional": True},
        ],
    }
    payload = {
        "before": None,
        "after": {"id": 1, field["field"]: value},
        "source": {"connector": "postgresql", "schema": "s", "table": "t", "lsn": 10, "ts_ms": 1},
        "op": "c",
        "ts_ms": 1,
    }
    return orjson.dumps({"schema": schema, "payload": payload})


@pytest.mark.parametrize(
    ("field", "value", "want"),
    [
        # interval.handling.mode=string: ISO 8601, which PostgreSQL's interval input reads exactly
        (
            {"type": "string", "field": "v", "name": "io.debezium.time.Interval"},
            "P0Y-1M2DT-3H0M-0.000001S",
            "P0Y-1M2DT-3H0M-0.000001S",
        ),
        # decimal.handling.mode=string: plain text, trailing zeros kept
        ({"type": "string", "field": "v"}, "1.50", "1.50"),
        # decimal.handling.mode=precise, unconstrained numeric (Debezium strips trailing zeros)
        (
            {
                "type": "struct",
                "field": "v",
                "name": "io.debezium.data.VariableScaleDecimal",
                "fields": [
                    {"type": "int32", "field": "scale"},
                    {"type": "bytes", "field": "value"},
                ],
            },
            {"scale": 1, "value": "Dw=="},
            Decimal("1.5"),
        ),
        # time.precision.mode=adaptive_time_microseconds: time(3) as MicroTime
        (
            {"type": "int64", "field": "v", "name": "io.debezium.time.MicroTime"},
            43200123000,
            time(12, 0, 0, 123000),
        ),
        # float NaN/±Infinity arrive as JSON strings that PostgreSQL reads back
        ({"type": "double", "field": "v"}, "-Infinity", "-Infinity"),
        # hstore.handling.mode=json: a JSON object as text (turned into hstore at the target)
        (
            {"type": "string", "field": "v", "name": "io.debezium.data.Json"},
            '{"a":"1","b c":null}',
            '{"a":"1","b c":null}',
        ),
        # hstore.handling.mode=map
        (
            {
                "type": "map",
                "field": "v",
                "keys": {"type": "string"},
                "values": {"type": "string", "optional": True},
            },
            {"a": "1"},
            {"a": "1"},
        ),
    ],
)
def test_lossless_modes_decode_to_values_that_copy_exactly(
    field: dict[str, Any], value: Any, want: Any
) -> None:
    ev = DebeziumDecoder().decode(None, _envelope_with(field, value))
    assert isinstance(ev, ChangeEvent)
    assert ev.after is not None
    got = ev.after["v"]
    assert got == want
    assert str(got) == str(want)


# ---------------------------------------------------------------------------- target adapters


def _adapted(kind: str, typ: str, value: Any) -> Any:
    from cdc_reconciler.connectors.postgres.adapters import value_adapters
    from cdc_reconciler.connectors.postgres.table import TargetTable
    from cdc_reconciler.stream.tables import _adapt

    table = TargetTable("s", "t", ("id",), ("id", "v"), ("integer", typ), ("bN:int4", kind))
    values = {"id": 1, "v": value}
    _adapt(value_adapters(table), values)
    return values["v"]


@pytest.mark.parametrize(
    ("kind", "typ", "value", "want"),
    [
        ("bN:numeric", "numeric", "NAN", "NaN"),
        ("bN:numeric", "numeric", "POSITIVE_INFINITY", "Infinity"),
        ("bN:numeric", "numeric(12,3)", "NEGATIVE_INFINITY", "-Infinity"),
        ("bN:numeric", "numeric", "1.50", "1.50"),
        ("bN:numeric", "numeric", Decimal("1.5"), Decimal("1.5")),
        ("bU:hstore", "public.hstore", '{"a":"1","b c":null}', '"a"=>"1", "b c"=>NULL'),
        ("bU:hstore", "public.hstore", {'q"uote': "back\\slash"}, '"q\\"uote"=>"back\\\\slash"'),
        ("bU:hstore", "public.hstore", "{}", ""),
        ("bV:bit", "bit(4)", b"\x0a", "1010"),
        ("bV:bit", "bit(4)", b"", "0000"),
        ("bV:bit", "bit(1)", True, "1"),
        ("bV:varbit", "bit varying(16)", b"\x05", "101"),
        ("bV:varbit", "bit varying(16)", b"", ""),
        ("bG:point", "point", {"x": 1.5, "y": -2.0, "wkb": b"", "srid": None}, "(1.5,-2.0)"),
        ("bG:line", "line", b"{1.0,-1.0,0.0}", "{1.0,-1.0,0.0}"),
        ("cC:pair", "s.pair", b'(7,"x, y")', '(7,"x, y")'),
        ("mR:int4multirange", "int4multirange", b"{[1,3)}", "{[1,3)}"),
        ("bU:bytea", "bytea", b"\xff", b"\xff"),
    ],
)
def test_values_are_reshaped_for_the_target_column_type(
    kind: str, typ: str, value: Any, want: Any
) -> None:
    assert _adapted(kind, typ, value) == want


def test_a_value_an_adapter_cannot_convert_is_an_apply_error() -> None:
    from cdc_reconciler.stream.errors import ApplyError

    with pytest.raises(ApplyError) as info:
        _adapted("bG:line", "line", b"\xff\xfe")
    assert info.value.kind == "bad_value"
    assert "'v'" in info.value.message


def test_tables_without_special_types_get_no_adapters() -> None:
    from cdc_reconciler.connectors.postgres.adapters import value_adapters
    from cdc_reconciler.connectors.postgres.table import TargetTable

    table = TargetTable(
        "s",
        "t",
        ("id",),
        ("id", "n", "ts", "j"),
        ("integer", "text", "timestamp with time zone", "jsonb"),
        ("bN:int4", "bS:text", "bD:timestamptz", "bU:jsonb"),
    )
    assert value_adapters(table) == ()
