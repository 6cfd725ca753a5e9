"""Processed change IDs in Redis: the fast path for skipping redelivered events, never the truth.

IDs are 16-byte digests kept in one set per hour of event time
(``cdcr:<namespace>:ids:<hours since epoch>``; the namespace names the target database, since an
ID processed into one target says nothing about another),
each set expiring ``ttl_s`` after it was last written. A batch costs one round trip to look up
(SMISMEMBER per hour set, pipelined) and one to record (SADD + EXPIRE per hour set, pipelined).
Measured memory: about 72 bytes per ID in a set (DESIGN.md); see docs/benchmarks.md.

If Redis is unreachable, lookups answer "not seen" and records are dropped: the pipeline stays
correct through the position guard in the target (DESIGN invariant 4). Every such failure is
counted and logged by the caller through :attr:`ProcessedIds.available`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

import redis

log = logging.getLogger(__name__)

HOUR_US = 3_600_000_000


def namespace_for(target_url: str) -> str:
    """A short, stable namespace for a target database: host, port and database name (never the
    credentials) hashed."""
    from sqlalchemy.engine import make_url

    u = make_url(target_url)
    ident = f"{u.host}:{u.port}/{u.database}"
    return hashlib.blake2b(ident.encode(), digest_size=4).hexdigest()


class ProcessedIds:
    """Lookup and record processed change IDs. Methods never raise for Redis outages."""

    def __init__(self, client: redis.Redis[bytes], ttl_s: int, namespace: str = "default") -> None:
        self._client = client
        self._prefix = f"cdcr:{namespace}:ids:"
        self._ttl_s = ttl_s
        self.available = True
        self.failures = 0

    def set_key(self, ts_us: int) -> str:
        return f"{self._prefix}{ts_us // HOUR_US}"

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        if self.available:
            log.error(
                "Redis unavailable (%s: %s); continuing without the dedup fast path", what, exc
            )
        self.available = False

    def seen(self, ids: Sequence[tuple[bytes, int]]) -> list[bool]:
        """For each (change_id, ts_us): True if Redis holds it. All False when Redis is down."""
        if not ids:
            return []
        by_key: dict[str, list[int]] = defaultdict(list)
        for i, (_, ts) in enumerate(ids):
            by_key[self.set_key(ts)].append(i)
        out = [False] * len(ids)
        try:
            pipe = self._client.pipeline(transaction=False)
            order = list(by_key.items())
            for key, idx in order:
                pipe.smismember(key, [ids[i][0] for i in idx])  # type: ignore[no-untyped-call]
            results = pipe.execute()
        except redis.RedisError as exc:
            self._failed("lookup", exc)
            return out
        for (_, idx), flags in zip(order, results, strict=True):
            for i, flag in zip(idx, flags, strict=True):
                out[i] = bool(flag)
        if not self.available:
            log.warning("Redis available again")
            self.available = True
        return out

    def record(self, ids: Iterable[tuple[bytes, int]]) -> bool:
        """Record IDs after their batch committed. Returns False (and logs) if Redis is down."""
        by_key: dict[str, list[bytes]] = defaultdict(list)
        for cid, ts in ids:
            by_key[self.set_key(ts)].append(cid)
        if not by_key:
            return True
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, members in by_key.items():
                for start in range(0, len(members), 1000):
                    pipe.sadd(key, *members[start : start + 1000])
                pipe.expire(key, self._ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("record", exc)
            return False
        return True

    def close(self) -> None:
        self._client.close()
