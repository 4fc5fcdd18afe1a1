"""bench/upload.py's report: the tables (disk limits, every case, the pairs, the
medians by case, the phases), the targets, and what goes into the results file."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from _common import percentile, print_table
from _upload_run import DURABLE_WRITERS, FRESH_1, NOT_VS_DISK, label

TARGET_VS_SHIPPED = 1.0
TARGET_VS_FSYNC = 1.25
TARGET_CPU_VS_SHIPPED = 1.5
TARGET_SEED_VS_FRESH = 0.8
TARGET_SEED_P99_MS = 150.0
TARGET_REUPLOAD_SPEEDUP = 20.0
TARGET_CLI_REUPLOAD_VS_START = 2.0
TARGET_RSS_MIB = 150.0
TARGET_INSERT_SENT = 0.01


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ok(case: dict[str, Any] | None) -> bool:
    return bool(case and case.get("ok") and case.get("mib_s") is not None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _extra_workers(args: argparse.Namespace) -> list[int]:
    return [w for w in args.workers if w > 1]


class Cases:
    """The run's cases and rounds, found by round and key."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.cases: list[dict[str, Any]] = result["cases"]
        self.rounds: list[dict[str, Any]] = result["rounds"]
        self.round_nos = [r["round"] for r in self.rounds]

    def get(self, r: int | None, key: str) -> dict[str, Any] | None:
        return next((c for c in self.cases if c["round"] == r and c["key"] == key), None)

    def ok_cases(self, *keys: str) -> list[dict[str, Any]]:
        return [c for c in self.cases if c["key"] in keys and _ok(c)]


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Print the report; the pairs, the medians and the targets for the results file."""
    run = Cases(result)
    seq, durable = disk_table(args, run.rounds)
    cases_table(args, run.cases)
    pair_specs = pair_specs_of(args)
    pairs = find_pairs(run, pair_specs)
    pairs_table(pairs, pair_specs)
    medians = medians_table(run, seq, durable)
    phases_table(run, medians)
    seeds, latencies = seed_line(args, run)
    targets = targets_table(args, result, run, pairs, seeds, latencies)
    notes(result, run)
    return {"pairs": pairs, "medians": medians, "targets": targets}


def disk_table(
    args: argparse.Namespace, rounds: list[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """The disk's limits, per round and their medians; (sequential, durable-ack) MiB/s."""
    # 1. the disk's limits
    seq = [r["disk_seq"]["mib_s"] for r in rounds]
    durable = [r["disk_durable"]["mib_s"] for r in rounds]
    disk_rows: list[list[object]] = [
        [
            r["round"],
            r["disk_seq"]["mib_s"],
            r["disk_seq"]["write_seconds"],
            r["disk_seq"]["fsync_seconds"],
            r["disk_durable"]["mib_s"],
            r["disk_durable"]["file_p50_ms"],
            r["disk_durable"]["file_p99_ms"],
        ]
        for r in rounds
    ]
    disk_rows.append(["median", median(seq), None, None, median(durable), None, None])
    print_table(
        f"disk limits, probed before each round ({args.size_mib} MiB each; durable acks: "
        f"{DURABLE_WRITERS} writers, 1 MiB files each fdatasynced and renamed into place)",
        [
            "round",
            "seq write+fsync MiB/s",
            "write s",
            "fsync s",
            "durable-ack MiB/s",
            "file p50 ms",
            "file p99 ms",
        ],
        disk_rows,
    )
    return seq, durable


def cases_table(args: argparse.Namespace, cases: list[dict[str, Any]]) -> None:
    """Every case, in run order."""

    # 2. every case, in run order
    def procs(c: dict[str, Any]) -> str | None:
        if c.get("server_processes") is None:
            return None
        return f"{c['server_processes']}" + (f"+{c['children_seen']}" if c["children_seen"] else "")

    def check(c: dict[str, Any]) -> str:
        if c.get("ok"):
            return "OK"
        first = (c.get("error") or "").strip().splitlines()[:1]
        return "FAIL" + (f": {first[0][:60]}" if first else "")

    print_table(
        f"every case in run order (durability=fsync, {args.parallel} parallel, 127.0.0.1); "
        "procs = server processes [+ children that came and went]",
        [
            "round",
            "case",
            "MiB/s",
            "seconds",
            "sent %",
            "server CPU s",
            "CPU s/GiB",
            "peak RSS MiB",
            "procs",
            "client CPU s",
            "check",
        ],
        [
            [
                "-" if c["round"] is None else str(c["round"]),
                c["label"],
                c.get("mib_s"),
                c.get("seconds"),
                None
                if c.get("bytes_sent") is None or not c.get("size_bytes")
                else c["bytes_sent"] / c["size_bytes"] * 100,
                c.get("server_cpu_s"),
                c.get("server_cpu_s_per_gib"),
                c.get("server_peak_rss_mib"),
                procs(c),
                c.get("client_cpu_s"),
                check(c),
            ]
            for c in cases
        ],
    )


def pair_specs_of(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The pairs: (name, case key of A, case key of B), A / B compared per round."""
    # 3. the pairs
    pair_specs = [("ingestd / shipped peer", "fresh_a", "peer_shipped")]
    pair_specs.append(("ingestd / fsync peer", "fresh_b", "peer_fsync"))
    extra = _extra_workers(args)
    pair_specs += [(f"workers={w} / workers=1", f"fresh_w{w}", "fresh_a") for w in extra]
    return pair_specs


def find_pairs(run: Cases, pair_specs: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Each round's pairs whose two cases are OK: the ratios of MiB/s and CPU per GiB."""
    get = run.get
    pairs: list[dict[str, Any]] = []
    for r in run.round_nos:
        for name, ka, kb in pair_specs:
            a, b = get(r, ka), get(r, kb)
            if not (_ok(a) and _ok(b)):
                continue
            assert a is not None and b is not None
            pairs.append(
                {
                    "round": r,
                    "pair": name,
                    "a": ka,
                    "b": kb,
                    "a_mib_s": a["mib_s"],
                    "b_mib_s": b["mib_s"],
                    "ratio": a["mib_s"] / b["mib_s"],
                    "a_cpu_s_per_gib": a.get("server_cpu_s_per_gib"),
                    "b_cpu_s_per_gib": b.get("server_cpu_s_per_gib"),
                    "cpu_ratio": _ratio(
                        a.get("server_cpu_s_per_gib"), b.get("server_cpu_s_per_gib")
                    ),
                }
            )
    return pairs


def pair_values(pairs: list[dict[str, Any]], name: str, field: str) -> list[float]:
    return [p[field] for p in pairs if p["pair"] == name and p[field] is not None]


def pairs_table(pairs: list[dict[str, Any]], pair_specs: list[tuple[str, str, str]]) -> None:
    """Every pair, and each kind's medians."""
    pair_rows: list[list[object]] = [
        [
            str(p["round"]),
            p["pair"],
            p["a_mib_s"],
            p["b_mib_s"],
            p["ratio"],
            p["a_cpu_s_per_gib"],
            p["b_cpu_s_per_gib"],
            p["cpu_ratio"],
        ]
        for p in pairs
    ]

    for name, _, _ in pair_specs:
        if pair_values(pairs, name, "ratio"):
            pair_rows.append(
                [
                    "median",
                    name,
                    None,
                    None,
                    median(pair_values(pairs, name, "ratio")),
                    None,
                    None,
                    median(pair_values(pairs, name, "cpu_ratio")),
                ]
            )
    print_table(
        "pairs (adjacent in time): A / B" + ("" if pair_rows else ": none"),
        [
            "round",
            "pair A / B",
            "A MiB/s",
            "B MiB/s",
            "ratio",
            "A CPU s/GiB",
            "B CPU s/GiB",
            "CPU ratio",
        ],
        pair_rows,
    )


def medians_table(run: Cases, seq: list[float], durable: list[float]) -> dict[str, dict[str, Any]]:
    """Medians by case over the rounds ("fresh": both workers=1 fresh cases together),
    against the disk's limits."""
    cases, ok_cases = run.cases, run.ok_cases
    # 4. medians by case
    keys = list(dict.fromkeys(c["key"] for c in cases))
    fresh_1 = [c["mib_s"] for c in ok_cases(*FRESH_1)]
    medians: dict[str, dict[str, Any]] = {}
    for key in keys:
        done = ok_cases(key)
        runs = [c for c in cases if c["key"] == key]
        rates = [c["mib_s"] for c in done]
        cpu = [c["server_cpu_s_per_gib"] for c in done if c.get("server_cpu_s_per_gib") is not None]
        rss = [c["server_peak_rss_mib"] for c in done if c.get("server_peak_rss_mib") is not None]
        medians[key] = {
            "runs": len(runs),
            "ok": len(done),
            "mib_s": median(rates),
            "mib_s_min": min(rates, default=None),
            "mib_s_max": max(rates, default=None),
            "seconds": median([c["seconds"] for c in done]),
            "server_cpu_s_per_gib": median(cpu),
            "server_peak_rss_mib_max": max(rss, default=None),
        }
    if fresh_1:
        medians["fresh"] = {
            "runs": len([c for c in cases if c["key"] in FRESH_1]),
            "ok": len(fresh_1),
            "mib_s": median(fresh_1),
            "mib_s_min": min(fresh_1),
            "mib_s_max": max(fresh_1),
            "seconds": median([c["seconds"] for c in ok_cases(*FRESH_1)]),
            "server_cpu_s_per_gib": median(
                [
                    c["server_cpu_s_per_gib"]
                    for c in ok_cases(*FRESH_1)
                    if c.get("server_cpu_s_per_gib") is not None
                ]
            ),
            "server_peak_rss_mib_max": max(
                (
                    c["server_peak_rss_mib"]
                    for c in ok_cases(*FRESH_1)
                    if c.get("server_peak_rss_mib") is not None
                ),
                default=None,
            ),
        }
    seq_med, durable_med = median(seq), median(durable)
    order = ["fresh", *keys]
    print_table(
        "medians by case (over the rounds); ingestd /v1 fresh = both workers=1 fresh cases",
        [
            "case",
            "ok/runs",
            "MiB/s",
            "min",
            "max",
            "seconds",
            "CPU s/GiB",
            "peak RSS MiB (max)",
            "vs seq disk",
            "vs durable acks",
        ],
        [
            [
                "ingestd /v1 fresh, workers=1" if key == "fresh" else label(key),
                f"{medians[key]['ok']}/{medians[key]['runs']}",
                medians[key]["mib_s"],
                medians[key]["mib_s_min"],
                medians[key]["mib_s_max"],
                medians[key]["seconds"],
                medians[key]["server_cpu_s_per_gib"],
                medians[key]["server_peak_rss_mib_max"],
                None if key in NOT_VS_DISK else _ratio(medians[key]["mib_s"], seq_med),
                None if key in NOT_VS_DISK else _ratio(medians[key]["mib_s"], durable_med),
            ]
            for key in order
            if key in medians
        ],
    )

    return medians


def phases_table(run: Cases, medians: dict[str, dict[str, Any]]) -> None:
    """The ingestd /v1 cases by phase (from the client's progress callback)."""
    ok_cases = run.ok_cases
    keys = list(dict.fromkeys(c["key"] for c in run.cases))
    # 5. ingestd phases
    phased = [k for k in keys if any(c.get("phases") for c in ok_cases(k))]
    if phased:

        def phase(key: str, name: str) -> float | None:
            return median([c["phases"][name] for c in ok_cases(key) if c.get("phases")])

        print_table(
            "ingestd /v1 cases by phase (median seconds, from the client's progress callback; "
            "copy after: the materialised copy, written after the answer, not in total)",
            ["case", "hash", "create+send", "complete", "total", "copy after"],
            [
                [
                    label(k),
                    phase(k, "hash_s"),
                    phase(k, "send_s"),
                    phase(k, "complete_s"),
                    medians[k]["seconds"],
                    median([c["after_s"] for c in ok_cases(k) if c.get("after_s") is not None]),
                ]
                for k in phased
            ],
        )


def seed_line(args: argparse.Namespace, run: Cases) -> tuple[list[dict[str, Any]], list[float]]:
    """The seed API's chunks and their latency; (the OK seed cases, every chunk's seconds)."""
    ok_cases = run.ok_cases
    seeds = ok_cases("seed")
    latencies = [x for c in seeds for x in c.get("chunk_latencies_s", [])]
    if seeds:
        print(
            f"\nseed API: {seeds[0]['chunks']} chunks of {seeds[0]['chunk_size']:,} bytes per run, "
            f"{args.parallel} parallel; chunk latency over {len(latencies)} posts: "
            f"p50 {(percentile(latencies, 50) or 0) * 1000:.0f} ms, "
            f"p99 {(percentile(latencies, 99) or 0) * 1000:.0f} ms, "
            f"max {max(latencies, default=0) * 1000:.0f} ms; median complete "
            f"{median([c['complete_s'] for c in seeds]) or 0:.2f}s, processing job "
            f"{median([c['job_wait_s'] for c in seeds]) or 0:.2f}s after it"
        )
    return seeds, latencies


class Targets:
    """The targets: called with each one's figures, kept for the results file
    (targets) and as the table's rows."""

    def __init__(self) -> None:
        self.targets: dict[str, dict[str, Any]] = {}
        self.rows: list[list[object]] = []

    def __call__(
        self,
        name: str,
        value: float | None,
        goal: float | None,
        at_most: bool = False,
        unit: str = "x",
        values: list[float] | None = None,
        note: str | None = None,
    ) -> None:
        met = (
            None if value is None or goal is None else (value <= goal if at_most else value >= goal)
        )
        self.targets[name] = {
            "value": value,
            "goal": goal,
            "at_most": at_most,
            "unit": unit,
            "met": met,
            "values": values,
            "note": note,
        }
        goal_s = ""
        if goal is not None:
            g = f"{goal:g}" + (".0" if unit == "x" and float(goal).is_integer() else "")
            goal_s = f" {'<=' if at_most else '>='} {g}{unit}"
        shown = note if value is None and note else ("-" if value is None else f"{value:.2f}{unit}")
        if values and len(values) > 1:
            shown += f"  ({', '.join(f'{v:.2f}' for v in values)})"
        self.rows.append(
            [name + goal_s, shown, "-" if met is None else ("yes" if met else "MISSED")]
        )


def targets_table(
    args: argparse.Namespace,
    result: dict[str, Any],
    run: Cases,
    pairs: list[dict[str, Any]],
    seeds: list[dict[str, Any]],
    latencies: list[float],
) -> dict[str, dict[str, Any]]:
    """Every target, measured, in one table; their figures for the results file."""
    # 6. the targets
    target = Targets()
    peer_targets(target, args, result, pairs)
    seed_targets(target, args, run, seeds, latencies)
    upload_targets(target, args, run)
    title = "targets (medians of the pair ratios; the rounds' values in brackets)"
    if args.size_mib != 1024 or args.jsonl_mib != 256:
        title += (
            f"; NB: set for 1024 MiB / JSONL 256 MiB, this run used {args.size_mib} / "
            f"{args.jsonl_mib} MiB"
        )
    print_table(title, ["target", "measured", "met?"], target.rows)
    return target.targets


def peer_targets(
    target: Targets, args: argparse.Namespace, result: dict[str, Any], pairs: list[dict[str, Any]]
) -> None:
    """/v1 fresh against each peer (MiB/s, CPU per GiB); each workers=N against workers=1."""
    extra = _extra_workers(args)
    shipped = pair_values(pairs, "ingestd / shipped peer", "ratio")
    fsyncing = pair_values(pairs, "ingestd / fsync peer", "ratio")
    cpu_shipped = pair_values(pairs, "ingestd / shipped peer", "cpu_ratio")
    cpu_fsync = pair_values(pairs, "ingestd / fsync peer", "cpu_ratio")
    no_peer = "n/a (--skip-peer)" if args.skip_peer else "n/a (no pair)"
    target(
        "/v1 fresh vs shipped peer, MiB/s",
        median(shipped),
        TARGET_VS_SHIPPED,
        values=shipped,
        note=no_peer,
    )
    target(
        "/v1 fresh vs fsync peer, MiB/s",
        median(fsyncing),
        TARGET_VS_FSYNC,
        values=fsyncing,
        note=no_peer,
    )
    target(
        "/v1 fresh vs shipped peer, server CPU/GiB",
        median(cpu_shipped),
        TARGET_CPU_VS_SHIPPED,
        at_most=True,
        values=cpu_shipped,
        note=no_peer,
    )
    target(
        "/v1 fresh vs fsync peer, server CPU/GiB (no target)",
        median(cpu_fsync),
        None,
        values=cpu_fsync,
        note=no_peer,
    )
    for w in extra:
        gain = pair_values(pairs, f"workers={w} / workers=1", "ratio")
        note = "n/a (no --workers in `ingestd serve`)" if not result["workers_supported"] else "n/a"
        target(
            f"workers={w} gain over workers=1, MiB/s (no target)",
            median(gain),
            None,
            values=gain,
            note=note,
        )
        cpu_gain = pair_values(pairs, f"workers={w} / workers=1", "cpu_ratio")
        target(
            f"workers={w} vs workers=1, server CPU/GiB (no target)",
            median(cpu_gain),
            None,
            values=cpu_gain,
            note=note,
        )


def seed_targets(
    target: Targets,
    args: argparse.Namespace,
    run: Cases,
    seeds: list[dict[str, Any]],
    latencies: list[float],
) -> None:
    """The seed API against /v1 fresh, and its p99 chunk latency."""
    fresh_1 = [c["mib_s"] for c in run.ok_cases(*FRESH_1)]
    seed_rates = [c["mib_s"] for c in seeds]
    target(
        "seed API vs /v1 fresh (medians), MiB/s",
        _ratio(median(seed_rates), median(fresh_1)),
        TARGET_SEED_VS_FRESH,
        note="n/a (--skip-seed)" if args.skip_seed else "n/a",
    )
    target(
        "seed API p99 chunk latency",
        None if not latencies else (percentile(latencies, 99) or 0) * 1000,
        TARGET_SEED_P99_MS,
        at_most=True,
        unit=" ms",
        note="n/a (--skip-seed)" if args.skip_seed else "n/a",
    )


def upload_targets(target: Targets, args: argparse.Namespace, run: Cases) -> None:
    """The identical re-uploads' speed-up, the daemon's peak RSS, the edited (JSONL
    insertion) upload's share of bytes sent."""
    get, ok_cases = run.get, run.ok_cases
    extra = _extra_workers(args)
    for key, name in (
        ("reupload_cold", "re-upload (new client state dir) speed-up over fresh"),
        ("reupload", "re-upload (same client, chunk-list cache) speed-up"),
    ):
        speedups = []
        for r in run.round_nos:
            fresh_b, again = get(r, "fresh_b"), get(r, key)
            if _ok(fresh_b) and _ok(again):
                assert fresh_b is not None and again is not None
                speedups.append(fresh_b["seconds"] / again["seconds"])
        target(name, median(speedups), TARGET_REUPLOAD_SPEEDUP, values=speedups)
    cli = [r["cli"]["ratio"] for r in run.rounds if "cli" in r]
    target(
        "CLI re-upload of an accepted file vs `ingestd --version`, seconds",
        median(cli),
        TARGET_CLI_REUPLOAD_VS_START,
        at_most=True,
        values=cli,
    )
    rss_cases = [
        c
        for c in ok_cases(*FRESH_1, *(f"fresh_w{w}" for w in extra))
        if c.get("server_peak_rss_mib") is not None
    ]
    target(
        "daemon peak RSS per process, fresh uploads (max)",
        max((c["server_peak_rss_mib"] for c in rss_cases), default=None),
        TARGET_RSS_MIB,
        at_most=True,
        unit=" MiB",
    )
    insert = get(None, "insert")
    target(
        "JSONL +1 MiB inserted: share of bytes sent",
        insert["bytes_sent"] / insert["size_bytes"] * 100 if _ok(insert) and insert else None,
        TARGET_INSERT_SENT * 100,
        at_most=True,
        unit=" %",
        note="n/a (--jsonl-mib 0)" if not args.jsonl_mib else "n/a",
    )


def notes(result: dict[str, Any], run: Cases) -> None:
    """What the peer client did, the JSONL files, what peak RSS and CPU cover."""
    cases, ok_cases = run.cases, run.ok_cases
    peers = ok_cases("peer_shipped", "peer_fsync")
    if peers:
        print(f"\npeer client: {peers[0]['client']}, {peers[0]['how']}")
    if "jsonl" in result:
        j = result["jsonl"]
        print(
            f"JSONL: {j['size_bytes']:,} bytes; variant {j['variant_size_bytes']:,} bytes with "
            f"{j['insert_bytes']:,} bytes of new lines at offset {j['insert_offset']:,}"
        )
    scopes = {c.get("server_peak_rss_scope") for c in cases} - {None}
    print(
        f"server peak RSS: the largest VmHWM among the server's own processes, per "
        f"{', '.join(sorted(scopes)) or '-'}; server CPU: the whole process tree"
    )
