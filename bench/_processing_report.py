"""bench/processing.py's report: the jobs' and the uploads' tables, what of the
JSONL job each busy upload ran beside, the checks and the targets."""

from __future__ import annotations

import argparse
from typing import Any

from _common import MIB, print_table
from _processing_jobs import STAGES, _diff, _num

TARGET_VALIDATE_MIB_S = 200.0
TARGET_BUSY_VS_IDLE = 0.8
# A check: peak RSS during a job <= max(RSS_LIMIT_FLOOR, RSS_LIMIT_SHARE x the JSONL size);
# a plugin that loads the file whole goes over it.
RSS_LIMIT_SHARE = 0.5
RSS_LIMIT_FLOOR = 256 * MIB


def rss_limit(size: int) -> float:
    return max(RSS_LIMIT_FLOOR, RSS_LIMIT_SHARE * size)


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Print the report; the checks, the targets and the ratios for the results file."""
    jobs_table(args, result)
    uploads_table(args, result)
    overlaps(result)
    checks = check(result)
    targets, ratios = targets_of(result)
    return {"checks": checks, "targets": targets, **ratios}


def _jobs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three JSONL jobs, by the key of their case."""
    conc, dedup, iso = result["concurrent"], result["concurrent_dedup"], result["isolated"]
    return {"concurrent": conc, "concurrent_dedup": dedup, "isolated": iso}


def _uploads(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The other file's three uploads, with their labels."""
    idle, busy, late = result["idle"], result["busy"], result["busy_plugins"]
    return [
        ("idle (no job running)", idle),
        ("(b) right after the JSONL completion", busy),
        ("(c) beside a dedup JSONL job (plugins)", late),
    ]


def jobs_table(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The JSONL jobs: seconds by part, validation and PII scan MiB/s, CPU, peak RSS."""
    jsonl = result["jsonl"]
    conc, dedup, iso = result["concurrent"], result["concurrent_dedup"], result["isolated"]

    print_table(
        f"processing of a {args.jsonl_mib} MiB JSONL file ({jsonl['lines']:,} lines), "
        f"plugins {args.plugins}, durability=fsync, 127.0.0.1",
        [
            "job",
            "job s",
            "completion s",
            "plugins s",
            "validate s",
            "validate MiB/s",
            "PII scan s",
            "PII scan MiB/s",
            "server CPU s",
            "RSS at start MiB",
            "peak RSS MiB",
            "growth MiB",
            "verdict",
        ],
        [
            [
                label,
                c["job_seconds"],
                c["completion_seconds"],
                c["plugins_seconds"],
                c["validate_seconds"],
                c["validate_mib_s"],
                c["scan_seconds"],
                c["scan_mib_s"],
                c["server_cpu_s"],
                c["server_rss_at_start_mib"],
                c["server_peak_rss_mib"],
                _diff(c["server_rss_at_start_mib"], c["server_peak_rss_mib"]),
                c["verdict"] or c["state"],
            ]
            for label, c in (
                ("JSONL, upload (b) beside it", conc),
                ("JSONL again (dedup), upload (c) beside it", dedup),
                ("JSONL again (dedup), alone", iso),
            )
        ],
    )


def uploads_table(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The other file's uploads: MiB/s, phases, CPU, the JSONL job's state around it."""
    uploads = _uploads(result)

    def phase(c: dict[str, Any], key: str) -> float | None:
        return (c.get("phases") or {}).get(key)

    print_table(
        f"upload of a {args.other_mib} MiB random .bin file (cdc, {args.parallel} parallel)",
        [
            "case",
            "MiB/s",
            "seconds",
            "hash",
            "create+send",
            "complete",
            "server CPU s",
            "client CPU s",
            "JSONL job before/after",
            "check",
        ],
        [
            [
                label,
                c["mib_s"],
                c["seconds"],
                phase(c, "hash_s"),
                phase(c, "send_s"),
                phase(c, "complete_s"),
                c.get("server_cpu_s"),
                c.get("client_cpu_s"),
                f"{c['job_state_before']}/{c['job_state_after']}"
                if "job_state_after" in c
                else "-",
                "OK" if c["ok"] else "FAIL",
            ]
            for label, c in uploads
        ],
    )


def overlaps(result: dict[str, Any]) -> None:
    """What of the JSONL job each busy upload ran beside; the JSONL upload; the PII."""
    jsonl = result["jsonl"]
    conc, iso = result["concurrent"], result["isolated"]
    uploads = _uploads(result)

    for label, c in uploads[1:]:
        ov = c["overlap_s"]
        parts = [f"completion {_sec(ov['completion'])}", f"plugins {_sec(ov['plugins'])}"]
        stages = [f"{st} {_sec(ov.get(f'stage_{st}'))}" for st in STAGES if ov.get(f"stage_{st}")]
        if stages:
            parts[-1] += " (" + ", ".join(stages) + ")"
        print(
            f"\nupload {label!r} ({ov['upload_window_s']:.2f}s) ran beside the JSONL job's "
            + ", ".join(parts)
            + _finished_note(ov["job_finished_after_upload_s"])
        )
    upload = conc["upload"]
    print(
        f"JSONL upload itself: {upload['upload_seconds']:.2f}s "
        f"({jsonl['size_bytes'] / MIB / upload['upload_seconds']:.0f} MiB/s), "
        f"daemon peak RSS {_num(upload['server_peak_rss_mib'])} MiB"
    )
    pii = (iso.get("results") or {}).get("pii")
    if pii is not None:
        print(
            f"PII written: {jsonl['emails']} e-mails, {jsonl['phones']} phone numbers; "
            f"pii results: {_short(pii)}"
        )


def check(result: dict[str, Any]) -> dict[str, bool]:
    """The checks (exit status 1 if one fails), printed."""
    jsonl = result["jsonl"]
    jobs, uploads = _jobs(result), _uploads(result)
    busy = result["busy"]

    checks: dict[str, bool] = {
        "uploads_ok": all(c["ok"] for _, c in uploads)
        and all(c["upload"]["ok"] for c in jobs.values()),
        "job_running_for_whole_busy_upload": busy["jsonl_job_running_throughout"],
        "timings_present": all(
            c["validate_seconds"] is not None and c["scan_seconds"] is not None
            for c in jobs.values()
        ),
        "no_plugin_errors": not any(c["plugin_errors"] for c in jobs.values()),
    }
    for label, c in jobs.items():
        rows = ((c.get("results") or {}).get("datasets") or {}).get("validate", {}).get("rows")
        checks[f"validated_every_line_{label}"] = rows == jsonl["lines"]
        found = ((c.get("results") or {}).get("pii") or {}).get("scan", {}).get("found") or {}
        checks[f"pii_found_what_was_written_{label}"] = (
            found.get("email") == jsonl["emails"] and found.get("phone") == jsonl["phones"]
        )
        rss = c["server_peak_rss_mib"]
        checks[f"peak_rss_streaming_{label}"] = rss is not None and rss * MIB <= rss_limit(
            jsonl["size_bytes"]
        )
    failed = [k for k, v in checks.items() if not v]
    print("\nchecks: " + ("all OK" if not failed else "FAILED " + ", ".join(failed)))
    if not checks["job_running_for_whole_busy_upload"]:
        print("  the JSONL job finished before the busy upload did: use a larger --jsonl-mib")
    for c in jobs.values():
        for e in c["plugin_errors"]:
            print(f"  plugin error in job {c['job_id']}: {e}")
    return checks


def targets_of(
    result: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, float | None]]:
    """The targets, printed; (the targets, the busy uploads' ratios to the idle one)."""
    conc, dedup, iso = result["concurrent"], result["concurrent_dedup"], result["isolated"]
    idle, busy, late = result["idle"], result["busy"], result["busy_plugins"]

    targets: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, goal: float, unit: str, bound: bool = False) -> None:
        """`bound`: value is only an upper bound (the job ended before the upload
        did); below the goal it still decides, above it nothing is known."""
        met = None if value is None else value >= goal
        if bound and met:
            met = None
        targets[name] = {
            "value": value,
            "goal": goal,
            "at_most": False,
            "upper_bound": bound,
            "met": met,
        }
        shown = "-" if value is None else f"{'<= ' if bound else ''}{value:.2f}{unit}"
        status = "n/a" if met is None else ("OK" if met else "MISSED")
        print(f"  {name:<44} {shown:>14}  >= {goal:g}{unit:<6} {status}")

    print("\ntargets")
    target("JSONL validation, job alone", iso["validate_mib_s"], TARGET_VALIDATE_MIB_S, " MiB/s")
    beside = [c["validate_mib_s"] for c in (conc, dedup) if c["validate_mib_s"] is not None]
    target(
        "JSONL validation, beside an upload (slower)",
        min(beside) if beside else None,
        TARGET_VALIDATE_MIB_S,
        " MiB/s",
    )
    ratios: dict[str, float | None] = {}
    for key, name, c in (
        ("busy_vs_idle", "(b) upload right after completion vs idle", busy),
        ("busy_plugins_vs_idle", "(c) upload beside the plugins vs idle", late),
    ):
        ratios[key] = c["mib_s"] / idle["mib_s"]
        target(name, ratios[key], TARGET_BUSY_VS_IDLE, "x", not c["jsonl_job_running_throughout"])
    if not late["jsonl_job_running_throughout"]:
        print(
            f"  (c): the JSONL job ended {-late['overlap_s']['job_finished_after_upload_s']:.1f}s "
            "before the upload did, so its ratio is an upper bound"
        )
    print(f"  {'PII scan, job alone (no target)':<44} {_num(iso['scan_mib_s']):>6} MiB/s")
    return targets, ratios


def _finished_note(after: float) -> str:
    if after >= 0:
        return f"; the job finished {after:.1f}s after the upload"
    return f"; the job finished {-after:.1f}s BEFORE the upload did"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
