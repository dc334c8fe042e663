"""A better VLLM_PP_LAYER_PARTITION: stock vLLM's capacity is set by its worst stage, so moving decoder
layers between adjacent stages can raise it. Hill climbing from the current partition, one layer at a
time, keeping the move that raises stock vLLM's max concurrency the most (budgets re-estimated: weights
move with their layers)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.budget import stage_budgets
from hybrid_alloc.planner.hardware import HardwareProfile
from hybrid_alloc.planner.pipeline import pp_indices
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import plan_stock


@dataclass(frozen=True)
class PartitionSuggestion:
    current: tuple[int, ...]
    current_max_concurrency: float
    partition: tuple[int, ...]
    max_concurrency: float

    @property
    def env(self) -> str:
        return "VLLM_PP_LAYER_PARTITION=" + ",".join(map(str, self.partition))

    @property
    def gain(self) -> float:
        return self.max_concurrency / self.current_max_concurrency - 1


def current_partition(layout: ModelLayout, settings: Settings) -> tuple[int, ...]:
    bounds = [
        pp_indices(layout.num_decoder_layers, rank, settings.pp, settings.pp_layer_partition)
        for rank in range(settings.pp)
    ]
    return tuple(end - start for start, end in bounds)


def _max_concurrency(layout: ModelLayout, settings: Settings, hardware: HardwareProfile, sizes) -> float:
    candidate = replace(settings, pp_layer_partition=",".join(map(str, sizes)))
    try:
        budgets = stage_budgets(layout, candidate, hardware)
    except UserError:  # a stage left without cache memory
        return 0.0
    return plan_stock(layout, candidate, [b.bytes for b in budgets]).max_concurrency


def suggest_partition(
    layout: ModelLayout, settings: Settings, hardware: HardwareProfile
) -> PartitionSuggestion | None:
    """A partition with more stock capacity than the current one, or None."""
    if settings.pp == 1:
        return None
    current = current_partition(layout, settings)
    start = best = _max_concurrency(layout, settings, hardware, current)
    sizes = current
    while True:
        moves = []
        for i in range(settings.pp - 1):
            for src, dst in ((i, i + 1), (i + 1, i)):
                if sizes[src] > 1:
                    moved = list(sizes)
                    moved[src] -= 1
                    moved[dst] += 1
                    moves.append(tuple(moved))
        scored = max(((_max_concurrency(layout, settings, hardware, m), m) for m in moves), default=(0.0, sizes))
        if scored[0] <= best:
            break
        best, sizes = scored
    if sizes == current:
        return None
    return PartitionSuggestion(current, start, sizes, best)
