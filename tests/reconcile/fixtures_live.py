"""A live pipeline for reconcile tests while the source changes: two source tables (one with a
change-time column, one without), their own Debezium connector, a ``cdcr run`` consumer in a
thread configured with a topic pattern only, and a writer thread that keeps changing a hot key
range. Everything is named per test and removed afterwards."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.stream import command
from tests.helpers import wait_for

HOT = range(1, 151)  # the writer changes these keys (101..150 are deleted and re-inserted)
COLD = range(1001, 2001)  # nobody writes these: damage is planted here
ROWS = 2000


@dataclass
class Live:
    windowed: str  # public.<name>: has updated_at, reconciled window by window
    whole: str  # public.<name>: no change-time column, compared whole
    group: str
    prefix: str
    settings: Settings
    source: sa.Engine
    target: sa.Engine
    stop_consumer: threading.Event = field(default_factory=threading.Event)
    consumer: threading.Thread | None = None
    writer_stop: threading.Event = field(default_factory=threading.Event)
    writer: threading.Thread | None = None
    writes: int = 0
    created: float = field(default_factory=time.monotonic)  # when the rows were written

    def windows_closed(self, window_s: float = 5) -> None:
        """Wait until the grid window holding the initial rows can be closed by the traffic."""
        time.sleep(max(0.0, self.created + 2 * window_s + 1 - time.monotonic()))

    def start_consumer(self) -> None:
        self.stop_consumer = threading.Event()
        self.consumer = threading.Thread(
            target=command.run,
            args=(self.settings,),
            kwargs={"serve_metrics": False, "stop": self.stop_consumer},
            daemon=True,
        )
        self.consumer.start()

    def stop_consuming(self) -> None:
        self.stop_consumer.set()
        if self.consumer is not None:
            self.consumer.join(60)
            assert not self.consumer.is_alive(), "consumer did not stop"
        self.consumer = None

    def start_writer(self) -> None:
        self.writer_stop = threading.Event()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def stop_writer(self) -> None:
        self.writer_stop.set()
        if self.writer is not None:
            self.writer.join(30)
        self.writer = None

    def _write(self) -> None:
        rnd = random.Random(7)
        while not self.writer_stop.is_set():
            with self.source.begin() as c:
                for t in (self.windowed, self.whole):
                    k = rnd.choice(HOT[:100])
                    c.execute(
                        sa.text(
                            f"UPDATE {t} SET v = md5(random()::text), n = n + 1"
                            + (", updated_at = clock_timestamp()" if t == self.windowed else "")
                            + " WHERE id = :k"
                        ),
                        {"k": k},
                    )
                    if rnd.random() < 0.2:  # a delete and a re-insert in the hot range
                        d = rnd.choice(HOT[100:])
                        c.execute(sa.text(f"DELETE FROM {t} WHERE id = :k"), {"k": d})
                        c.execute(
                            sa.text(
                                f"INSERT INTO {t} (id, v, n) VALUES (:k, 'again', 0) "
                                "ON CONFLICT (id) DO NOTHING"
                            ),
                            {"k": d},
                        )
            self.writes += 1
            time.sleep(0.01)

    def caught_up(self) -> None:
        """Wait until both target tables equal their source tables (writer stopped)."""
        cols = "id, v, n"

        def same() -> bool:
            out = True
            for t in (self.windowed, self.whole):
                with self.source.connect() as s, self.target.connect() as g:
                    q = sa.text(f"SELECT {cols} FROM {t} ORDER BY id")
                    out = out and s.execute(q).all() == g.execute(q).all()
            return out

        wait_for("the target to catch up", same, timeout=120)


def _create(source: sa.Engine, name: str, change_time: bool) -> str:
    t = f"public.{name}"
    ct = ", updated_at timestamptz NOT NULL DEFAULT clock_timestamp()" if change_time else ""
    with source.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, n int NOT NULL{ct})"))
        c.execute(
            sa.text(
                f"INSERT INTO {t} (id, v, n) SELECT g, 'v' || g, 0 "
                f"FROM generate_series(1, {ROWS}) g"
            )
        )
    return t


@pytest.fixture()
def live(
    services: Any,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    debezium: Callable[..., Any],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Live]:
    windowed = _create(source_engine, unique_name("w"), True)
    whole = _create(source_engine, unique_name("p"), False)
    connector = debezium([windowed, whole])
    group = f"g_{unique_name('l')}"
    env = {
        "CDCR_KAFKA__TOPIC_PATTERN": rf"^{connector.topic_prefix}\.public\.[^.]+$",
        "CDCR_KAFKA__GROUP_ID": group,
        "CDCR_KAFKA__BATCH_TIMEOUT_S": "0.2",
        "CDCR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "CDCR_RECONCILE__WINDOW_S": "5",
        "CDCR_RECONCILE__GRACE_S": "0",
        "CDCR_RECONCILE__CONFIRM_WAIT_S": "60",
        "CDCR_TABLES": json.dumps({windowed: {"change_time_column": "updated_at"}}),
    }
    monkeypatch.delenv("CDCR_KAFKA__TOPIC_PREFIX", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    command.sync_tables(settings, [windowed, whole])
    lv = Live(
        windowed, whole, group, connector.topic_prefix, settings, source_engine, target_engine
    )
    lv.start_consumer()
    try:
        lv.caught_up()
        yield lv
    finally:
        lv.stop_writer()
        lv.stop_consuming()
        with source_engine.begin() as c:
            for t in (windowed, whole):
                c.execute(sa.text(f"DROP TABLE IF EXISTS {t}"))
        with target_engine.begin() as c:
            for t in (windowed, whole):
                c.execute(sa.text(f"DROP TABLE IF EXISTS {t}"))
                for stmt in (
                    "DELETE FROM cdcr.discrepancies WHERE table_name = :t",
                    "DELETE FROM cdcr.extra_rows_archive WHERE table_name = :t",
                    "DELETE FROM cdcr.reconcile_runs WHERE table_name = :t",
                    "DELETE FROM cdcr.watermarks WHERE table_name = :t",
                    "DELETE FROM cdcr.deferred_keys WHERE table_name = :t",
                    "DELETE FROM cdcr.tombstones WHERE table_name = :t",
                ):
                    c.execute(sa.text(stmt), {"t": t})
            c.execute(
                sa.text("DELETE FROM cdcr.applied_offsets WHERE consumer_group = :g"), {"g": group}
            )
