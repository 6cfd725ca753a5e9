"""The apply path's error: an event that cannot be applied, with a stable ``kind``."""

from __future__ import annotations

from cdc_reconciler.errors import CdcrError


class ApplyError(CdcrError):
    """An event that cannot be applied. ``kind`` is stable and documented (the engine
    dead-letters it with that reason; outside the engine, e.g. `cdcr tables sync`, it is a
    user-facing CdcrError):

    - ``unknown_table``: no source schema/table in the event or the topic name;
    - ``no_target_table``: the target table does not exist (create it, or run with
      ``--create-missing``);
    - ``missing_key``: the key columns are not in the Kafka key nor in the row;
    - ``unknown_column``: the event has a column the target lacks and it could not be added;
    - ``bad_value``: a value cannot be turned into the target column's text form;
    - ``target_ddl_failed``: the target table (or a type or extension it needs) could not be
      created; the message carries the statement's error. The table is retried every
      ``stream.tables.BLOCKED_RETRY_S`` seconds; other tables keep flowing.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
