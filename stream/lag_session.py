"""The sources of one ``cdcr lag`` run: the Kafka inspector and lag monitor, and the reader of the
applied offsets in the target database (``cdcr.applied_offsets``), closed together.

Moved unchanged out of the CLI (stream/lag_cli.py) so the composition root (Kafka clients) and
the store of the service's tables (the applied-offsets read) can replace their parts; the rules
live in :mod:`cdc_reconciler.stream.lag`. Heavy imports (confluent-kafka, psycopg2, SQLAlchemy)
happen inside the calls so that ``cdcr lag`` starts fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cdc_reconciler.config import DatabaseSettings, Settings, require_driver
from cdc_reconciler.stream.lag import (
    AppliedOffset,
    LagMonitor,
    LagReport,
    Thresholds,
    collect,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

# Connecting to the target DB only adds the "applied" column; an unreachable DB must not hold the
# lag report (wanted most exactly when something is down) for longer than this.
_DB_CONNECT_TIMEOUT_S = 3


class LagSession:
    """One run of the command: the Kafka inspector, the lag monitor and the applied-offsets
    reader, closed together."""

    def __init__(
        self,
        settings: Settings,
        groups: Sequence[str],
        topic: str | None,
        stall_after: float,
        timeout_s: float,
        offset_reset: str = "earliest",
    ) -> None:
        from cdc_reconciler import wiring

        k = settings.kafka
        admin = wiring.kafka_admin(k, timeout_s=timeout_s)
        self.groups = list(groups)
        own = k.group_id
        # `cdcr run` subscribes its group to kafka.topic_pattern with auto.offset.reset=earliest
        # (connectors/kafka/config.py): every matching partition is the group's, committed or not.
        self.monitor = LagMonitor(
            admin,
            self.groups,
            topic_pattern=topic,
            thresholds=Thresholds(stall_after_s=stall_after),
            group_patterns={own: k.topic_pattern} if own in self.groups else None,
            group_excludes={own: {k.dlq_topic()}},
            offset_reset={g: "earliest" if g == own else offset_reset for g in self.groups},
        )
        # The raw URL: normalising it (engine_url) imports SQLAlchemy, which the one-shot path
        # avoids; the psycopg2 path needs only the libpq form of it.
        target_url = settings.target.url.get_secret_value()
        if target_url:
            require_driver()  # a missing psycopg2 is a FAILED line, as for every command
        self.applied = AppliedOffsetsReader(target_url, settings.target)

    def __enter__(self) -> LagSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.applied.close()

    def refresh(self, *, samples: int, interval: float) -> LagReport:
        # The DB read is independent of Kafka: overlap it with the sampling (a first connect with
        # the SQLAlchemy import costs about as much as the whole Kafka side).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdcr-applied") as pool:
            pending = pool.submit(self.applied.read, self.groups)
            collect(self.monitor, samples=samples, interval_s=interval)
            applied, note = pending.result()
        return self.monitor.report(applied=applied, applied_note=note, interval_s=interval)


class AppliedOffsetsReader:
    """Reads ``cdcr.applied_offsets`` from the target DB, when one is configured and the table
    exists. Never raises: an unreadable DB yields ``(None, reason)`` so lag is still reported.

    A PostgreSQL target is read with psycopg2 directly: importing SQLAlchemy costs more than the
    whole Kafka side of a one-shot ``cdcr lag`` (about 0.2 s of CPU). Other targets go through
    SQLAlchemy."""

    _QUERY = (
        "select consumer_group, topic, partition, next_offset, last_event_time, updated_at "
        "from cdcr.applied_offsets where consumer_group = any(%(groups)s)"
    )
    _EXISTS = "select to_regclass('cdcr.applied_offsets') is not null"
    _MISSING = "table cdcr.applied_offsets does not exist (run cdcr migrate)"

    def __init__(self, url: str, db: DatabaseSettings | None = None) -> None:
        self._url = url
        self._db = db  # the connection settings for the SQLAlchemy path (wiring.engine_for)
        self._engine: sa.Engine | None = None
        self._conn: Any = None
        self._libpq_refused = False  # the URL has options only SQLAlchemy understands

    def read(
        self,
        groups: Sequence[str],
    ) -> tuple[dict[tuple[str, str, int], AppliedOffset] | None, str | None]:
        if not self._url:
            return None, "no target database configured (CDCR_TARGET__URL)"
        libpq = None if self._libpq_refused else _libpq_uri(self._url)
        rows = self._read_psycopg2(libpq, groups) if libpq else self._read_sqlalchemy(groups)
        if isinstance(rows, str):
            return None, rows
        return {(r[0], r[1], int(r[2])): AppliedOffset(int(r[3]), r[4], r[5]) for r in rows}, None

    def _read_psycopg2(self, uri: str, groups: Sequence[str]) -> list[Any] | str:
        import psycopg2

        try:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = psycopg2.connect(uri, connect_timeout=_DB_CONNECT_TIMEOUT_S)
                except psycopg2.ProgrammingError:  # "invalid dsn": not a libpq URI after all
                    self._libpq_refused = True
                    return self._read_sqlalchemy(groups)
                self._conn.set_session(readonly=True, autocommit=True)
            with self._conn.cursor() as cur:
                cur.execute(self._EXISTS)
                if not cur.fetchone()[0]:
                    return self._MISSING
                cur.execute(self._QUERY, {"groups": list(groups)})
                return list(cur.fetchall())
        except psycopg2.Error as exc:
            self._drop_conn()
            first = (str(exc).strip().splitlines() or [""])[0]
            return f"target database unreadable: {type(exc).__name__}: {first}"

    def _read_sqlalchemy(self, groups: Sequence[str]) -> list[Any] | str:
        import sqlalchemy as sa
        from pydantic import SecretStr

        from cdc_reconciler import wiring
        from cdc_reconciler.config import DatabaseSettings
        from cdc_reconciler.errors import ConfigError
        from cdc_reconciler.store import offsets

        try:
            if self._engine is None:
                db = self._db or DatabaseSettings(url=SecretStr(self._url))
                self._engine = wiring.engine_for(db, "target")
            with self._engine.connect() as conn:
                if not offsets.exists(conn):
                    return self._MISSING
                return [
                    (
                        o.consumer_group,
                        o.topic,
                        o.partition,
                        o.next_offset,
                        o.last_event_time,
                        o.updated_at,
                    )
                    for o in offsets.for_groups(conn, groups)
                ]
        except ConfigError as exc:
            return f"target database URL: {exc}"
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [""])[0]
            return f"target database unreadable: {type(cause).__name__}: {first}"

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection may fail to close; it is dropped either way
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_conn()
        if self._engine is not None:
            self._engine.dispose()


def _libpq_uri(url: str) -> str | None:
    """The libpq URI of a SQLAlchemy PostgreSQL URL with the psycopg2 (default) driver; None for
    anything else. Both use RFC 3986 URLs with percent-encoded credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgresql+psycopg2", "postgres"):
        return None
    return f"postgresql://{rest}"
