"""The physical-need layout: what a request of L tokens needs on each pipeline stage with no paging at all,
L tokens x the stage's KV bytes per token + one unpadded state per state layer. The bound beside stock
(stock.py) and natural (natural.py): no allocator can hold more requests in a stage's KV cache budget."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.natural import cache_dtype
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import Settings


@dataclass(frozen=True)
class PhysicalStage:
    kv_bytes_per_token: int  # all attention layers of the stage, at the cache dtype
    state_bytes_per_request: int  # one state per state layer of the stage, unpadded
    budget_bytes: int

    def need(self, num_tokens: int) -> int:
        return num_tokens * self.kv_bytes_per_token + self.state_bytes_per_request


def physical_stages(layout: ModelLayout, settings: Settings, budgets: list[int]) -> list[PhysicalStage]:
    dtype = cache_dtype(layout, settings)
    return [
        PhysicalStage(
            kv_bytes_per_token=sum(layer.kv_bytes_per_token(dtype) for layer in layers if layer.is_attention),
            state_bytes_per_request=sum(layer.state_page_bytes for layer in layers if layer.is_state),
            budget_bytes=budget,
        )
        for layers, budget in zip(stage_layers(layout, settings.pp, settings.pp_layer_partition), budgets)
    ]


def physical_capacity(stages: list[PhysicalStage], num_tokens: int, max_num_seqs: int) -> int:
    """Requests of ``num_tokens`` tokens whose bytes fit every stage's budget, capped by max_num_seqs."""
    fit = min(stage.budget_bytes // stage.need(num_tokens) for stage in stages if stage.need(num_tokens))
    return min(max_num_seqs, fit)
