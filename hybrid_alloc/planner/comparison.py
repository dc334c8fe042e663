"""`hybrid-alloc trace`: the layouts compared (a `LayoutComparison`): each stage's KV cache budget, the stock,
natural and physical-need layouts in it, and where the bytes go."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.errors import UserError
from hybrid_alloc.models import load_layout
from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.kv_budget import GiB, KVCacheBudget, kv_cache_budgets
from hybrid_alloc.planner.hardware import CpuRule, HardwareProfile, cpu_rule, get_hardware
from hybrid_alloc.planner.natural import NaturalPlan, max_model_len, plan_natural
from hybrid_alloc.planner.partition import PartitionSuggestion, suggest_partitions
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import StockPlan, plan_stock
from hybrid_alloc.planner.physical import PhysicalStage, physical_capacity, physical_stages
from hybrid_alloc.planner.usage import ByteSplit, natural_split, physical_split, stock_capacity, stock_split

SHORT_LENGTHS = (512, 4096)  # reported besides max_model_len


@dataclass(frozen=True)
class Capacity:
    """Requests of ``num_tokens`` tokens held at once (capped by max_num_seqs), and the bytes of each
    stage's budget with that many requests."""

    num_tokens: int
    stock: int | None  # None: vLLM refuses to start
    natural: int
    physical: int
    stock_split: tuple[ByteSplit, ...] | None
    natural_split: tuple[ByteSplit, ...]
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


def compare_model(model: str, settings: Settings) -> LayoutComparison:
    rule = cpu_rule(get_hardware(settings.hardware), settings.cpu_avx512_bf16)
    layout = load_layout(model, tp=settings.tp, num_speculative_tokens=settings.num_speculative_tokens,
                         mamba_ssm_cache_dtype=settings.mamba_ssm_cache_dtype,
                         cpu_avx512_bf16=bool(rule and rule.avx512_bf16), quantization=settings.quantization,
                         language_model_only=settings.language_model_only)
    layout.resolve_kv_cache_dtype(settings.kv_cache_dtype)  # vLLM's config checks come before any budget
    return compare_layout(layout, settings, rule)


def compare_layout(layout: ModelLayout, settings: Settings, rule: CpuRule | None = None) -> LayoutComparison:
    """``layout`` must have been loaded for ``settings`` (tp, speculative tokens, state dtypes: compare_model),
    under ``rule``, the CPU backend's state-dtype rule (None: not applied)."""
    hardware = get_hardware(settings.hardware)
    budgets = kv_cache_budgets(layout, settings, hardware)
    budget_bytes = [budget.bytes for budget in budgets]
    stock = plan_stock(layout, settings, budget_bytes)
    natural = plan_natural(layout, settings, budget_bytes, hardware)
    physical = physical_stages(layout, settings, budget_bytes)
    length = max_model_len(layout, settings)
    if natural.fit(length) == 0:
        stage = natural.stages[natural.bottleneck_stage]
        raise UserError(
            f"{layout.name}: not even one request of max_model_len={length} tokens fits: stage "
            f"{stage.stage} needs {physical[stage.stage].need(length) / GiB:.2f} GiB for it, its KV cache "
            f"budget is {stage.budget_bytes / GiB:.2f} GiB; lower --max-model-len or give more memory"
        )
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


def _capacity(layout, settings, stock, natural, physical, budgets, num_tokens) -> Capacity:
    seqs = settings.max_num_seqs
    natural_n = natural.capacity(num_tokens)
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
        natural_split=tuple(natural_split(natural, s, natural_n, num_tokens) for s in range(len(budgets))),
        physical_split=tuple(physical_split(stage, physical_n, num_tokens) for stage in physical),
    )
