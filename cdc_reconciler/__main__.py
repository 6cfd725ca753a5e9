"""``python -m cdc_reconciler`` is ``cdcr``."""

from cdc_reconciler.cli import main

main()
