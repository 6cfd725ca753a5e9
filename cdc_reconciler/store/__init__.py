"""The service's own tables (schema ``cdcr`` in the target, created by the Alembic migrations in
``alembic/``), one module per role. Nothing outside this package writes SQL against ``cdcr.*``
except the apply engine's batch writes of rows and tombstones (connectors/target.py), which share
the row writes' statements for speed.

- ``schema``: is the target migrated to Alembic head.
- ``offsets``: ``cdcr.applied_offsets``, written with each batch, read to resume and for closure.
- ``watermarks``: ``cdcr.watermarks``, advanced by compare-and-swap only.
- ``runs``: ``cdcr.reconcile_runs`` (the audit of every reconcile), status a ``RunStatus``.
- ``discrepancies``: ``cdcr.discrepancies`` (the review queue) and ``cdcr.extra_rows_archive``.
- ``dead_letters``: ``cdcr.dead_letters``.
- ``tombstones``: ``cdcr.tombstones`` lookups.
- ``deferred``: ``cdcr.deferred_keys`` (keys whose difference was still in flight).
- ``purge``: removing old tombstones and audit rows (``cdcr purge``, and tests).
"""

SCHEMA = "cdcr"
