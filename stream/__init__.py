"""The apply engine: consume Debezium events, apply them idempotently to the target."""
