"""Per-partition accounting: every consumed record ends as exactly one outcome (DESIGN invariant 5):
applied, skipped as duplicate, skipped as stale, dead-lettered, or no-op (tombstones after a
delete, transaction markers, logical messages: consumed, nothing to apply)."""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("applied", "skipped_duplicate", "skipped_stale", "dead_lettered", "skipped_noop")


@dataclass(slots=True)
class PartitionCounts:
    consumed: int = 0
    applied: int = 0
    skipped_duplicate: int = 0
    skipped_stale: int = 0
    dead_lettered: int = 0
    skipped_noop: int = 0
    next_offset: int = -1
    last_event_us: int | None = None

    def add(self, outcome: str, n: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + n)

    def balanced(self) -> bool:
        return self.consumed == sum(int(getattr(self, o)) for o in OUTCOMES)

    def merge(self, other: PartitionCounts) -> None:
        self.consumed += other.consumed
        for o in OUTCOMES:
            self.add(o, getattr(other, o))
        self.next_offset = max(self.next_offset, other.next_offset)
        if other.last_event_us is not None:
            self.last_event_us = max(self.last_event_us or other.last_event_us, other.last_event_us)


@dataclass(slots=True)
class BatchOutcome:
    partitions: dict[tuple[str, int], PartitionCounts] = field(default_factory=dict)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts(self, topic: str, partition: int) -> PartitionCounts:
        key = (topic, partition)
        found = self.partitions.get(key)
        if found is None:
            found = self.partitions[key] = PartitionCounts()
        return found

    def table_add(self, table: str, outcome: str, n: int = 1) -> None:
        t = self.by_table.setdefault(table, {})
        t[outcome] = t.get(outcome, 0) + n

    def total(self) -> PartitionCounts:
        out = PartitionCounts()
        for c in self.partitions.values():
            out.merge(c)
        return out
