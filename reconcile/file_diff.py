"""Compare a data file with a table both ways, without downloading the rows that agree.

The algorithm is the database-pair one (reconcile/diff.py, after reladiff): count and checksum
per key range on both sides, each computed where the data is (DuckDB over the file, PostgreSQL
over the table, both at once), bisect only the ranges that differ, download rows only for ranges
of at most ``threshold`` rows, then classify each key.

What differs from database pairs is the *key order*. A file and a table do not sort keys alike
(text collations, numbers spelt as text, composite keys), so segments here are ranges of a
60-bit hash of the **canonical key** (file_normalize.py) — the same value on both sides whatever
the spelling. A segment ``[p << s, (p + 1) << s)`` is a hash prefix; splitting it into ``2**b``
children is one ``GROUP BY kh >> (s - b)`` per side over the parents that differed. The row
checksum is ``bit_xor`` of a 60-bit hash of the canonical row, next to ``count(*)``.

Results, per key (canonical key values):

- ``missing_in_table``: in the file only;
- ``missing_in_file``: in the table only;
- ``mismatched``: in both, the listed columns differing;
- ``duplicate_in_file``: the key is on more than one file row (never backfilled).

File rows whose key is empty or does not parse as the key column's type cannot be matched; they
are counted as ``file_bad_key`` with examples, never dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cdc_reconciler.connectors.files import DataFile
from cdc_reconciler.connectors.postgres.sql import qualified_ident, quote_ident
from cdc_reconciler.reconcile.file_normalize import (
    PG_SESSION,
    ColumnType,
    duck_canonical,
    duck_key_valid,
    hash60,
    joined,
    pg_canonical,
)
from cdc_reconciler.reconcile.segments import Segment

HASH_BITS = 60
FILE_ROWS = "cdcr_file_canon"  # DuckDB temp table of the file's canonical rows
INTEGER_TYPES = ("smallint", "integer", "bigint")
MISSING_IN_TABLE = "missing_in_table"
MISSING_IN_FILE = "missing_in_file"
MISMATCHED = "mismatched"
DUPLICATE_IN_FILE = "duplicate_in_file"
DUPLICATE_IN_TABLE = "duplicate_in_table"  # possible when --key is not the table's primary key
KINDS = (MISSING_IN_TABLE, MISSING_IN_FILE, MISMATCHED, DUPLICATE_IN_FILE, DUPLICATE_IN_TABLE)


@dataclass(frozen=True, slots=True)
class FileDiffOptions:
    """``threshold``: download a differing segment's rows once it holds at most this many;
    ``max_bits``: at most ``2**max_bits`` children per split; ``fetch_rows``: rows per leaf
    download query (bounds memory while classifying)."""

    threshold: int = 64
    max_bits: int = 16
    fetch_rows: int = 50_000

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if not 1 <= self.max_bits <= 20:
            raise ValueError("max_bits must be between 1 and 20")


@dataclass(frozen=True, slots=True)
class Mapping:
    """What is compared: the table, its key and compared columns (keys first, table names and
    types) and the file column each comes from."""

    schema: str
    name: str
    key: tuple[ColumnType, ...]
    columns: tuple[ColumnType, ...]
    file_column: dict[str, str] = field(hash=False)
    db_where: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql_name(self) -> str:
        return qualified_ident(self.schema, self.name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)

    @property
    def integer_key(self) -> bool:
        """One integer key column: segments are then ranges of the key itself (the primary-key
        index serves the downloads), not of its hash."""
        return len(self.key) == 1 and self.key[0].pg_type in INTEGER_TYPES


CanonKey = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class FileDifference:
    kind: str
    key: CanonKey  # canonical key values, in key order
    columns: tuple[str, ...] = ()  # differing columns (mismatched only)
    file_row: dict[str, str | None] | None = None  # canonical text per table column
    table_row: dict[str, str | None] | None = None
    table_key: tuple[Any, ...] | None = None  # the table's own key values (table rows only)
    occurrences: int = 1  # duplicate_in_file: file rows with the key
    leaf: tuple[int, int] | None = None  # (prefix, shift) of the key-hash range it was found in

    def as_json(self, mapping: Mapping) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "key": dict(zip(mapping.key_names, self.key, strict=True)),
        }
        if self.columns:
            out["columns"] = list(self.columns)
        if self.file_row is not None:
            out["file_row"] = self.file_row
        if self.table_row is not None:
            out["table_row"] = self.table_row
        if self.kind in (DUPLICATE_IN_FILE, DUPLICATE_IN_TABLE):
            out["occurrences"] = self.occurrences
        return out


@dataclass(slots=True)
class FileDiffStats:
    file_rows: int = 0
    table_rows: int = 0
    file_bad_key: int = 0
    segments_compared: int = 0
    rows_downloaded: int = 0
    levels: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "file_rows": self.file_rows,
            "table_rows": self.table_rows,
            "file_bad_key": self.file_bad_key,
            "segments_compared": self.segments_compared,
            "rows_downloaded": self.rows_downloaded,
            "levels": self.levels,
        }


@dataclass(frozen=True, slots=True)
class Leaf:
    """A differing hash segment small enough to download: prefix ``prefix`` at ``shift``."""

    prefix: int
    shift: int
    rows: int  # the larger side's count

    def segment(self, table: str) -> Segment:
        return Segment(
            table, lo=(self.prefix << self.shift,), hi=((self.prefix + 1) << self.shift,)
        )


@dataclass(frozen=True, slots=True)
class FileDiffResult:
    differences: tuple[FileDifference, ...]
    stats: FileDiffStats
    leaves: tuple[Leaf, ...]
    bad_key_examples: tuple[dict[str, Any], ...] = ()

    def count(self, kind: str) -> int:
        return sum(1 for d in self.differences if d.kind == kind)

    @property
    def clean(self) -> bool:
        return not self.differences and self.stats.file_bad_key == 0


# --- SQL ------------------------------------------------------------------------------------


def _refs(cols: Sequence[ColumnType]) -> list[tuple[str, ColumnType]]:
    """The subquery's canonical columns ``c0…`` (keys come first in ``Mapping.columns``)."""
    return [(f"c{j}", c) for j, c in enumerate(cols)]


def table_base_sql(m: Mapping) -> str:
    """PostgreSQL: per table row, its raw key (``r0…``), canonical columns (``c0…``), key hash
    ``kh`` and row hash ``rh``."""
    raw = [f"{quote_ident(k.name)} AS r{i}" for i, k in enumerate(m.key)]
    canon = [f"{pg_canonical(c)} AS c{j}" for j, c in enumerate(m.columns)]
    where = f"WHERE ({m.db_where})" if m.db_where else ""
    nk = len(m.key)
    kh = "r0::bigint" if m.integer_key else hash60(joined(_refs(m.key), duck=False), duck=False)
    rh = hash60(joined(_refs(m.columns), duck=False), duck=False)
    rs = ", ".join(f"r{i}" for i in range(nk))
    cs = ", ".join(f"c{j}" for j in range(len(m.columns)))
    return (
        f"SELECT {rs}, {cs}, {kh} AS kh, {rh} AS rh FROM "
        f"(SELECT {', '.join(raw + canon)} FROM {m.sql_name} {where}) s"
    )


def file_key_valid(m: Mapping, canon: Sequence[str]) -> str:
    """DuckDB condition: the file row's key (canonical expressions ``canon``) can be matched.
    An integer key must be a whole number within bigint ('1.5' and 'abc' are bad keys)."""
    if m.integer_key:
        c = canon[0]
        return (
            f"(coalesce(regexp_full_match({c}, '-?[0-9]+'), false) "
            f"AND TRY_CAST({c} AS BIGINT) IS NOT NULL)"
        )
    return "(" + " AND ".join(duck_key_valid(k, e) for k, e in zip(m.key, canon, strict=True)) + ")"


def file_base_sql(m: Mapping) -> str:
    """DuckDB: per file row, canonical columns (``c0…``), ``valid`` key, ``kh`` and ``rh``."""
    exprs = [duck_canonical(c, m.file_column[c.name]) for c in m.columns]
    canon = [f"{e} AS c{j}" for j, e in enumerate(exprs)]
    valid = file_key_valid(m, [f"c{i}" for i in range(len(m.key))])
    kh = hash60(joined(_refs(m.key), duck=True), duck=True)
    if m.integer_key:
        kh = "TRY_CAST(c0 AS BIGINT)"
    rh = hash60(joined(_refs(m.columns), duck=True), duck=True)
    cs = ", ".join(f"c{j}" for j in range(len(m.columns)))
    return (
        f"SELECT {cs}, {kh} AS kh, {rh} AS rh, ({valid}) AS valid "
        f"FROM (SELECT {', '.join(canon)} FROM file_rows) s"
    )


Stats = dict[int | None, tuple[int, int]]  # bucket -> (count, xor)


def _shift_for(lo: int | None, hi: int | None, bits: int) -> int:
    """The shift that cuts integer keys ``lo..hi`` into about ``2**bits`` ranges."""
    if lo is None or hi is None:
        return 0
    span = hi - lo + 1
    return max(0, min(62, math.ceil(math.log2(max(1.0, span / 2**bits)))))


def _coarsen(stats: Stats, by: int) -> Stats:
    """Merge ranges ``by`` bits coarser: counts add, checksums xor."""
    if by <= 0:
        return stats
    out: Stats = {}
    for b, (n, x) in stats.items():
        assert b is not None
        key = b >> by
        n0, x0 = out.get(key, (0, 0))
        out[key] = (n0 + n, x0 ^ x)
    return out


class _FileDiffer:
    def __init__(
        self,
        conn: sa.Connection,
        df: DataFile,
        mapping: Mapping,
        options: FileDiffOptions,
        pool: ThreadPoolExecutor,
        on_phase: Callable[[str], None],
    ) -> None:
        self.conn, self.df, self.m, self.opt, self.pool = conn, df, mapping, options, pool
        self.on_phase = on_phase
        self.tbase = table_base_sql(mapping)
        self.fbase = file_base_sql(mapping)
        self.stats = FileDiffStats()

    # -- stats per level ------------------------------------------------------------------

    def table_stats(self, shift: int, parents: tuple[int, Sequence[int]] | None) -> Stats:
        params: dict[str, Any] = {"s": shift}
        cond = ""
        if parents is not None:
            params["ps"], params["parents"] = parents[0], list(parents[1])
            cond = "WHERE (kh >> :ps) = ANY(:parents)"
        rows = self.conn.execute(
            sa.text(
                f"SELECT kh >> :s, count(*), coalesce(bit_xor(rh), 0) FROM ({self.tbase}) t "
                f"{cond} GROUP BY 1"
            ),
            params,
        ).all()
        return {int(b): (int(n), int(x)) for b, n, x in rows}

    def file_stats(self, shift: int, parents: tuple[int, Sequence[int]] | None) -> Stats:
        cond = ""
        params: list[Any] = [shift]
        if parents is not None:
            self._parents([(parents[0], p) for p in parents[1]])
            cond = "AND (kh >> ?) IN (SELECT p FROM cdcr_parents)"
            params.append(parents[0])
        rows = self.df.query(
            f"SELECT CASE WHEN valid THEN kh >> ? END, count(*), coalesce(bit_xor(rh), 0) "
            f"FROM {FILE_ROWS} t WHERE (valid OR {parents is None}) {cond} GROUP BY 1",
            params,
        )
        return {None if b is None else int(b): (int(n), int(x)) for b, n, x in rows}

    def _parents(self, ids: Sequence[tuple[int, int]]) -> None:
        """Fill DuckDB's ``cdcr_parents (s, p)`` with (shift, prefix) pairs, in one statement."""
        self.df.query(
            "CREATE OR REPLACE TEMP TABLE cdcr_parents AS SELECT CAST(unnest(?) AS BIGINT) AS s, "
            "CAST(unnest(?) AS BIGINT) AS p",
            [[int(x[0]) for x in ids], [int(x[1]) for x in ids]],
        )

    def level(self, shift: int, parents: tuple[int, Sequence[int]] | None) -> tuple[Stats, Stats]:
        fut = self.pool.submit(self.table_stats, shift, parents)
        f = self.file_stats(shift, parents)
        return f, fut.result()

    # -- bisection ------------------------------------------------------------------------

    def table_key_range(self) -> tuple[int | None, int | None]:
        """Smallest and largest integer key of the table (the primary-key index answers)."""
        lo, hi = self.conn.execute(sa.text(f"SELECT min(r0), max(r0) FROM ({self.tbase}) t")).one()
        return (None if lo is None else int(lo), None if hi is None else int(hi))

    def materialise(self) -> None:
        """One scan of the file: its canonical rows, key and row hashes into DuckDB's own
        storage (memory up to its limit, then its temporary directory), so later levels and
        downloads do not parse and normalise the file again."""
        self.on_phase(f"reading {self.df.path.name}")
        self.df.query(f"CREATE OR REPLACE TEMP TABLE {FILE_ROWS} AS {self.fbase}")

    def run(self, first_bits: int) -> tuple[list[Leaf], int]:
        """Level 1, then bisect; returns the leaves and the count of file rows with bad keys.

        The table's level-1 checksums start at once, beside the file's one scan. For integer
        keys they use the table's own key range; once the file's range is known too, the shift
        that covers both is taken and the table's finer ranges are merged into it (counts add,
        checksums xor), so nothing is scanned twice."""
        bits = first_bits
        what = "key ranges" if self.m.integer_key else "key-hash ranges"
        if self.m.integer_key:
            tlo, thi = self.table_key_range()
            t_shift = _shift_for(tlo, thi, bits)
        else:
            t_shift = HASH_BITS - bits
        fut = self.pool.submit(self.table_stats, t_shift, None)
        try:
            self.materialise()
        finally:
            t = fut.result()
        shift = t_shift
        if self.m.integer_key:
            [(flo, fhi)] = self.df.query(f"SELECT min(kh), max(kh) FROM {FILE_ROWS} WHERE valid")
            lows = [x for x in (flo, tlo) if x is not None]
            highs = [x for x in (fhi, thi) if x is not None]
            if lows:
                shift = max(t_shift, _shift_for(int(min(lows)), int(max(highs)), bits))
            t = _coarsen(t, shift - t_shift)
        self.on_phase(f"checksums of about {2**bits} {what}")
        f = self.file_stats(shift, None)
        bad = f.pop(None, (0, 0))[0]
        self.stats.file_bad_key = bad
        self.stats.file_rows = sum(n for n, _ in f.values())
        self.stats.table_rows = sum(n for n, _ in t.values())
        self.stats.levels = 1
        self.stats.segments_compared = len(set(f) | set(t))
        leaves: list[Leaf] = []
        todo = self.split(f, t, shift, leaves)
        while todo:
            worst = max(n for _, n in todo)
            b = min(self.opt.max_bits, max(1, math.ceil(math.log2(worst / self.opt.threshold))))
            b = min(b, shift)
            new_shift = shift - b
            self.on_phase(f"bisecting {len(todo)} differing ranges")
            f, t = self.level(new_shift, (shift, [p for p, _ in todo]))
            self.stats.levels += 1
            self.stats.segments_compared += len(todo) * 2**b
            shift = new_shift
            todo = self.split(f, t, shift, leaves)
        return leaves, bad

    def split(self, f: Stats, t: Stats, shift: int, leaves: list[Leaf]) -> list[tuple[int, int]]:
        """Record differing buckets that are small enough (or cannot split) as leaves; return
        the others as (prefix, rows) to split further."""
        todo: list[tuple[int, int]] = []
        for b in set(f) | set(t):
            assert b is not None
            a, c = f.get(b, (0, 0)), t.get(b, (0, 0))
            if a == c:
                continue
            n = max(a[0], c[0])
            if n <= self.opt.threshold or shift == 0:
                leaves.append(Leaf(b, shift, n))
            else:
                todo.append((b, n))
        return todo

    # -- leaves ---------------------------------------------------------------------------

    def fetch(self, leaves: list[Leaf]) -> list[FileDifference]:
        """Download and classify the leaves' rows, at most ``fetch_rows`` (estimated) per
        query pair: one scan of each side per chunk, whatever the leaves' depths."""
        found: list[FileDifference] = []
        chunk: list[Leaf] = []
        rows = 0
        for leaf in sorted(leaves, key=lambda x: (x.shift, x.prefix)):
            if chunk and rows + leaf.rows > self.opt.fetch_rows:
                found += self.fetch_chunk(chunk)
                chunk, rows = [], 0
            chunk.append(leaf)
            rows += leaf.rows
        if chunk:
            found += self.fetch_chunk(chunk)
        return found

    def fetch_chunk(self, leaves: list[Leaf]) -> list[FileDifference]:
        """Download both sides' rows of ``leaves`` (the table's in a thread, beside the file's)
        and classify them key by key."""
        self.on_phase(f"downloading rows of {len(leaves)} differing ranges")
        by_shift: dict[int, list[int]] = {}
        for leaf in leaves:
            by_shift.setdefault(leaf.shift, []).append(leaf.prefix)
        sql, params = self._table_rows_query(leaves, by_shift)

        def table_rows() -> list[sa.Row[Any]]:
            return list(self.conn.execute(sa.text(sql), params))

        fut = self.pool.submit(table_rows)
        frows = self._file_rows(by_shift)
        trows = fut.result()
        self.stats.rows_downloaded += len(frows) + len(trows)
        sides = self._by_key(frows, trows, _leaf_finder(leaves, sorted(by_shift)))
        return _differences(sides, self.m.column_names)

    def _table_rows_query(
        self, leaves: list[Leaf], by_shift: dict[int, list[int]]
    ) -> tuple[str, dict[str, Any]]:
        """The query for the table's rows of ``leaves``: their canonical key and columns, then
        the key hash."""
        rs = ", ".join(f"r{i}" for i in range(len(self.m.key)))
        cs = ", ".join(f"c{j}" for j in range(len(self.m.columns)))
        if self.m.integer_key:
            # Ranges of the key itself: index range scans instead of a scan of the table.
            params: dict[str, Any] = {
                "lo": [max(x.prefix << x.shift, -(2**63)) for x in leaves],
                "hi": [min(((x.prefix + 1) << x.shift) - 1, 2**63 - 1) for x in leaves],
            }
            sql = (
                f"SELECT {rs}, {cs}, kh FROM ({self.tbase}) t JOIN unnest(CAST(:lo AS bigint[]), "
                "CAST(:hi AS bigint[])) AS g(lo, hi) ON t.r0 BETWEEN g.lo AND g.hi"
            )
            return sql, params
        params = {}
        conds = []
        for i, sh in enumerate(sorted(by_shift)):
            params[f"s{i}"], params[f"ids{i}"] = sh, by_shift[sh]
            conds.append(f"(kh >> :s{i}) = ANY(:ids{i})")
        return f"SELECT {rs}, {cs}, kh FROM ({self.tbase}) t WHERE {' OR '.join(conds)}", params

    def _file_rows(self, by_shift: dict[int, list[int]]) -> list[tuple[Any, ...]]:
        """The file's canonical rows under the (shift -> prefixes) ranges, then the key hash."""
        shifts = sorted(by_shift)
        self._parents([(sh, p) for sh in shifts for p in by_shift[sh]])
        fconds = " OR ".join(
            f"(kh >> {int(sh)}) IN (SELECT p FROM cdcr_parents WHERE s = {int(sh)})"
            for sh in shifts
        )
        cs = ", ".join(f"c{j}" for j in range(len(self.m.columns)))
        return self.df.query(f"SELECT {cs}, kh FROM {FILE_ROWS} t WHERE valid AND ({fconds})")

    def _by_key(
        self,
        frows: Sequence[Sequence[Any]],
        trows: Sequence[Sequence[Any]],
        leaf_at: Callable[[int], tuple[int, int]],
    ) -> _Sides:
        """Both sides' downloaded rows by canonical key."""
        nk, nc = len(self.m.key), len(self.m.columns)
        sides = _Sides()
        for r in frows:
            key = tuple(r[:nk])
            sides.file.setdefault(key, []).append(tuple(r[:nc]))
            sides.leaf[key] = leaf_at(int(r[nc]))
        for r in trows:
            canon = tuple(r[nk : nk + nc])
            key = tuple(canon[:nk])
            sides.table[key] = (tuple(r[:nk]), canon)
            sides.table_count[key] = sides.table_count.get(key, 0) + 1
            sides.leaf[key] = leaf_at(int(r[nk + nc]))
        return sides

    def bad_key_examples(self, limit: int = 5) -> list[dict[str, Any]]:
        cols = ", ".join(quote_ident(self.m.file_column[k.name]) for k in self.m.key)
        exprs = [duck_canonical(c, self.m.file_column[c.name]) for c in self.m.key]
        valid = file_key_valid(self.m, exprs)
        rows = self.df.query(
            f"SELECT {cols} FROM file_rows WHERE NOT coalesce({valid}, false) LIMIT {int(limit)}"
        )
        names = [self.m.file_column[k.name] for k in self.m.key]
        return [dict(zip(names, r, strict=True)) for r in rows]


def _order(v: str | None) -> tuple[int, Decimal, str]:
    """Sort canonical key values: numbers by value, then text, then NULL."""
    if v is None:
        return (2, Decimal(0), "")
    try:
        d = Decimal(v)
    except ArithmeticError:
        return (1, Decimal(0), v)
    return (1, Decimal(0), v) if d.is_nan() else (0, d, v)


def estimate_rows(conn: sa.Connection, m: Mapping) -> int:
    """The table's row count: the planner's estimate when the table was analysed, else (a new
    table) an exact count, which is cheap exactly when the table is small."""
    est = conn.execute(
        sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": m.sql_name},
    ).scalar()
    if est is not None and int(est) >= 0 and not m.db_where:
        return int(est)
    where = f"WHERE ({m.db_where})" if m.db_where else ""
    return int(conn.execute(sa.text(f"SELECT count(*) FROM {m.sql_name} {where}")).scalar() or 0)


def first_bits(estimated_rows: int, options: FileDiffOptions) -> int:
    """Bits of the first split: about a quarter of ``threshold`` rows per range for the
    estimated size (so that nearly every differing range is small enough to download without a
    second level), between 4 and ``max_bits``."""
    if estimated_rows <= 0:
        return min(10, options.max_bits)
    want = math.ceil(math.log2(max(2.0, 4 * estimated_rows / options.threshold)))
    return max(min(4, options.max_bits), min(options.max_bits, want))


def start_snapshot(conn: sa.Connection) -> None:
    """Begin the table side's one REPEATABLE READ, READ ONLY transaction with fixed output."""
    conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    conn.exec_driver_sql(PG_SESSION)


def diff_file(
    conn: sa.Connection,
    df: DataFile,
    mapping: Mapping,
    options: FileDiffOptions | None = None,
    on_phase: Callable[[str], None] = lambda _: None,
) -> FileDiffResult:
    """Every difference between the file and the table, sorted by kind then key.

    ``conn`` must be in a fresh transaction (see :func:`start_snapshot`), so the whole diff sees
    one snapshot of the table. Reads only. Database errors propagate unchanged; file errors are
    CdcrError."""
    opt = options or FileDiffOptions()
    estimate = estimate_rows(conn, mapping)
    with ThreadPoolExecutor(max_workers=1) as pool:
        d = _FileDiffer(conn, df, mapping, opt, pool, on_phase)
        leaves, bad = d.run(first_bits(estimate, opt))
        found = d.fetch(leaves)
        examples = d.bad_key_examples() if bad else []
    found.sort(key=lambda x: (KINDS.index(x.kind), [_order(v) for v in x.key]))
    return FileDiffResult(tuple(found), d.stats, tuple(leaves), tuple(examples))


@dataclass
class _Sides:
    """One chunk's downloaded rows by canonical key: the file's (every row with the key), the
    table's (raw key, canonical row; the last one read), how many table rows hold the key, and
    the leaf (prefix, shift) each key fell in."""

    file: dict[CanonKey, list[tuple[str | None, ...]]] = field(default_factory=dict)
    table: dict[CanonKey, tuple[tuple[Any, ...], tuple[str | None, ...]]] = field(
        default_factory=dict
    )
    table_count: dict[CanonKey, int] = field(default_factory=dict)
    leaf: dict[CanonKey, tuple[int, int]] = field(default_factory=dict)


def _leaf_finder(leaves: list[Leaf], shifts: list[int]) -> Callable[[int], tuple[int, int]]:
    """kh -> the (prefix, shift) of the leaf among ``leaves`` that holds it."""
    leafset = {(x.prefix, x.shift) for x in leaves}

    def leaf_at(kh: int) -> tuple[int, int]:
        for sh in shifts:
            if (kh >> sh, sh) in leafset:
                return (kh >> sh, sh)
        raise AssertionError("a downloaded row outside every leaf")

    return leaf_at


def _table_duplicates(sides: _Sides) -> list[FileDifference]:
    """A key on several table rows (--key is not unique there) cannot be matched row to row:
    it is reported as such and nothing else is said about it (a file duplicate still is)."""
    out: list[FileDifference] = []
    for key, n in sides.table_count.items():
        if n > 1:
            out.append(
                FileDifference(
                    DUPLICATE_IN_TABLE,
                    key,
                    table_key=sides.table[key][0],
                    occurrences=n,
                    leaf=sides.leaf[key],
                )
            )
            del sides.table[key]
            if len(sides.file.get(key, ())) <= 1:
                sides.file.pop(key, None)
    return out


def _file_key_difference(
    key: CanonKey,
    frs: list[tuple[str | None, ...]],
    trow: tuple[tuple[Any, ...], tuple[str | None, ...]] | None,
    leaf: tuple[int, int],
    names: Sequence[str],
) -> FileDifference | None:
    """What differs for a key the file has: duplicated in the file, missing in the table,
    mismatched, or nothing (None)."""
    if len(frs) > 1:
        return FileDifference(
            DUPLICATE_IN_FILE,
            key,
            table_key=None if trow is None else trow[0],
            occurrences=len(frs),
            leaf=leaf,
        )
    frow = frs[0]
    if trow is None:
        return FileDifference(
            MISSING_IN_TABLE, key, file_row=dict(zip(names, frow, strict=True)), leaf=leaf
        )
    if trow[1] == frow:
        return None
    cols = tuple(n for n, a, b in zip(names, frow, trow[1], strict=True) if a != b)
    return FileDifference(
        MISMATCHED,
        key,
        cols,
        dict(zip(names, frow, strict=True)),
        dict(zip(names, trow[1], strict=True)),
        trow[0],
        leaf=leaf,
    )


def _differences(sides: _Sides, names: Sequence[str]) -> list[FileDifference]:
    """Every difference of one chunk: table duplicates, then the file's keys, then the keys
    only the table has."""
    out = _table_duplicates(sides)
    for key, frs in sides.file.items():
        diff = _file_key_difference(key, frs, sides.table.get(key), sides.leaf[key], names)
        if diff is not None:
            out.append(diff)
    out.extend(
        FileDifference(
            MISSING_IN_FILE,
            key,
            table_row=dict(zip(names, canon, strict=True)),
            table_key=raw,
            leaf=sides.leaf[key],
        )
        for key, (raw, canon) in sides.table.items()
        if key not in sides.file
    )
    return out
