"""The one Kafka error of the service: every failed Kafka call surfaces as :class:`KafkaEdgeError`
(a CdcrError), which keeps the Kafka error code and its symbolic name, so callers decide by code,
never by message text. :func:`is_fatal` is the one rule for "no wait will fix this"."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from cdc_reconciler.errors import CdcrError

# Errors that no wait will fix: credentials, permissions, a broken client. Everything else
# (transport failures, all brokers down, timeouts, coordinator moves) is transient: back off,
# report Kafka down, retry.
_FATAL_CODES = frozenset(
    getattr(KafkaError, name)
    for name in (
        "_AUTHENTICATION",
        "SASL_AUTHENTICATION_FAILED",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "_INVALID_ARG",
        "_UNKNOWN_PROTOCOL",
        "_UNSUPPORTED_FEATURE",
        "_SSL",
        "_FATAL",
    )
    if hasattr(KafkaError, name)
)
# Codes that usually mean "the broker is not reachable": the message says where to look.
_UNREACHABLE_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
)


def is_fatal(error: KafkaError | None) -> bool:
    """True for errors that end the process (authentication, authorisation, librdkafka fatal);
    False for everything a broker outage causes, which callers wait out."""
    if error is None:
        return False
    return bool(error.fatal()) or error.code() in _FATAL_CODES


def error_of(exc: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (None for any other exception)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


class KafkaEdgeError(CdcrError):
    """A Kafka call failed. ``code`` is the Kafka error code (librdkafka's negative local codes
    included), ``code_name`` its symbolic name; both None when the failure did not come from Kafka
    (for example a timeout waiting for a future)."""

    def __init__(self, message: str, *, code: int | None = None, code_name: str | None = None):
        super().__init__(message)
        self.code = code
        self.code_name = code_name

    @classmethod
    def wrap(cls, what: str, failure: BaseException | KafkaError | None) -> KafkaEdgeError:
        """The error for ``what`` failing with ``failure`` (a KafkaException, a KafkaError, any
        other exception, or None when Kafka gave no reason), keeping Kafka's code and name."""
        kerr = failure if isinstance(failure, KafkaError) else None
        if isinstance(failure, BaseException):
            kerr = error_of(failure)
            if kerr is None:
                return cls(f"{what}: {failure}")
        if kerr is None:
            return cls(f"{what}: unknown error")
        hint = ""
        if kerr.code() in _UNREACHABLE_CODES:
            hint = " (is the broker reachable? check CDCR_KAFKA__BOOTSTRAP_SERVERS)"
        return cls(
            f"{what}: {kerr.name()}: {kerr.str()}{hint}", code=kerr.code(), code_name=kerr.name()
        )


def raise_for(what: str, exc: KafkaException) -> None:
    """Raise the KafkaEdgeError for ``exc`` (chained to it)."""
    raise KafkaEdgeError.wrap(what, exc) from exc
