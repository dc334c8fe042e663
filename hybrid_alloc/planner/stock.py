"""vLLM's own KV cache layout for a model (what stock vLLM allocates, per supported release), in pure Python.

Each step mirrors a vLLM function (named in its docstring); ``tests/test_stock_parity.py`` checks the
results against those functions. Per pipeline stage, as each worker does:
1. block size and Mamba page padding: ``Platform.update_block_size_for_backend`` ->
   ``_align_hybrid_block_size`` (``vllm/platforms/interface.py``), after
   ``MambaModelConfig.verify_and_update_config`` set ``mamba_cache_mode`` / ``mamba_block_size``;
2. per-layer specs: ``Attention.get_kv_cache_spec`` (``FullAttentionSpec``) and
   ``MambaBase.get_kv_cache_spec`` (``MambaSpec``, plus the Mamba2 / GDN prefill checkpoint block).
Then, in the engine core (``vllm/v1/core/kv_cache_planning.py``): ``get_kv_cache_groups`` on all
stages' specs, ``get_kv_cache_configs`` (bytes per block, ``num_blocks = available // bytes``, the
minimum over stages, the one-request check) and ``get_kv_cache_capacity`` (the logged numbers).

Out of scope (``plan_stock`` raises UserError): sliding-window attention, MLA.
The KV cache layout is the default ``LBNHC`` (layer-outer; what FlashAttention, FlashInfer below
SM100, Triton and CPU attention resolve to), so ``_get_packed_kv_cache_groups`` never applies.
What differs between releases is the row's ``PlannerRules`` (``hybrid_alloc.vllm_versions``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from math import lcm

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer, ModelLayout, dtype_bytes
from hybrid_alloc.planner.hardware import (
    KERNEL_BLOCK_SIZE,
    HardwareProfile,
    attention_backend,
    get_hardware,
)
from hybrid_alloc.planner.natural import max_model_len as resolved_max_model_len
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import SUPPORTED_VLLM_VERSIONS, Settings
from hybrid_alloc.vllm_versions import RELEASES, PlannerRules

GiB = 1 << 30
# FLASHINFER_GDN_CHECKPOINT_ALIGNMENT (vllm/v1/attention/backends/gdn_attn.py)
FLASHINFER_GDN_CHECKPOINT_ALIGNMENT = 64
# CacheConfig.DEFAULT_BLOCK_SIZE: the block size the config starts with
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class _Spec:
    """The fields of a vLLM ``FullAttentionSpec`` / ``MambaSpec`` that shape the layout; equal
    specs are equal vLLM specs (grouping compares specs)."""

    kind: str  # "attention" or the state kind (MambaSpec.mamba_type)
    block_size: int
    token_bytes: int = 0  # attention: K+V bytes per token
    state_bytes: int = 0  # state: unpadded page (MambaSpec.real_page_size_bytes)
    page_size_padded: int | None = None
    num_speculative_blocks: int = 0
    num_prefill_checkpoint_blocks: int = 0
    prefill_checkpoint_alignment: int | None = None
    key: tuple = ()  # heads / head sizes / dtype, or the state tensors

    @property
    def is_attention(self) -> bool:
        return self.kind == "attention"

    @property
    def unpadded_page_bytes(self) -> int:
        return self.block_size * self.token_bytes if self.is_attention else self.state_bytes

    @property
    def page_size_bytes(self) -> int:
        return self.page_size_padded or self.unpadded_page_bytes

    def max_memory_usage_bytes(self, max_model_len: int, mamba_cache_mode: str) -> int:
        """``FullAttentionSpec`` / ``MambaSpec.max_memory_usage_bytes``."""
        if self.is_attention:
            return -(-max_model_len // self.block_size) * self.page_size_bytes
        if mamba_cache_mode == "align":
            blocks = 2 + self.num_speculative_blocks + self.num_prefill_checkpoint_blocks
        else:
            blocks = 1 + self.num_speculative_blocks
        return self.page_size_bytes * blocks

    def blocks_per_request(self, max_model_len: int, mamba_cache_mode: str) -> int:
        return -(-self.max_memory_usage_bytes(max_model_len, mamba_cache_mode) // self.page_size_bytes)


@dataclass(frozen=True)
class StockGroup:
    kind: str  # "attention" or the state kind
    layer_names: tuple[str, ...]  # this group's layers on the stage
    # Page slots of each block id this group leaves unused on the stage: vLLM's padding layers
    # (group size minus the group's layers), as one stage's tensors see them.
    num_padding_layers: int
    block_size: int  # the group spec's block size (mamba_block_size for state groups)
    page_bytes: int  # the group spec's page (padded)
    blocks_per_request: int  # cdiv(max_memory_usage_bytes, page) at max_model_len


@dataclass(frozen=True)
class StockTensor:
    """One ``KVCacheTensor`` (all alias one buffer of ``size`` bytes from byte 0)."""

    layer_names: tuple[str, ...]
    size: int
    offset: int
    layer_stride: int
    block_stride: int


@dataclass(frozen=True)
class StockStage:
    stage: int
    block_size: int  # this worker's cache_config.block_size (attention tokens per block)
    mamba_page_size_padded: int | None
    attention_page_bytes: int  # one attention layer's page (0 without attention layers)
    state_page_bytes: int  # one state layer's unpadded page (0 without state layers)
    num_groups: int
    groups: tuple[StockGroup, ...]
    bytes_per_block: int
    num_blocks: int  # the plan's (minimum) block count
    kv_cache_memory_bytes: int  # bytes_per_block * num_blocks: what this stage allocates
    tensors: tuple[StockTensor, ...]
    num_blocks_alone: int = 0  # available // bytes_per_block before the minimum over stages
    attention_backend: str = ""


@dataclass(frozen=True)
class StockPlan:
    stages: tuple[StockStage, ...]
    num_blocks: int  # min over stages
    kv_cache_size_tokens: int  # "GPU KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for L tokens per request: X"
    block_size: int  # the engine's cache_config.block_size after KV init (min over groups)
    error: str | None  # vLLM's refusal to start, or None
    max_model_len: int = 0
    mamba_cache_mode: str = "none"
    blocks_per_request: int = 0  # sum over groups: what one max_model_len request costs
    notes: tuple[str, ...] = field(default=())


def format_gib(b: int) -> str:
    """``vllm.utils.mem_utils.format_gib``."""
    return f"{round(b / GiB, 2)}"


@dataclass(frozen=True)
class _StageConfig:
    """One worker's cache config after ``update_block_size_for_backend``."""

    block_size: int
    mamba_block_size: int
    mamba_page_size_padded: int | None
    checkpoint_alignment: int | None  # get_mamba_prefill_checkpoint_alignment
    backend: str


def _checkpoint_alignment(layers: tuple[CacheLayer, ...], hw: HardwareProfile) -> int | None:
    """``get_mamba_prefill_checkpoint_alignment``: lcm over the stage's state layers, None unless
    every one declares one (only GDN with FlashInfer prefill does, in "align" mode)."""
    alignment = 1
    for layer in layers:
        if not layer.is_state:
            continue
        if layer.kind != "gdn" or not hw.gdn_prefill_flashinfer:
            return None
        alignment = lcm(alignment, FLASHINFER_GDN_CHECKPOINT_ALIGNMENT)
    return alignment


def _stage_config(
    layout: ModelLayout,
    layers: tuple[CacheLayer, ...],
    settings: Settings,
    hw: HardwareProfile,
    rules: PlannerRules,
    cache_dtype: str,
    max_model_len: int,
) -> _StageConfig:
    """``MambaModelConfig.verify_and_update_config`` then ``update_block_size_for_backend`` ->
    ``_align_hybrid_block_size`` for one pipeline stage."""
    align = settings.mamba_cache_mode == "align"
    # --block-size is the config's block size (CacheConfig.user_specified_block_size)
    config_block = settings.block_size or (
        hw.default_block_size if rules.cpu_block_size_at_config else DEFAULT_BLOCK_SIZE
    )
    # MambaModelConfig: "align" -> --mamba-block-size, else block_size (as configured so far); "none" ->
    # max_model_len
    mamba_block_size = (settings.mamba_block_size or config_block) if align else max_model_len
    checkpoint_alignment = _checkpoint_alignment(layers, hw) if align else None
    attention = [layer for layer in layers if layer.is_attention]
    if not attention:
        # _find_non_ssm_backends finds no backend: the worker keeps its config untouched
        return _StageConfig(config_block, mamba_block_size, None, checkpoint_alignment, "")
    model_attention = layout.attention_layers[0]  # ModelConfig.get_head_size / get_num_kv_heads
    backend = attention_backend(hw, model_attention.head_size, cache_dtype)
    # _preferred_block_size_for_backends (skipped for --block-size): the default (16; 128 on CPU) is a
    # multiple of every backend's kernel block here
    block_size = settings.block_size or hw.default_block_size
    if block_size % KERNEL_BLOCK_SIZE[backend]:
        # vLLM's selector would skip the backends that reject it (validate_configuration) for ones not modelled
        raise UserError(
            f"--block-size {block_size}: not a multiple of {KERNEL_BLOCK_SIZE[backend]}, the kernel block of "
            f"{backend} (the backend the planner models here)"
        )
    padded = None
    mamba_page = max((layer.state_page_bytes for layer in layout.state_layers), default=0)
    if layout.is_hybrid and mamba_page:
        token_bytes = model_attention.kv_bytes_per_token(cache_dtype)
        kernel_block = KERNEL_BLOCK_SIZE[backend]
        alignment = max(kernel_block, block_size)
        if align and rules.align_to_prefill_checkpoints:
            alignment = lcm(alignment, checkpoint_alignment or 1)
        attn_block = alignment * -(-mamba_page // (alignment * token_bytes))
        attn_block = kernel_block * -(-attn_block // kernel_block)  # backend_block_alignment
        block_size = max(block_size, attn_block)
        if align:
            mamba_block_size = block_size
        attn_page = block_size * token_bytes
        if attn_page != mamba_page:
            padded = attn_page
    return _StageConfig(block_size, mamba_block_size, padded, checkpoint_alignment, backend)


def _layer_spec(
    layer: CacheLayer, config: _StageConfig, settings: Settings, rules: PlannerRules, cache_dtype: str
) -> _Spec:
    """``Attention.get_kv_cache_spec`` / ``MambaBase.get_kv_cache_spec`` (+ subclass overrides)."""
    if layer.is_attention:
        return _Spec(
            "attention",
            config.block_size,
            token_bytes=layer.kv_bytes_per_token(cache_dtype),
            key=(layer.num_kv_heads, layer.head_size, layer.head_size_v or layer.head_size, cache_dtype),
        )
    checkpoint_blocks, checkpoint_alignment = 0, None
    if layer.kind == "mamba2":
        # MambaMixer2.get_kv_cache_spec: always (counted in "align" mode only)
        checkpoint_blocks, checkpoint_alignment = 1, 1
    elif (
        layer.kind == "gdn"
        and rules.gdn_prefill_checkpoint_block
        and settings.mamba_cache_mode == "align"
        and config.checkpoint_alignment is not None
    ):
        # GDN _exports_checkpoints; alignment = get_mamba_prefill_checkpoint_grid = mamba_block_size
        checkpoint_blocks, checkpoint_alignment = 1, config.mamba_block_size
    return _Spec(
        layer.kind,
        config.mamba_block_size,
        state_bytes=layer.state_page_bytes,
        page_size_padded=config.mamba_page_size_padded,
        num_speculative_blocks=settings.num_speculative_tokens,
        num_prefill_checkpoint_blocks=checkpoint_blocks,
        prefill_checkpoint_alignment=checkpoint_alignment,
        key=layer.state,
    )


def _is_uniform_type(specs: list[_Spec]) -> bool:
    """``UniformTypeKVCacheSpecs.is_uniform_type``: one block size and one spec type (all
    attention; or states with equal pages and checkpoint / speculative blocks)."""
    first = specs[0]
    if len({s.block_size for s in specs}) > 1:
        return False
    if first.is_attention:
        return all(s.is_attention for s in specs)
    return all(
        not s.is_attention
        and (s.num_speculative_blocks, s.num_prefill_checkpoint_blocks, s.prefill_checkpoint_alignment)
        == (first.num_speculative_blocks, first.num_prefill_checkpoint_blocks, first.prefill_checkpoint_alignment)
        and s.page_size_bytes == first.page_size_bytes
        for s in specs
    )


def _unify_page_size(specs: dict[str, _Spec]) -> dict[str, _Spec]:
    """``unify_kv_cache_spec_page_size``: states pad to the largest page; attention scales its
    block size when the page divides it, else pads."""
    max_page = max(s.page_size_bytes for s in specs.values())
    unified = {}
    for name, spec in specs.items():
        if spec.page_size_bytes != max_page:
            if not spec.is_attention or max_page % spec.page_size_bytes:
                spec = replace(spec, page_size_padded=max_page)
            else:
                spec = replace(spec, block_size=spec.block_size * (max_page // spec.page_size_bytes))
        unified[name] = spec
    return unified


def _kv_cache_groups(specs: dict[str, _Spec]) -> list[tuple[list[str], list[_Spec]]]:
    """``get_kv_cache_groups`` (default builder, LBNHC layout): [(layer names, their specs)]."""
    if not specs:
        return []
    values = list(specs.values())
    if all(s == values[0] for s in values) or _is_uniform_type(values):
        return [(list(specs), values)]
    specs = _unify_page_size(specs)
    # _get_kv_cache_groups_uniform_page_size: bucket equal specs (merging unequal ones fails here:
    # FullAttentionSpec.merge / KVCacheSpec.merge accept equal specs only, sliding windows aside)
    buckets: dict[_Spec, list[str]] = defaultdict(list)
    for name, spec in specs.items():
        buckets[spec].append(name)
    sizes = [len(names) for names in buckets.values()]
    group_size = max(sizes) if max(sizes) < min(sizes) * 1.5 else min(sizes)
    groups = []
    for spec, names in buckets.items():
        num_groups = -(-len(names) // group_size)
        groups += [(names[i::num_groups], [spec] * len(names[i::num_groups])) for i in range(num_groups)]
    return groups


def _one_request_error(
    available: int, bytes_per_block: int, needed_blocks, max_model_len: int
) -> str | None:
    """``_check_enough_kv_cache_memory`` with ``_max_memory_usage_bytes_from_groups`` and
    ``_estimate_max_model_len_from_groups`` (binary search); ``available`` already lacks the
    null block. ``needed_blocks(model_len)`` is one request's block ids."""
    if available <= 0:
        return (
            "No available memory for the cache blocks. "
            "Try increasing `gpu_memory_utilization` when initializing the engine "
            "(this flag also controls CPU memory reservation on the CPU "
            "backend, despite its name). "
            "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
            "for more details."
        )
    needed = bytes_per_block * needed_blocks(max_model_len)
    if needed <= available:
        return None

    def fits(model_len: int) -> bool:
        return bytes_per_block * needed_blocks(model_len) <= available

    estimated = 0
    if fits(1):
        left, right, estimated = 1, max_model_len, 1
        while left <= right:
            mid = (left + right) // 2
            if fits(mid):
                estimated, left = mid, mid + 1
            else:
                right = mid - 1
    estimated_msg = (
        "Based on the available memory, "
        f"the estimated maximum model length is {estimated}. "
        if estimated > 0
        else ""
    )
    return (
        f"To serve at least one request with the model's max seq len "
        f"({max_model_len}), ({format_gib(needed)} GiB KV "
        f"cache is needed, which is larger than the available KV cache "
        f"memory ({format_gib(available)} GiB). {estimated_msg}"
        f"Try increasing `gpu_memory_utilization` (which also controls "
        f"CPU memory on the CPU backend) or decreasing `max_model_len` "
        f"when initializing the engine. "
        f"See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
        f"for more details."
    )


def _group_tensors(
    names: list[str], specs: list[_Spec], size: int, num_blocks: int
) -> list[StockTensor]:
    """``get_kv_cache_config_from_groups``, layer-outer layout: one tensor per spec of the group,
    ``[layer][block][page]`` strides, offsets stacking the group's specs from byte 0."""
    by_spec: dict[_Spec, list[str]] = defaultdict(list)
    for name, spec in zip(names, specs):
        by_spec[spec].append(name)
    tensors, offset = [], 0
    for spec, layer_names in by_spec.items():
        layer_stride = spec.page_size_bytes * num_blocks
        tensors.append(StockTensor(tuple(layer_names), size, offset, layer_stride, spec.page_size_bytes))
        offset += len(layer_names) * layer_stride
    return tensors


def _check_supported(layout: ModelLayout, settings: Settings) -> None:
    if settings.vllm_version not in SUPPORTED_VLLM_VERSIONS:
        raise UserError(
            f"unsupported vLLM version {settings.vllm_version!r}; supported: {', '.join(SUPPORTED_VLLM_VERSIONS)}"
        )
    if layout.tp != settings.tp or layout.num_speculative_tokens != settings.num_speculative_tokens:
        raise UserError(
            f"{layout.name}: the layout was read for tp={layout.tp}, "
            f"num_speculative_tokens={layout.num_speculative_tokens}; the settings ask for "
            f"tp={settings.tp}, num_speculative_tokens={settings.num_speculative_tokens}"
        )
    if any(layer.sliding_window for layer in layout.attention_layers):
        raise UserError(f"{layout.name}: sliding-window attention is not supported by the stock planner")


def plan_stock(layout: ModelLayout, settings: Settings, stage_budgets: list[int]) -> StockPlan:
    """The KV cache stock vLLM builds for ``layout`` with ``stage_budgets[i]`` bytes available
    on pipeline stage i (``determine_available_memory`` per worker)."""
    _check_supported(layout, settings)
    if len(stage_budgets) != settings.pp:
        raise ValueError(f"{len(stage_budgets)} stage budgets for pp={settings.pp}")
    hw = get_hardware(settings.hardware)
    rules = RELEASES[settings.vllm_version].planner
    mode = settings.mamba_cache_mode
    cache_dtype = layout.resolve_kv_cache_dtype(settings.kv_cache_dtype)  # the checkpoint may pin fp8
    dtype_bytes(cache_dtype)  # validates the name
    max_model_len = resolved_max_model_len(layout, settings)

    stages = stage_layers(layout, settings.pp, settings.pp_layer_partition)
    configs = [
        _stage_config(layout, layers, settings, hw, rules, cache_dtype, max_model_len)
        for layers in stages
    ]
    specs = {
        layer.name: _layer_spec(layer, config, settings, rules, cache_dtype)
        for layers, config in zip(stages, configs)
        for layer in layers
    }
    groups = _kv_cache_groups(specs)

    # Per group: the blocks one request holds (get_max_concurrency_for_kv_cache_config)
    def request_blocks(model_len: int) -> int:
        return sum(group_specs[0].blocks_per_request(model_len, mode) for _, group_specs in groups)

    error = None
    stage_rows = []
    for index, (layers, config, budget) in enumerate(zip(stages, configs, stage_budgets)):
        projected, bytes_per_block = _project_groups(groups, layers)
        if error is None and groups:
            error = _one_request_error(budget - bytes_per_block, bytes_per_block, request_blocks, max_model_len)
        stage_rows.append((index, layers, config, projected, bytes_per_block, budget // bytes_per_block if groups else 1))

    num_blocks = min(row[5] for row in stage_rows)
    blocks_per_request = request_blocks(max_model_len) if groups else 0
    max_concurrency = num_blocks / blocks_per_request if blocks_per_request else 0.0

    result_stages = [
        _stock_stage(index, layers, config, groups, projected, bytes_per_block, alone, num_blocks, max_model_len, mode)
        for index, layers, config, projected, bytes_per_block, alone in stage_rows
    ]

    return StockPlan(
        stages=tuple(result_stages),
        num_blocks=num_blocks,
        kv_cache_size_tokens=int(max_concurrency * max_model_len),
        max_concurrency=max_concurrency,
        # EngineCore: cache_config.block_size = min over the groups' spec block sizes
        block_size=min((g[1][0].block_size for g in groups), default=configs[0].block_size),
        error=error,
        max_model_len=max_model_len,
        mamba_cache_mode=mode,
        blocks_per_request=blocks_per_request,
    )


def _project_groups(groups: list, layers) -> tuple[list, int]:
    """Each group's (layer names, specs) on this stage, and the stage's bytes per block id:
    _get_kv_cache_bytes_per_block (layer-outer), the largest group's pages per block id (block strides
    need no rounding: blocks are whole kernel blocks)."""
    on_stage = {layer.name for layer in layers}
    projected = [
        ([n for n in names if n in on_stage], [s for n, s in zip(names, group_specs) if n in on_stage])
        for names, group_specs in groups
    ]
    bytes_per_block = max((sum(s.page_size_bytes for s in group_specs) for _, group_specs in projected), default=0)
    return projected, bytes_per_block


def _stock_stage(
    index: int, layers, config, groups: list, projected: list, bytes_per_block: int, alone: int, num_blocks: int,
    max_model_len: int, mode: str,
) -> StockStage:
    """One stage of the plan: its groups (padding layers up to the widest group) and KV cache tensors."""
    widest = max((len(names) for names, _ in projected), default=0)
    stage_groups, tensors = [], []
    for (_, group_specs), (stage_names, stage_specs) in zip(groups, projected):
        group_spec = group_specs[0]  # generate_scheduler_kv_cache_config: the first layer's
        stage_groups.append(
            StockGroup(
                kind=group_spec.kind,
                layer_names=tuple(stage_names),
                num_padding_layers=widest - len(stage_names),
                block_size=group_spec.block_size,
                page_bytes=group_spec.page_size_bytes,
                blocks_per_request=group_spec.blocks_per_request(max_model_len, mode),
            )
        )
        tensors += _group_tensors(stage_names, stage_specs, bytes_per_block * num_blocks, num_blocks)
    attention_pages = [s.page_size_bytes for _, group_specs in projected for s in group_specs if s.is_attention]
    state_pages = [layer.state_page_bytes for layer in layers if layer.is_state]
    return StockStage(
        stage=index,
        block_size=config.block_size,
        mamba_page_size_padded=config.mamba_page_size_padded,
        attention_page_bytes=attention_pages[0] if attention_pages else 0,
        state_page_bytes=max(state_pages, default=0),
        num_groups=len(groups),
        groups=tuple(stage_groups),
        bytes_per_block=bytes_per_block,
        num_blocks=num_blocks,
        kv_cache_memory_bytes=bytes_per_block * num_blocks,
        tensors=tuple(tensors),
        num_blocks_alone=alone,
        attention_backend=config.backend,
    )
