"""Variants of vLLM's ``Scheduler._mamba_block_aligned_split`` for the checkpoint-key tests, selected by
``$HYBRID_ALLOC_TEST_SPLIT`` (nothing when unset), and a scheduler trace (``$HYBRID_ALLOC_TEST_TRACE``: one
JSON line per step with the block the split floors to; how the CPU engine's 128 was found). ``register`` is a
``vllm.general_plugins`` entry point (the engine tests declare it in a dist-info on ``PYTHONPATH``, as
harness.entry_point_dir does for the plugin), so the variant is in place in the engine core before its
scheduler is built.

The split floors mid-prefill chunk ends to ``cache_config.block_size`` (0.32: ``scheduler.py:469``, the only
read of it in the scheduler). Under the plugin that is not the state group's block (the checkpoint interval):
the engine core sets it to the attention block, and on CPU ``EngineCoreProc`` resets it to 128. Variants:
- ``attention_floor``: floor to the attention group's block (the engine core's value where no platform hook
  resets it): chunks run past checkpoint positions;
- ``state_floor``: floor to the state group's block, the checkpoint interval;
- ``uncopied_checkpoints``: the plugin's split, but a kept checkpoint's key moves to a fresh slot without the
  copy (``AlignSlotMambaManager.take_pending_cow_copies`` broken): the deliberately broken variant.
"""

from __future__ import annotations

import os

ENV = "HYBRID_ALLOC_TEST_SPLIT"


def _group_block(kv_cache_config, state: bool) -> int:
    from vllm.v1.kv_cache_interface import MambaSpec

    return next(g.kv_cache_spec.block_size for g in kv_cache_config.kv_cache_groups
                if isinstance(g.kv_cache_spec, MambaSpec) == state)


class _CacheConfigView:
    """``cache_config`` as the split reads it: ``block_size`` overridden, everything else the live config's."""

    def __init__(self, cache_config, block_size: int) -> None:
        self._cache_config, self.block_size = cache_config, block_size

    def __getattr__(self, name):
        return getattr(self._cache_config, name)


def _vllm_split():
    """vLLM's own split, also when the plugin has replaced it (``hybrid_alloc.vllm_plugin.patching``), so a
    variant decides the floor whatever the plugin does."""
    from vllm.v1.core.sched.scheduler import Scheduler

    original = vars(Scheduler)["_mamba_block_aligned_split"]
    try:
        from hybrid_alloc.vllm_plugin import patching
    except ImportError:
        return original
    for owner, name, value in patching._patched:
        if owner is Scheduler and name == "_mamba_block_aligned_split":
            return value
    return original


def apply(how: str):
    """Replace the split; returns a function that restores the one in place before."""
    from vllm.v1.core.sched.scheduler import Scheduler

    if how == "uncopied_checkpoints":
        return _uncopied_checkpoints()
    if how not in ("attention_floor", "state_floor"):
        raise ValueError(f"{ENV}={how!r}")
    before = vars(Scheduler)["_mamba_block_aligned_split"]
    vllm_split = _vllm_split()

    def split(self, request, num_new_tokens, *args, **kwargs):
        cache_config = self.cache_config
        self.cache_config = _CacheConfigView(cache_config, _group_block(self.kv_cache_config, state=how == "state_floor"))
        try:
            return vllm_split(self, request, num_new_tokens, *args, **kwargs)
        finally:
            self.cache_config = cache_config

    Scheduler._mamba_block_aligned_split = split

    def restore():
        Scheduler._mamba_block_aligned_split = before

    return restore


def _uncopied_checkpoints():
    """Keep checkpoints as the plugin does, but never queue the copy: the key lands on a slot that holds
    whatever it held before."""
    from hybrid_alloc.vllm_plugin.kv_cache_coordinator import AlignSlotMambaManager, MambaManager

    before = vars(AlignSlotMambaManager)["take_pending_cow_copies"]

    def take_pending_cow_copies(self):
        for slot, keys, num_tokens in self.kept:
            if self.can_spare_slot():
                [copy] = self.block_pool.get_new_blocks(1)
                for key in keys:
                    self.block_pool._insert_block_hash(key, copy, num_tokens)
                self.block_pool.free_blocks([copy])  # cached, keyed, never written
        self.kept.clear()
        return MambaManager.take_pending_cow_copies(self)

    AlignSlotMambaManager.take_pending_cow_copies = take_pending_cow_copies

    def restore():
        AlignSlotMambaManager.take_pending_cow_copies = before

    return restore


_applied = False


def register() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    if os.environ.get(ENV):
        apply(os.environ[ENV])
    if os.environ.get(TRACE_ENV):
        trace(os.environ[TRACE_ENV])


TRACE_ENV = "HYBRID_ALLOC_TEST_TRACE"


def trace(path: str) -> None:
    """Append one JSON line per scheduler step to ``path``: each scheduled request's (id, computed tokens,
    scheduled tokens) and the prefix hits of requests scheduled for the first time."""
    import json

    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler.schedule

    def schedule(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        computed = {r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs}
        cached = out.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        with open(path, "a") as f:
            f.write(json.dumps({"split_block": self.cache_config.block_size, "scheduler_block": self.block_size,
                                "hash_block": self.hash_block_size, "partial_hit": self.mamba_partial_cache_hit,
                                "chunks": [(r, computed[r], n) for r, n in out.num_scheduled_tokens.items()],
                                "new": {r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs}}) + "\n")
        return out

    Scheduler.schedule = schedule
