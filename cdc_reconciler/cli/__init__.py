"""The ``cdcr`` command line: one layer over the library.

- :mod:`.common`: the shared options, the one time parser, the one JSON writer, the renderers and
  the one edge that turns a failure into ``FAILED: …`` and an exit status.
- :mod:`.root`: the ``cdcr`` application (``config show``, ``migrate``, ``doctor``) and ``main``.
- One module per command group: :mod:`.stream` (``run``, ``replay``, ``tables sync``),
  :mod:`.lag`, :mod:`.reconcile` (``reconcile``; its ``--sample`` in :mod:`.sample`),
  :mod:`.status`, :mod:`.file` (``reconcile-file``), :mod:`.review`.

The command modules import :mod:`.common` (and no other command module but :mod:`.sample`); :mod:`.root` imports them and registers them, so
there is no import cycle.
"""

from cdc_reconciler.cli.root import PIPED_WIDTH, app, main

__all__ = ["PIPED_WIDTH", "app", "main"]
