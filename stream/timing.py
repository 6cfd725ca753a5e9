"""Wall time of the apply loop, per stage: cheap ``time.perf_counter`` sums kept per batch, logged
at DEBUG per batch and summed over a run (``cdcr run --json`` → ``"timing"``).

Stages (seconds of wall time, not CPU):
- ``kafka_wait``: the loop in ``consume()`` (fetching, or waiting for records);
- ``decode``: decoding the records (the Debezium decoder);
- ``redis_seen`` / ``redis_record``: the two Redis round trips of a batch;
- ``plan``: the rest of preparing a batch (routing, collapsing per key), without decode and Redis;
- ``dlq``: producing dead letters (and waiting for their acks);
- ``writer_wait``: the loop waiting for the writer thread (the previous batch's transaction);
- ``db_connect``: taking a connection from the pool (its pre-ping) and BEGIN;
- ``db_write``: the batch's writes (COPY into staging, the versioned merge, deletes);
- ``db_other``: the rest inside the transaction (TOAST re-reads, dead letters, applied offsets);
- ``db_commit``: COMMIT;
- ``offset_commit``: handing the offsets to librdkafka (asynchronous commit).

``decode``, ``redis_seen``, ``plan`` and ``dlq`` run on the loop's thread while the writer thread
runs ``db_*`` and ``redis_record`` of the previous batch: the stages overlap, so their sum may
exceed the span.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

# Which thread spends each stage's time (the rest, ``writer_wait`` and ``offset_commit``, is the
# loop waiting or handing over): the bench reads the critical path from these sums.
LOOP_STAGES = ("kafka_wait", "decode", "redis_seen", "plan", "dlq")
WRITER_STAGES = ("db_connect", "db_write", "db_other", "db_commit", "redis_record")


@dataclass(slots=True)
class Timing:
    """Seconds per stage (see the module docstring); one per batch, and one summed per run."""

    kafka_wait: float = 0.0
    decode: float = 0.0
    redis_seen: float = 0.0
    plan: float = 0.0
    dlq: float = 0.0
    writer_wait: float = 0.0
    db_connect: float = 0.0
    db_write: float = 0.0
    db_other: float = 0.0
    db_commit: float = 0.0
    redis_record: float = 0.0
    offset_commit: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        setattr(self, stage, getattr(self, stage) + seconds)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def merge(self, other: Timing) -> None:
        for f in fields(self):
            self.add(f.name, getattr(other, f.name))

    def as_json(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 4) for f in fields(self)}

    def line(self) -> str:
        """``stage=0.123`` pairs for a log line (milliseconds)."""
        return " ".join(f"{f.name}={getattr(self, f.name) * 1000:.1f}ms" for f in fields(self))
