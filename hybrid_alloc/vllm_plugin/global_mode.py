"""Global mode (``HYBRID_ALLOC_MODE=global``): the allocator is every vLLM worker's process-wide CUDA allocator.

``HYBRID_ALLOC_MODE``: ``mempool`` (the default: only the KV cache goes through the allocator, via a
``MemPool``) or ``global``; any other value logs one line naming the valid values and keeps ``mempool``.

Where: ``PATCHES`` (applied by ``register()`` in every vLLM process; it imports no CUDA) wraps
``WorkerWrapperBase.init_device`` (``vllm.v1.worker.worker_base``). That method runs only in a worker
process (the engine core's own process when it is also the worker: the uniprocess executor), for every
worker class and platform, after ``init_worker`` and right before it calls the worker's ``init_device``,
whose first CUDA calls are ``torch.accelerator.device_count`` / ``set_device_index``
(``vllm.v1.worker.gpu_worker`` ``Worker.init_device``). Called by the uniprocess executor, the
multiprocess executor's ``WorkerProc.__init__`` and the Ray executor's ``collective_rpc("init_device")``
(the Ray executor checked on ``vllm_versions.ENGINE_TESTED`` only). Running inside the worker makes it
independent of the start method: with fork the wrapped method is inherited, with spawn ``register()`` runs
again in the worker (``init_worker`` loads the plugins) before it is called.

There, before the worker's ``init_device``: ``allocator.install()`` (``change_current_allocator`` with every
bridge hook live), then ``profiler_stats.patch()`` (vLLM's memory profiler reads the allocator's statistics)
and ``phase_tags.patch()`` (``weights``, ``activations``, ``kv_cache``, ``cudagraph``, ``runtime``). If that
cannot be done, one line "hybrid-alloc: global mode unavailable: <reason>; running in mempool mode" and
nothing else changes for global mode: a non-CUDA device (the CPU engine), sleep mode (vLLM's cumem
``MemPool`` would be routed to this allocator's pools), CUDA already initialised in the worker process
(e.g. forked after CUDA init), or ``install()`` failing (PyTorch without CUDA, library or bridge missing).

CUDA graphs: capture under the pluggable allocator (the bridge's begin/end/release pool hooks route the
capture stream's allocations to a private pool of the library; the bridge replaces PyTorch's stream filter
with the capture stream, so allocations on other streams joined into a capture, e.g. vLLM's auxiliary
streams, are not kept in the pool: an open risk) has not been run under vLLM on a GPU:
global mode keeps vLLM's behaviour and logs once that capture under global mode is unverified (only when
``cudagraph_mode`` is not NONE). ``tests/gpu/gpu_cases.py`` ``case_vllm_global`` is the check.
"""

from __future__ import annotations

import os

from hybrid_alloc import allocator

from . import log, patching, phase_tags, profiler_stats
from .patching import Patch

ENV = "HYBRID_ALLOC_MODE"
MODES = ("mempool", "global")
DEFAULT = "mempool"
UNAVAILABLE = "hybrid-alloc: global mode unavailable: {}; running in mempool mode"
ENABLED = "hybrid-alloc: global mode: this worker's CUDA allocator is hybrid-alloc (hooks: {})"
GRAPHS_UNVERIFIED = (
    "hybrid-alloc: global mode: CUDA graph capture under the pluggable allocator is unverified with this vLLM "
    "(capture runs as vLLM does it; pass --enforce-eager to avoid it)"
)

def mode() -> str:
    """The mode ``$HYBRID_ALLOC_MODE`` asks for: 'mempool' (unset, empty or invalid) or 'global'."""
    value = os.environ.get(ENV, "")
    if value in MODES:
        return value
    if value:
        log.once(
            f"hybrid-alloc: {ENV}={value!r} is not a valid mode (valid: {', '.join(MODES)}); "
            f"running in {DEFAULT} mode"
        )
    return DEFAULT


def _init_device(original):
    def init_device(self, *args, **kwargs):
        enable(self.vllm_config)
        return original(self, *args, **kwargs)

    init_device.hybrid_alloc_global = True
    return init_device


PATCHES = (Patch("init_device", _init_device),)


def patch() -> None:
    """Wrap the worker's device initialisation (global mode only; nothing else happens in this process)."""
    if mode() == "global":
        patching.apply(PATCHES)


def unavailable_reason(vllm_config) -> str | None:
    """Why global mode cannot be installed in this worker before the allocator is tried (None: try it)."""
    device_type = getattr(getattr(vllm_config, "device_config", None), "device_type", None)
    if device_type != "cuda":
        return f"the device is {device_type!r}, not CUDA"
    if getattr(getattr(vllm_config, "model_config", None), "enable_sleep_mode", False):
        return "sleep mode (cumem allocator) is on"
    import torch  # lazy: torch

    if torch.cuda.is_initialized():
        return "CUDA is already initialised in this worker process (e.g. forked after CUDA init)"
    return None


def enable(vllm_config) -> bool:
    """In a worker, before its first CUDA call: install the allocator and the global-mode patches, or log
    the one fail-closed line. True if global mode is on in this process."""
    if allocator.installed():
        return True
    try:
        reason = unavailable_reason(vllm_config)
    except Exception as e:  # noqa: BLE001 (a partial config: deciding must not break the worker)
        reason = f"deciding raised {type(e).__name__}: {e}"
    if reason is None:
        try:
            allocator.install()
        except allocator.AllocatorError as e:
            reason = str(e)
        except Exception as e:  # noqa: BLE001 (library not loadable, torch refusing: stay in mempool mode)
            reason = f"{type(e).__name__}: {e}"
    if reason is not None:
        log.once(UNAVAILABLE.format((reason.strip().splitlines() or ["unknown"])[0]))
        return False
    profiler_stats.patch()
    phase_tags.patch()
    log.once(ENABLED.format(", ".join(allocator.live_hooks()) or "alloc/free only"))
    if _captures_graphs(vllm_config):
        log.once(GRAPHS_UNVERIFIED)
    return True


def _captures_graphs(vllm_config) -> bool:
    graph_mode = getattr(getattr(vllm_config, "compilation_config", None), "cudagraph_mode", None)
    if graph_mode is None:
        return not getattr(getattr(vllm_config, "model_config", None), "enforce_eager", False)
    return getattr(graph_mode, "name", str(graph_mode)) != "NONE"
