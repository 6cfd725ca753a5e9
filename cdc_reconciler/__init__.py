"""cdc-reconciler: keep a target database exactly in step with a source database through Debezium
change data capture, and prove it."""

__version__ = "0.1.0"
