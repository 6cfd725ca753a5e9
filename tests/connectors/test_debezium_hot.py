"""The decoder's hot-path tricks (connectors/debezium/hot.py) against their plain equivalents."""

from __future__ import annotations

import base64
import copy
import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdc_reconciler.connectors.debezium import ChangeEvent, DebeziumDecoder, DecodeError
from cdc_reconciler.connectors.debezium.hot import (
    EventShell,
    fast_change_id,
    is_placeholder,
    strip_placeholders,
)
from cdc_reconciler.connectors.debezium.logical import (
    _AWARE_MAX,
    _AWARE_MIN,
    _NAIVE_MAX,
    _NAIVE_MIN,
    InfiniteDate,
    decimal_bytes_converter,
    decimal_from_bytes,
)
from cdc_reconciler.connectors.debezium.positions import change_id_for
from cdc_reconciler.connectors.debezium.schema import _compile_schema, _RowConverter
from tests.connectors.test_debezium_types import field as _f

TOAST = "__debezium_unavailable_value"
TOAST_B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="


ODD = "we\"ird\\col\n'name"  # a column name that must stay data in the generated code
STRUCT = {
    "type": "struct",
    "fields": [
        _f("id", "int32"),
        _f("txt", "string"),
        _f(
            "amount",
            "bytes",
            "org.apache.kafka.connect.data.Decimal",
            parameters={"scale": "2"},
        ),
        _f("blob", "bytes"),
        _f("at", "int64", "io.debezium.time.MicroTimestamp"),
        _f("zoned", "string", "io.debezium.time.ZonedTimestamp"),
        _f("day", "int32", "io.debezium.time.Date"),
        _f("tags", "array", items={"type": "string"}),
        _f("days", "array", items={"type": "int32", "name": "io.debezium.time.Date"}),
        _f(ODD, "string"),
        _f("js", "string", "io.debezium.data.Json"),
    ],
}


def _b64(n: int) -> str:
    return base64.b64encode(n.to_bytes(4, "big", signed=True)).decode()


def _random_row(rnd: random.Random) -> dict[str, Any]:
    def maybe(v: Any, toast: Any = TOAST) -> Any:
        r = rnd.random()
        return None if r < 0.1 else toast if r < 0.2 else v

    row: dict[str, Any] = {
        "id": rnd.randrange(1000),
        "txt": maybe("t" * rnd.randrange(3)),
        "amount": maybe(_b64(rnd.randrange(-(10**6), 10**6)), TOAST_B64),
        "blob": maybe("AAEC", TOAST_B64),
        "at": maybe(rnd.randrange(-(10**15), 10**15), None),
        "zoned": maybe("2024-09-09T04:34:56.123456Z", None),
        "day": maybe(rnd.randrange(-700_000, 2_900_000), None),
        "tags": maybe(["a", "b"], [TOAST]),
        "days": maybe([1, None, 19_000], [TOAST]),
        ODD: maybe("x"),
        "js": maybe('{"a": 1}'),
    }
    for k in list(row):
        if rnd.random() < 0.05:
            del row[k]  # a column the payload does not carry
    return row


def test_generated_row_converter_equals_the_plain_loop() -> None:
    rc = _RowConverter.compile(STRUCT)
    rnd = random.Random(13)
    for _ in range(2000):
        row = _random_row(rnd)
        plain, fast = copy.deepcopy(row), copy.deepcopy(row)
        assert rc.fast_apply_row(fast) == rc.apply_row(plain)
        assert fast == plain


@pytest.mark.parametrize(
    ("column", "bad"),
    [("amount", "not base64!"), ("day", 10**12), ("at", "x"), ("days", [1, "x"]), ("blob", 3)],
)
def test_generated_row_converter_names_the_bad_column(column: str, bad: Any) -> None:
    rc = _RowConverter.compile(STRUCT)
    row = {"id": 1, "amount": _b64(5), "day": 1, column: bad}
    with pytest.raises(DecodeError) as plain:
        rc.apply_row(dict(row))
    with pytest.raises(DecodeError) as fast:
        rc.fast_apply_row(dict(row))
    assert fast.value.kind == plain.value.kind == "bad_logical_value"
    assert fast.value.message == plain.value.message
    assert repr(column) in fast.value.message


def test_generated_row_converter_without_work() -> None:
    rc = _RowConverter.compile({"type": "struct", "fields": [_f("id", "int32")]})
    row = {"id": 1, "x": TOAST}
    assert rc.fast_apply_row(row) is None and row == {"id": 1, "x": TOAST}


def _idents(rnd: random.Random) -> list[Any]:
    out: list[Any] = [
        {"a": v}
        for v in (_NAIVE_MAX, _NAIVE_MIN, _AWARE_MAX, _AWARE_MIN, InfiniteDate(9999, 12, 31))
    ]
    out.append({"a": InfiniteDate(1, 1, 1), "b": date(5, 1, 1), "c": datetime(999, 1, 2, 3, 4)})  # noqa: DTZ001
    for _ in range(3000):
        us = rnd.randrange(-62_135_596_800 * 10**6, 253_402_300_799 * 10**6)
        naive = datetime(1970, 1, 1) + timedelta(microseconds=us)  # noqa: DTZ001
        out.append(
            {
                "n": naive,
                "z": naive.replace(tzinfo=UTC),
                "d": date.fromordinal(rnd.randrange(1, 3_652_059)),
                "m": Decimal(rnd.randrange(-(10**9), 10**9)).scaleb(-rnd.randrange(6)),
                "b": bytes([rnd.randrange(256)]),
                "l": [naive, None, 1.5, "s"],
                "g": {"wkb": b"\x01", "srid": 4326},
                "dur": timedelta(microseconds=rnd.randrange(-(10**12), 10**12)),
            }
        )
    return out


def test_fast_change_id_equals_change_id_for_without_times() -> None:
    for ident in _idents(random.Random(14)):
        assert fast_change_id("s", "t", "c", 42, ident) == change_id_for("s", "t", "c", 42, ident)


def test_time_columns_keep_the_reference_change_id() -> None:
    """orjson renders time(…, 29724 µs) as '.29724', isoformat as '.029724': a schema that can
    hold a time is not native, wherever the time hides (column, array item, nested struct)."""
    assert _RowConverter.compile(STRUCT).native_json
    for field in (
        _f("t", "int64", "io.debezium.time.MicroTime"),
        _f("t", "string", "io.debezium.time.ZonedTime"),
        _f("t", "array", items={"type": "int32", "name": "io.debezium.time.Time"}),
        _f("t", "struct", fields=[_f("x", "int64", "io.debezium.time.NanoTime")]),
    ):
        assert not _RowConverter.compile({"type": "struct", "fields": [field]}).native_json
    envelope = {
        "type": "struct",
        "fields": [
            {
                "type": "struct",
                "field": "before",
                "fields": [_f("t", "int64", "io.debezium.time.MicroTime")],
            },
            {
                "type": "struct",
                "field": "after",
                "fields": [_f("t", "int64", "io.debezium.time.MicroTime")],
            },
            _f("source", "struct", fields=[]),
            _f("op", "string"),
        ],
    }
    compiled = _compile_schema(envelope)
    assert compiled is not None and compiled.row is not None and not compiled.row.native_json
    p = {
        "before": None,
        "after": {"t": 29_724},
        "source": {"connector": "postgresql", "lsn": 7, "ts_us": 1, "schema": "s", "table": "t"},
        "op": "c",
    }
    ev = DebeziumDecoder().decode(None, orjson.dumps({"schema": envelope, "payload": p}))
    assert isinstance(ev, ChangeEvent) and ev.after == {"t": time(0, 0, 0, 29_724)}
    assert ev.change_id == change_id_for("s", "t", "c", 7, {"t": time(0, 0, 0, 29_724)})


def test_event_shell_equals_the_dataclass() -> None:
    args: tuple[Any, ...] = ("c", "s", "t", {"id": 1}, None, {"id": 1}, frozenset(), 5, 6, False)
    args += (b"x" * 16, None, "tx", None)
    assert EventShell(*args).freeze() == ChangeEvent(*args)


def test_strip_placeholders_equals_the_per_column_test() -> None:
    rnd = random.Random(15)
    pool: list[Any] = [TOAST, TOAST_B64, [TOAST], [TOAST, TOAST], "x", 1, 1.5, True, None]
    pool += [{"a": TOAST}, [], ["x"]]
    for _ in range(3000):
        row = {f"c{i}": rnd.choice(pool) for i in range(rnd.randrange(6))}
        want = {k for k, v in row.items() if v is not None and is_placeholder(v)}
        kept = {k: v for k, v in row.items() if k not in want}
        assert strip_placeholders(row) == (want or None)
        assert row == kept


def test_event_shell_result_is_a_frozen_change_event() -> None:
    args: tuple[Any, ...] = ("d", None, None, None, {"id": 1}, None, frozenset({"x"}), 1, 2, True)
    args += (b"y" * 16, {"id": "int32"}, None, None)
    ev = EventShell(*args).freeze()
    assert type(ev) is ChangeEvent and ev == ChangeEvent(*args) and hash(ev.change_id)
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        ev.op = "c"  # type: ignore[misc]
    assert copy.copy(ev) == ev and copy.deepcopy(ev) == ev


@pytest.mark.parametrize("scale", [0, 2, 6, 18])
def test_bound_decimal_converter_equals_decimal_from_bytes(scale: int) -> None:
    conv = decimal_bytes_converter(scale)
    rnd = random.Random(scale)
    for v in [_b64(rnd.randrange(-(2**31), 2**31)) for _ in range(500)] + [5, 2.5, "AA=="]:
        got, want = conv(v), decimal_from_bytes(v, scale)
        assert got == want and got.as_tuple() == want.as_tuple()
    for bad in (True, None, "not base64!"):
        with pytest.raises((TypeError, ValueError)):
            conv(bad)


def test_slow_path_compiles_a_schema_once_not_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JsonConverter record the fast path does not take (here pretty-printed, as the Debezium
    docs print it, and with a trailing newline) used to compile its schema for every record
    (~360 µs each); it is compiled once per schema and decodes as the compact record does."""
    from pathlib import Path

    from cdc_reconciler.connectors.debezium import decoder as decoder_module

    raw = (
        Path(__file__).resolve().parents[1]
        / "fixtures"
        / "debezium"
        / "pg_c_insert_full_schema_envelope__debezium-docs.json"
    ).read_bytes()
    compact = orjson.dumps(orjson.loads(raw))
    calls: list[int] = []
    real = _compile_schema  # what decoder.py imported

    def counting(schema: Any) -> Any:
        calls.append(1)
        return real(schema)

    monkeypatch.setattr(decoder_module, "_compile_schema", counting)
    dec = DebeziumDecoder()
    slow = [dec.decode(None, raw), dec.decode(None, raw + b"\n"), dec.decode(None, raw)]
    assert len(calls) == 1
    assert slow[0] == slow[1] == slow[2] == DebeziumDecoder().decode(None, compact)
