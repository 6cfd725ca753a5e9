"""Which tables a consumer group applies, and from which topics (zero-configuration reconcile).

The reconciler needs, per source table, the Kafka topics whose applied offsets prove closure.
Nothing is guessed from ``CDCR_KAFKA__TOPIC_PREFIX``: the topics are the ones the group has
actually applied (``cdcr.applied_offsets``), and each is mapped to its source table with the
apply engine's own routing (:meth:`TableResolver.source_name`, the topic's last two parts
``<schema>.<table>`` whatever the prefix), then to its target table with the same YAML mapping the
engine uses. So a consumer configured only with ``CDCR_KAFKA__TOPIC_PATTERN`` is reconciled with no
other configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from cdc_reconciler.config import Settings
from cdc_reconciler.connectors.debezium import ChangeEvent
from cdc_reconciler.stream.errors import ApplyError
from cdc_reconciler.stream.tables import TableResolver

# An event with no source block: routing then falls back to the topic name, as for a real event
# whose envelope does not name its table.
_NO_SOURCE = ChangeEvent("r", None, None, None, None, None, frozenset(), 0, 0, False, b"", None)


@dataclass(frozen=True, slots=True)
class AppliedTables:
    """The group's applied topics grouped by source table ``<schema>.<table>``."""

    group: str
    topics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unrouted: tuple[str, ...] = ()  # applied topics the routing cannot name a table for

    def tables(self) -> list[str]:
        return sorted(self.topics)

    def topics_of(self, table: str) -> tuple[str, ...]:
        return self.topics.get(table, ())


def source_table_of(resolver: TableResolver, topic: str) -> str | None:
    """The source table the apply engine routes ``topic``'s events to (when the events do not
    name it themselves), or None when the topic name has no ``<schema>.<table>`` part."""
    try:
        schema, table = resolver.source_name(topic, _NO_SOURCE)
    except ApplyError:
        return None
    return f"{schema}.{table}"


def applied_tables(conn: sa.Connection, settings: Settings, target: sa.Engine) -> AppliedTables:
    """Read the group's applied topics and map them to source tables (see the module doc)."""
    group = settings.kafka.group_id
    topics = [
        r[0]
        for r in conn.execute(
            sa.text(
                "SELECT DISTINCT topic FROM cdcr.applied_offsets WHERE consumer_group = :g "
                "ORDER BY topic"
            ),
            {"g": group},
        )
    ]
    resolver = TableResolver(target, dict(settings.tables))
    by_table: dict[str, list[str]] = {}
    unrouted: list[str] = []
    dlq = settings.kafka.dlq_topic()
    for t in topics:
        if t == dlq:
            continue
        name = source_table_of(resolver, t)
        if name is None:
            unrouted.append(t)
        else:
            by_table.setdefault(name, []).append(t)
    return AppliedTables(group, {k: tuple(v) for k, v in by_table.items()}, tuple(unrouted))
