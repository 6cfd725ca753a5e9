"""Optional Faust integration (``pip install 'cdc-reconciler[faust]'``): a faust-streaming agent
that hands batches of records to the same :class:`~cdc_reconciler.stream.engine.ApplyEngine` as
``cdcr run``. The confluent-kafka loop of ``cdcr run`` is the core and the faster path (see
docs/benchmarks.md); this is for teams that already run Faust workers.

Run it with the same ``CDCR_…`` settings as ``cdcr run``::

    python -m cdc_reconciler.stream.faust_app [--create-missing] [--stop-when-idle SECONDS]

Contract:
- The topics are the ones matching ``CDCR_KAFKA__TOPIC_PATTERN`` when the worker starts (the
  dead-letter topic excluded); the consumer group is ``<CDCR_KAFKA__GROUP_ID>-faust``.
- Each batch (``stream.take_events``) is applied in a worker thread (no blocking I/O inside the
  event loop); Faust acks the records when the agent asks for the next batch, i.e. only after the
  target committed them, and commits acked offsets.
- No exception escapes the agent body: on any failure the agent logs it and crashes the app
  without acking the batch, so the process ends and the batch is redelivered on restart
  (harmless: writes are versioned).
- Faust's web server binds 127.0.0.1 (``CDCR_METRICS__PORT`` + 1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
import typer

from cdc_reconciler.cli.common import guarded, to_json
from cdc_reconciler.config import Settings, load_settings
from cdc_reconciler.connectors.kafka import Record, make_consumer
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.stream.command import EngineParts, build_engine

log = logging.getLogger(__name__)

# How often the idle watchdog looks (only with --stop-when-idle), and the extra wait before the
# first record (group join and first fetch).
IDLE_CHECK_S = 0.5
IDLE_BEFORE_FIRST_S = 30.0


def matching_topics(settings: Settings) -> list[str]:
    consumer = make_consumer(settings.kafka, group_id=f"{settings.kafka.group_id}-faust-probe")
    try:
        meta = consumer.list_topics(timeout=30)
    finally:
        consumer.close()
    pattern = re.compile(settings.kafka.topic_pattern)
    dlq = settings.kafka.dlq_topic()
    return sorted(
        t for t in meta.topics if pattern.search(t) and t != dlq and not t.startswith("_")
    )


def make_app(
    settings: Settings,
    parts: EngineParts,
    topics: list[str],
    *,
    stop_when_idle_s: float | None = None,
    datadir: str,
) -> tuple[faust.App, dict[str, Any]]:
    stats: dict[str, Any] = {"consumed": 0, "first": None, "last": None}
    app = faust.App(
        f"{settings.kafka.group_id}-faust",
        broker=[f"kafka://{s}" for s in settings.kafka.bootstrap_servers.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        web_host="127.0.0.1",
        web_port=settings.metrics.port + 1,
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        # Faust wants a data directory even with in-memory tables; keep it out of the cwd.
        datadir=datadir,
    )
    topic = app.topic(
        *topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )
    engine = parts.engine

    @app.agent(topic)
    async def apply(stream: Any) -> None:
        try:
            async for events in stream.take_events(
                settings.kafka.batch_size, within=settings.kafka.batch_timeout_s
            ):
                records = [
                    Record(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.key,
                        e.message.value,
                    )
                    for e in events
                ]
                if stats["first"] is None:
                    stats["first"] = time.time()
                outcome = await asyncio.get_running_loop().run_in_executor(
                    None, engine.process, records
                )
                stats["consumed"] += outcome.total().consumed
                stats["last"] = time.time()
        except asyncio.CancelledError:
            raise  # the worker is stopping (SIGTERM or idle): the unfinished batch stays unacked
        except BaseException as exc:  # noqa: BLE001 - the policy: nothing escapes, crash unacked
            log.exception("apply failed; stopping the worker without acking the batch")
            stats["error"] = repr(exc)
            await app.crash(exc)

    if stop_when_idle_s is not None:

        @app.timer(IDLE_CHECK_S)  # type: ignore[untyped-decorator]
        async def idle_watchdog() -> None:
            # Before the first record, allow time for the group to form and fetching to start.
            if stats.get("stopped_by"):
                return
            last = stats["last"]
            limit = stop_when_idle_s
            if last is None:
                last = stats.setdefault("started", time.time())
                limit += IDLE_BEFORE_FIRST_S
            if time.time() - last >= limit:
                log.info("idle for %.1fs; stopping", limit)
                stats["stopped_by"] = "idle"
                # The worker's own SIGTERM path: a graceful stop that commits acked offsets.
                os.kill(os.getpid(), signal.SIGTERM)

    return app, stats


def _prepare(
    create_missing: bool,
) -> Callable[[], tuple[Settings, list[str], EngineParts]]:
    def prepare() -> tuple[Settings, list[str], EngineParts]:
        settings = load_settings()
        topics = matching_topics(settings)
        if not topics:
            raise CdcrError(f"no topic matches {settings.kafka.topic_pattern!r}")
        parts = build_engine(
            settings,
            create_missing=create_missing,
            group=f"{settings.kafka.group_id}-faust",
            stop=threading.Event(),
        )
        return settings, topics, parts

    return prepare


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON summary, keyed as ``cdcr run --json`` (times in Unix seconds)."""
    rate = None
    if stats["first"] and stats["last"] and stats["last"] > stats["first"]:
        rate = stats["consumed"] / (stats["last"] - stats["first"])
    return {
        "consumed": stats["consumed"],
        "events_per_s": rate or None,
        "first_record_at": stats["first"] or None,
        "last_commit_at": stats["last"] or None,
        "error": "error" in stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cdc_reconciler.stream.faust_app", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--create-missing", action="store_true")
    ap.add_argument("--stop-when-idle", type=float, default=None, metavar="SECONDS")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        # The CLI's one edge: a CdcrError, database or Kafka error is one FAILED line, exit 1.
        settings, topics, parts = guarded(_prepare(args.create_missing))
    except typer.Exit as exc:
        return exc.exit_code
    datadir = tempfile.mkdtemp(prefix="cdcr-faust-")
    app, stats = make_app(
        settings, parts, topics, stop_when_idle_s=args.stop_when_idle, datadir=datadir
    )
    worker = faust.Worker(
        app, loglevel=os.environ.get("CDCR_FAUST_LOGLEVEL", "WARNING"), quiet=True
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    finally:
        shutil.rmtree(datadir, ignore_errors=True)
    print(to_json(summary(stats)))
    return 1 if "error" in stats else code


if __name__ == "__main__":
    sys.exit(main())
