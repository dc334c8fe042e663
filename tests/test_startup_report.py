"""The plugin's startup report built from injected inputs (no engine, no GPU)."""

from __future__ import annotations

import json

from hybrid_alloc.validation.reconcile import load_report
from hybrid_alloc.vllm_plugin import startup_report

GiB = 1 << 30
PROFILER = {"weights": 4 * GiB, "peak_activations": GiB, "non_torch": GiB // 2, "cuda_graphs": GiB // 4,
            "cuda_context": GiB // 2, "available_kv_cache": 5 * GiB}
KV = 5 * GiB
TAG = {"current": KV, "reserved": KV, "peak": KV, "alloc_count": 1, "free_count": 0}


def sample(pid: int, used: int) -> dict:
    return {"unit": "B", "driver_version": "570.00", "wsl": False, "devices": [
        {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA GeForce RTX 3060", "mig": False,
         "memory": {"total": 12 * GiB, "reserved": GiB // 4, "used": used + GiB, "free": GiB},
         "processes": [{"pid": 7, "used": GiB, "in_namespace": True},
                       {"pid": pid, "used": used, "in_namespace": True}]},
        {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA GeForce RTX 3060", "mig": False,
         "memory": {"total": 12 * GiB, "reserved": GiB // 4, "used": 0, "free": 12 * GiB}, "processes": []},
    ]}


def test_cpu_worker_without_nvml_loads_and_carries_the_allocator_numbers(tmp_path):
    profiler = {"weights": 123, "peak_activations": "CPUWorker has no peak_activation_memory (not profiled here)"}
    report = startup_report.build(42, 1, 0, "cpu", 4096, {**TAG, "current": 4096, "reserved": 8192}, profiler,
                                  "no NVIDIA driver: NVML could not start (Driver Not Loaded)")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    loaded = load_report(str(path))
    assert (loaded.pid, loaded.pp_rank, loaded.gpu_uuid) == (42, 1, "")
    assert loaded.plan_tags == loaded.allocator_tags == {"kv_cache": 4096}
    assert loaded.budget.weights == 123 and loaded.budget.peak_activations == 0 and loaded.budget.kv_cache == 4096
    assert report["unknown"]["peak_activations"].startswith("CPUWorker has no")
    assert report["profiler"]["weights"] == 123 and report["profiler"]["cuda_graphs"] is None
    assert report["allocator_kv_cache"] == {"current": 4096, "reserved": 8192}
    assert report["nvml"] == {"available": False, "reason": "no NVIDIA driver: NVML could not start (Driver Not Loaded)"}
    assert report["reconciliation"] is None and report["reconciliation_note"] == "no NVML measurement"
    assert startup_report.summary(report, str(path)) == (
        "hybrid-alloc: startup report (PP 1, TP 0): KV 4,096 B allocated = plan; "
        f"NVML unavailable (no NVIDIA driver: NVML could not start (Driver Not Loaded)); wrote {path}")


def test_gpu_worker_reconciled_against_its_process_on_the_visible_device():
    budget = sum(v for k, v in PROFILER.items() if k != "available_kv_cache") + KV
    report = startup_report.build(99, 0, 0, "cuda:0", KV, TAG, PROFILER, sample(99, budget + 100 * (1 << 20)),
                                  visible="1,0")
    assert report["gpu_uuid"] == "GPU-bbbb"  # cuda:0 is NVML's device 1 under CUDA_VISIBLE_DEVICES=1,0
    assert report["nvml"]["measured"] is None  # our PID holds nothing on that device
    report = startup_report.build(99, 0, 0, "cuda:1", KV, TAG, PROFILER, sample(99, budget + 100 * (1 << 20)),
                                  visible="1,0")
    assert report["gpu_uuid"] == "GPU-aaaa" and report["nvml"]["measured"] == budget + 100 * (1 << 20)
    assert report["reconciliation"] == {"measured": budget + 100 * (1 << 20), "budget": budget,
                                        "unaccounted": 100 * (1 << 20), "tolerance": int(budget * 0.03), "verdict": "ok"}
    assert "= plan; NVML" in startup_report.summary(report, None) and ": ok" in startup_report.summary(report, None)


def test_not_reconciled_while_a_budget_line_is_unknown_and_tags_that_differ_are_said():
    profiler = {**PROFILER, "non_torch": "vLLM 0.32 keeps it only inside its profiling pass"}
    report = startup_report.build(99, 0, 0, "cuda:0", KV, {**TAG, "current": KV - 512}, profiler, sample(99, 9 * GiB))
    assert report["nvml"]["measured"] == 9 * GiB
    assert report["reconciliation"] is None and report["reconciliation_note"] == "budget lines unknown: non_torch"
    assert f"KV {KV - 512:,} B allocated != plan {KV:,} B" in startup_report.summary(report, None)


def test_kv_cache_not_from_the_allocator():
    report = startup_report.build(5, 0, 0, "cuda:0", KV, "no kv_cache tag (the KV cache is not from the allocator)",
                                  PROFILER, "nvidia-ml-py (pynvml) is not installed")
    assert report["allocator_tags"] == {} and report["allocator_kv_cache"] is None
    assert "allocator has no kv_cache tag (no kv_cache tag" in startup_report.summary(report, None)


def test_a_failing_report_is_one_log_line_and_no_exception(caplog, monkeypatch):
    monkeypatch.delenv("HYBRID_ALLOC_REPORT_DIR", raising=False)
    monkeypatch.setattr(startup_report, "_ranks", lambda: (0, 0))  # no vLLM parallel state here
    caplog.set_level("INFO", logger="vllm.hybrid_alloc")
    startup_report.write(kv_cache_config=None, device="cpu")
    assert [r.getMessage() for r in caplog.records] == [
        "hybrid-alloc: startup report failed: AttributeError: 'NoneType' object has no attribute 'kv_cache_tensors'"]
