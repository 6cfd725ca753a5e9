"""Values Debezium cannot carry as text are compared by what they mean (issue 9 item 5d):
``timetz`` as an instant (the event carries it converted to UTC) and ``numeric`` by value (an
unconstrained numeric may arrive without its trailing zeros). A real change is still found."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from cdc_reconciler.reconcile.checksum import describe_pair
from cdc_reconciler.reconcile.diff import DiffOptions, Kind, diff_table

from .helpers import create_pair, drop_pair, run

pytestmark = pytest.mark.services


def test_timetz_as_an_instant_and_numeric_by_value(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    q = create_pair(
        source_engine, target_engine, unique_name("tz"), "id int PRIMARY KEY, t timetz, n numeric"
    )
    try:
        run(
            source_engine,
            f"INSERT INTO {q} VALUES (1, '18:34:31+03:30', 1.50), (2, '10:00:00-05', 'NaN'), "
            "(3, '12:00:00+00', 7)",
        )
        # What the target holds after Debezium: the same instants at UTC, trailing zeros gone;
        # row 3 is really different (another instant).
        run(
            target_engine,
            f"INSERT INTO {q} VALUES (1, '15:04:31+00', 1.5), (2, '15:00:00+00', 'NaN'), "
            "(3, '12:00:01+00', 7.000)",
        )
        with source_engine.connect() as s, target_engine.connect() as t:
            pair = describe_pair(s, t, q)
        result = diff_table(source_engine, target_engine, pair, options=DiffOptions(threshold=16))
        assert {(d.kind, d.key, d.columns) for d in result.differences} == {
            (Kind.MISMATCHED, (3,), ("t",))
        }
    finally:
        drop_pair(source_engine, target_engine, q)


def test_numeric_arrays_compare_element_values_and_shape(
    source_engine: sa.Engine, target_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    """A ``numeric[]`` column is verified (it used to fail the table: ``trim_scale(numeric[])``
    does not exist): elements by value, dimensions and NULL vs empty told apart."""
    q = create_pair(
        source_engine, target_engine, unique_name("na"), "id int PRIMARY KEY, a numeric[]"
    )
    try:
        run(
            source_engine,
            f"INSERT INTO {q} VALUES (1, '{{1.50,2,NULL}}'), (2, '{{{{1,2}},{{3,4}}}}'), "
            "(3, '{}'), (4, NULL), (5, '{NaN,7}'), (6, '{1.5}')",
        )
        # Trailing zeros differ (equal); 2-D vs 1-D with the same elements, empty vs NULL and
        # a real value change are differences.
        run(
            target_engine,
            f"INSERT INTO {q} VALUES (1, '{{1.5,2.000,NULL}}'), (2, '{{1,2,3,4}}'), "
            "(3, NULL), (4, NULL), (5, '{NaN,7.0}'), (6, '{1.6}')",
        )
        with source_engine.connect() as s, target_engine.connect() as t:
            pair = describe_pair(s, t, q)
        result = diff_table(source_engine, target_engine, pair, options=DiffOptions(threshold=2))
        assert {(d.kind, d.key, d.columns) for d in result.differences} == {
            (Kind.MISMATCHED, (2,), ("a",)),
            (Kind.MISMATCHED, (3,), ("a",)),
            (Kind.MISMATCHED, (6,), ("a",)),
        }
    finally:
        drop_pair(source_engine, target_engine, q)
