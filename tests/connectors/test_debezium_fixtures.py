"""Every captured Debezium message in tests/fixtures/debezium decodes as expected.

Each fixture file has one entry in EXPECT; a fixture without an entry fails the suite, so a new
capture cannot be skipped silently. Positions are written from the raw source fields (sequence
pair, lsn, binlog file/pos/row), not copied from the decoder's output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc_reconciler.connectors.debezium import (
    ChangeEvent,
    DebeziumDecoder,
    DecodeError,
    Tombstone,
    TransactionMarker,
)

# In the repository (provenance of each file: MANIFEST.md / MANIFEST.jsonl beside them).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
if not FIXTURES.is_dir():  # fail loudly: a missing folder must not turn into zero tests
    raise RuntimeError(f"Debezium fixtures folder not found: {FIXTURES}")


def seq(last_commit: int | None, lsn: int) -> int:
    return ((last_commit or 0) << 64) | lsn


def binlog(file_no: int, pos: int, row: int = 0) -> int:
    return (file_no << 64) | (pos << 24) | row


@dataclass
class Ev:
    """Expected ChangeEvent. ``values`` are checked in ``after`` (or ``before`` for deletes)."""

    op: str
    position: int
    ts_us: int
    schema: str | None
    table: str | None
    snapshot: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    unavailable: frozenset[str] = frozenset()
    before: bool | None = None  # True: before present, False: before is None, None: not checked
    after_absent: tuple[str, ...] = ()
    typed: bool | None = None  # column_types present (schema) or not
    types: dict[str, str] = field(default_factory=dict)
    tx_id: str | None = None
    key: bytes | None = None
    allow_missing_position: bool = False


@dataclass
class Key:
    value: dict[str, Any]


@dataclass
class Tx:
    status: str
    id: str
    ts_us: int
    event_count: int | None = None
    collections: tuple[tuple[str, int], ...] | None = None


@dataclass
class Err:
    kind: str
    allow_missing_position: bool = False


@dataclass
class Tomb:
    pass


UUID0 = "550e8400-e29b-41d4-a716-446655440000"
CUSTOMERS_SCHEMA_TYPES = {"id": "int32", "first_name": "string", "email": "string"}

EXPECT: dict[str, Ev | Key | Tx | Err | Tomb] = {
    # ---- keys
    "key_schema_bylogicaltablerouter___dbz__physicalTableIdentifier__artie.json": Key(
        {"id": 1001, "__dbz__physicalTableIdentifier": "dbserver1.inventory.customers"}
    ),
    "key_schema_composite_3cols__artie.json": Key(
        {"quarter_id": 1, "course_id": "course1", "student_id": 1}
    ),
    "mysql_key_schema_delete__memiiso.json": Key({"id": 1004}),
    "mysql_key_schema_snapshot__memiiso.json": Key({"order_number": 10004}),
    "mysql_key_schema_tx_addresses_3.0__decodable.json": Key({"id": 17}),
    "mysql_key_schema_tx_customers_3.0__decodable.json": Key({"id": 1005}),
    "pg_key_noschema_toast_row__streaming-examples.json": Key({"id": 1001}),
    "pg_key_schema_composite_uuid_timestamp__artie.json": Key(
        {
            "id": "339f3f2f-f29f-4f00-869e-476122310eff",
            # io.debezium.time.Timestamp 1713229699440 ms -> naive wall clock
            "created_at": datetime(2024, 4, 16, 1, 8, 19, 440000),  # noqa: DTZ001
        }
    ),
    "pg_key_schema_int_default0__artie.json": Key({"id": 1002}),
    "pg_tombstone_key_schema_composite__laravel-kafka-issue337.json": Key(
        {"products_id": 16056, "categories_id": 601}
    ),
    # ---- MySQL changes
    "mysql_c_full_types_schema_1.9__doris.json": Ev(
        "c",
        binlog(401, 17237),
        1720517925000 * 1000,
        "doris_test",
        "full_types",
        values={
            "decimal_c": Decimal("123.4567"),
            "date_c": date(2020, 7, 17),
            "time_c": time(18, 0, 22),
            "datetime_c": datetime(2020, 7, 17, 18, 0, 22),  # noqa: DTZ001
            "timestamp_c": datetime(2020, 7, 17, 10, 0, 22, tzinfo=UTC),
            "year_c": 2021,
            "set_c": "a,b",
            "json_c": '{"key1":"value1"}',
            "big_un_c": -1,  # bigint.unsigned.handling.mode=long overflow, kept as sent
        },
        typed=True,
        types={"decimal_c": "Decimal", "timestamp_c": "ZonedTimestamp"},
    ),
    "mysql_c_geometry_point_schema_1.9__doris.json": Ev(
        "c",
        binlog(366, 896),
        1717483867000 * 1000,
        "doris_test",
        "geo_table",
        values={
            "geo_point": {
                "wkb": bytes.fromhex("0101000000000000000000f03f000000000000f03f"),
                "srid": None,
                "x": 1.0,
                "y": 1.0,
            },
        },
        typed=True,
        types={"geo_point": "Point", "geo_polygon": "Geometry"},
    ),
    "mysql_c_insert_schema_2.0__artie.json": Ev(
        "c",
        binlog(3, 1276),
        1711381357000 * 1000,
        "inventory",
        "customers",
        values={"id": 1005, "email": "dusty@example.com"},
        before=False,
        typed=True,
    ),
    "mysql_c_temporal_decimal_schema_2.5__doris.json": Ev(
        "c",
        binlog(63, 13454),
        1712915126000 * 1000,
        "wdl_test",
        "example_table",
        values={
            "decimal_column": Decimal("123.45"),
            "birth_date": date(1994, 5, 20),
            "datetime_column": datetime(2024, 4, 12, 10, 30),  # noqa: DTZ001
            "time_column": time(10, 30),
            "binary_column": bytes.fromhex("1234567890abcdef0000"),
            "varchar_column": None,
        },
    ),
    "mysql_c_with_transaction_block_addresses_3.0__decodable.json": Ev(
        "c",
        binlog(3, 544),
        1733763168000000,
        "inventory",
        "addresses",
        values={"id": 17, "type": "LIVING"},
        tx_id="file=binlog.000003,pos=236",
    ),
    "mysql_c_with_transaction_block_customers_3.0__decodable.json": Ev(
        "c",
        binlog(3, 383),
        1733763168000000,
        "inventory",
        "customers",
        values={"id": 1005},
        tx_id="file=binlog.000003,pos=236",
    ),
    "mysql_d_schema_2.0__artie.json": Ev(
        "d",
        binlog(3, 569),
        1711381272000 * 1000,
        "inventory",
        "customers",
        values={"id": 1004, "first_name": "Anne"},
        before=True,
    ),
    "mysql_d_value_schema_2.7_ts_us_ns__memiiso.json": Ev(
        "d",
        binlog(3, 632),
        1718486007000000,
        "inventory",
        "customers",
        values={"id": 1004},
        before=True,
    ),
    "mysql_r_snapshot_last_full_types_schema_1.5__flink-cdc.json": Ev(
        "r",
        binlog(3, 1532),
        1630315344066 * 1000,
        "column_type_test_2jid2b",
        "full_types",
        snapshot=True,
        values={
            "decimal_c": Decimal("123.4567"),
            "datetime3_c": datetime(2020, 7, 17, 18, 0, 22, 123000),  # noqa: DTZ001
            "datetime6_c": datetime(2020, 7, 17, 18, 0, 22, 123456),  # noqa: DTZ001
            "timestamp_c": datetime(2020, 7, 17, 18, 0, 22, tzinfo=UTC),
            "tiny_blob_c": b"\x10",
        },
    ),
    "mysql_r_snapshot_last_in_data_collection_2.7__memiiso.json": Ev(
        "r",
        binlog(3, 824),
        1718461481000000,
        "inventory",
        "orders",
        snapshot=True,
        values={"order_date": date(2016, 2, 21)},
    ),
    "mysql_u_fullbefore_full_types_schema_1.5__flink-cdc.json": Err("bad_schema"),
    "mysql_u_schema_2.0__artie.json": Ev(
        "u",
        binlog(3, 912),
        1711381320000 * 1000,
        "inventory",
        "customers",
        values={"first_name": "Dusty"},
        before=True,
    ),
    # ---- MySQL schema topics and transaction markers
    "mysql_schema_change_event_create_table__memiiso.json": Err("schema_change_event"),
    "mysql_schema_change_event_with_historyRecord__paimon.json": Err("schema_change_event"),
    "mysql_schema_change_topic_event_ALTER__debezium-docs.json": Err("schema_change_event"),
    "mysql_schema_history_topic_record_ALTER__paimon.json": Err("schema_change_event"),
    "mysql_tx_BEGIN_payload_only__decodable.json": Tx(
        "BEGIN", "file=binlog.000003,pos=236", 1733763172000 * 1000
    ),
    "mysql_tx_END_payload_only__decodable.json": Tx(
        "END",
        "file=binlog.000003,pos=236",
        1733763168000 * 1000,
        2,
        (("inventory.customers", 1), ("inventory.addresses", 1)),
    ),
    # ---- PostgreSQL changes
    "pg_c_arrays_logical_types_schema_1.9__doris.json": Ev(
        "c",
        seq(95025840, 95026320),
        1717491350397 * 1000,
        "doris_cdc",
        "all_array_types",
        values={
            "date_array": [date(2024, 1, 1), date(2024, 1, 2)],
            "timestamp_array": [
                datetime(2022, 1, 1, 10),  # noqa: DTZ001
                datetime(2023, 1, 1, 10),  # noqa: DTZ001
                datetime(2024, 1, 1, 10),  # noqa: DTZ001
            ],
            "time_array": [time(10), time(11), time(12)],
            "numeric_array": ["123.45", "678.90"],
            "json_array": ['{"key": "value1"}', '{"key": "value2"}', '{"key": "value3"}'],
        },
        types={"date_array": "array<Date>", "uuid_array": "array<Uuid>"},
    ),
    "pg_c_insert_full_schema_envelope__debezium-docs.json": Ev(
        "c",
        seq(24023119, 24023128),
        1559033904863123,
        "public",
        "customers",
        snapshot=True,  # source.snapshot is the boolean true in this docs sample
        values={"id": 1, "email": "annek@noanswer.org"},
        typed=True,
    ),
    "pg_c_insert_noschema__flink.json": Ev(
        "c",
        34132560,
        1596010946488 * 1000,
        "inventory",
        "products",
        values={"id": 110, "weight": 0.2},
        typed=False,
    ),
    "pg_c_insert_schema__flink.json": Ev(
        "c",
        34132560,
        1596010946488 * 1000,
        "inventory",
        "products",
        values={"id": 110, "weight": 0.2},
        typed=True,
    ),
    "pg_c_temporal_types_schema_2.7__doris.json": Ev(
        "c",
        seq(24499552, 24499656),
        1725875246492139,
        "public",
        "time_example",
        values={
            "timestamp_without_timezone": datetime(2024, 9, 9, 12, 34, 56),  # noqa: DTZ001
            "timestamp_with_timezone": datetime(2024, 9, 9, 4, 34, 56, tzinfo=UTC),
            "date_only": date(2024, 9, 9),
            "time_without_timezone": time(12, 34, 56),
            "time_with_timezone": time(4, 34, 56, tzinfo=UTC),
            "interval_period": timedelta(microseconds=37_091_106_000_000),
        },
        types={"timestamp_with_timezone": "ZonedTimestamp", "interval_period": "MicroDuration"},
    ),
    "pg_c_with_transaction_block_schemanull__risingwave.json": Ev(
        "c",
        seq(3963198512, 3963199336),
        1704355505506 * 1000,
        "public",
        "orders_tx",
        values={"price": "50.50", "order_date": "2020-01-30"},
        typed=False,
        tx_id="35392:3963199336",
    ),
    "pg_d_arrays_fullbefore_schema_1.9__doris.json": Ev(
        "d",
        seq(95034728, 95035112),
        1717492866396 * 1000,
        "doris_cdc",
        "all_array_types",
        values={"date_array": [date(2024, 1, 1), date(2024, 1, 2)]},
        before=True,
    ),
    # Delete with before = after = null and no Kafka key: nothing identifies the row.
    "pg_d_before_and_after_null_noschema__flink.json": Err("missing_key"),
    "pg_d_fullbefore_noschema__flink.json": Ev(
        "d",
        34133800,
        1596010988168 * 1000,
        "inventory",
        "products",
        values={"id": 111, "weight": 5.17},
        before=True,
    ),
    "pg_d_fullbefore_schema_2.5__artie.json": Ev(
        "d",
        seq(None, 36450928),
        1711381709158 * 1000,
        "inventory",
        "customers",
        values={"id": 1004},
        before=True,
    ),
    "pg_d_fullbefore_schema__flink.json": Ev(
        "d",
        34133800,
        1596010988168 * 1000,
        "inventory",
        "products",
        values={"id": 111},
        before=True,
    ),
    "pg_m_logical_message_transactional_payload__debezium-docs.json": Ev(
        "m",
        46523128,
        1559033904863879,
        None,
        None,
    ),
    # lsn = Long.MIN_VALUE after a lossy double round trip
    "pg_r_alltypes_lsn_minlong_txid_null_noschema__seatunnel.json": Err("invalid_position"),
    "pg_r_numeric_types_payloadonly__risingwave.json": Ev(
        "r",
        seq(None, 26519216),
        1684404343201 * 1000,
        "public",
        "orders",
        snapshot=True,
        values={"o_numeric": 123456.789, "o_money": 123.12},
        typed=False,
    ),
    "pg_r_other_types_payloadonly__risingwave.json": Ev(
        "r",
        seq(None, 26524528),
        1684743927178 * 1000,
        "public",
        "orders",
        snapshot=True,
        values={"o_bytea": "ASNFZ4mrze8=", "o_enum": "polar"},
        typed=False,
    ),
    "pg_r_snapshot_first_customers_schema_2.5__artie.json": Ev(
        "r",
        seq(None, 36313560),
        1755814412998 * 1000,
        "inventory",
        "customers",
        snapshot=True,
        values={"id": 1001},
        types=CUSTOMERS_SCHEMA_TYPES,
    ),
    "pg_r_snapshot_first_in_data_collection_products_schema_2.5__artie.json": Ev(
        "r",
        seq(None, 36313560),
        1755814412998 * 1000,
        "inventory",
        "products",
        snapshot=True,
        values={"id": 101, "weight": 3.14},
    ),
    "pg_r_snapshot_from_standby_txId_null_2.5__morling-blog.json": Ev(
        "r",
        seq(None, 406746824704),
        1702469846436 * 1000,
        "public",
        "some_data",
        snapshot=True,
        values={"short_text": "c4ca4"},
    ),
    "pg_r_snapshot_last_in_data_collection_customers_schema_2.5__artie.json": Ev(
        "r",
        seq(None, 36313560),
        1755814412998 * 1000,
        "inventory",
        "customers",
        snapshot=True,
        values={"id": 1004},
    ),
    "pg_r_snapshot_noschema__flink.json": Ev(
        "r",
        34078720,
        1596001099434 * 1000,
        "inventory",
        "products",
        snapshot=True,
        values={"id": 101},
        typed=False,
    ),
    "pg_r_snapshot_schema__flink.json": Ev(
        "r",
        34078720,
        1596001099434 * 1000,
        "inventory",
        "products",
        snapshot=True,
        values={"id": 101},
        typed=True,
    ),
    "pg_r_snapshot_true_products_schema_2.5__artie.json": Ev(
        "r",
        seq(None, 36313560),
        1755814412998 * 1000,
        "inventory",
        "products",
        snapshot=True,
        values={"id": 102},
    ),
    "pg_r_temporal_types_payloadonly__risingwave.json": Ev(
        "r",
        seq(None, 26505352),
        1684733351963 * 1000,
        "public",
        "orders",
        snapshot=True,
        # no schema: values stay as sent
        values={"o_timestampz_6": "2011-11-11T03:11:11.123456Z", "o_time_0": 40271000000},
        typed=False,
    ),
    "pg_t_truncate_payload__debezium-docs.json": Ev(
        "t",
        46523128,
        1559033904863112,
        "public",
        "customers",
    ),
    "pg_u_beforenull_noschema__flink.json": Ev(
        "u",
        34131104,
        1596010889629 * 1000,
        "inventory",
        "products",
        values={"description": "18oz carpenter hammer"},
        before=False,
    ),
    "pg_u_beforenull_numeric_precise_schema__artie.json": Ev(
        "u",
        seq(None, 34393728),
        1686688855364 * 1000,
        "inventory",
        "customers",
        values={
            "numeric_test": Decimal(
                "123456.789"
            ),  # VariableScaleDecimal {"scale":3,"value":"B1vNFQ=="}
            "numeric_5_2": Decimal("568.01"),  # "AN3h"
            "numeric_5_6": Decimal("0.023456"),  # "W6A=", scale > precision
            "numeric_5_0": Decimal("5"),
            "numeric_39_0": Decimal("58569102859845154622791691858438258688"),
        },
        before=False,
        types={"numeric_test": "VariableScaleDecimal", "numeric_5_2": "Decimal"},
    ),
    "pg_u_fullbefore_bool_bit_numeric_schema_2.5__artie.json": Ev(
        "u",
        seq(37133376, 37158360),
        1711381838401 * 1000,
        "inventory",
        "customers",
        values={"boolean_test": True, "bit_test": False, "numeric_5_2": Decimal("578.01")},
        before=True,
    ),
    "pg_u_fullbefore_decimal_precise_schema__artie.json": Ev(
        "u",
        seq(None, 34049328),
        1686692942728 * 1000,
        "inventory",
        "customers",
        values={
            "decimal_test": Decimal("123.45"),
            "decimal_test_39_6": Decimal("585691028598451546227916918584388.123456"),
        },
        before=True,
    ),
    "pg_u_fullbefore_int_types_schema__artie.json": Ev(
        "u",
        seq(None, 34618728),
        1686692816008 * 1000,
        "inventory",
        "customers",
        values={"bigint_test": 2305843009213693952, "smallint_test": 1},
        before=True,
    ),
    "pg_u_fullbefore_money_schema__artie.json": Ev(
        "u",
        seq(None, 34025872),
        1686696099649 * 1000,
        "inventory",
        "customers",
        values={"money_test": Decimal("123456.78")},
        before=True,
    ),
    "pg_u_fullbefore_noschema_2.5__morling-blog.json": Ev(
        "u",
        seq(34471328, 34494376),
        1705663711187 * 1000,
        "inventory",
        "customers",
        values={"first_name": "Barray"},
        before=True,
        typed=False,
    ),
    "pg_u_fullbefore_noschema__flink.json": Ev(
        "u",
        34131104,
        1596010889629 * 1000,
        "inventory",
        "products",
        values={"description": "18oz carpenter hammer"},
        before=True,
    ),
    "pg_u_fullbefore_schema__flink.json": Ev(
        "u",
        34131104,
        1596010889629 * 1000,
        "inventory",
        "products",
        values={"description": "18oz carpenter hammer"},
        before=True,
    ),
    "pg_u_toast_unavailable_value_noschema_0.10__debezium-blog.json": Ev(
        "u",
        34650016,
        1570448151151 * 1000,
        "inventory",
        "customers",
        values={"first_name": "Dana"},
        unavailable=frozenset({"biography"}),
        after_absent=("biography",),
        before=False,
    ),
    "pg_u_toast_unavailable_value_noschema_3.1__streaming-examples.json": Ev(
        "u",
        seq(None, 34415840),
        1746440315942179,
        "inventory",
        "authors",
        values={"dob": -1257206400000000},  # no schema: the MicroTimestamp stays an int
        unavailable=frozenset({"biography"}),
        after_absent=("biography",),
    ),
    # ---- unwrap (ExtractNewRecordState)
    "pg_unwrap_arrays___deleted__memiiso.json": Err("missing_position"),
    "pg_unwrap_geometry_wkb_srid__memiiso.json": Err("missing_position"),
    "pg_unwrap_snapshot___lsn__memiiso.json": Ev(
        "r",
        33832960,
        1596309876678 * 1000,
        None,
        "orders",
        snapshot=True,
        values={"order_date": date(2016, 2, 19), "id": 10003},
        after_absent=("__op", "__lsn", "__deleted", "__table", "__source_ts_ms"),
        types={"order_date": "Date"},
    ),
    # ---- transaction markers and tombstones
    "pg_tx_BEGIN_payload__debezium-docs.json": Tx("BEGIN", "571:53195829", 1486500577125000),
    "pg_tx_BEGIN_schemanull__risingwave.json": Tx("BEGIN", "35352:3962948040", 1704269323180000),
    "pg_tx_END_data_collections_schemanull__risingwave.json": Tx(
        "END",
        "35352:3962950064",
        1704269323180000,
        11,
        (("public.orders_tx", 5), ("public.person", 6)),
    ),
    "pg_tx_END_payload__debezium-docs.json": Tx(
        "END", "571:53195832", 1486500577691000, 2, (("s1.a", 1), ("s2.a", 1))
    ),
    "tombstone_legacy_rendering_schema_null_payload_null__debezium-tutorial.json": Tomb(),
    "tombstone_value_null.json": Tomb(),
}

# Unwrapped rows without __lsn decode when the caller opts in to position 0.
OPT_IN = {
    "pg_unwrap_arrays___deleted__memiiso.json": Ev(
        "c",
        0,
        1638128893618 * 1000,
        None,
        "array_data",
        values={
            "pay_by_quarter": [10000, 10001, 10002, 10003],
            "schedule": ["[Ljava.lang.String;@508917a0", "[Ljava.lang.String;@7412bd2"],
        },
        after_absent=("__op", "__deleted", "__db", "__table"),
    ),
    "pg_unwrap_geometry_wkb_srid__memiiso.json": Ev(
        "r",
        0,
        1634844424986 * 1000,
        None,
        "geom",
        snapshot=True,
        values={
            "g": {"wkb": bytes.fromhex("0101000000000000000000f03f000000000000f03f"), "srid": 123},
            "h": None,
        },
        types={"g": "Geometry"},
    ),
}


def fixture_files() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json"))


def test_every_fixture_has_an_expectation() -> None:
    files = fixture_files()
    assert files, f"no fixtures in {FIXTURES}"
    missing = sorted(set(files) - set(EXPECT))
    stale = sorted(set(EXPECT) - set(files))
    assert not missing, f"fixtures without an expectation in EXPECT: {missing}"
    assert not stale, f"expectations for fixtures that do not exist: {stale}"


def test_every_fixture_matches_its_manifest_entry() -> None:
    """Each file is the one MANIFEST.jsonl describes (same bytes as the capture it cites)."""
    manifest = [
        json.loads(line)
        for line in (FIXTURES / "MANIFEST.jsonl").read_text().splitlines()
        if line.strip()
    ]
    by_name = {entry["file"]: entry for entry in manifest}
    assert sorted(by_name) == fixture_files()
    for name, entry in by_name.items():
        data = (FIXTURES / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["bytes"], name


def _value_bytes(name: str) -> bytes | None:
    raw = (FIXTURES / name).read_bytes()
    # tombstone_value_null.json stands for a Kafka record whose value is null (no bytes)
    return None if name == "tombstone_value_null.json" else raw


def _check_event(name: str, exp: Ev, got: object) -> None:
    assert isinstance(got, ChangeEvent), got
    assert got.op == exp.op
    assert got.position == exp.position
    assert got.ts_us == exp.ts_us
    assert got.source_schema == exp.schema
    assert got.source_table == exp.table
    assert got.snapshot is exp.snapshot
    assert got.unavailable == exp.unavailable
    assert isinstance(got.change_id, bytes) and len(got.change_id) == 16
    row = got.before if exp.op == "d" else got.after
    for col, want in exp.values.items():
        assert row is not None
        assert col in row, f"{col} missing from {sorted(row)}"
        assert row[col] == want, f"{name}: {col}={row[col]!r}, expected {want!r}"
        assert type(row[col]) is type(want), f"{col}: {type(row[col])} vs {type(want)}"
    for col in exp.after_absent:
        assert got.after is not None and col not in got.after
    if exp.before is True:
        assert got.before is not None
    elif exp.before is False:
        assert got.before is None
    if exp.op == "d":
        assert got.after is None
    if exp.typed is not None:
        assert (got.column_types is not None) is exp.typed
    for col, short in exp.types.items():
        assert got.column_types is not None and got.column_types[col] == short
    if exp.tx_id is not None:
        assert got.transaction_id == exp.tx_id


@pytest.mark.parametrize("name", fixture_files())
def test_fixture(name: str) -> None:
    exp = EXPECT.get(name)
    if exp is None:
        pytest.fail(f"{name} has no expectation in EXPECT")
    dec = DebeziumDecoder()
    raw = _value_bytes(name)
    if isinstance(exp, Key):
        assert raw is not None
        assert dec.decode_key(raw) == exp.value
        return
    if isinstance(exp, Err):
        with pytest.raises(DecodeError) as info:
            dec.decode(None, raw)
        assert info.value.kind == exp.kind, info.value.message
        return
    got = dec.decode(None, raw)
    if isinstance(exp, Tomb):
        assert got == Tombstone(key=None)
    elif isinstance(exp, Tx):
        assert isinstance(got, TransactionMarker)
        assert (got.status, got.id, got.ts_us) == (exp.status, exp.id, exp.ts_us)
        assert got.event_count == exp.event_count
        assert got.data_collections == exp.collections
    else:
        _check_event(name, exp, got)


@pytest.mark.parametrize("name", sorted(OPT_IN))
def test_unwrapped_without_lsn_decodes_when_allowed(name: str) -> None:
    got = DebeziumDecoder(allow_missing_position=True).decode(None, _value_bytes(name))
    _check_event(name, OPT_IN[name], got)


def test_delete_without_before_decodes_with_its_kafka_key() -> None:
    raw = (FIXTURES / "pg_d_before_and_after_null_noschema__flink.json").read_bytes()
    got = DebeziumDecoder().decode(b'{"id": 111}', raw)
    assert isinstance(got, ChangeEvent)
    assert (got.op, got.key, got.before, got.after) == ("d", {"id": 111}, None, None)
    assert got.position == 34133800


def test_tombstone_carries_its_key() -> None:
    key = (FIXTURES / "pg_tombstone_key_schema_composite__laravel-kafka-issue337.json").read_bytes()
    dec = DebeziumDecoder()
    assert dec.decode(key, None) == Tombstone({"products_id": 16056, "categories_id": 601})
    legacy = (
        FIXTURES / "tombstone_legacy_rendering_schema_null_payload_null__debezium-tutorial.json"
    ).read_bytes()
    assert dec.decode(key, legacy) == Tombstone({"products_id": 16056, "categories_id": 601})
    assert dec.decode(key, b"null") == Tombstone({"products_id": 16056, "categories_id": 601})


def test_same_capture_with_and_without_schema_decodes_alike() -> None:
    dec = DebeziumDecoder()
    for a, b in [
        ("pg_c_insert_schema__flink.json", "pg_c_insert_noschema__flink.json"),
        ("pg_u_fullbefore_schema__flink.json", "pg_u_fullbefore_noschema__flink.json"),
        ("pg_r_snapshot_schema__flink.json", "pg_r_snapshot_noschema__flink.json"),
    ]:
        x = dec.decode(b'{"id": 1}', (FIXTURES / a).read_bytes())
        y = dec.decode(b'{"id": 1}', (FIXTURES / b).read_bytes())
        assert isinstance(x, ChangeEvent) and isinstance(y, ChangeEvent)
        assert (x.op, x.after, x.before, x.position, x.ts_us) == (
            y.op,
            y.after,
            y.before,
            y.position,
            y.ts_us,
        )
        assert x.change_id == y.change_id
