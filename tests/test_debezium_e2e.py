"""End to end through the real stack: PostgreSQL -> Debezium (Kafka Connect) -> Kafka."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Connector, Services
from tests.helpers import read_topic, value_json, wait_for

pytestmark = pytest.mark.services


def test_debezium_captures_snapshot_insert_update_delete_and_tombstone(
    services: Services,
    source_engine: sa.Engine,
    debezium: Callable[..., Connector],
    unique_name: Callable[[str], str],
) -> None:
    table = unique_name("orders")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{table} (id int primary key, name text not null, "
                "amount numeric(10,2))"
            )
        )
        conn.execute(sa.text(f"insert into public.{table} values (1, 'snap', 1.50)"))
    connector = debezium([f"public.{table}"])
    topic = connector.topic(f"public.{table}")

    wait_for("the snapshot row", lambda: len(read_topic(services.kafka_bootstrap, topic)) >= 1)
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"insert into public.{table} values (2, 'new', 2.25)"))
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"update public.{table} set name = 'changed' where id = 2"))
    with source_engine.begin() as conn:
        conn.execute(sa.text(f"delete from public.{table} where id = 1"))

    msgs = wait_for(
        "r, c, u, d and a tombstone",
        lambda: (m := read_topic(services.kafka_bootstrap, topic)) and len(m) >= 5 and m,
    )
    values = [value_json(m) for m in msgs]
    keys = [value_json_key(m) for m in msgs]
    ops = [v["payload"]["op"] if v is not None else None for v in values]
    assert ops == ["r", "c", "u", "d", None]
    assert [k["payload"]["id"] for k in keys] == [1, 2, 2, 1, 1]
    snap, ins, upd, dele, tomb = values
    assert snap["payload"]["after"]["name"] == "snap"
    assert ins["payload"]["after"]["name"] == "new"
    assert upd["payload"]["after"] == {**ins["payload"]["after"], "name": "changed"}
    assert dele["payload"]["after"] is None and dele["payload"]["before"]["id"] == 1
    assert tomb is None and msgs[4].value() is None
    # The schema envelope is on by default; numeric(10,2) travels as a Connect Decimal.
    fields = {f["field"]: f for f in ins["schema"]["fields"]}
    after_fields = {f["field"]: f for f in fields["after"]["fields"]}
    assert after_fields["amount"]["name"] == "org.apache.kafka.connect.data.Decimal"
    assert ins["payload"]["source"]["table"] == table


def value_json_key(msg: Any) -> Any:
    import orjson

    return orjson.loads(msg.key())
