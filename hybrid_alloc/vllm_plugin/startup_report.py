"""The startup report: per worker, after the KV cache is allocated, what was planned, tagged and measured.

One log line per worker and, with ``HYBRID_ALLOC_REPORT_DIR`` set, one JSON file per worker in
``hybrid_alloc.validation.reconcile``'s schema (``hybrid-alloc verify --report`` reads it), plus these fields:
  "device": str, "unknown": {line: reason},  # budget lines vLLM did not give (0 in "budget")
  "profiler": {"weights" | "peak_activations" | "non_torch" | "cuda_graphs" | "cuda_context"
               | "available_kv_cache": n | null},
  "allocator_kv_cache": {"current": n, "reserved": n} | null, "allocator_note": str,
  "nvml": {"available": bool, "reason": str, "gpu": {...} (when available), "measured": n | null, "note": str},
  "reconciliation": {"measured", "budget", "unaccounted", "tolerance", "verdict"} | null, "reconciliation_note": str
A report never stops the engine: any error is one log line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields

from hybrid_alloc import allocator, vllm_versions
from hybrid_alloc.validation import nvml
from hybrid_alloc.validation.reconcile import REPORT_SCHEMA, PlannedMemory, reconcile

from . import log

# The profiler numbers of the engine-tested release (``vllm_versions.ENGINE_TESTED``): report line ->
# (holder, attribute); the worker sets them in determine_available_memory's profiling pass (GPU), the model
# runner in load_model.
_PROFILER = {
    "weights": ("runner", "model_memory_usage"),
    "peak_activations": ("worker", "peak_activation_memory"),
    "cuda_graphs": ("worker", "cudagraph_memory_estimate"),
    "available_kv_cache": ("worker", "available_kv_cache_memory_bytes"),
}


def build(pid: int, pp_rank: int, tp_rank: int, device: str, plan_kv: int, kv_tag: dict | str,
          profiler: dict[str, int | str], nvml_sample: dict | str, visible: str | None = None) -> dict:
    """The report. kv_tag: the allocator's tag_stats()["kv_cache"] or why there is none; profiler: line ->
    bytes or why vLLM has no number; nvml_sample: a raw NVML sample (nvml.read_raw) or why NVML is
    unavailable; visible: CUDA_VISIBLE_DEVICES."""
    lines = [f.name for f in fields(PlannedMemory)] + ["available_kv_cache"]
    numbers = {line: profiler.get(line, "not read") for line in lines}
    numbers["kv_cache"] = plan_kv
    unknown = {line: v for line, v in numbers.items() if isinstance(v, str)}
    budget = PlannedMemory(**{f.name: 0 if f.name in unknown else numbers[f.name] for f in fields(PlannedMemory)})
    plan_tags = {"kv_cache": plan_kv}
    allocator_tags = {} if isinstance(kv_tag, str) else {"kv_cache": kv_tag["current"]}
    report = {
        "schema": REPORT_SCHEMA, "pid": pid, "gpu_uuid": "", "pp_rank": pp_rank, "tp_rank": tp_rank,
        "device": device,
        "budget": {f.name: getattr(budget, f.name) for f in fields(PlannedMemory)},
        "unknown": unknown,
        "profiler": {line: None if line in unknown else numbers[line] for line in lines if line != "kv_cache"},
        "plan_tags": plan_tags,
        "allocator_tags": allocator_tags,
        "allocator_kv_cache": None if isinstance(kv_tag, str) else {k: kv_tag[k] for k in ("current", "reserved")},
        "allocator_note": kv_tag if isinstance(kv_tag, str) else "",
    }
    report["nvml"] = _nvml(report, device, nvml_sample, visible)
    measured = report["nvml"].get("measured")
    budget_unknown = sorted(unknown.keys() - {"available_kv_cache"})
    if measured is None or budget_unknown:
        report["reconciliation"] = None
        report["reconciliation_note"] = ("no NVML measurement" if measured is None
                                         else "budget lines unknown: " + ", ".join(budget_unknown))
    else:
        rec = reconcile(measured, budget, plan_tags, allocator_tags)
        report["reconciliation"] = {"measured": rec.measured, "budget": budget.total, "unaccounted": rec.unaccounted,
                                    "tolerance": rec.tolerance, "verdict": rec.verdict}
        report["reconciliation_note"] = ""
    return report


def _nvml(report: dict, device: str, sample: dict | str, visible: str | None) -> dict:
    """NVML's view of this worker's GPU (sets report["gpu_uuid"]), or why there is none."""
    if isinstance(sample, str):
        return {"available": False, "reason": sample}
    if not device.startswith("cuda"):
        return {"available": False, "reason": f"the worker's device is {device}, not an NVIDIA GPU"}
    snapshot = nvml.parse(sample)
    gpus, note = nvml.cuda_order(snapshot.gpus, visible)
    index = int(device.partition(":")[2] or 0)
    if index >= len(gpus):
        return {"available": False, "reason": f"{device} is not among NVML's devices (CUDA_VISIBLE_DEVICES={visible})"}
    gpu = gpus[index]
    report["gpu_uuid"] = gpu.uuid
    problem = snapshot.per_process_problem(gpu)
    if problem:
        measured, note = gpu.memory.used, "; ".join(filter(None, [note, f"device-wide: {problem}"]))
    else:
        measured = next((p.used for p in gpu.processes if p.pid == report["pid"]), None)
    memory = gpu.memory
    return {"available": True, "reason": "", "measured": measured, "note": note,
            "gpu": {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "total": memory.total,
                    "reserved": memory.reserved, "used": memory.used, "free": memory.free}}


def summary(report: dict, path: str | None) -> str:
    """The one log line."""
    plan, tagged = report["plan_tags"]["kv_cache"], report["allocator_tags"].get("kv_cache")
    if tagged is None:
        kv = f"KV plan {plan:,} B, allocator has no kv_cache tag ({report['allocator_note']})"
    else:
        kv = f"KV {tagged:,} B allocated " + ("= plan" if tagged == plan else f"!= plan {plan:,} B")
    nv = report["nvml"]
    if not nv["available"]:
        nv_text = f"NVML unavailable ({nv['reason']})"
    elif report["reconciliation"] is None:
        nv_text = f"NVML: {nv['measured']} B; not reconciled ({report['reconciliation_note']})"
    else:
        rec = report["reconciliation"]
        nv_text = f"NVML {rec['measured']:,} B vs budget {rec['budget']:,} B: {rec['verdict']}"
    where = f"; wrote {path}" if path else ""
    return f"hybrid-alloc: startup report (PP {report['pp_rank']}, TP {report['tp_rank']}): {kv}; {nv_text}{where}"


def write(kv_cache_config, device) -> None:
    """Build, write and log this worker's report (called by tensors.py after the allocation)."""
    try:
        report = build(os.getpid(), *_ranks(), str(device), kv_cache_config.kv_cache_tensors[0].size,
                       _kv_tag(), _profiler(), _nvml_sample(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        path = None
        folder = os.environ.get("HYBRID_ALLOC_REPORT_DIR")
        if folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"worker-pp{report['pp_rank']}-tp{report['tp_rank']}-pid{report['pid']}.json")
            with open(path, "w") as f:
                json.dump(report, f, indent=2)
        log.once(summary(report, path))
    except Exception as error:  # noqa: BLE001 - the report must never stop the engine
        log.once(f"hybrid-alloc: startup report failed: {type(error).__name__}: {error}")


def _ranks() -> tuple[int, int]:
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group  # lazy: vllm

    return get_pp_group().rank_in_group, get_tp_group().rank_in_group


def _kv_tag() -> dict | str:
    try:
        return allocator.tag_stats().get("kv_cache") or "no kv_cache tag (the KV cache is not from the allocator)"
    except ImportError as error:
        return f"allocator unavailable ({error})"


def _callers() -> dict:
    """The worker and model runner of the allocate_kv_cache call: the ``self`` of the frames above it
    (worker.initialize_from_config -> runner.initialize_kv_cache -> ... -> allocate_kv_cache)."""
    found = {}
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if obj is not None:
            if "runner" not in found and hasattr(obj, "initialize_kv_cache_tensors"):
                found["runner"] = obj
            if "worker" not in found and hasattr(obj, "model_runner"):
                found["worker"] = obj
        frame = frame.f_back
    return found


def _profiler() -> dict[str, int | str]:
    holders = _callers()
    numbers: dict[str, int | str] = {"non_torch": f"vLLM {vllm_versions.ENGINE_TESTED} keeps it only inside its profiling pass"}
    for line, (holder, attr) in _PROFILER.items():
        obj = holders.get(holder)
        value = getattr(obj, attr, None)
        numbers[line] = int(value) if value is not None else (
            f"no {holder} found" if obj is None else f"{type(obj).__name__} has no {attr} (not profiled here)")
    # the device's non-torch memory when the worker started: mostly the CUDA context (device-wide, so
    # another process on the GPU counts too)
    snapshot = getattr(holders.get("worker"), "init_snapshot", None)
    numbers["cuda_context"] = (int(snapshot.non_torch_memory) if snapshot is not None
                               else "no init_snapshot on the worker (not a CUDA worker)")
    return numbers


def _nvml_sample() -> dict | str:
    try:
        return nvml.read_raw()
    except nvml.NvmlUnavailable as reason:
        return str(reason)
