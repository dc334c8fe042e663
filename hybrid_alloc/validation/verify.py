"""`hybrid-alloc verify`: per-GPU, per-process memory of running vLLM processes as NVML sees it, and the
reconciliation against the plan when the plugin's startup reports are given. No driver: one line, exit 3."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from hybrid_alloc.validation import nvml
from hybrid_alloc.validation.reconcile import Reconciliation, load_report, reconcile

NO_DRIVER_EXIT = 3
VLLM_MARKERS = ("vllm",)  # in the command line: `vllm serve`, `python -m vllm...`, `VLLM::Worker_PP0` titles


@dataclass(frozen=True)
class Row:
    gpu: nvml.Gpu
    pid: int | None  # None: a device-wide row (per-process use not available)
    command: str
    used: int | None
    note: str


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "verify", help="GPU memory of running vLLM processes as NVML sees it, reconciled with the plan",
        description="Per-GPU, per-process memory (NVML) of the given PIDs, or of every process on the machine "
        "whose command line looks like vLLM. Exit code 3 without an NVIDIA driver.",
    )
    parser.add_argument("pids", metavar="PID", nargs="*", type=int)
    parser.add_argument("--report", metavar="FILE.json", action="append", default=[],
                        help="a plugin startup report to reconcile against (repeat for each worker)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    reports = [load_report(path) for path in args.report]
    try:
        snapshot = nvml.parse(nvml.read_raw())
    except nvml.NvmlUnavailable as reason:
        print(f"hybrid-alloc: {reason}", file=sys.stderr)
        raise SystemExit(NO_DRIVER_EXIT) from None
    rows = collect(snapshot, set(args.pids))
    checks = [(r, _reconcile(snapshot, r)) for r in reports]
    if args.json:
        print(json.dumps(to_json(snapshot, rows, checks), indent=2))
    else:
        _print(snapshot, rows, checks)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def collect(snapshot: nvml.Snapshot, pids: set[int]) -> list[Row]:
    """Rows for the wanted processes (`pids`, or every vLLM-looking one); a device-wide row where NVML
    cannot attribute memory to processes."""
    rows = []
    for gpu in snapshot.gpus:
        problem = snapshot.per_process_problem(gpu)
        if problem:
            rows.append(Row(gpu, None, "(all processes)", gpu.memory.used, problem))
            continue
        for proc in gpu.processes:
            command = cmdline(proc.pid)
            wanted = proc.pid in pids if pids else any(m in command.lower() for m in VLLM_MARKERS)
            if wanted:
                rows.append(Row(gpu, proc.pid, command, proc.used, ""))
    return rows


def _reconcile(snapshot: nvml.Snapshot, report) -> tuple[Reconciliation | None, str]:
    gpu = next((g for g in snapshot.gpus if g.uuid == report.gpu_uuid), None)
    if gpu is None:
        return None, f"GPU {report.gpu_uuid} of PID {report.pid} is not on this machine"
    problem = snapshot.per_process_problem(gpu)
    if problem:
        measured, note = gpu.memory.used, f"device-wide: {problem}"
    else:
        proc = next((p for p in gpu.processes if p.pid == report.pid), None)
        if proc is None:
            return None, f"PID {report.pid} holds no memory on GPU {gpu.index} (not running?)"
        measured, note = proc.used, ""
    return reconcile(measured, report.budget, report.plan_tags, report.allocator_tags), note


def to_json(snapshot: nvml.Snapshot, rows: list[Row], checks) -> dict:
    return {
        "driver_version": snapshot.driver_version,
        "wsl": snapshot.wsl,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name, "mig": g.mig,
             "memory": {"total": g.memory.total, "reserved": g.memory.reserved, "used": g.memory.used,
                        "free": g.memory.free},
             "per_process_problem": snapshot.per_process_problem(g)}
            for g in snapshot.gpus
        ],
        "processes": [
            {"gpu_uuid": r.gpu.uuid, "pid": r.pid, "command": r.command, "used": r.used, "note": r.note}
            for r in rows
        ],
        "reconciliations": [
            {"pid": report.pid, "gpu_uuid": report.gpu_uuid, "note": note,
             **({} if rec is None else {
                 "measured": rec.measured, "budget": rec.budget.total, "unaccounted": rec.unaccounted,
                 "tolerance": rec.tolerance, "verdict": rec.verdict, "rows": dict(rec.rows()),
                 "tags": [{"tag": t.tag, "planned": t.planned, "tagged": t.tagged, "exact": t.exact}
                          for t in rec.tags]})}
            for report, (rec, note) in checks
        ],
    }


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _print(snapshot: nvml.Snapshot, rows: list[Row], checks) -> None:
    console = Console()
    table = Table(title=f"GPU memory as NVML sees it (driver {snapshot.driver_version})")
    for column in ("GPU", "name", "PID", "command", "used", "device used / total", "note"):
        table.add_column(column, justify="right" if column in ("used", "PID") else "left")
    for r in rows:
        table.add_row(str(r.gpu.index), r.gpu.name, "-" if r.pid is None else str(r.pid), r.command[:48],
                      _gib(r.used), f"{_gib(r.gpu.memory.used)} / {_gib(r.gpu.memory.total)}", r.note)
    console.print(table)
    if not rows:
        console.print("No vLLM process holds GPU memory (give PIDs to look at other processes).")
    for report, (rec, note) in checks:
        if rec is None:
            console.print(f"PID {report.pid}: {note}")
            continue
        breakdown = Table(title=f"PID {report.pid}, PP rank {report.pp_rank}, TP rank {report.tp_rank}: "
                          f"{rec.verdict} (tolerance {_gib(rec.tolerance)})")
        breakdown.add_column("line")
        breakdown.add_column("bytes", justify="right")
        for name, value in rec.rows():
            breakdown.add_row(name, _gib(value))
        for t in rec.tags:
            breakdown.add_row(f"tag {t.tag}: plan / allocator", f"{_gib(t.planned)} / {_gib(t.tagged)}"
                              + ("" if t.exact else " (differ)"))
        console.print(breakdown)
        if note:
            console.print(note)
