"""The natural layout: vLLM's elastic shared block pool without state padding or inflated blocks.

Why this shape: a static split into a state pool of ``max_num_seqs`` slots and an attention pool (SGLang,
vLLM TPU) loses to vLLM's single shared pool on some workload (sized for short requests, the state pool
eats the budget long requests need; sized for long ones, short ones starve), so the pool stays shared and
elastic, with no ratio to tune, and only what it costs in vLLM is removed: state pages padded up to the
attention page, and attention blocks inflated to the state page's size.

Per stage:
- attention blocks hold ``B`` tokens, the smallest block the attention kernel supports;
- one KV tensor per attention layer; each tensor also hosts ``r = ceil(n_state / n_attn)`` state layers;
- a state slot is an aligned run of k block ids in every tensor, ``k = ceil(r * state_page /
  attention_page)``; each hosted state layer keeps its unpadded page there. Attention layers view a tensor
  as ``[num_blocks, ...]``, state layers as ``[num_blocks // k, ...]`` at slot stride ``k`` pages: one
  storage, two id spaces. Runs are aligned from block id 0, slot ``s`` = ids ``[s*k, (s+1)*k)`` (the
  plugin's ``block_pool.FreeRuns`` and ``kv_cache_planning`` views); the ``num_blocks % k`` ids above the last run
  are attention-only, and vLLM's null block 0 sits in run 0, so run 0 never holds a slot (a null state-table
  entry addresses slot 0): ``num_blocks // k - 1`` slots exist;
- allocation from opposite ends: state slots take the highest free aligned runs, attention the spare ids
  above the last run first, then the lowest free ids, so runs stay available;
- bytes = ``num_blocks * sum(attention page of each attention layer)``; a stage without attention keeps
  its state in state-only tensors (one per state layer) of ``num_blocks // k`` slots.
Pipeline parallel: one scheduler serves every stage, so ``num_blocks`` (the largest that fits every
stage's budget) and ``k`` are shared. Stages differ in state per attention layer (Qwen3.5-9B at PP=3:
9 GDN layers on 2 attention tensors on stage 0, 8 on 3 elsewhere), so the ``k`` each stage needs differs.
Taking the largest makes every other stage reserve attention pages its slots do not need; instead ``k`` is
chosen from the range the stages need to maximise the geometric mean of the capacities at 512, 4096 and
max_model_len tokens, among the values that hold no fewer requests than stock vLLM at each of them and no
lower max concurrency where one does (``StockFloor``). A stage whose ``r`` state pages do not fit ``k`` natural pages either pads its
attention page stride to ``ceil(r * state_page / k)`` (256-byte aligned; vLLM's ``page_size_padded``), or
keeps the state pages its attention tensors cannot hold in a state region of ``ceil(rest * state_page / k)``
bytes per block id (one slot per run), whichever costs fewer bytes per block id (``StageShape.placement``;
Qwen3.5-9B at PP=3, caching off, small budgets: stage 0 holds 3 of its 9 GDN layers in a region at k = 99,
3 attention pages' worth per block id like the other stages, where padding would cost 3.33).
At PP=1 this choice is the stage's own ``k`` and nothing is padded.
A state-only model has no attention blocks: its pool unit is one slot (k = 1).

A request's state: ``m = 1 + num_speculative_tokens`` slots, prefix caching on or off
(``natural_state_slots_per_request``; vLLM's own count, ``MambaSpec.max_memory_usage_bytes``, is
``vllm_state_blocks_per_request``). With prefix caching on ("align" mode) a running request still
holds one slot, read and written in place; its state checkpoints are separate slots copied from it every
C tokens (``checkpoints.checkpoint_interval_tokens``), cached and evictable in the pool's LRU beside cached
attention blocks, never charged at admission: they use free blocks and give them back on demand.

Capacity at L tokens: ``min(max_num_seqs, (N - 1) // (ceil(L/B) + m*k), (N // k - 1) // m)``
(``requests_that_fit``: block 0 is vLLM's null block, run 0 holds it). Exact for the plugin's free
structure (tests/test_natural.py admits requests into ``FreeRuns`` itself): attention never strands a run
it did not need.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log

from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.models.max_model_len import of_layout as derived_max_len
from hybrid_alloc.planner.checkpoints import checkpoint_interval_tokens
from hybrid_alloc.planner.hardware import KERNEL_BLOCK_SIZE, HardwareProfile, attention_backend
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.vllm_versions import RELEASES


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cache_dtype(layout: ModelLayout, settings: Settings) -> str:
    return layout.resolve_kv_cache_dtype(settings.kv_cache_dtype)


def max_model_len(layout: ModelLayout, settings: Settings) -> int:
    """``--max-model-len``, else the one vLLM derives from the config."""
    return settings.max_model_len or derived_max_len(layout).default


def natural_block_size(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> int:
    """The smallest block the attention kernel takes (16 on GPUs, 32 on vLLM's CPU backend)."""
    dtype = cache_dtype(layout, settings)
    return max(
        (KERNEL_BLOCK_SIZE[attention_backend(hardware, layer.head_size, dtype)] for layer in layout.attention_layers),
        default=KERNEL_BLOCK_SIZE[attention_backend(hardware, 128, dtype)],
    )


def natural_state_slots_per_request(settings: Settings) -> int:
    """m: the slots a running request holds in the natural layout, prefix caching on or off: one, plus
    one per speculative token. Checkpoints are not counted: cached and evictable, never admitted."""
    return 1 + settings.num_speculative_tokens


def vllm_state_blocks_per_request(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> int:
    """vLLM's state blocks one request may hold in a state group (``MambaSpec.max_memory_usage_bytes`` /
    page; what stock charges, not the natural layout's ``natural.natural_state_slots_per_request``):
    1 + spec in "none" mode; 2 + spec + prefill checkpoint blocks in "align" mode, where Mamba2 layers
    always add one and Gated DeltaNet layers add one with FlashInfer's GDN prefill (where the release's
    ``PlannerRules.gdn_prefill_checkpoint_block`` says so, when every state layer is GDN). The largest over
    the state layers. A layout-level summary of ``_Spec.max_memory_usage_bytes`` (tests/test_usage.py
    checks the two agree)."""
    spec = settings.num_speculative_tokens
    if settings.mamba_cache_mode != "align":
        return 1 + spec
    kinds = {layer.kind for layer in layout.state_layers}
    gdn_checkpoints = (
        RELEASES[settings.vllm_version].planner.gdn_prefill_checkpoint_block
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
    bytes_per_block: int  # one block id across every attention tensor of the stage, padding included
    attention_padding_per_block: int  # bytes of the attention tensors' block stride no attention token uses
    state_region_bytes_per_block: int  # the state region's bytes per block id (0: every state page hosted)
    kv_bytes_per_token: int  # all attention layers of the stage together
    state_page_bytes: int  # the largest unpadded state page of the stage (0: no state)
    state_bytes_per_request: int  # one request's state in every state layer of the stage, unpadded
    state_layers_per_tensor: int  # r: the most state layers one attention tensor hosts
    state_region_layers: int  # state layers in the state region (0: none)
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
        if self.is_state_only or self.num_state_layers == 0 or self.state_region_layers:
            return 0  # a state region holds exactly the pages the attention tensors leave
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
    # Prefix caching on, state and attention layers: tokens between state checkpoints (C); else None.
    checkpoint_interval: int | None = None
    # Prefix caching on: state slots one request may hold at once (align_slots_error); else 0
    align_slots: int = 0

    @property
    def checkpoint_bytes(self) -> int:
        """What one cached checkpoint occupies: one state slot on every stage (0 without checkpoints)."""
        return sum(stage.slot_bytes for stage in self.stages) if self.checkpoint_interval else 0

    @property
    def bottleneck_stage(self) -> int:
        return min(self.stages, key=lambda s: s.max_blocks).stage

    def blocks_per_request(self, num_tokens: int) -> int:
        attention = cdiv(num_tokens, self.attention_block_size) if self.attention_block_size else 0
        return attention + self.state_slots_per_request * self.state_slot_blocks

    def fit(self, num_tokens: int) -> int:
        """Requests of ``num_tokens`` tokens the pool holds at once, before the max_num_seqs cap."""
        return requests_that_fit(self.num_blocks, self.state_slot_blocks, self.state_slots_per_request,
                                 self.blocks_per_request(num_tokens))

    def capacity(self, num_tokens: int) -> int:
        return min(self.max_num_seqs, self.fit(num_tokens))

    @property
    def error(self) -> str | None:
        """The plugin's refusal to start (``vllm_plugin.kv_cache_planning``), or None."""
        return one_request_error(self.max_model_len, self.blocks_per_request(self.max_model_len),
                                 self.attention_block_size, self.num_blocks) or (
            align_slots_error(self.align_slots, self.state_slot_blocks, self.num_blocks) if self.align_slots else None
        )

    @property
    def max_concurrency(self) -> float:
        """vLLM's definition: num_blocks / blocks one max_model_len request may hold (no cap, no null block)."""
        return self.num_blocks / self.blocks_per_request(self.max_model_len)

    @property
    def kv_cache_size_tokens(self) -> int:
        """vLLM's definition: tokens held when every request is max_model_len long."""
        return int(self.max_concurrency * self.max_model_len)


def one_request_error(max_model_len: int, blocks_per_request: int, block: int | None, num_blocks: int) -> str | None:
    """Where one max_model_len request needs more blocks than the pool's usable ones (all but vLLM's null
    block 0), the plugin's refusal to start; else None."""
    usable = num_blocks - 1
    if blocks_per_request <= usable:
        return None
    return (
        f"hybrid-alloc: one request of max_model_len={max_model_len} needs {blocks_per_request} blocks of "
        f"{block} tokens but the KV cache holds {usable}; increase the KV cache memory or decrease max_model_len"
    )


# State slots one request may hold at once in align mode, per state group, besides an in-prefill export's
# block: the checkpoint a new request's prefix hit resumes from (in its first step) and its running slot (a
# partial hit's copy becomes it; measured: tests/test_plugin_vllm33_align.py)
ALIGN_SLOTS = 2


def align_slots_error(slots: int, k: int, num_blocks: int) -> str | None:
    """A pool with fewer aligned runs of ``k`` blocks than one request may hold at once in align mode
    (``ALIGN_SLOTS`` per state group, plus the export's block where layers export) leaves such a request
    waiting forever on an otherwise empty pool (vLLM's admission asks for them all before it starts): the
    plugin's refusal to start; else None."""
    runs = num_blocks // k - 1  # run 0 holds vLLM's null block
    if slots <= runs:
        return None
    return (
        f"hybrid-alloc: with prefix caching one request may hold {slots} state slots of {k} blocks at once "
        f"(the checkpoint it resumes from, its running slot, an in-prefill checkpoint where layers export) but the KV "
        f"cache holds {runs}; increase the KV cache memory or pass --no-enable-prefix-caching"
    )


PAD_ALIGNMENT = 256  # a padded attention page stride stays a multiple of this many bytes
OBJECTIVE_LENGTHS = (512, 4096)  # with max_model_len: the lengths the shared k is chosen for


def _pad(need: int) -> int:
    return cdiv(need, PAD_ALIGNMENT) * PAD_ALIGNMENT


@dataclass(frozen=True)
class StatePlacement:
    """A stage's slot layout for a given k: region ``n_attn`` is the state region (used only where a stage
    holds more state per attention layer than k unpadded pages take)."""

    regions: tuple[int, ...]  # the region of each state layer, in the stage's order
    attention_strides: tuple[int, ...]  # bytes per block id of each attention tensor (padded or not)
    state_region_stride: int  # bytes per block id of the state region (0: none)

    @property
    def bytes_per_block(self) -> int:
        return sum(self.attention_strides) + self.state_region_stride


@dataclass(frozen=True)
class StageShape:
    """What one stage holds, before the shared k and num_blocks are known (the plugin builds these from
    vLLM's specs and takes k, strides and num_blocks from here: trace and engine agree by construction)."""

    kv: tuple[int, ...]  # KV bytes per token of each attention layer
    state_pages: tuple[int, ...]  # unpadded state page of each state layer
    block: int  # attention block size (tokens)

    @property
    def page(self) -> int:
        return self.block * min(self.kv) if self.kv else 0

    @property
    def state_page(self) -> int:
        return max(self.state_pages, default=0)

    @property
    def r(self) -> int:
        return cdiv(len(self.state_pages), len(self.kv)) if self.kv else 0

    @property
    def k_needed(self) -> int:
        return cdiv(self.r * self.state_page, self.page) if self.kv else 0

    def placement(self, k: int) -> StatePlacement:
        """Where a slot of ``k`` blocks keeps each state layer's page. Two ways, the one with fewer bytes per
        block id (ties: padding): each attention tensor hosts ``r`` pages, its page stride padded where ``k``
        pages would not hold them; or each attention tensor hosts the pages ``k`` unpadded pages hold (at most
        ``r``) and the rest stack in one state region of ``ceil(rest * state_page / k)`` bytes per block id
        (a stage with more state per attention layer than the shared ``k`` was chosen for)."""
        n, page = len(self.kv), self.state_page
        need = cdiv(self.r * page, k) if self.state_pages else 0
        unpadded = tuple(self.block * kv for kv in self.kv)
        padded = tuple(p if p >= need else _pad(need) for p in unpadded)
        by_padding = StatePlacement(tuple(i % n for i in range(len(self.state_pages))), padded, 0)
        if padded == unpadded:
            return by_padding
        room = [min(self.r, k * self.block * kv // page) for kv in self.kv]
        regions, held, j = [], [0] * n, 0
        for _ in self.state_pages:
            free = [t for t in (*range(j, n), *range(j)) if held[t] < room[t]]
            if free:
                held[free[0]] += 1
                regions.append(free[0])
                j = (free[0] + 1) % n
            else:
                regions.append(n)  # the state region
        rest = regions.count(n)
        by_region = StatePlacement(tuple(regions), unpadded, _pad(cdiv(rest * page, k)))
        return by_region if by_region.bytes_per_block < by_padding.bytes_per_block else by_padding

    def bytes_per_block(self, k: int) -> int:
        """One block id across the stage's tensors (attention tensors and state region), for slots of ``k``."""
        return self.placement(k).bytes_per_block if self.kv else 0

    def max_blocks(self, budget: int, k: int, has_attention: bool) -> int:
        if self.kv:
            return budget // self.bytes_per_block(k)
        if self.state_pages:
            # State-only tensors hold num_blocks // k slots.
            slots = budget // sum(self.state_pages)
            return slots * k + k - 1 if has_attention else slots
        return budget  # a stage without cache layers puts no limit


def requests_that_fit(num_blocks: int, k: int, m: int, blocks_per_request: int) -> int:
    """Identical requests the plugin's free structure (``block_pool.FreeRuns``) holds at once: every id but
    the null block 0, and ``m`` slots each from the runs above run 0 (which holds the null block). Attention
    takes the ids no run can use first, so it strands no run it did not need."""
    n = (num_blocks - 1) // blocks_per_request
    if m:
        n = min(n, (num_blocks // k - 1) // m)
    return max(0, n)


def _objective(num_blocks: int, k: int, m: int, block: int, lengths: tuple[int, ...]) -> float:
    """Log of the geometric mean of the requests that fit at each length (plus one, so zero counts)."""
    return sum(log(1 + requests_that_fit(num_blocks, k, m, cdiv(length, block) + m * k)) for length in lengths)


def objective_lengths(model_len: int) -> tuple[int, ...]:
    return tuple(sorted({length for length in OBJECTIVE_LENGTHS if length < model_len} | {model_len}))


@dataclass(frozen=True)
class StockFloor:
    """What stock vLLM holds in the same budgets (``comparison``: the trace's stock plan; the plugin: vLLM's
    own planning on stock specs). ``k`` is chosen among the values that report no fewer requests at any
    objective length and no lower max concurrency, where one does: the natural layout never reports less
    than stock for a choice of ``k`` alone."""

    requests: tuple[tuple[int, int], ...]  # (tokens, requests held with max_num_seqs applied)
    max_concurrency: float
    max_num_seqs: int


def choose_slot_blocks(shapes: list[StageShape], budgets: list[int], m: int, lengths: tuple[int, ...],
                       floor: StockFloor | None = None) -> int:
    """The shared k: every value between the smallest and the largest a stage needs, best objective among
    those that hold ``floor`` (all of them without one, or where none does), ties to the larger k (less
    padding)."""
    needed = [shape.k_needed for shape in shapes if shape.kv and shape.state_pages]
    block = next(shape.block for shape in shapes if shape.kv)

    candidates = range(max(1, min(needed)), max(needed) + 1)
    num_blocks = {k: min(shape.max_blocks(b, k, True) for shape, b in zip(shapes, budgets)) for k in candidates}

    def score(k: int) -> float:
        return _objective(num_blocks[k], k, m, block, lengths)

    def holds_floor(k: int) -> bool:
        n = num_blocks[k]
        held = all(
            min(floor.max_num_seqs, requests_that_fit(n, k, m, cdiv(length, block) + m * k)) >= requests
            for length, requests in floor.requests
        )
        return held and n / (cdiv(max(lengths), block) + m * k) >= floor.max_concurrency

    above = [k for k in candidates if holds_floor(k)] if floor else []
    return max(above or candidates, key=lambda k: (score(k), k))


def plan_natural(
    layout: ModelLayout,
    settings: Settings,
    stage_budgets: list[int],
    hardware: HardwareProfile,
    state_slot_blocks: int | None = None,
    stock_floor: StockFloor | None = None,
) -> NaturalPlan:
    """The natural plan; ``state_slot_blocks`` forces k (otherwise chosen as the module docstring says, above
    ``stock_floor`` where a k is)."""
    block = natural_block_size(layout, settings, hardware)
    per_stage = stage_layers(layout, settings.pp, settings.pp_layer_partition)
    assert len(per_stage) == len(stage_budgets), "one budget per pipeline stage"
    has_attention = bool(layout.attention_layers)
    has_state = bool(layout.state_layers)
    model_len = max_model_len(layout, settings)
    shapes = _stage_shapes(per_stage, cache_dtype(layout, settings), block)
    m = natural_state_slots_per_request(settings) if has_state else 0
    k, notes = _slot_blocks(shapes, stage_budgets, m, model_len, has_attention, has_state, state_slot_blocks,
                            stock_floor)
    fits = [shape.max_blocks(budget, k, has_attention) for shape, budget in zip(shapes, stage_budgets)]
    num_blocks = min(fits)
    stages = tuple(
        _natural_stage(index, shape, budget, fit, num_blocks, k)
        for index, (shape, budget, fit) in enumerate(zip(shapes, stage_budgets, fits))
    )
    return NaturalPlan(
        stages=stages,
        attention_block_size=block if has_attention else None,
        num_blocks=num_blocks,
        state_slot_blocks=k if has_state else 0,
        state_slots_per_request=m,
        max_model_len=model_len,
        max_num_seqs=settings.max_num_seqs,
        notes=tuple(notes),
        checkpoint_interval=(
            checkpoint_interval_tokens(k, block) if settings.prefix_caching and has_state and has_attention else None
        ),
        align_slots=_align_slots(layout, settings, hardware) if settings.prefix_caching and has_state and has_attention else 0,
    )


def _align_slots(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> int:
    """``ALIGN_SLOTS`` for the one state group ``natural_state_slots_per_request`` counts, plus vLLM's
    speculative and in-prefill checkpoint blocks (``vllm_state_blocks_per_request`` beyond its 2); no
    export on the CPU backend, where the plugin switches it off (``vllm_plugin.kv_cache_planning._align_spec``)."""
    extra = vllm_state_blocks_per_request(layout, settings, hardware) - 2
    if hardware.compute_capability is None:
        extra = settings.num_speculative_tokens
    return ALIGN_SLOTS + extra


def _stage_shapes(per_stage, dtype: str, block: int) -> list[StageShape]:
    return [
        StageShape(
            kv=tuple(layer.kv_bytes_per_token(dtype) for layer in layers if layer.is_attention),
            state_pages=tuple(layer.state_page_bytes for layer in layers if layer.is_state),
            block=block,
        )
        for layers in per_stage
    ]


def _slot_blocks(
    shapes: list[StageShape],
    stage_budgets: list[int],
    m: int,
    model_len: int,
    has_attention: bool,
    has_state: bool,
    forced: int | None,
    floor: StockFloor | None,
) -> tuple[int, list[str]]:
    """k (the blocks of a state slot, shared by every stage) and the notes that explain it."""
    notes = []
    if not has_attention:
        k = 1  # no attention: the pool unit is one state slot
        notes.append("no attention layer: the pool is a pool of state slots; capacity does not depend on length")
    elif not has_state:
        k = 1  # unused: no slot is ever taken
        notes.append("no state layer: the natural layout is vLLM's attention pool at the natural block size")
    elif forced is not None:
        k = forced
    else:
        k = choose_slot_blocks(shapes, stage_budgets, m, objective_lengths(model_len), floor)
    placements = {i: shape.placement(k) for i, shape in enumerate(shapes) if shape.kv and shape.state_pages}
    padded = [i for i, p in placements.items() if sum(p.attention_strides) > shapes[i].block * sum(shapes[i].kv)]
    regions = [i for i, p in placements.items() if p.state_region_stride]
    why = "(more state per attention layer than the other stages)"
    if padded:
        notes.append(
            f"k = {k} blocks; stage(s) {', '.join(map(str, padded))} pad their attention page stride to hold "
            f"their state pages in a slot {why}"
        )
    if regions:
        notes.append(
            f"k = {k} blocks; stage(s) {', '.join(map(str, regions))} keep the state pages their attention tensors "
            f"cannot hold in a state region of one slot per run {why}"
        )
    return k, notes


def _natural_stage(index: int, shape: StageShape, budget: int, fit: int, num_blocks: int, k: int) -> NaturalStage:
    placement = shape.placement(k) if shape.kv else StatePlacement((), (), 0)
    per_block = placement.bytes_per_block
    hosted = [placement.regions.count(i) for i in range(len(shape.kv))]
    allocated = num_blocks * per_block if shape.kv else (num_blocks // k) * sum(shape.state_pages)
    return NaturalStage(
        stage=index,
        num_attention_layers=len(shape.kv),
        num_state_layers=len(shape.state_pages),
        attention_page_bytes=shape.page,
        bytes_per_block=per_block,
        attention_padding_per_block=sum(placement.attention_strides) - shape.block * sum(shape.kv),
        state_region_bytes_per_block=placement.state_region_stride,
        kv_bytes_per_token=sum(shape.kv),
        state_page_bytes=shape.state_page,
        state_bytes_per_request=sum(shape.state_pages),
        state_layers_per_tensor=max(hosted, default=0),
        state_region_layers=placement.regions.count(len(shape.kv)) if shape.kv else 0,
        slot_blocks_needed=shape.k_needed,
        budget_bytes=budget,
        max_blocks=fit,
        num_blocks=num_blocks,
        state_slot_blocks=k,
        bytes=allocated,
    )
