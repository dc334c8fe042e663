"""The vLLM plugin: natural per-layer pages for hybrid models in stock vLLM (the one place that patches vLLM).

Entry point ``vllm.general_plugins: hybrid_alloc = hybrid_alloc.vllm_plugin:register``; active when
``HYBRID_ALLOC=1``. vLLM calls ``register()`` once in each of its processes (front, engine core, workers);
it is idempotent, imports no CUDA, and patches nothing on an unsupported vLLM version. Each patch decides per
engine (``fail_closed.config_reason``, ``fail_closed.spec_reason``) and otherwise leaves vLLM stock.

Modules, one concern each: ``versions`` (supported releases), ``fail_closed`` (when to stay stock),
``block_size`` (no inflation, no padding; workers), ``kv_groups`` (groups, tensors, block count; engine
core), ``capacity_log`` (true capacity), ``block_pool`` + ``scheduler`` (ordered free ids, state slots),
``tensors`` (the buffer and views, slot copy-on-write; workers), ``global_mode``
(``HYBRID_ALLOC_MODE=global``); prefix caching runs vLLM's "align" mode on natural pages
(``block_size.checkpoint_tokens``, ``scheduler.AlignSlotMambaManager``, ``block_pool.CachingFreeBlockQueue``);
``patching`` records every replaced vLLM attribute,
``versions`` says where each supported release keeps them.
"""

from __future__ import annotations

import os

_registered = False


def register() -> None:
    global _registered
    if _registered or os.environ.get("HYBRID_ALLOC") != "1":
        return
    _registered = True
    import vllm

    from . import fail_closed, versions

    reason = versions.unsupported_reason(vllm.__version__)
    if reason:
        fail_closed.stock(reason)
        return
    from . import block_size, capacity_log, global_mode, kv_groups, scheduler, tensors

    # global_mode: with HYBRID_ALLOC_MODE=global, the allocator is installed in each worker
    for module in (block_size, kv_groups, capacity_log, scheduler, tensors, global_mode):
        module.patch()


def unregister() -> None:
    """Undo ``register()`` (tests that run stock and patched vLLM in one process)."""
    global _registered
    from . import patching

    patching.restore()
    _registered = False
