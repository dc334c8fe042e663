"""Global mode's profiler patch, driven through vLLM 0.33's own ``memory_profiling`` / ``MemorySnapshot``
against the host backend's statistics.

Host-side stand-ins for the two CUDA-only calls vLLM makes there: ``torch.accelerator.get_memory_info``
(cudaMemGetInfo) is a 1 GiB device whose used bytes are the allocator's reserved bytes plus a settable
non-torch amount; ``torch.accelerator.empty_cache`` calls the allocator's empty_cache (what the bridge's
reset hook does under global mode).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

import pytest
import torch

from hybrid_alloc import allocator
from hybrid_alloc.vllm_plugin import profiler_stats

from vllm_sources import torch_calls, tree, vllm_dirs

mem_utils = pytest.importorskip("vllm.utils.mem_utils")

DEVICE = torch.device("cuda", 0)
TOTAL = 1 << 30


class FakeDevice:
    non_torch = 0

    def get_memory_info(self, device=None):
        used = allocator.stats(0)["total"]["reserved"] + self.non_torch
        return TOTAL - used, TOTAL


@pytest.fixture
def device(monkeypatch):
    if allocator.backend_name() != "host":
        pytest.skip("needs the host backend")
    for namespace, functions in profiler_stats.PATCHED.items():
        module = getattr(torch, namespace)
        for name in functions:
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    profiler_stats.patch()
    # The allocator is process-wide: earlier tests leave cached segments that memory_profiling's own
    # empty_cache call would release mid-measurement. Start from none.
    allocator.empty_cache()
    fake = FakeDevice()
    monkeypatch.setattr(torch.accelerator, "get_memory_info", fake.get_memory_info)
    monkeypatch.setattr(torch.accelerator, "empty_cache", allocator.core().empty_cache)
    return fake


def malloc(n: int) -> int:
    ptr = allocator.lib().hybrid_alloc_malloc(n, 0, None)
    assert ptr, allocator.last_error()
    return ptr


def free(ptr: int, n: int) -> None:
    allocator.lib().hybrid_alloc_free(ptr, n, 0, None)


def test_memory_profiling_reads_the_allocator(device):
    weights, activations, non_torch = 3_000_000, 7_000_000, 5 << 20
    baseline = mem_utils.MemorySnapshot(device=DEVICE)
    w = malloc(weights)
    device.non_torch = non_torch  # e.g. NCCL buffers, outside torch
    with mem_utils.memory_profiling(baseline, weights_memory=weights) as result:
        free(malloc(activations), activations)
    after = result.after_profile
    reserved = after.torch_memory - baseline.torch_memory
    assert result.torch_peak_increase == activations
    assert result.transient_peak_headroom == activations
    assert result.non_torch_increase == non_torch
    assert after.torch_allocated - baseline.torch_allocated == weights
    assert reserved >= weights
    assert result.total_consumed == reserved + non_torch
    assert result.non_kv_cache_memory == reserved + non_torch + activations
    free(w, weights)


def test_peaks_reset(device):
    big, weights = 9_000_000, 4_000_000
    free(malloc(big), big)
    assert torch.accelerator.max_memory_allocated(DEVICE) >= big
    torch.accelerator.reset_peak_memory_stats(DEVICE)
    assert torch.accelerator.max_memory_allocated(DEVICE) == torch.accelerator.memory_allocated(DEVICE)
    # CudaPlatform.get_current_memory_usage around load_model (DeviceMemoryProfiler): weights memory
    torch.cuda.reset_peak_memory_stats(DEVICE)
    before = torch.cuda.max_memory_allocated(DEVICE)
    w = malloc(weights)
    torch.cuda.reset_peak_memory_stats(DEVICE)
    assert torch.cuda.max_memory_allocated(DEVICE) - before == weights
    free(w, weights)
    stats = torch.accelerator.memory_stats(DEVICE)
    assert stats["allocated_bytes.all.current"] == torch.accelerator.memory_allocated(0)
    assert stats["reserved_bytes.all.current"] == torch.accelerator.memory_reserved("cuda:0")


STATISTICS = re.compile(r"memory_stats|memory_reserved|memory_allocated|peak")
CALLERS = ("utils/mem_utils.py", "platforms/cuda.py", "model_executor/model_loader/base_loader.py")


def test_patched_names_are_what_vllm_032_and_033_call():
    patched = {(ns, name) for ns, functions in profiler_stats.PATCHED.items() for name in functions}
    for label, found in vllm_dirs(tuple(sorted(patched))):
        called = set()
        for relpath in CALLERS:
            called |= {c for c in torch_calls(tree(found["vllm"], relpath)) if STATISTICS.search(c[1])}
        assert called == patched, label
        assert all(found["has"]), label


def test_patch_is_recorded_once_and_undone():
    """patch() goes through ``patching`` (so ``vllm_plugin.unregister()`` gives torch its functions back); twice
    patches once."""
    from hybrid_alloc.vllm_plugin import patching

    names = [
        (getattr(torch, ns), name, fn) for ns, functions in profiler_stats.PATCHED.items() for name, fn in functions.items()
    ]
    originals = [vars(module)[name] for module, name, _ in names]
    assert all(o is not fn for o, (_, _, fn) in zip(originals, names))
    before = len(patching._patched)
    try:
        profiler_stats.patch()
        profiler_stats.patch()
        assert [getattr(module, name) for module, name, _ in names] == [fn for _, _, fn in names]
        assert [(owner, name) for owner, name, _ in patching._patched[before:]] == [(m, n) for m, n, _ in names]
    finally:
        while len(patching._patched) > before:
            owner, name, value = patching._patched.pop()
            setattr(owner, name, value)
    assert [vars(module)[name] for module, name, _ in names] == originals
