"""The vLLM plugin: natural per-layer pages for hybrid models in stock vLLM (the one place that patches vLLM).

Entry point ``vllm.general_plugins: hybrid_alloc = hybrid_alloc.vllm_plugin:register``; active when
``HYBRID_ALLOC=1``. vLLM calls ``register()`` once in each of its processes (front, engine core, workers);
it is idempotent, imports no CUDA, and patches nothing on an unsupported vLLM release
(``hybrid_alloc.vllm_versions``: the supported releases, where each keeps what is patched). Each patch
decides per engine (``fail_closed.config_reason``, ``fail_closed.spec_reason``) and otherwise leaves vLLM
stock.

Modules, one concern each, each declaring what it replaces (``PATCHES``; ``patching`` applies and records
them): ``fail_closed`` (when to stay stock), ``block_size`` (no inflation, no padding; workers) with
``checkpoint_interval`` (align mode's state checkpoints), ``kv_cache_planning`` (groups, tensors, block
count; engine core) on ``natural_config`` (the config types), ``capacity_log`` (true capacity),
``kv_cache_coordinator`` + ``block_pool`` (ordered free ids, state slots; its live-object ``SWAPS``),
``chunk_split`` (align mode: where prefill chunks end, so a kept state is the state its key names),
``tensors`` (the buffer and views, slot copy-on-write; workers), ``mamba2_prefill_checkpoint`` (Mamba2's
in-prefill checkpoint export: never into the null block; on vLLM's CPU backend at all; workers), ``global_mode`` (``HYBRID_ALLOC_MODE=global``:
``phase_tags``, ``profiler_stats``); prefix caching runs vLLM's "align" mode on natural pages
(``kv_cache_coordinator.AlignSlotMambaManager``, ``block_pool.CachingFreeBlockQueue``).
"""

from __future__ import annotations

import os

from hybrid_alloc import vllm_versions

from . import fail_closed, patching

_registered = False


def register() -> None:
    global _registered
    if _registered or os.environ.get("HYBRID_ALLOC") != "1":
        return
    _registered = True
    import vllm  # lazy: vllm

    reason = vllm_versions.unsupported_reason(vllm.__version__)
    if reason:
        fail_closed.stock(reason)
        return
    # lazy: these import vllm's modules, whose layout only a supported release is known to have
    from . import (block_size, capacity_log, checkpoint_interval, chunk_split, mamba2_prefill_checkpoint, global_mode,
                   kv_cache_coordinator, kv_cache_planning, tensors)

    for module in (block_size, checkpoint_interval, kv_cache_planning, capacity_log, kv_cache_coordinator, chunk_split,
                   tensors, mamba2_prefill_checkpoint):
        patching.apply(module.PATCHES)
    global_mode.patch()  # with HYBRID_ALLOC_MODE=global, the allocator is installed in each worker


def unregister() -> None:
    """Undo ``register()`` (tests that run stock and patched vLLM in one process)."""
    global _registered
    patching.restore()
    _registered = False
