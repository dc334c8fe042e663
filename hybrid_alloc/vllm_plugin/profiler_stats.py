"""Global mode: torch's memory statistics read from the allocator, so vLLM's memory profiler stays right.

With ``change_current_allocator`` (``allocator.install()``) PyTorch's ``CUDAPluggableAllocator`` has no
device statistics: ``memory_stats`` and everything built on it raise. vLLM calls (same code in every
supported release):

- ``torch.accelerator.memory_stats``: ``MemorySnapshot.measure`` (``vllm/utils/mem_utils.py``) reads
  "allocated_bytes.all.peak" and "allocated_bytes.all.current";
- ``torch.accelerator.memory_reserved``: ``MemorySnapshot.measure`` (torch memory, hence non-torch memory);
- ``torch.accelerator.reset_peak_memory_stats``: ``memory_profiling``;
- ``torch.accelerator.memory_allocated``: ``release_device_memory_under_pressure`` (integrated GPUs);
- ``torch.accelerator.max_memory_allocated``: ``BaseModelLoader.load_model`` (peak after loading weights);
- ``torch.cuda.reset_peak_memory_stats``, ``torch.cuda.max_memory_allocated``:
  ``CudaPlatform.get_current_memory_usage`` (``DeviceMemoryProfiler``: the weights memory given to
  ``memory_profiling``).

``patch()`` replaces exactly these with readers of ``allocator.stats(device)["total"]`` (current, peak,
reserved) and ``allocator.reset_peak_stats``. vLLM's other calls keep working under a pluggable allocator
and are left alone: ``torch.accelerator.get_memory_info`` (cudaMemGetInfo) and ``empty_cache`` (the
bridge's empty-cache hook).
"""

from __future__ import annotations

from hybrid_alloc import allocator

from . import patching
from .patching import Patch


def _index(device) -> int:
    import torch  # lazy: torch

    return torch.cuda._utils._get_device_index(device, optional=True)


def _total(device) -> dict:
    return allocator.stats(_index(device))["total"]


def memory_stats(device=None) -> dict:
    s = allocator.stats(_index(device))
    return {
        "allocated_bytes.all.current": s["total"]["current"],
        "allocated_bytes.all.peak": s["total"]["peak"],
        "reserved_bytes.all.current": s["total"]["reserved"],
        "num_ooms": s["num_ooms"],
    }


def memory_allocated(device=None) -> int:
    return _total(device)["current"]


def max_memory_allocated(device=None) -> int:
    return _total(device)["peak"]


def memory_reserved(device=None) -> int:
    return _total(device)["reserved"]


def reset_peak_memory_stats(device=None) -> None:
    allocator.reset_peak_stats(_index(device))


#: module attribute -> replacement, per torch namespace (the names vLLM calls, table above)
PATCHED = {
    "accelerator": {
        "memory_stats": memory_stats,
        "memory_reserved": memory_reserved,
        "memory_allocated": memory_allocated,
        "max_memory_allocated": max_memory_allocated,
        "reset_peak_memory_stats": reset_peak_memory_stats,
    },
    "cuda": {
        "max_memory_allocated": max_memory_allocated,
        "reset_peak_memory_stats": reset_peak_memory_stats,
    },
}


PATCHES = tuple(  # replacements, not wrappers: torch's own functions raise under the pluggable allocator
    Patch(name, lambda original, fn=fn: fn, (f"torch.{namespace}",))
    for namespace, functions in PATCHED.items()
    for name, fn in functions.items()
)


def patch() -> None:
    """Point the functions of PATCHED at the allocator (global mode only; idempotent; recorded in
    ``patching``, so ``vllm_plugin.unregister()`` restores torch's own)."""
    patching.apply(PATCHES)
