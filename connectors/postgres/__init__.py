"""PostgreSQL access: everything that builds SQL for, or reads the catalog of, a PostgreSQL
database (the target, and the source when tables are mirrored or reconciled).

- :mod:`.sql`: identifier quoting, the one rule every module uses;
- :mod:`.table`: :class:`~.table.TargetTable`, the engine columns and the tombstone key text;
- :mod:`.catalog`: reading a table's columns, key and partitioning from ``pg_catalog``;
- :mod:`.reflect`: :func:`~.reflect.reflect_table`, a target table as the engine sees it;
- :mod:`.adapters`: decoded values reshaped for the target's COPY text input, by column type;
- :mod:`.copytext`: values in COPY text format (the write hot path);
- :mod:`.statements`: the SQL of the versioned writes, built once per table and column set;
- :mod:`.write`: :func:`~.write.write_batch`, :func:`~.write.write_keyless`,
  :func:`~.write.truncate_table`: the versioned, set-based writes;
- :mod:`.partitions`: partitions of time-partitioned targets;
- :mod:`.checksum`: reconcile's SQL: segment counts and row-hash checksums (grouped by key
  bucket), key quantiles, and the row reads of the leaves and repairs.
"""
