"""PostgreSQL access: catalog reads, reconcile's checksum and row-read SQL."""
