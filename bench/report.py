"""docs/benchmarks.md and docs/benchmarks.png from one result file of bench/run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import ROOT
from cdc_reconciler.stream.timing import LOOP_STAGES, WRITER_STAGES

DOC = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "benchmarks.png"
# docs/design.md: `cdcr lag` for 3 groups x 64 partitions in under 0.5 s.
LAG_TARGET_S = 0.5


def _n(x: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def _fig(rep: dict[str, Any], fig: str = "events_per_s", fmt: str = "{:,.0f}") -> str:
    """``median (min–max)`` of one figure of a repeated contender."""
    sp = rep.get("summary", {}).get(fig, {})
    if sp.get("median") is None:
        return "—"
    if sp.get("n", 0) < 2:
        return fmt.format(sp["median"])
    return f"{fmt.format(sp['median'])} ({fmt.format(sp['min'])}–{fmt.format(sp['max'])})"


def _med(rep: dict[str, Any], fig: str = "events_per_s") -> Any:
    return rep.get("summary", {}).get(fig, {}).get("median")


def _noisy(rep: dict[str, Any]) -> str:
    g = rep.get("gate", {})
    if not g:
        return "—"
    txt = f"{g['loadavg_1m']:.2f}"
    txt = f"**{txt} NOISY**" if g.get("noisy") else txt
    runs = [r["loadavg_1m_at_start"] for r in rep.get("runs", []) if "loadavg_1m_at_start" in r]
    if len(runs) > 1:  # later runs start in the previous run's own decaying load
        txt += " (runs: " + ", ".join(f"{x:.1f}" for x in runs) + ")"
    return txt


def _verdict(rep: dict[str, Any]) -> str:
    runs = rep.get("runs", [])
    bad = [r for r in runs if not r.get("check", {}).get("correct")]
    if not bad:
        return f"correct ({len(runs)}/{len(runs)} runs)"
    rows = ", ".join(str(r.get("check", {}).get("rows_differing", "?")) for r in bad)
    return f"**WRONG in {len(bad)}/{len(runs)} runs** ({rows} rows differ)"


def better_sink(ap: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The JDBC sink run (defaults or tuned) with the higher median events/s."""
    cands = [(k, ap[k]) for k in ("jdbc_tuned", "jdbc_default") if ap.get(k, {}).get("summary")]
    if not cands:
        return "", {}
    return max(cands, key=lambda kv: _med(kv[1]) or 0)


def apply_table(w: Any, reps: list[tuple[str, dict[str, Any]]], ref: Any, ref_label: str) -> None:
    w(
        f"| contender | events/s median (min–max) | vs {ref_label} | events/s from process/"
        "connector start | CPU s (user+sys) | peak RSS MB | 1-min load before (each run) | "
        "target vs source |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, r in reps:
        if not r:
            continue
        if r.get("status"):
            w(f"| {label} | {r['status']} | | | | | | |")
            continue
        w(
            f"| {label} | {_fig(r)} | {_ratio(_med(r), ref)} | "
            f"{_fig(r, 'events_per_s_from_start')} | {_fig(r, 'cpu_s', '{:.1f}')} | "
            f"{_fig(r, 'peak_rss_mb', '{:.0f}')} | {_noisy(r)} | {_verdict(r)} |"
        )
    w("")


def sweep_section(w: Any, sw: dict[str, Any]) -> None:
    noisy = sw.get("noisy")
    w("### JDBC sink sweep" + (" (NOISY: the machine was busy)" if noisy else ""))
    w("")
    w(
        f"One run per setting on the same stream ({sw['records']:,} records, "
        f"{sw['partitions']} partitions, `tasks.max={sw['partitions']}`), one bench Connect worker; "
        f"1-minute load before the sweep {sw.get('gate', {}).get('loadavg_1m', '?')}. The fastest "
        "setting whose target equals the source is the tuned sink of the apply comparison"
        + (" (chosen on a busy machine: rerun on an idle one)" if noisy else "")
        + "."
    )
    w("")
    w("| setting | events/s | CPU s | peak RSS MB | load before | target vs source |")
    w("|---|---:|---:|---:|---:|---|")
    best = sw.get("best", {}).get("label")
    for c in sw["configs"]:
        lb = f"**{c['label']}**" if c["label"] == best else c["label"]
        ok = "correct" if c.get("correct") else ("failed" if c.get("error") else "**WRONG**")
        if c.get("error"):
            err = c["error"] if isinstance(c["error"], str) else "\n".join(c["error"])
            ok += f": `{err.strip().splitlines()[-1][:200]}`" if err else ""
        la = c.get("loadavg_before")
        w(
            f"| {lb} | {_n(c.get('events_per_s'))} | {_n(c.get('cpu_s'), '{:.1f}')} | "
            f"{_n(c.get('peak_rss_mb'), '{:.0f}')} | {_n(la[0] if la else None, '{:.2f}')} | "
            f"{ok} |"
        )
    w("")
    w(
        "unnest = `dialect.postgres.unnest.insert.enabled=true` (multi-row `INSERT … SELECT FROM "
        "UNNEST(…) ON CONFLICT` upserts, since 3.5); reduction = `use.reduction.buffer=true` (one "
        "write per key per batch); batch = `batch.size` = `consumer.override.max.poll.records`; "
        "every setting also has `consumer.override.fetch.max.bytes=64MiB` and `consumer.override."
        "max.partition.fetch.bytes=16MiB`. The UNNEST settings fail on this stream's `date` "
        "columns (the sink binds Debezium's `io.debezium.time.Date` day number as text into the "
        '`date[]` array: `invalid input syntax for type date: "20790"`, in 3.5.0.Final and '
        "3.6.0.Final alike), so the sink at its best here is without UNNEST."
    )
    w("")


def loaded_section(w: Any, ld: dict[str, Any], ap: dict[str, Any]) -> None:
    w("## 1b. Apply on a loaded machine")
    w("")
    g = ld.get("gate", {})
    w(
        "The same comparison with a competing CPU load: the bench starts a busy loop on one core "
        f"(`python -c 'while True: pass'`, pid {ld.get('busy_loop_pid')}, stopped by PID at the "
        f"end) and runs `cdcr run` and the better JDBC sink setting again. 1-minute load before "
        f"the busy loop started: {g.get('loadavg_1m', '?')}"
        + (" (**NOISY**)" if ld.get("noisy") else "")
        + "; inside it the load is about 1 higher by design."
    )
    w("")
    key = next((k for k in ("jdbc_tuned", "jdbc_default") if ld.get(k)), "")
    sink = ld.get(key, {})
    w(
        "| contender | loaded events/s median (min–max) | idle events/s median | loaded / idle | "
        "CPU s | peak RSS MB | target vs source |"
    )
    w("|---|---:|---:|---:|---:|---:|---|")
    for label, r, idle in (
        ("`cdcr run`", ld.get("cdcr", {}), ap.get("cdcr", {})),
        (sink.get("contender", "JDBC sink"), sink, ap.get(key, {})),
    ):
        if not r:
            continue
        w(
            f"| {label} | {_fig(r)} | {_n(_med(idle))} | {_ratio(_med(r), _med(idle))} | "
            f"{_fig(r, 'cpu_s', '{:.1f}')} | {_fig(r, 'peak_rss_mb', '{:.0f}')} | {_verdict(r)} |"
        )
    w("")
    w(f"`cdcr run` / JDBC sink under load: **{_ratio(_med(ld.get('cdcr', {})), _med(sink))}**.")
    w("")


def scaleout_section(w: Any, so: dict[str, Any], ceil: dict[str, Any]) -> None:
    w("## 1c. Scale-out: `cdcr run` processes in one consumer group")
    w("")
    w(
        f"A copy of the stream with {so['partitions_per_topic']} partitions per topic "
        f"({len(so['topics'])} topics, {so['records']:,} records, keys partitioned as Kafka's Java "
        "producer does, so each key keeps its order), applied by 1, 2 and 3 `cdcr run "
        f"--stop-when-idle {so['idle_s']}` processes in ONE consumer group started together, each "
        "run into a fresh target (`bench_scale`) and Redis db. 1-minute load before the section: "
        f"{so.get('gate', {}).get('loadavg_1m', '?')}"
        + (" (**NOISY**)" if so.get("noisy") else "")
        + ". Total events/s = records / (last commit of any process − first record of any "
        "process); per process = its records / its own span; CPU from each process's rusage."
    )
    w("")
    w(
        "| processes | total events/s | per process: records, events/s, CPU s, µs CPU/event | "
        "µs CPU/event (all) | consumed − records | duplicates counted | target vs source |"
    )
    w("|---:|---:|---|---:|---:|---:|---|")
    rows = [*so.get("runs", []), so.get("rebalance", {})]
    for r in rows:
        if not r:
            continue
        per = "; ".join(
            f"{name}: {p['consumed']:,}, {_n(p.get('events_per_s'))}/s, {p['cpu_s']:.1f} s, "
            f"{_n(p.get('cpu_us_per_event'), '{:.0f}')} µs"
            for name, p in r["per_process"].items()
        )
        label = str(r["processes"]) + (
            f" (3rd joins at {r['late_joined_at_records']:,} applied)"
            if r.get("started_late")
            else ""
        )
        chk = r["check"]
        ok = "correct" if chk.get("correct") else f"**WRONG: {chk.get('rows_differing')} rows**"
        if not r.get("accounting_balanced"):
            ok += "; accounting does not balance"
        w(
            f"| {label} | {_n(r.get('events_per_s'))} | {per} | "
            f"{_n(r.get('cpu_us_per_event'), '{:.0f}')} | {r['consumed_more_than_once']:,} | "
            f"{r['totals']['skipped_duplicate']:,} | {ok} |"
        )
    w("")
    rb = so.get("rebalance", {})
    if rb:
        t = rb["totals"]
        w(
            f"**Rebalance under load.** 2 processes, the 3rd started once "
            f"{rb.get('late_joined_at_records') or 0:,} records were applied. Target vs source: "
            + ("every row equal" if rb["check"].get("correct") else "ROWS DIFFER")
            + f". Across the processes cdcr consumed {t['consumed']:,} records for "
            f"{rb['records']:,} in the topics ({rb['consumed_more_than_once']:,} redelivered "
            f"after the partitions moved) and accounted for every one: applied {t['applied']:,} + "
            f"stale {t['skipped_stale']:,} + duplicate {t['skipped_duplicate']:,} + no-op "
            f"{t['skipped_noop']:,} + dead-lettered {t['dead_lettered']:,}"
            + (" = consumed" if rb.get("accounting_balanced") else " ≠ consumed (**unbalanced**)")
            + ". A redelivered change is skipped as a duplicate (its ID is in Redis) or as stale "
            "(the target row already holds that source position); none is applied twice."
        )
        w("")
    one = next((r for r in so.get("runs", []) if r["processes"] == 1), None)
    if one and one.get("cpu_us_per_event"):
        us = one["cpu_us_per_event"]
        per_core = 1e6 / us
        w(
            f"**What to expect on more cores.** One `cdcr run` process spends **{us:.0f} µs of "
            f"its own CPU per event** here, so one process saturates one core at about "
            f"**{per_core:,.0f} events/s**; on this 2-core machine the processes share the cores "
            "with PostgreSQL, Kafka and Redis, so the total does not grow with processes (table "
            "above): it converges. With PostgreSQL, Kafka and Redis on other machines and one "
            f"core per process, N processes can reach about N × {per_core:,.0f} events/s, up to "
            "the number of partitions (one partition is applied by one process at a time, in "
            "order) and to what the target can write"
            + (
                f" (the COPY ceiling measured here is {ceil['rows_per_s']:,} rows/s on a shared "
                "2-core PostgreSQL)"
                if ceil.get("rows_per_s")
                else ""
            )
            + ". Give the topics at least as many partitions as processes you plan to run."
        )
        w("")


STAGE_NOTES = {
    "kafka_wait": "fetching from Kafka, or waiting for records",
    "decode": "decoding the Debezium records",
    "redis_seen": "Redis round trip: which change IDs were seen",
    "plan": "routing and collapsing per key (without decode and Redis)",
    "dlq": "producing dead letters",
    "writer_wait": "the loop waiting for the writer thread",
    "db_connect": "pool checkout (pre-ping) and BEGIN",
    "db_write": "COPY into staging, the versioned merge, deletes",
    "db_other": "TOAST re-reads, dead letters, applied offsets",
    "db_commit": "COMMIT",
    "redis_record": "Redis round trip: recording the change IDs",
    "offset_commit": "handing the offsets to librdkafka",
}


def _timings(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run's ``timing`` block of `cdcr run --json` (seconds of wall time per stage)."""
    out = []
    for r in rep.get("runs", []):
        t = (r.get("output") or {}).get("timing")
        if isinstance(t, dict) and t:
            out.append({"run": r.get("run"), "span_s": r.get("span_s"), "timing": t})
    return out


def timing_table(w: Any, label: str, rep: dict[str, Any]) -> None:
    """Per-stage wall time of each `cdcr run` run, from its own ``--json`` "timing" block."""
    runs = _timings(rep)
    if not runs:
        return
    stages = list(STAGE_NOTES) + sorted({k for r in runs for k in r["timing"]} - set(STAGE_NOTES))
    stages = [s for s in stages if any(r["timing"].get(s) for r in runs)]
    w(
        f"**Where the wall time goes: {label}.** Seconds of wall time per stage of the apply loop, "
        'summed over the batches, from each run\'s `cdcr run --json` `"timing"` block (stream/'
        "timing.py). The loop's thread (kafka_wait, decode, redis_seen, plan, dlq, writer_wait) "
        "overlaps the writer thread (db_*, redis_record) of the previous batch, so the stages may "
        "add up to more than the span; % is of the run's apply span."
    )
    w("")
    w("| stage | what | " + " | ".join(f"run {r['run']} s (% of span)" for r in runs) + " |")
    w("|---|---|" + "---:|" * len(runs))
    for s in stages:
        cells = []
        for r in runs:
            v = r["timing"].get(s)
            span = r.get("span_s")
            pct = f" ({v / span:.0%})" if v is not None and span else ""
            cells.append(_n(v, "{:.2f}") + pct)
        w(f"| `{s}` | {STAGE_NOTES.get(s, '')} | " + " | ".join(cells) + " |")
    w(
        "| apply span | first record → last commit | "
        + " | ".join(_n(r.get("span_s"), "{:.2f}") for r in runs)
        + " |"
    )
    w("")


def _sp(sp: dict[str, Any] | None, fmt: str = "{:.2f}") -> str:
    """``median (min–max)`` of a reconcile spread."""
    if not sp or sp.get("median") is None:
        return "—"
    return f"{fmt.format(sp['median'])} ({fmt.format(sp['min'])}–{fmt.format(sp['max'])})"


def _exact(c: dict[str, Any]) -> str:
    if c.get("exact"):
        return "yes"
    return "NO " + str(c.get("found_counts", c.get("error", "")))[:200]


def _loads(c: dict[str, Any]) -> str:
    return ", ".join(_n(r.get("load1"), "{:.2f}") for r in c.get("runs", [])) or "—"


def reconcile_section(w: Any, rc: dict[str, Any]) -> None:
    w("## 3. Reconcile")
    w("")
    dbs = rc.get("databases") or {"source": "bench_rc_src", "target": "bench_rc"}
    g = rc.get("gate", {})
    w(
        f"One table pair of {rc['rows']:,} rows (`{dbs['source']}.public.bench_rc` vs "
        f"`{dbs['target']}.public.bench_rc`, two databases of their own, created and dropped by "
        "the run; 10 columns: bigint key, int, numeric, text, timestamptz, jsonb, boolean, date, varchar, "
        "bigint), vacuumed, analysed and read once before timing; first in sync, then with 100 "
        "scattered differences (34 rows missing in the target, 33 extra, 33 changed). Each "
        f"contender is one process, wall time including interpreter start, "
        f"{rc.get('repeats', 1)} times per case, alternating reladiff and cdcr so both see the "
        "same machine: median (min–max). 1-minute load before the section: "
        f"{_n(g.get('loadavg_1m'), '{:.2f}')}"
        + (" (**NOISY**)" if g.get("noisy") else "")
        + f"; building the pair took {_n(rc.get('build_s'), '{:.0f}')} s."
    )
    w("")
    w(
        "| case | reladiff s | cdcr verify s | cdcr / reladiff, medians (per-run) | cdcr / scan "
        "ceiling | 1-min load before each run (reladiff; cdcr) | reladiff exact? | cdcr exact? |"
    )
    w("|---|---:|---:|---:|---:|---|---|---|")
    for case, label in (("in_sync", "in sync"), ("diff100", "100 differences")):
        c = rc.get(case, {})
        if not c:
            continue
        rel, cd = c.get("reladiff", {}), c.get("cdcr", {})
        ratio = _n(c.get("cdcr_over_reladiff"), "{:.2f}")
        rs = c.get("ratio_spread")
        if rs:  # each run's cdcr over the reladiff run next to it
            ratio += f" (runs {rs['min']:.2f}–{rs['max']:.2f})"
        w(
            f"| {label} | {_sp(rel.get('spread')) if rel.get('spread') else _n(rel.get('seconds'), '{:.2f}')} | "
            f"{_sp(cd.get('spread')) if cd.get('spread') else _n(cd.get('seconds'), '{:.2f}')} | "
            f"{ratio} | {_n(c.get('cdcr_over_scan_ceiling'), '{:.2f}×')} | "
            f"{_loads(rel)}; {_loads(cd)} | {_exact(rel)} | {_exact(cd)} |"
        )
    w("")
    ceil = rc.get("ceiling", {})
    if ceil:
        names = {
            "cdcr_hash": "cdcr's row hash (`count(*), bit_xor(<row hash>)`)",
            "hashtext_row_text": "`count(*), sum(hashtext(t::text))` (the issue's reference)",
        }
        w(
            "**Scan ceiling.** What one full scan of the pair costs, with nothing else: one side "
            "alone, and both sides at once on two connections (what a diff must do at least), "
            f"median (min–max) of {rc.get('repeats', 1)}, in seconds:"
        )
        w("")
        w("| scan | one side s | both sides at once s |")
        w("|---|---:|---:|")
        for k, v in ceil.items():
            w(f"| {names.get(k, k)} | {_sp(v.get('one_side'))} | {_sp(v.get('both_sides'))} |")
        w("")
        both = ceil.get("cdcr_hash", {}).get("both_sides", {}).get("median")
        if both:
            parts = []
            for case, label in (("in_sync", "in sync"), ("diff100", "with 100 differences")):
                x = rc.get(case, {}).get("cdcr_over_scan_ceiling")
                if x:
                    parts.append(f"{label} cdcr takes {x:.2f}× the scan ceiling ({both:.2f} s)")
            if parts:
                w(
                    "How close cdcr is to the ceiling (its median over the both-sides scan with "
                    "its own row hash; interpreter start and bisection included): "
                    + "; ".join(parts)
                    + "."
                )
                w("")
    w(f"- reladiff {rc.get('reladiff_command', '')}")
    w(
        f"- cdcr: `{rc.get('cdcr_command', '')}` — the diff `cdcr reconcile` runs per window "
        "(count + checksum inside each database, bisection to rows), here over one segment "
        "covering the whole table; the windowing, repair and audit of `cdcr reconcile` are not "
        "part of this timing."
    )
    w("")


def plot(res: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ap = res.get("apply", {})
    names, rates, colors = [], [], []
    for key, label, col in (
        ("cdcr", "cdcr run", "#2a7"),
        ("faust", "Faust integration", "#7a2"),
        ("jdbc_tuned", "JDBC sink, tuned", "#a52"),
        ("jdbc_default", "JDBC sink, defaults", "#c85"),
    ):
        r = ap.get(key, {})
        v = _med(r) or _med(r, "events_per_s_from_start")
        if v:
            names.append(label + ("" if r.get("correct", True) else " (WRONG)"))
            rates.append(v)
            colors.append(col)
    ceil = res.get("ceiling", {}).get("rows_per_s")
    if ceil:
        names.append("COPY ceiling\n(rows/s)")
        rates.append(ceil)
        colors.append("#888")
    ax = axes[0]
    ax.barh(names, rates, color=colors)
    ax.axvline(50_000, ls="--", c="k", lw=0.8)
    ax.text(50_000, len(names) - 0.5, " 50k aim", va="center", fontsize=8)
    ax.set_xlabel("events/s, median of runs (first record → target caught up)")
    ax.set_title(f"Apply: {res.get('stream', {}).get('records', 0):,} Debezium records")
    ax = axes[1]
    rc = res.get("reconcile", {})
    if rc.get("in_sync"):
        cases = ["in sync", "100 differences"]
        x = range(len(cases))
        rel = [
            rc["in_sync"]["reladiff"].get("seconds", 0),
            rc["diff100"]["reladiff"].get("seconds", 0),
        ]
        cd = [rc["in_sync"]["cdcr"].get("seconds", 0), rc["diff100"]["cdcr"].get("seconds", 0)]
        ax.bar([i - 0.2 for i in x], rel, width=0.4, label="reladiff", color="#a52")
        ax.bar([i + 0.2 for i in x], cd, width=0.4, label="cdcr verify", color="#2a7")
        ax.set_xticks(list(x), cases)
        ax.set_ylabel("seconds")
        ax.legend()
        ax.set_title(f"Reconcile: {rc.get('rows', 0):,}-row pair")
    ax = axes[2]
    for key, label in (
        ("cdcr", "cdcr run"),
        ("faust", "Faust"),
        ("jdbc_tuned", "JDBC sink tuned (JVM)"),
    ):
        s = ap.get(key, {}).get("median_run", {}).get("rss_samples")
        if s:
            ax.plot([p[0] for p in s], [p[1] for p in s], label=label)
    ax.axhline(300, ls="--", c="k", lw=0.8)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS MB")
    ax.set_title("Worker RSS over the run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)
    return True


def gates_header(w: Any, res: dict[str, Any]) -> None:
    """The load before each contender, and the NOISY banner."""
    ap = res.get("apply", {})
    gates: list[tuple[str, dict[str, Any]]] = [
        (lbl, rep["gate"])
        for lbl, rep in (
            ("JDBC sink sweep", res.get("sweep", {})),
            ("cdcr run", ap.get("cdcr", {})),
            ("JDBC sink, defaults", ap.get("jdbc_default", {})),
            ("JDBC sink, tuned", ap.get("jdbc_tuned", {})),
            ("Faust", ap.get("faust", {})),
            ("loaded run", res.get("loaded", {})),
            ("scale-out", res.get("scaleout", {})),
            ("reconcile", res.get("reconcile", {})),
        )
        if isinstance(rep, dict) and rep.get("gate")
    ]
    if gates:
        w(
            "- **1-minute load average before each contender:** "
            + ", ".join(
                f"{lbl} {g['loadavg_1m']:.2f}"
                + (" **NOISY**" if g["noisy"] else "")
                + (f" (waited {g['waited_s']:.0f} s)" if g.get("waited_s") else "")
                for lbl, g in gates
            )
            + "."
        )
        if any(g["noisy"] for _, g in gates) or res.get("allow_noisy"):
            w(
                "- **NOISY RUN:** at least one contender started on a busy machine"
                + (" (`--allow-noisy`: the bench did not wait)" if res.get("allow_noisy") else "")
                + ". Do not quote these figures; rerun on an idle machine."
            )


def critical_path(
    w: Any, rep: dict[str, Any], cores: int, aim: float, ratio_goal_rate: Any
) -> None:
    """Read the timing table: which thread is the critical path, and what the aims would need."""
    runs = _timings(rep)
    med = rep.get("median_run", {})
    if not runs or not med.get("cpu_s") or not med.get("consumed"):
        return
    by_span = sorted(runs, key=lambda r: r.get("span_s") or 0)
    mid = by_span[len(by_span) // 2]
    t, span = mid["timing"], mid.get("span_s") or 0
    if not span:
        return
    loop = sum(t.get(s) or 0 for s in LOOP_STAGES)
    writer = sum(t.get(s) or 0 for s in WRITER_STAGES)
    records = med["consumed"]
    cpu_per = med["cpu_s"] / records
    w(
        f"**Reading it (run {mid['run']}, the median span {span:.2f} s).** The loop thread is busy "
        f"{loop:.2f} s ({loop / span:.0%} of the span: Kafka, decode, Redis, plan) and waits "
        f"{t.get('writer_wait') or 0:.2f} s for the writer; the writer thread is busy "
        f"{writer:.2f} s ({writer / span:.0%}), {t.get('db_write') or 0:.2f} s of it in "
        "PostgreSQL's COPY + versioned merge + deletes. The writer is the critical path; with "
        f"the loop busy {loop:.2f} s, a faster writer alone would shorten the span by at most "
        f"{max(writer - loop, 0):.2f} s before the loop is the limit."
    )
    w("")
    goals = [(aim, "the 50k aim")]
    if ratio_goal_rate:
        goals.append((ratio_goal_rate, "3× the better sink"))
    parts = []
    for rate, label in goals:
        need_span = records / rate
        parts.append(
            f"{label} ({rate:,.0f} events/s) means the {records:,} records in {need_span:.2f} s: "
            f"the writer's {writer:.2f} s and the loop's {loop:.2f} s would both have to fit in "
            f"it ({writer / need_span:.1f}× and {loop / need_span:.1f}× faster), and the "
            f"machine has {cores} × {need_span:.2f} = {cores * need_span:.1f} core-seconds for "
            f"everything, while `cdcr run`'s own process alone uses {med['cpu_s']:.1f} s "
            f"({cpu_per * 1e6:.0f} µs/record) before PostgreSQL, Kafka and Redis take theirs"
        )
    w("What the targets would need: " + "; ".join(parts) + ".")
    w("")


def write_doc(res: dict[str, Any], result_file: Path) -> None:
    has_png = bool(res.get("apply") or res.get("reconcile")) and plot(res)
    m = res["machine"]
    st = res.get("stream", {})
    ap = res.get("apply", {})
    cdrep, farep = ap.get("cdcr", {}), ap.get("faust", {})
    jkey, jdrep = better_sink(ap)
    cd, fa, jd = (r.get("median_run", {}) for r in (cdrep, farep, jdrep))
    ceil = res.get("ceiling", {})
    rc = res.get("reconcile", {})
    lag = res.get("lag", {})
    red = res.get("redis", {})
    prof = res.get("profile", {})
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(
        "Generated by `bench/run.py` — do not edit by hand; rerun the bench. Contenders run one at "
        f"a time, side by side in one run on the same machine, on the same Kafka topics, each "
        f"{res.get('runs', 1)} times: every figure is the median with the (min–max) spread. "
        f"Before each contender the bench waits for the 1-minute load average to fall to "
        f"{res.get('load_limit', 0.5)}; a contender that started above it is marked NOISY (the "
        "wait is before a contender's first run; its later runs record the load they start at, "
        "mostly the previous run's own, decaying). "
        "No benchmark is a timed test."
    )
    w("")
    gates_header(w, res)
    w(
        f"- **Date:** {res['date']} (UTC), git `{res['git']}`, mode "
        f"{'quick' if res['quick'] else 'full'}, whole run {res.get('elapsed_s')} s"
    )
    w(
        f'- **Command:** `eval "$(scripts/stack env)"; .venv/bin/{res["command"]}` '
        f"(`make bench-quick` / `make bench`)"
    )
    w(f"- **Raw results:** `bench/results/{result_file.name}`")
    w(
        f"- **Machine:** {m['cpus']} × {m['cpu_model']} ({m['cpu_mhz']} MHz, "
        f"virtualised: {m['hypervisor']}), {m['mem_total_mb']:,} MB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['psql']}; every service of the native stack "
        "(PostgreSQL 15, Redis, Kafka 4.1 KRaft, Kafka Connect + Debezium 3.6.1) on the same 2 cores."
    )
    w("")
    w("```")
    w(m["free_m"])
    w("```")
    w("")
    if has_png:
        w("![apply rates, reconcile times, worker RSS](benchmarks.png)")
        w("")
    carried = [
        s
        for s in res.get("sections_all", ())
        if isinstance(res.get(s), dict) and res[s].get("carried_over_from")
    ]
    if carried:
        w(f"Sections carried over from an earlier run (not rerun this time): {', '.join(carried)}.")
        w("")

    # ---------------------------------------------------------------- targets
    targets_at = len(L)
    w("## Targets ([design.md](design.md)) at a glance")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")
    cr = _med(cdrep)
    jr = _med(jdrep)
    if cr:
        w(
            f"| apply ≥ 3× the Debezium JDBC sink at its best ({jdrep.get('contender')}), "
            f"medians | {_ratio(cr, jr)} | "
            f"{'yes' if cr and jr and cr >= 3 * jr else 'NO'} |"
        )
        w(
            f"| apply 50,000 events/s end to end (aim) | {cr:,.0f} events/s (median) | "
            f"{'yes' if cr >= 50_000 else 'NO'} |"
        )
    if rc.get("in_sync"):
        r = rc["in_sync"].get("cdcr_over_reladiff")
        w(
            f"| reconcile in-sync pair ≤ 0.25× reladiff | {_n(r, '{:.2f}')} of reladiff's time "
            f"({rc['rows']:,} rows) | {'yes' if r is not None and r <= 0.25 else 'NO'} |"
        )
        r = rc["diff100"].get("cdcr_over_reladiff")
        w(
            f"| reconcile 100 differences ≤ 0.25× reladiff | {_n(r, '{:.2f}')} of reladiff's time "
            f"| {'yes' if r is not None and r <= 0.25 else 'NO'} |"
        )
        ok = rc["diff100"]["cdcr"].get("exact")
        w(
            f"| 100 scattered differences found exactly | cdcr {'exact' if ok else 'NOT exact'}, "
            f"reladiff {'exact' if rc['diff100']['reladiff'].get('exact') else 'NOT exact'} | "
            f"{'yes' if ok else 'NO'} |"
        )
    if lag.get("median_s") is not None:
        w(
            f"| `cdcr lag` 3 groups × 64 partitions < {LAG_TARGET_S} s | {lag['median_s']:.3f} s | "
            f"{'yes' if lag['median_s'] < LAG_TARGET_S else 'NO'} |"
        )
    rp = res.get("replay", {})
    if rp:
        f = rp.get("fraction_of_live")
        ok = "—" if f is None else ("yes" if f >= 0.8 else "NO")
        if rp.get("check") and not rp["check"].get("correct"):
            ok += f" (replayed target WRONG: {rp['check'].get('rows_differing')} rows)"
        w(f"| replay ≥ 80% of live apply | {rp.get('status', '—')} | {ok} |")
    if cd.get("rss_samples"):
        peak = cd.get("peak_rss_mb")
        w(
            f"| worker RSS < 300 MB at steady state | peak {peak:.0f} MB | "
            f"{'yes' if peak < 300 else 'NO'} |"
        )
    if red.get("bytes_per_id"):
        w(
            f"| bounded Redis memory per processed ID | {red['bytes_per_id']} bytes/ID "
            f"(per-hour sets with TTL) | yes |"
        )
    w("")

    if len(L) == targets_at + 5:  # no target measured in this run: no table
        del L[targets_at:]

    # ---------------------------------------------------------------- apply
    if st and ap:
        w("## 1. Apply")
        w("")
        k = st["kinds"]
        pr = st["per_round"]
        w(
            f"**The stream.** Produced once from real source traffic through the Debezium "
            f"PostgreSQL connector (pgoutput, JsonConverter *with* schemas — Connect's default and "
            f"what the JDBC sink needs) into 3 topics `{st['prefix']}.public.bench_*` (1 partition "
            f"each): {st['records']:,} records = {st['changes']:,} change events "
            f"({k['insert']:,} inserts, {k['update']:,} updates of random keys, "
            f"{k['hot_update']:,} updates of {pr['hot_keys']} hot keys per table, {k['delete']:,} "
            f"deletes) + {k['delete']:,} tombstones. Three tables of 10 columns (bigint/int key, "
            f"numeric(12,2), timestamptz, text, jsonb, boolean, date, varchar, smallint, bigint). "
            f"Per table and round: {pr['inserts']:,} inserts, {pr['updates']:,} random updates, "
            f"the {pr['hot_keys']} hot keys updated {pr['hot_repeats']} times in separate "
            f"transactions, {pr['deletes']} random deletes. Final source state: "
            f"{st['final_rows']:,} rows. Debezium needed {st['produce_s']} s to get it all into "
            "Kafka (counted by watermarks)."
        )
        w("")
        w(
            "Each contender starts from the beginning of the same topics with a fresh consumer "
            "group, into its own new target database, one after the other."
        )
        w("")
        jlabel = f"Debezium JDBC sink {jdrep.get('median_run', {}).get('version', '')}"
        apply_table(
            w,
            [
                ("`cdcr run`", cdrep),
                ("Faust integration", farep),
                (f"{jlabel}, defaults", ap.get("jdbc_default", {})),
                (f"{jlabel}, tuned", ap.get("jdbc_tuned", {})),
            ],
            jr,
            f"the better sink ({jdrep.get('contender', '—')})",
        )
        if cr and jr:
            w(
                f"**`cdcr run` / the better JDBC sink ({jdrep.get('contender')}), medians: "
                f"{_ratio(cr, jr)}.**"
            )
            w("")
        w("How each is measured:")
        w("")
        w(
            f"- `cdcr run`: `{cd.get('command', 'cdcr run --stop-when-idle 5 --json')}` with "
            "`CDCR_KAFKA__GROUP_ID`, `CDCR_KAFKA__TOPIC_PATTERN`, `CDCR_KAFKA__TOPIC_PREFIX`, "
            "`CDCR_TARGET__URL` (database `bench_cdcr`, `cdcr migrate` + `cdcr tables sync` first), "
            "`CDCR_REDIS__URL` (its own Redis db, flushed) and a free metrics port; rate = consumed / "
            "(last_commit_at − first_record_at) from its JSON output"
            + (f" ({cd['note']})" if cd.get("note") else "")
            + "; CPU and peak RSS from `wait4` rusage of the child."
        )
        if fa and not fa.get("status"):
            w(
                "- Faust: `python -m cdc_reconciler.stream.faust_app --stop-when-idle 5`, same "
                "settings, database `bench_faust`"
                + (f"; {fa['stop_note']}" if fa.get("stop_note") else "")
                + "."
            )
        for key in ("jdbc_default", "jdbc_tuned"):
            rep = ap.get(key, {})
            j = rep.get("median_run", {})
            if not j:
                continue
            st_ = j.get("settings", {})
            tuning = rep.get("tuning", {})
            w(
                f"- {rep.get('contender')}: Debezium JDBC sink `{j.get('version')}` on a second "
                "Kafka Connect worker the bench starts (port 18084, own group and storage topics, "
                "same Kafka) and stops by PID; tables pre-created as in the source; what it needs "
                "to work: `insert.mode=upsert`, `delete.enabled=true`, `primary.key.mode=record_key`"
                ", a RegexRouter to the table names; "
                + (
                    "everything else at its defaults (`tasks.max=1`, `batch.size=500`, no UNNEST, "
                    "no reduction buffer)"
                    if not st_
                    else "tuned: "
                    + ", ".join(f"`{k}={v}`" for k, v in st_.items())
                    + (f" — {tuning['label']}, from {tuning['from']}" if tuning else "")
                )
                + f". {j.get('note', '')}. CPU = the worker JVM's CPU time during the run."
            )
        w(
            f"- The sink is {jd.get('version', '?')}: 3.6.1.Final of `debezium-connector-jdbc` is "
            "not on Maven Central (the PostgreSQL connector 3.6.1.Final is), 3.6.0.Final is the "
            "newest; bench/java/pom.xml fetches it (Hibernate ORM pinned to 7.2.19.Final, see "
            "there why)."
        )
        w(
            "- Target vs source: every row's `md5(row(columns)::text)` per key, both sides, "
            "compared in Python (missing, extra, mismatched per table)."
        )
        w("")
        if cd.get("output"):
            o = cd["output"]
            w(
                f"cdcr's accounting: consumed {o.get('consumed', 0):,} = applied "
                f"{o.get('applied', 0):,} + stale {o.get('skipped_stale', 0):,} (a newer change to "
                f"the same key in the batch or already in the target) + duplicate "
                f"{o.get('skipped_duplicate', 0):,} + no-op {o.get('skipped_noop', 0):,} "
                f"(tombstones) + dead-lettered {o.get('dead_lettered', 0):,}; "
                f"{o.get('batches', '?')} batches."
            )
            w("")
        reps: tuple[dict[str, Any], ...] = (
            cdrep,
            farep,
            ap.get("jdbc_default", {}),
            ap.get("jdbc_tuned", {}),
        )
        for rep in reps:
            bad: dict[str, Any] = next((x for x in rep.get("runs", []) if x.get("error")), {})
            if bad.get("error"):
                err = bad["error"] if isinstance(bad["error"], str) else "\n".join(bad["error"])
                w(f"{rep.get('contender')} reported an error (run {bad.get('run')}):")
                w("")
                w("```")
                w(err[:1200])
                w("```")
                w("")
    if res.get("sweep", {}).get("configs"):
        if not ap:
            w(
                "Only the JDBC sink sweep was run for this document; every other section is "
                "measured by the full run on an idle machine (`make bench`)."
            )
            w("")
        sweep_section(w, res["sweep"])
    if res.get("loaded"):
        loaded_section(w, res["loaded"], ap)
    if res.get("scaleout", {}).get("runs"):
        scaleout_section(w, res["scaleout"], ceil)

    # ---------------------------------------------------------------- ceiling
    if ceil:
        w("## 2. Ceiling")
        w("")
        w(
            f"The same final rows ({ceil['rows']:,}, the three tables' source state) loaded by "
            "`COPY … FROM STDIN` into unlogged copies of the tables (with their primary keys) in "
            f"the target cluster, median of {len(ceil['runs_s'])}: **{ceil['rows_per_s']:,} "
            f"rows/s** ({ceil['median_s']} s). cdcr's apply rate is "
            f"{_n(cr / ceil['rows_per_s'] * 100 if cr else None, '{:.0f}')}% of it (events/s over "
            "rows/s: an event is at most one row write; collapsed and stale events write nothing)."
        )
        w("")

    # ---------------------------------------------------------------- reconcile
    if rc.get("in_sync"):
        reconcile_section(w, rc)

    # ---------------------------------------------------------------- also
    also_at = len(L)
    w("## 4. Also")
    w("")
    if red:
        w(
            f"**Redis bytes per processed change ID.** After the `cdcr run` above, its own Redis "
            f"db holds {red.get('ids', 0):,} IDs in {red.get('keys', 0)} per-hour set(s) "
            f"(encoding {', '.join(red.get('encodings', []))}) using {red.get('bytes', 0):,} bytes "
            f"(`MEMORY USAGE key SAMPLES 0`): **{red.get('bytes_per_id')} bytes per ID**. The sets "
            "expire `CDCR_REDIS__ID_TTL_S` after their last write, so memory is bounded by the "
            "change rate × TTL."
        )
        w("")
    if lag:
        w(
            f"**`cdcr lag` latency.** {lag['groups']} groups × {lag['partitions']} partitions "
            f"({lag['rows']} rows), `{lag['command']}`: median **{lag['median_s']:.3f} s** over "
            f"{lag['runs']} runs (min {lag['min_s']:.3f}, max {lag['max_s']:.3f}), process start "
            f"included. Target < {LAG_TARGET_S} s (docs/design.md)."
        )
        w("")
    rp = res.get("replay", {})
    if rp:
        extra = ""
        if rp.get("wall_s"):
            extra = (
                f" `{rp['command']}` into a fresh database (`cdcr migrate` + `tables sync`, "
                f"own Redis db): {rp['wall_s']} s wall, {rp['cpu_s']} s CPU, peak RSS "
                f"{rp['peak_rss_mb']:.0f} MB; replayed target vs source: "
                + (
                    "correct"
                    if rp.get("check", {}).get("correct")
                    else f"WRONG, {rp.get('check', {}).get('rows_differing')} rows differ"
                )
                + "."
            )
            if rp.get("error"):
                extra += f" Error: `{rp['error'][-300:]}`"
        w(f"**Replay vs live apply.** {rp.get('status')}.{extra}")
        w("")
    if cd.get("rss_samples"):
        s = [p[1] for p in cd["rss_samples"]]
        half = s[len(s) // 2 :] or s
        w(
            f"**Worker RSS over the run.** `cdcr run` peak {cd['peak_rss_mb']:.0f} MB, median over "
            f"the second half of the run {sorted(half)[len(half) // 2]:.0f} MB "
            f"({len(s)} samples; plot above)."
            + (f" Faust peak {fa['peak_rss_mb']:.0f} MB." if fa.get("peak_rss_mb") else "")
            + (
                f" Kafka Connect (JVM, -Xmx1g) with the JDBC sink peak {jd['peak_rss_mb']:.0f} MB."
                if jd.get("peak_rss_mb")
                else ""
            )
        )
        w("")

    if len(L) == also_at + 2:  # nothing else measured
        del L[also_at:]

    # ---------------------------------------------------------------- profile
    if prof.get("own") or _timings(cdrep):
        w("## 5. Where the time goes (targets missed)")
        w("")
        missed = []
        if cr and cr < 50_000:
            missed.append(f"apply at {cr:,.0f} events/s is {cr / 50_000:.0%} of the 50k aim")
        if cr and jr and cr < 3 * jr:
            missed.append(f"apply is {cr / jr:.2f}× the JDBC sink, not 3×")
        for case, label in (("in_sync", "in sync"), ("diff100", "with 100 differences")):
            x = rc.get(case, {}).get("cdcr_over_reladiff")
            if x is not None and x > 0.25:
                missed.append(
                    f"reconcile {label} takes {x:.2f}× reladiff's time, not ≤ 0.25× ("
                    + _n(rc[case].get("cdcr_over_scan_ceiling"), "{:.2f}×")
                    + " the both-sides scan ceiling, section 3)"
                )
        if lag.get("median_s", 0) >= LAG_TARGET_S:
            missed.append(
                f"`cdcr lag` takes {lag['median_s']:.2f} s (target < {LAG_TARGET_S} s; not a "
                "`cdcr run` matter, so not in the profile below)"
            )
        if (cd.get("peak_rss_mb") or 0) >= 300:
            missed.append(f"`cdcr run` peaks at {cd['peak_rss_mb']:.0f} MB RSS (target < 300 MB)")
        rpf = res.get("replay", {}).get("fraction_of_live")
        if rpf is not None and rpf < 0.8:
            missed.append(f"replay runs at {rpf:.0%} of the live rate (target ≥ 80%)")
        if missed:
            w("Missed: " + "; ".join(missed) + ".")
            w("")
        timing_table(w, "`cdcr run`", cdrep)
        critical_path(
            w, cdrep, int(res["machine"].get("cpus") or 0), 50_000, 3 * jr if jr else None
        )
        if res.get("loaded", {}).get("cdcr"):
            timing_table(w, "`cdcr run` on the loaded machine", res["loaded"]["cdcr"])
        if prof.get("own"):
            w(
                f"CPU profile: `{prof['command']}` on the same stream into a fresh database "
                f"({prof['samples']:,} samples; {prof['note']})."
            )
            w("")
            w("| top functions by own time | % | | top functions by inclusive time | % |")
            w("|---|---:|---|---|---:|")
            for i in range(max(len(prof["own"]), len(prof["inclusive"]))):
                o = prof["own"][i] if i < len(prof["own"]) else ("", "")
                n = prof["inclusive"][i] if i < len(prof["inclusive"]) else ("", "")
                w(f"| `{o[0]}` | {o[1]} | | `{n[0]}` | {n[1]} |")
            w("")
        if cd.get("cpu_s") and cd.get("span_s"):
            w(
                f"`cdcr run` used {cd['cpu_s']:.1f} s of CPU for {cd.get('consumed', 0):,} records "
                f"over a {cd['span_s']} s apply span: "
                f"{cd['cpu_s'] / max(cd.get('consumed', 1), 1) * 1e6:.0f} µs of Python-process CPU "
                "per record; the rest of the span is PostgreSQL (same 2 cores), Kafka and waiting."
            )
            w("")
    DOC.write_text("\n".join(L) + "\n")
