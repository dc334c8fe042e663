"""A better VLLM_PP_LAYER_PARTITION. Both layouts are set by their worst stage (stock: the fewest blocks;
natural: the fewest blocks and the largest slot), so moving decoder layers between adjacent stages can
raise capacity. Hill climbing from the current partition, one layer at a time, keeping the move that
raises the layout's max concurrency the most; budgets are re-estimated (weights move with their layers)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.kv_budget import kv_cache_budgets
from hybrid_alloc.planner.hardware import HardwareProfile
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.pipeline import pp_indices
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import plan_stock

LAYOUTS = ("stock", "natural")


@dataclass(frozen=True)
class PartitionSuggestion:
    layout: str  # "stock" or "natural"
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


def suggest_partitions(
    layout: ModelLayout, settings: Settings, hardware: HardwareProfile
) -> tuple[PartitionSuggestion, ...]:
    """For each layout, a partition with more capacity than the current one (none where there is none)."""
    if settings.pp == 1:
        return ()
    scores: dict[tuple[int, ...], dict[str, float]] = {}

    def score(sizes: tuple[int, ...]) -> dict[str, float]:
        if sizes not in scores:
            candidate = replace(settings, pp_layer_partition=",".join(map(str, sizes)))
            try:
                budgets = [b.bytes for b in kv_cache_budgets(layout, candidate, hardware)]
            except UserError:  # a stage left without cache memory
                scores[sizes] = dict.fromkeys(LAYOUTS, 0.0)
            else:
                scores[sizes] = {
                    "stock": plan_stock(layout, candidate, budgets).max_concurrency,
                    "natural": plan_natural(layout, candidate, budgets, hardware).max_concurrency,
                }
        return scores[sizes]

    current = current_partition(layout, settings)
    suggestions = []
    for name in LAYOUTS:
        sizes, best = current, score(current)[name]
        while True:
            moves = [_move(sizes, src, dst) for i in range(settings.pp - 1) for src, dst in ((i, i + 1), (i + 1, i))]
            moves = [m for m in moves if m]
            top = max(moves, key=lambda m: score(m)[name], default=None)
            if top is None or score(top)[name] <= best:
                break
            sizes, best = top, score(top)[name]
        if sizes != current:
            suggestions.append(PartitionSuggestion(name, current, score(current)[name], sizes, best))
    return tuple(suggestions)


def _move(sizes: tuple[int, ...], src: int, dst: int) -> tuple[int, ...] | None:
    """``sizes`` with one decoder layer moved from stage ``src`` to stage ``dst`` (None: src would be empty)."""
    if sizes[src] <= 1:
        return None
    moved = list(sizes)
    moved[src] -= 1
    moved[dst] += 1
    return tuple(moved)
