"""Benchmarks of cdc-reconciler against its peers (run: ``python -m bench.run [--quick]``).

Results: ``bench/results/<date>.json`` and ``docs/benchmarks.md``. Never timed tests."""
