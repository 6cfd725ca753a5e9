"""The one user-facing failure type. Only the CLI layer turns it into ``FAILED: …`` and a
non-zero exit; library code raises it (or a subclass) with a message a data engineer can act on."""


class CdcrError(Exception):
    """A failure the user can act on. The message says what failed and what to do."""


class ConfigError(CdcrError):
    """The configuration is missing or invalid."""
