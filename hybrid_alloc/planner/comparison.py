"""`hybrid-alloc trace`: the layouts compared (a `LayoutComparison`): each stage's KV cache budget, the stock,
natural and physical-need layouts in it, and where the bytes go. Refusals are results: a `--max-model-len`
vLLM refuses at start-up (before any KV cache exists, for stock and plugin alike) is a `StartupRefusal`;
a KV cache too small for one max_model_len request is the refusing layout's ``error`` in the comparison."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.models import load_layout
from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.models.max_model_len import of_layout, refusal
from hybrid_alloc.planner.kv_budget import KVCacheBudget, kv_cache_budgets
from hybrid_alloc.planner.hardware import CpuRule, HardwareProfile, cpu_rule, get_hardware
from hybrid_alloc.planner.natural import NaturalPlan, StockFloor, max_model_len, objective_lengths, plan_natural
from hybrid_alloc.planner.partition import PartitionSuggestion, suggest_partitions
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import StockPlan, plan_stock
from hybrid_alloc.planner.physical import PhysicalStage, physical_capacity, physical_stages
from hybrid_alloc.planner.usage import ByteSplit, natural_split, physical_split, stock_capacity, stock_split

SHORT_LENGTHS = (512, 4096)  # reported besides max_model_len


@dataclass(frozen=True)
class Capacity:
    """Requests of ``num_tokens`` tokens held at once (capped by max_num_seqs), and the bytes of each
    stage's budget with that many requests. Held at once: what the block pool admits together, all
    ``num_tokens`` long (its null block 0 never holds a request; README "Requests held at once")."""

    num_tokens: int
    stock: int | None  # None: vLLM refuses to start (StockPlan.error)
    natural: int | None  # None: the plugin refuses to start (NaturalPlan.error)
    physical: int
    stock_split: tuple[ByteSplit, ...] | None
    natural_split: tuple[ByteSplit, ...] | None
    physical_split: tuple[ByteSplit, ...]


@dataclass(frozen=True)
class LayoutComparison:
    layout: ModelLayout
    settings: Settings
    hardware: HardwareProfile
    max_model_len: int
    budgets: tuple[KVCacheBudget, ...]
    stock: StockPlan
    natural: NaturalPlan
    physical: tuple[PhysicalStage, ...]
    capacities: tuple[Capacity, ...]  # SHORT_LENGTHS, then max_model_len
    partitions: tuple[PartitionSuggestion, ...]  # better VLLM_PP_LAYER_PARTITIONs, per layout
    cpu_rule: CpuRule | None  # the CPU backend's state-dtype rule the layout was loaded under; None on GPUs


@dataclass(frozen=True)
class StartupRefusal:
    """vLLM refuses ``max_model_len`` at start-up (``ModelConfig``): no layout is built, stock or natural."""

    layout: ModelLayout
    settings: Settings
    hardware: HardwareProfile
    max_model_len: int
    error: str  # vLLM's words
    cpu_rule: CpuRule | None


def compare_model(
    model: str, settings: Settings, allow_long_max_model_len: bool = False
) -> LayoutComparison | StartupRefusal:
    """``allow_long_max_model_len``: vLLM's ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` (models.max_model_len)."""
    rule = cpu_rule(get_hardware(settings.hardware), settings.cpu_avx512_bf16)
    layout = load_layout(model, tp=settings.tp, num_speculative_tokens=settings.num_speculative_tokens,
                         mamba_ssm_cache_dtype=settings.mamba_ssm_cache_dtype,
                         cpu_avx512_bf16=bool(rule and rule.avx512_bf16), quantization=settings.quantization,
                         language_model_only=settings.language_model_only)
    layout.resolve_kv_cache_dtype(settings.kv_cache_dtype)  # vLLM's config checks come before any budget
    return compare_layout(layout, settings, rule, allow_long_max_model_len)


def compare_layout(
    layout: ModelLayout, settings: Settings, rule: CpuRule | None = None, allow_long_max_model_len: bool = False
) -> LayoutComparison | StartupRefusal:
    """``layout`` must have been loaded for ``settings`` (tp, speculative tokens, state dtypes: compare_model),
    under ``rule``, the CPU backend's state-dtype rule (None: not applied)."""
    hardware = get_hardware(settings.hardware)
    length = max_model_len(layout, settings)
    error = refusal(of_layout(layout), length, allow_long_max_model_len)
    if error:
        return StartupRefusal(layout, settings, hardware, length, error, rule)
    budgets = kv_cache_budgets(layout, settings, hardware)
    budget_bytes = [budget.bytes for budget in budgets]
    stock = plan_stock(layout, settings, budget_bytes)
    natural = plan_natural(layout, settings, budget_bytes, hardware, stock_floor=stock_floor(stock, settings, length))
    physical = physical_stages(layout, settings, budget_bytes)
    capacities = tuple(
        _capacity(layout, settings, stock, natural, physical, budget_bytes, n)
        for n in (*(n for n in SHORT_LENGTHS if n < length), length)
    )
    return LayoutComparison(
        layout=layout,
        settings=settings,
        hardware=hardware,
        max_model_len=length,
        budgets=tuple(budgets),
        stock=stock,
        natural=natural,
        physical=tuple(physical),
        capacities=capacities,
        partitions=suggest_partitions(layout, settings, hardware),
        cpu_rule=rule,
    )


def stock_floor(stock: StockPlan, settings: Settings, length: int) -> StockFloor | None:
    """What the natural k must not fall below: stock's requests at the reported lengths, its max concurrency."""
    if stock.error:
        return None
    requests = tuple((n, stock_capacity(stock, n, settings.max_num_seqs)) for n in objective_lengths(length))
    return StockFloor(requests, stock.max_concurrency, settings.max_num_seqs)


def _capacity(layout, settings, stock, natural, physical, budgets, num_tokens) -> Capacity:
    seqs = settings.max_num_seqs
    natural_n = None if natural.error else natural.capacity(num_tokens)
    physical_n = physical_capacity(physical, num_tokens, seqs)
    stock_n = None if stock.error else stock_capacity(stock, num_tokens, seqs)
    return Capacity(
        num_tokens=num_tokens,
        stock=stock_n,
        natural=natural_n,
        physical=physical_n,
        stock_split=None if stock_n is None else tuple(
            stock_split(layout, settings, stage, budget, stock_n, num_tokens)
            for stage, budget in zip(stock.stages, budgets)
        ),
        natural_split=None if natural_n is None else tuple(
            natural_split(natural, s, natural_n, num_tokens) for s in range(len(budgets))
        ),
        physical_split=tuple(physical_split(stage, physical_n, num_tokens) for stage in physical),
    )
