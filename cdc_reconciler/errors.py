"""The one user-facing failure type. Only the CLI layer turns it into ``FAILED: …`` and a
non-zero exit; library code raises it (or a subclass) with a message a data engineer can act on."""


class CdcrError(Exception):
    """A failure the user can act on. The message says what failed and what to do."""


class ConfigError(CdcrError):
    """The configuration is missing or invalid."""


def first_line(exc: BaseException) -> str:
    """An error's message in one line (its first), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def db_error_line(exc: BaseException) -> str:
    """A database error in one line: its type and the driver's first line (SQLAlchemy's own text
    adds the statement and a link on further lines, which a ``FAILED:`` line must not carry)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {first_line(orig)}"
