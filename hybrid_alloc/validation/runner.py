"""The validation run itself: both servers one after the other, the load on each, the report."""

from __future__ import annotations

import argparse
import glob
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from hybrid_alloc.errors import UserError
from hybrid_alloc.validation import load as load_mod
from hybrid_alloc.validation import nvml
from hybrid_alloc.validation import report as report_mod
from hybrid_alloc.validation.launch import device, launches, server_command
from hybrid_alloc.validation.server import PLUGIN_MARKER, Server, capacity_lines, log_lines, port_free

# what a stock run must not inherit from the caller's environment
PLUGIN_ENV = ("HYBRID_ALLOC", "HYBRID_ALLOC_REPORT_DIR")


def _nvml_gpus() -> list[dict] | None:
    """Device-wide memory of every GPU while a server is up (None without NVML)."""
    try:
        snapshot = nvml.parse(nvml.read_raw())
    except nvml.NvmlUnavailable:
        return None
    return [{"index": g.index, "uuid": g.uuid, "name": g.name, "total": g.memory.total, "used": g.memory.used}
            for g in snapshot.gpus]


def run_validation(args: argparse.Namespace, lengths: tuple[int, ...], nvml_status: dict) -> dict:
    if not port_free(args.port):
        raise UserError(f"port {args.port} is busy (another server?): stop it or give --port")
    out = os.path.abspath(args.out)
    plugin_dir = os.path.join(out, "plugin")
    os.makedirs(plugin_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(plugin_dir, "worker-*.json")):
        os.remove(stale)  # reports of an earlier run would be read as this one's
    source = args.model_path or args.model
    prompt_ids = load_mod.prompts(args.requests, lengths, load_mod.vocab_size(source))
    console = Console(stderr=True)
    runs: dict[str, dict] = {}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            _runs(args, progress, prompt_ids, plugin_dir, out, runs)
    except KeyboardInterrupt:
        raise UserError("interrupted (the server was stopped)") from None
    reports = report_mod.startup_reports(plugin_dir)
    if device(args) == "cpu" and reports:
        reasons = sorted({r["nvml"].get("reason", "") for r in reports if not r["nvml"].get("available")})
        if reasons:
            nvml_status = {**nvml_status, "reason": nvml_status["reason"] + "; the plugin: " + "; ".join(reasons)}
    setup = {"model": args.model, "model_path": args.model_path, "pp": args.pp, "tp": args.tp,
             "device": device(args), "hardware": args.hardware, "max_model_len": args.max_model_len,
             "vllm_args": args.vllm_args, "vllm_python": args.vllm_python or sys.executable,
             "load": {"requests": args.requests, "prompt_tokens": list(lengths), "max_tokens": args.max_tokens,
                      "seed": load_mod.SEED}}
    report = report_mod.build(setup, runs, reports, nvml_status)
    paths = report_mod.write(report, out)
    for line in report["summary"]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print(f"Reports: {paths['md']}, {paths['json']}, {paths['png']}", highlight=False, soft_wrap=True)
    return report


def _runs(args, progress, prompt_ids, plugin_dir: str, out: str, runs: dict) -> None:
    """Each launch in turn: start, wait for /health, capacity, load, stop; recorded into ``runs``."""
    for label, extra, command in launches(args):
        if label == "plugin":
            extra = {**extra, "HYBRID_ALLOC_REPORT_DIR": plugin_dir}
        env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
        env.update(extra)
        argv = server_command(args, command)
        log = os.path.join(out, f"{label}.log")
        server = Server(label, argv, env, log, args.port)
        task = progress.add_task(f"{label}: starting vLLM", total=None)
        try:
            server.start()
            startup = server.wait_healthy(args.startup_timeout)
            progress.update(task, description=f"{label}: load", total=len(prompt_ids), completed=0)
            info = server.cache_config_info()
            gpus = _nvml_gpus() if device(args) == "cuda" else None
            model = load_mod.served_model(server.url)
            load_mod.complete(server.url, model, prompt_ids[0], 2, timeout=600)  # warm-up, not timed
            result = load_mod.run_load(server.url, model, prompt_ids, args.max_tokens,
                                       advance=lambda: progress.advance(task))
            progress.update(task, description=f"{label}: stopping vLLM")
        finally:
            code = server.stop()
        progress.update(task, description=f"{label}: done ({result['tokens_per_s']:.1f} tokens/s)")
        runs[label] = {
            "label": label, "command": argv, "env": extra, "log": log, "startup_seconds": startup,
            "exit_code": code, "max_model_len": args.max_model_len, "cache_config_info": info,
            "capacity_lines": capacity_lines(log), "plugin_lines": log_lines(log, PLUGIN_MARKER), "nvml": gpus,
            "load": result,
        }
