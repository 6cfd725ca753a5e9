"""The CLI's common edge (cdc_reconciler/cli/common.py): the one time parser, the one JSON writer
and the one mapping of failures to ``FAILED: …`` and an exit status. No services needed: the
library calls behind the commands are replaced."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from cdc_reconciler.cli import app
from cdc_reconciler.cli.common import SCHEMA_VERSION, iso_utc, parse_time, to_json
from cdc_reconciler.errors import CdcrError
from cdc_reconciler.reconcile import command as reconcile_command
from cdc_reconciler.reconcile import review
from cdc_reconciler.reconcile import status as reconcile_status
from cdc_reconciler.stream import replay as replay_mod
from cdc_reconciler.stream.replay import ReplayResult

T = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


# -- the time parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T10:00",
        "2026-01-01T10:00:00",
        "2026-01-01 10:00:00",
        "2026-01-01T10:00Z",
        "2026-01-01T10:00:00+00:00",
        "2026-01-01T11:00:00+01:00",
        "2026-01-01T05:00:00-05:00",
    ],
)
def test_parse_time_reads_every_form_as_the_same_utc_instant(text: str) -> None:
    got = parse_time(text, "--from")
    assert got == T and got.tzinfo is UTC


def test_parse_time_takes_a_time_without_zone_as_utc() -> None:
    assert parse_time("2026-07-01T00:00", "--to") == datetime(2026, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00", ""])
def test_parse_time_rejects_what_is_not_iso_8601(text: str) -> None:
    with pytest.raises(CdcrError, match=r"^--to: .* is not an ISO 8601 time"):
        parse_time(text, "--to")


def test_replay_takes_a_time_without_zone_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(settings: Any, t0: datetime, t1: datetime, **kw: Any) -> ReplayResult:
        seen.update(t0=t0, t1=t1)
        return ReplayResult(partitions=[])

    monkeypatch.setattr(replay_mod, "replay", fake)
    code, out = invoke("replay", "--from", "2026-01-01T10:00", "--to", "2026-01-01T11:00", "--json")
    assert code == 0, out
    assert seen == {"t0": T, "t1": T + timedelta(hours=1)}
    doc = json.loads(out)
    assert doc["from"] == "2026-01-01T10:00:00Z" and doc["to"] == "2026-01-01T11:00:00Z"
    assert doc["schema_version"] == SCHEMA_VERSION


def test_reconcile_takes_a_time_without_zone_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the common parser, reconcile rejected what replay took as UTC."""
    seen: dict[str, Any] = {}

    def fake(settings: Any, **kw: Any) -> list[Any]:
        seen.update(start=kw["start"], end=kw["end"])
        return []

    monkeypatch.setattr(reconcile_command, "reconcile", fake)
    code, out = invoke(
        "reconcile", "--once", "--from", "2026-01-01T10:00", "--to", "2026-01-01T11:00", "--json"
    )
    assert code == 0, out
    assert seen == {"start": T, "end": T + timedelta(hours=1)}
    assert json.loads(out)["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("status", "flag", "expected"),
    [
        ("repaired", False, 0),  # repaired windows are a success by default
        ("repaired", True, 1),  # --fail-on-differences: any difference fails the gate
        ("differences", False, 0),  # a dry run reports; documented exit 0
        ("differences", True, 1),
        ("clean", True, 0),  # no difference: the gate passes
    ],
)
def test_fail_on_differences_gates_on_any_difference(
    monkeypatch: pytest.MonkeyPatch, status: str, flag: bool, expected: int
) -> None:
    from cdc_reconciler.reconcile.diff import Difference, Kind
    from cdc_reconciler.reconcile.model import TableReport, WindowReport
    from cdc_reconciler.reconcile.segments import Window

    diffs = () if status == "clean" else (Difference(Kind.MISSING, (7,)),)
    window = WindowReport("public.t", Window(None, T), status, diffs)
    report = TableReport("public.t", T, T, windows=[window])
    monkeypatch.setattr(reconcile_command, "reconcile", lambda *a, **k: [report])
    args = ["reconcile", "--once", "--json", *(["--fail-on-differences"] if flag else [])]
    code, out = invoke(*args)
    assert code == expected, out


# -- the JSON writer ------------------------------------------------------------------------------


def test_json_writes_every_instant_as_iso_utc_with_z() -> None:
    doc = json.loads(
        to_json(
            {
                "aware": datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
                "naive": datetime(2026, 1, 1, 10, 0),  # noqa: DTZ001 - a naive time is UTC
                "micro": datetime(2026, 1, 1, 10, 0, 0, 5, tzinfo=UTC),
                "written": "2026-01-01T10:00:00+00:00",  # a library's isoformat()
                "nested": [{"at": T}],
                "text": "ends with +00:00 but is a sentence",
                "other_zone": "2026-01-01T12:00:00+02:00",
                "none": None,
            }
        )
    )
    assert doc["aware"] == doc["naive"] == doc["written"] == "2026-01-01T10:00:00Z"
    assert doc["micro"] == "2026-01-01T10:00:00.000005Z"
    assert doc["nested"] == [{"at": "2026-01-01T10:00:00Z"}]
    assert doc["text"] == "ends with +00:00 but is a sentence"
    assert doc["other_zone"] == "2026-01-01T12:00:00+02:00"  # not a UTC instant: left alone
    assert doc["none"] is None
    assert iso_utc(T) == "2026-01-01T10:00:00Z"


def test_json_carries_schema_version_after_the_document_keys() -> None:
    text = to_json({"consumed": 3, "rate": 1.5})
    assert text.startswith('{"consumed": 3')  # the first key stays first (faust's summary)
    assert json.loads(text) == {"consumed": 3, "rate": 1.5, "schema_version": SCHEMA_VERSION}
    # A document with its own version keeps it.
    assert json.loads(to_json({"schema_version": 7}))["schema_version"] == 7


def test_json_writes_what_json_cannot_hold_as_text() -> None:
    from decimal import Decimal
    from enum import Enum

    class Colour(Enum):
        RED = "red"

    doc = json.loads(to_json({"d": Decimal("1.50"), "e": Colour.RED, "t": (1, 2)}))
    assert doc == {"d": "1.50", "e": "red", "t": [1, 2], "schema_version": SCHEMA_VERSION}


# -- the error edge -------------------------------------------------------------------------------


def _operational(message: str, pgcode: str | None = None) -> sa.exc.OperationalError:
    class Orig(Exception):
        pass

    orig = Orig(message)
    orig.pgcode = pgcode  # type: ignore[attr-defined]
    return sa.exc.OperationalError("SELECT 1", {}, orig)


FAILURES: list[tuple[str, BaseException, str]] = [
    ("cdcr", CdcrError("table public.x is not configured"), "table public.x is not configured"),
    (
        "db-connect",
        _operational('connection to server at "db", port 5432 failed: Connection refused'),
        'cannot connect to PostgreSQL: connection to server at "db", port 5432 failed',
    ),
    (
        "db-query",
        _operational('relation "cdcr.watermarks" does not exist', pgcode="42P01"),
        'database error: Orig: relation "cdcr.watermarks" does not exist',
    ),
    (
        "wrapped-connect",
        CdcrError("cannot read the watermarks"),
        "cannot connect to PostgreSQL: refused",
    ),
    (
        "wrapped-connect-named",
        CdcrError("cannot reach the target database at db:5432/app: refused; check URL"),
        "cannot reach the target database at db:5432/app: refused",
    ),
    (
        "kafka",
        KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")),
        "Kafka error _TRANSPORT: broker down",
    ),
]


def _raise(exc: BaseException) -> Any:
    if str(exc).startswith(("cannot read the watermarks", "cannot reach the target")):
        raise exc from _operational("refused")
    raise exc


@pytest.mark.parametrize(("name", "exc", "message"), FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_is_one_failed_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, name: str, exc: BaseException, message: str
) -> None:
    monkeypatch.setattr(reconcile_status, "status", lambda *a, **k: _raise(exc))
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("FAILED: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # ended by the edge, not the exception


def test_the_same_edge_serves_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers down"))
    monkeypatch.setattr(review, "list_items", lambda *a, **k: _raise(kafka))
    code, out = invoke("review", "list")
    assert code == 1 and out.startswith("FAILED: Kafka error _ALL_BROKERS_DOWN: all brokers down")


def test_a_command_can_ask_for_another_exit_status(tmp_path: Any) -> None:
    """reconcile-file follows diff: an error is exit 2, through the same edge."""
    code, out = invoke(
        "reconcile-file", str(tmp_path / "none.csv"), "--table", "public.t", "--key", "id"
    )
    failed = [line for line in out.splitlines() if line.startswith("FAILED: ")]
    assert code == 2 and len(failed) == 1 and "Traceback" not in out, out


def test_a_bug_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but a CdcrError, a database or a Kafka error keeps its traceback."""
    monkeypatch.setattr(reconcile_status, "status", lambda *a, **k: _raise(KeyError("oops")))
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert "FAILED" not in result.output


def test_a_refused_option_combination_is_a_failed_line() -> None:
    code, out = invoke("review", "resolve", "1")
    assert code == 1 and out.startswith("FAILED: choose exactly one of --apply-source")


def test_a_database_error_inside_a_failed_line_is_one_line() -> None:
    """SQLAlchemy's text of an error carries the statement and a link on further lines; wrapped
    into a CdcrError it used to make a many-line FAILED message (found by a new-user trial)."""
    from cdc_reconciler.errors import db_error_line

    exc = _operational('relation "cdcr.applied_offsets" does not exist\nLINE 1: SELECT …')
    assert "\n" in str(exc)  # what SQLAlchemy itself prints
    assert db_error_line(exc) == 'Orig: relation "cdcr.applied_offsets" does not exist'
    assert db_error_line(ValueError("bad state")) == "ValueError: bad state"
