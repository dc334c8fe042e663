"""The natural layout: vLLM's elastic shared block pool without state padding or inflated blocks.

Per stage (../shared/DESIGN.md, "The natural layout"):
- attention blocks hold ``B`` tokens, the smallest block the attention kernel supports;
- one KV tensor per attention layer; each tensor also hosts ``r = ceil(n_state / n_attn)`` state layers;
- a state slot is an aligned run of k block ids in every tensor, ``k = ceil(r * state_page /
  attention_page)``; each hosted state layer keeps its unpadded page there. Runs are aligned from the
  top of the pool, ``[r0 + s*k, r0 + (s+1)*k)`` with ``r0 = num_blocks % k``, so the remainder and vLLM's
  null block 0 sit below the first slot (attention takes the lowest free ids, so it uses them first);
- bytes = ``num_blocks * sum(attention page of each attention layer)``; a stage without attention keeps
  its state in state-only tensors (one per state layer) of ``num_blocks // k`` slots.
Pipeline parallel: one scheduler, so ``num_blocks`` is the largest that fits every stage's budget and ``k``
the largest any stage needs. A state-only model has no attention blocks: its pool unit is one slot (k = 1).

Capacity at L tokens: ``min(max_num_seqs, (N - 1) // (ceil(L/B) + m*k))`` (block 0 is vLLM's null
block), where ``m`` is the number of state slots vLLM's MambaManager may hold per request
(``MambaSpec.max_memory_usage_bytes``). With top-aligned runs and lowest-first attention this count is
exact: attention never strands a run it did not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.hardware import KERNEL_BLOCK_SIZE, HardwareProfile, attention_backend
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import VERSIONS


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cache_dtype(layout: ModelLayout, settings: Settings) -> str:
    return layout.resolve_kv_cache_dtype(settings.kv_cache_dtype)


def max_model_len(layout: ModelLayout, settings: Settings) -> int:
    return settings.max_model_len or layout.max_position_embeddings


def natural_block_size(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> int:
    """The smallest block the attention kernel takes (16 on GPUs, 32 on vLLM's CPU backend)."""
    dtype = cache_dtype(layout, settings)
    return max(
        (KERNEL_BLOCK_SIZE[attention_backend(hardware, layer.head_size, dtype)] for layer in layout.attention_layers),
        default=KERNEL_BLOCK_SIZE[attention_backend(hardware, 128, dtype)],
    )


def state_blocks_per_request(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> int:
    """State blocks one request may hold in a state group (``MambaSpec.max_memory_usage_bytes`` / page):
    1 + spec in "none" mode; 2 + spec + prefill checkpoint blocks in "align" mode, where Mamba2 layers
    always add one and Gated DeltaNet layers add one with FlashInfer's GDN prefill (vLLM 0.33, when every
    state layer is GDN). The largest over the state layers: one natural slot serves them all."""
    spec = settings.num_speculative_tokens
    if settings.mamba_cache_mode != "align":
        return 1 + spec
    kinds = {layer.kind for layer in layout.state_layers}
    gdn_checkpoints = (
        VERSIONS[settings.vllm_version].gdn_prefill_checkpoint_block
        and hardware.gdn_prefill_flashinfer
        and kinds == {"gdn"}
    )
    return 2 + spec + int("mamba2" in kinds or gdn_checkpoints)


@dataclass(frozen=True)
class NaturalStage:
    stage: int
    num_attention_layers: int
    num_state_layers: int
    attention_page_bytes: int  # one block of the smallest attention layer (k is derived from it)
    bytes_per_block: int  # one block id across every attention tensor of the stage
    kv_bytes_per_token: int  # all attention layers of the stage together
    state_page_bytes: int  # the largest unpadded state page of the stage (0: no state)
    state_bytes_per_request: int  # one request's state in every state layer of the stage, unpadded
    state_layers_per_tensor: int  # r
    slot_blocks_needed: int  # the k this stage alone needs
    budget_bytes: int
    max_blocks: int  # the largest num_blocks this stage's budget holds
    num_blocks: int  # the plan's (shared) num_blocks
    state_slot_blocks: int  # the plan's (shared) k
    bytes: int  # what the stage allocates for the plan's num_blocks

    @property
    def is_state_only(self) -> bool:
        return self.num_attention_layers == 0 and self.num_state_layers > 0

    @property
    def slot_bytes(self) -> int:
        """Bytes one state slot occupies on this stage."""
        if self.is_state_only:
            return self.state_bytes_per_request
        return self.state_slot_blocks * self.bytes_per_block

    @property
    def unused_state_pages_per_slot(self) -> int:
        """State-page positions in a slot that no state layer uses: ``n_attn * r - n_state``."""
        if self.is_state_only or self.num_state_layers == 0:
            return 0
        return self.num_attention_layers * self.state_layers_per_tensor - self.num_state_layers

    @property
    def slot_rounding_bytes(self) -> int:
        """Bytes of a slot beyond its state pages, unused page positions included."""
        return self.slot_bytes - self.state_bytes_per_request


@dataclass(frozen=True)
class NaturalPlan:
    stages: tuple[NaturalStage, ...]
    attention_block_size: int | None  # None: the model has no attention layer
    num_blocks: int
    state_slot_blocks: int  # k; 0 without state
    state_slots_per_request: int  # m; 0 without state
    max_model_len: int
    max_num_seqs: int
    notes: tuple[str, ...]

    @property
    def bottleneck_stage(self) -> int:
        return min(self.stages, key=lambda s: s.max_blocks).stage

    def blocks_per_request(self, num_tokens: int) -> int:
        attention = cdiv(num_tokens, self.attention_block_size) if self.attention_block_size else 0
        return attention + self.state_slots_per_request * self.state_slot_blocks

    def fit(self, num_tokens: int) -> int:
        """Requests of ``num_tokens`` tokens the pool holds at once, before the max_num_seqs cap."""
        return max(0, (self.num_blocks - 1) // self.blocks_per_request(num_tokens))

    def capacity(self, num_tokens: int) -> int:
        return min(self.max_num_seqs, self.fit(num_tokens))

    @property
    def max_concurrency(self) -> float:
        """vLLM's definition: num_blocks / blocks one max_model_len request may hold (no cap, no null block)."""
        return self.num_blocks / self.blocks_per_request(self.max_model_len)

    @property
    def kv_cache_size_tokens(self) -> int:
        """vLLM's definition: tokens held when every request is max_model_len long."""
        return int(self.max_concurrency * self.max_model_len)


def plan_natural(
    layout: ModelLayout, settings: Settings, stage_budgets: list[int], hardware: HardwareProfile
) -> NaturalPlan:
    block = natural_block_size(layout, settings, hardware)
    dtype = cache_dtype(layout, settings)
    per_stage = stage_layers(layout, settings.pp, settings.pp_layer_partition)
    assert len(per_stage) == len(stage_budgets), "one budget per pipeline stage"
    has_attention = bool(layout.attention_layers)
    has_state = bool(layout.state_layers)
    notes = []

    # What each stage needs on its own: (layers, attention page, bytes per block, state page, r, k).
    shapes = []
    for layers in per_stage:
        attention = [layer for layer in layers if layer.is_attention]
        state = [layer for layer in layers if layer.is_state]
        kv = [layer.kv_bytes_per_token(dtype) for layer in attention]
        page = block * min(kv) if kv else 0
        state_page = max((layer.state_page_bytes for layer in state), default=0)
        r = cdiv(len(state), len(attention)) if attention else 0
        k = cdiv(r * state_page, page) if attention else 0
        shapes.append((attention, state, kv, page, state_page, r, k))

    if has_attention:
        k = max(max(s[6] for s in shapes), 1) if has_state else 0
    else:
        k = 1  # no attention: the pool unit is one state slot
        notes.append("no attention layer: the pool is a pool of state slots; capacity does not depend on length")
    if not has_state:
        notes.append("no state layer: the natural layout is vLLM's attention pool at the natural block size")
    m = state_blocks_per_request(layout, settings, hardware) if has_state else 0

    def max_blocks(shape, budget: int) -> int:
        attention, state, kv, page, state_page, r, _ = shape
        if attention:
            return budget // (block * sum(kv))
        if state:
            # State-only tensors hold num_blocks // k slots.
            slots = budget // sum(layer.state_page_bytes for layer in state)
            return slots * k + k - 1 if has_attention else slots
        return budget  # a stage without cache layers puts no limit

    fits = [max_blocks(shape, budget) for shape, budget in zip(shapes, stage_budgets)]
    num_blocks = min(fits)

    stages = []
    for index, (shape, budget, fit) in enumerate(zip(shapes, stage_budgets, fits)):
        attention, state, kv, page, state_page, r, stage_k = shape
        state_bytes = sum(layer.state_page_bytes for layer in state)
        if attention:
            allocated = num_blocks * block * sum(kv)
        else:
            allocated = (num_blocks // k) * state_bytes if state else 0
        stages.append(
            NaturalStage(
                stage=index,
                num_attention_layers=len(attention),
                num_state_layers=len(state),
                attention_page_bytes=page,
                bytes_per_block=block * sum(kv),
                kv_bytes_per_token=sum(kv),
                state_page_bytes=state_page,
                state_bytes_per_request=state_bytes,
                state_layers_per_tensor=r,
                slot_blocks_needed=stage_k,
                budget_bytes=budget,
                max_blocks=fit,
                num_blocks=num_blocks,
                state_slot_blocks=k,
                bytes=allocated,
            )
        )
    return NaturalPlan(
        stages=tuple(stages),
        attention_block_size=block if has_attention else None,
        num_blocks=num_blocks,
        state_slot_blocks=k if has_state else 0,
        state_slots_per_request=m,
        max_model_len=max_model_len(layout, settings),
        max_num_seqs=settings.max_num_seqs,
        notes=tuple(notes),
    )
