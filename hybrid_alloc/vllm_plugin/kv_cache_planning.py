"""The whole natural KV cache config: groups, tensors and block count (the engine core's KV cache planning).

Replaces ``get_kv_cache_configs`` (defined in the release's ``planning_module``, ``hybrid_alloc.vllm_versions``)
and, on releases where the engine core calls it first, ``get_global_kv_cache_groups`` (both imported by
name in ``vllm.v1.engine.core``) when the natural layout applies.
Layout, per pipeline stage, on the layer-outermost KV cache layouts (LBHNC: vLLM's CPU backend):
- one region of ``num_blocks * P`` bytes per attention layer; ``P`` = the attention page ``A`` at the
  kernel block, or on a stage with more state per attention layer than the others, ``A`` padded so that
  ``k`` strides hold its state (the planner's ``StageShape.bytes_per_block``); attention layers view the
  region as ``[num_blocks, ...]`` at block stride ``P``;
- state layers are dealt round-robin over the regions; inside a region, the hosted state pages are stacked
  in a slot of ``k`` blocks (a stage with more state per attention layer than ``k`` pages hold either pads
  ``P`` or keeps the rest in a state region of ``num_blocks * Q`` bytes after the attention regions, ``Q``
  bytes per block id, slot ``s`` at ``s * k * Q``: ``StageShape.placement``, whichever costs less), ``k`` chosen by the planner over all stages (one scheduler serves all:
  ``hybrid_alloc.planner.natural.choose_slot_blocks``). A state layer views its region as
  ``[num_blocks // k, ...]`` at slot stride ``k * P``: slot ``s`` = block ids ``[s*k, (s+1)*k)`` in every
  region. Same storage, two id spaces.
- groups: one per distinct state spec (its "block" is a slot), then the attention group, so a request's
  slot is allocated before its attention blocks.
Bytes per stage = ``num_blocks * (n_attn * P + Q)`` (the trace's natural plan); a request of L tokens holds
``ceil(L / block) + G * k`` block ids (G = number of state groups).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from functools import partial

from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheGroupSpec,
    KVCacheTensor,
    MambaSpec,
    compute_layout_strides,
)

from hybrid_alloc import vllm_versions
from hybrid_alloc.planner.natural import (
    ALIGN_SLOTS,
    StageShape,
    StockFloor,
    align_slots_error,
    choose_slot_blocks,
    objective_lengths,
    one_request_error,
)

from . import capacity_log, fail_closed, patching
from .checkpoint_interval import checkpoint_tokens
from .natural_config import NaturalKVCacheConfig, SlotTensor
from .patching import Patch


def _placement(worker_spec: dict, regions: tuple[int, ...]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """(attention layers, [(state layer, region, offset in slot)]): the state layers in the planner's regions
    (``StageShape.placement``: dealt round-robin over the attention tensors, region ``n_attn`` the state
    region), stacked in their region's slot in order."""
    attention = [n for n, s in worker_spec.items() if isinstance(s, FullAttentionSpec)]
    filled = [0] * (len(attention) + 1)
    states = []
    for (name, spec), region in zip(((n, s) for n, s in worker_spec.items() if isinstance(s, MambaSpec)), regions,
                                    strict=True):
        states.append((name, region, filled[region]))
        filled[region] += spec.page_size_bytes
    return attention, states


def stage_shape(worker_spec: dict) -> StageShape:
    """The planner's view of one worker (pipeline stage), from its vLLM specs."""
    attention = [s for s in worker_spec.values() if isinstance(s, FullAttentionSpec)]
    return StageShape(
        kv=tuple(s.page_size_bytes // s.block_size for s in attention),
        state_pages=tuple(s.page_size_bytes for s in worker_spec.values() if isinstance(s, MambaSpec)),
        block=attention[0].block_size,
    )


def natural_groups(specs: dict, state_specs: list | None = None) -> list[KVCacheGroupSpec]:
    """One group per distinct state spec (``state_specs``: the whole model's, so every stage numbers its
    groups alike), then the attention group: a request's slot is allocated before its attention blocks."""
    if state_specs is None:
        state_specs = list(dict.fromkeys(s for s in specs.values() if isinstance(s, MambaSpec)))
    attention = [n for n, s in specs.items() if isinstance(s, FullAttentionSpec)]
    groups = [KVCacheGroupSpec([n for n, s in specs.items() if s == spec], spec) for spec in state_specs]
    groups.append(KVCacheGroupSpec(attention, specs[attention[0]].merge([specs[n] for n in attention])))
    return groups


def plan(vllm_config, kv_cache_specs: list[dict], available_memory: list[int],
         stock_floor: StockFloor | None = None) -> list[NaturalKVCacheConfig]:
    """The natural KVCacheConfig of every worker: k, num_blocks and each stage's attention page stride are
    the trace's (``hybrid_alloc.planner.natural``: k chosen over the stages, above what stock vLLM holds
    where a k is, padded strides or a state region where a stage holds more state per attention layer than
    k pages)."""
    merged: dict = {}
    for worker in kv_cache_specs:
        merged.update(worker)
    state_specs = list(dict.fromkeys(s for s in merged.values() if isinstance(s, MambaSpec)))
    shapes = [stage_shape(w) for w in kv_cache_specs]
    max_len = vllm_config.model_config.max_model_len
    # one running slot per request and state group in both modes: in "align" mode checkpoints are cached,
    # evictable slots taken only where the pool can spare them (kv_cache_coordinator.AlignSlotMambaManager)
    k = choose_slot_blocks(shapes, list(available_memory), len(state_specs), objective_lengths(max_len), stock_floor)
    num_blocks = min(shape.max_blocks(avail, k, True) for shape, avail in zip(shapes, available_memory))
    if vllm_config.cache_config.num_gpu_blocks_override is not None:
        num_blocks = vllm_config.cache_config.num_gpu_blocks_override

    checkpoint = None
    if vllm_config.cache_config.mamba_cache_mode == "align":
        # the checkpoint interval C for this k, or vLLM's --prefix-cache-retention-interval where the user set
        # one (a positive one: its default, 0, would keep no state every C tokens)
        checkpoint = vllm_config.cache_config.prefix_cache_retention_interval or checkpoint_tokens(shapes[0].block, k)
    configs = [_worker_config(vllm_config, w, shape, state_specs, num_blocks, k, checkpoint)
               for w, shape in zip(kv_cache_specs, shapes)]
    if checkpoint is not None:
        # the state groups' block B (the workers set a provisional one; they adopt this one:
        # checkpoint_interval.adopt_interval); the engine core's scheduler reads it here
        vllm_config.cache_config.mamba_block_size = configs[0].kv_cache_groups[0].kv_cache_spec.block_size
    error = one_request_error(max_len, configs[0].blocks_per_request(max_len), shapes[0].block, num_blocks)
    if error is None and checkpoint is not None:
        groups = configs[0].kv_cache_groups[:len(state_specs)]  # the state groups come first
        slots = sum(ALIGN_SLOTS + g.kv_cache_spec.num_prefill_checkpoint_blocks for g in groups)
        error = align_slots_error(slots, k, num_blocks)
    if error:
        raise ValueError(error)
    return configs


def _worker_config(vllm_config, worker_spec, shape: StageShape, state_specs, num_blocks, k,
                   checkpoint: int | None) -> NaturalKVCacheConfig:
    planning_module = vllm_versions.running().planning_module
    kv_cache_groups_tp_replicas = importlib.import_module(planning_module).kv_cache_groups_tp_replicas
    layout = vllm_config.cache_config.get_resolved_kv_cache_layout()
    placement = shape.placement(k)
    attention, states = _placement(worker_spec, placement.regions)
    attn_spec = worker_spec[attention[0]]
    [stride] = set(placement.attention_strides)  # the attention page, padded where the planner pads
    region = num_blocks * stride
    state_stride = placement.state_region_stride  # the state region follows the attention regions
    size = region * len(attention) + num_blocks * state_stride
    layer_stride, block_stride = compute_layout_strides(attn_spec, num_blocks, len(attention), layout)[:2]
    assert (layer_stride, block_stride) == (num_blocks * attn_spec.page_size_bytes, attn_spec.page_size_bytes), (
        f"{layout.name}: attention pages not dense"
    )

    align = vllm_config.cache_config.mamba_cache_mode == "align"
    tensors = [KVCacheTensor(size=size, layers=attention, layer_stride=region, block_stride=stride)]
    for name, r, offset in states:
        step = stride if r < len(attention) else state_stride
        assert offset + worker_spec[name].page_size_bytes <= k * step, "a slot does not hold its state pages"
        tensors.append(
            SlotTensor(size=size, layers=[name], layer_stride=region, block_stride=step if align else k * step,
                       offset=r * region + offset)
        )
    groups = natural_groups(worker_spec, state_specs)
    if checkpoint is not None:
        groups = [KVCacheGroupSpec(g.layer_names, _align_spec(g.kv_cache_spec, checkpoint, shape.block))
                  if isinstance(g.kv_cache_spec, MambaSpec) else g for g in groups]
    config = NaturalKVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=tensors,
        kv_cache_groups=groups,
        # vLLM's (0 by default: only replay boundaries and junctions; the engine then exports in-prefill
        # checkpoints on a prompt's last chunk only): the state managers add C themselves
        # (kv_cache_coordinator.AlignSlotMambaManager.cache_blocks)
        prefix_cache_retention_interval=0 if checkpoint is not None
        else vllm_config.cache_config.prefix_cache_retention_interval,
        slot_blocks=k,
        num_state_groups=len(state_specs),
        state_ids_are_block_ids=align,
        checkpoint_interval=checkpoint,
    )
    config.kv_tp_replicas = kv_cache_groups_tp_replicas(
        groups, vllm_config.parallel_config.tensor_parallel_size, vllm_config.parallel_config.decode_context_parallel_size
    )
    return config


def _align_spec(spec: MambaSpec, checkpoint: int, block: int) -> MambaSpec:
    """A state group's spec in "align" mode. Its block B is the attention block ``block``: a chunk's state
    can be kept at any attention-block boundary, and an in-prefill export (column ``cdiv(end, B) - 2``) is
    possible for any prompt longer than two blocks; vLLM's sparse retention, with C passed by the state
    managers (``AlignSlotMambaManager.cache_blocks``), keys only the ones worth keeping. Except where the layers'
    export grid is the state block (GDN's FlashInfer prefill: ``get_mamba_prefill_checkpoint_grid`` =
    ``mamba_block_size``, with a per-grid-step buffer of ``max_num_batched_tokens / grid`` states): there
    B = C, never below the provisional grid the workers sized that buffer on.
    On vLLM's CPU backend only Mamba2 layers export (``mamba2_prefill_checkpoint``: stock, the CPU Mamba2 scan
    returns final states only, "index 14 is out of bounds for dimension 0 with size 4"); any other layer's
    export is switched off there, and the scheduler ends a chunk on the checkpoint instead
    (``Scheduler._mamba_block_aligned_split``)."""
    from vllm.platforms import current_platform  # lazy: resolved in the engine core, not at plugin import

    if current_platform.is_cpu() and spec.num_prefill_checkpoint_blocks and spec.mamba_type.name != "MAMBA2":
        spec = replace(spec, num_prefill_checkpoint_blocks=0, prefill_checkpoint_alignment=None)
    if spec.num_prefill_checkpoint_blocks and spec.prefill_checkpoint_alignment == spec.block_size:
        return replace(spec, block_size=checkpoint, prefill_checkpoint_alignment=checkpoint)
    return replace(spec, block_size=block)


def _natural_reason(vllm_config, kv_cache_specs) -> str | None:
    """Why this engine stays stock (None: natural). The KV cache layout is resolved only when every other
    condition holds: stock resolves it only where it needs it (an attention-free model never does)."""
    layout = lambda: vllm_config.cache_config.get_resolved_kv_cache_layout()  # noqa: E731
    return fail_closed.config_reason(vllm_config) or fail_closed.spec_reason(kv_cache_specs, layout)


def _get_global_kv_cache_groups(original):
    def get_global_kv_cache_groups(vllm_config, kv_cache_specs):
        reason = _natural_reason(vllm_config, kv_cache_specs)
        if reason:
            fail_closed.stock(reason)  # logged once: get_kv_cache_configs says the same
            return original(vllm_config, kv_cache_specs)
        merged: dict = {}
        for worker in kv_cache_specs:
            merged.update(worker)
        return natural_groups(merged)

    return get_global_kv_cache_groups


def _get_kv_cache_configs(original):
    def get_kv_cache_configs(vllm_config, kv_cache_specs, available_memory, *global_groups):
        reason = _natural_reason(vllm_config, kv_cache_specs)
        if reason:
            fail_closed.stock(reason)
            return original(vllm_config, kv_cache_specs, available_memory, *global_groups)
        stock = capacity_log.stock_estimate(vllm_config, kv_cache_specs, available_memory, partial(_stock_configs, original))
        configs = plan(vllm_config, kv_cache_specs, available_memory, stock.floor)
        capacity_log.log_capacity(vllm_config, configs, stock)
        return configs

    return get_kv_cache_configs


def _stock_configs(get_kv_cache_configs, vllm_config, kv_cache_specs, available_memory):
    """vLLM's own planning (``get_kv_cache_configs``: the original) on stock specs, in the release's signature."""
    release = vllm_versions.running()
    if not release.global_groups:
        return get_kv_cache_configs(vllm_config, kv_cache_specs, available_memory)
    groups = patching.original(GLOBAL_GROUPS)(vllm_config, kv_cache_specs)
    return get_kv_cache_configs(vllm_config, kv_cache_specs, available_memory, groups)


# get_global_kv_cache_groups: only where the running release has it (vllm_versions: its sites)
GLOBAL_GROUPS = Patch("get_global_kv_cache_groups", _get_global_kv_cache_groups)
PATCHES = (Patch("get_kv_cache_configs", _get_kv_cache_configs), GLOBAL_GROUPS)
