"""The TOAST re-read (engine._fetch_source) reads the source's text in fixed output styles: a
source whose sessions print dates, intervals and bytea differently (DateStyle, IntervalStyle,
bytea_output set on the role or database) must still hand COPY text it reads back exactly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from cdc_reconciler.stream.engine import _fetch_source

pytestmark = pytest.mark.services


def test_source_text_is_read_in_fixed_styles_whatever_the_session_says(
    source_engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("tst")
    with source_engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table public.{name} (id int primary key, d date, i interval, b bytea, "
                "ts timestamptz)"
            )
        )
        conn.execute(
            sa.text(
                f"insert into public.{name} values (1, '2026-03-04', '1 mon 2 days 03:04:05', "
                "'\\x00ff', '2026-03-04 10:00:00+02')"
            )
        )
    odd = sa.create_engine(
        source_engine.url,
        connect_args={
            "options": "-c DateStyle=SQL,DMY -c IntervalStyle=sql_standard "
            "-c bytea_output=escape -c TimeZone=Asia/Kolkata"
        },
    )
    try:
        got = _fetch_source(odd, ("public", name), ["id"], ["d", "i", "b", "ts"], [(1,)])
        assert list(got.values()) == [
            {
                "d": "2026-03-04",
                "i": "1 mon 2 days 03:04:05",
                "b": "\\x00ff",
                "ts": "2026-03-04 08:00:00+00",
            }
        ]
    finally:
        odd.dispose()
        with source_engine.begin() as conn:
            conn.execute(sa.text(f"drop table public.{name}"))
