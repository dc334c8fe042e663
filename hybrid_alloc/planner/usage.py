"""Where the bytes go when a stage's budget is filled with requests of L tokens: stock, natural, physical.

Requests of one length L, as many as the layout admits (capped by max_num_seqs). Every byte of a stage's
budget lands in exactly one category (the splits sum to the budget):
- attention: K/V of the L tokens;
- state: the recurrent states the request holds per state layer: stock, vLLM's MambaSpec count; natural, its
  m running slots (cached checkpoints are not a request's: evictable, not charged at admission);
- padding: stock: state pages padded up to the attention page and padding layers of a group;
  natural: state-page positions of a slot that no state layer uses (n_attn * r - n_state), and the
  padded attention page stride of a stage with more state per attention layer than k pages hold;
- rounding: the unfilled tail of the last attention block; natural: a slot rounded up to k blocks;
- unused: not held by any request (free blocks, and budget beyond the pool).
Physical need (physical.py) = L tokens x KV bytes + one state per request, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.natural import NaturalPlan, cache_dtype, cdiv
from hybrid_alloc.planner.physical import PhysicalStage
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import StockPlan, StockStage

CATEGORIES = ("attention", "state", "padding", "rounding", "unused")


@dataclass(frozen=True)
class ByteSplit:
    requests: int
    attention: int = 0
    state: int = 0
    padding: int = 0
    rounding: int = 0
    unused: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("requests", *CATEGORIES)}


def _filled(requests: int, budget: int, **held: int) -> ByteSplit:
    """A split of ``requests`` requests, each holding ``held`` bytes per category; the rest is unused."""
    total = {name: requests * value for name, value in held.items()}
    return ByteSplit(requests=requests, unused=budget - sum(total.values()), **total)


# --- stock --------------------------------------------------------------------------------------


def stock_blocks_per_request(stock_plan: StockPlan, num_tokens: int) -> int:
    """Block ids one request of ``num_tokens`` tokens holds in vLLM's pool: cdiv(L, block_size) per
    attention group, the spec's state blocks per state group (every stage lists every group)."""
    return sum(
        cdiv(num_tokens, group.block_size) if group.kind == "attention" else group.blocks_per_request
        for group in stock_plan.stages[0].groups
    )


def stock_capacity(stock_plan: StockPlan, num_tokens: int, max_num_seqs: int) -> int:
    usable = stock_plan.num_blocks - 1  # block 0 is vLLM's null block
    return max(0, min(max_num_seqs, usable // stock_blocks_per_request(stock_plan, num_tokens)))


def stock_split(
    layout: ModelLayout, settings: Settings, stage: StockStage, budget: int, requests: int, num_tokens: int
) -> ByteSplit:
    """One stock stage's budget with ``requests`` requests of ``num_tokens`` tokens."""
    by_name = {layer.name: layer for layer in layout.layers}
    dtype = cache_dtype(layout, settings)
    held = dict(attention=0, state=0, padding=0, rounding=0)
    for group in stage.groups:
        layers = [by_name[name] for name in group.layer_names]
        attention = group.kind == "attention"
        blocks = cdiv(num_tokens, group.block_size) if attention else group.blocks_per_request
        # One block id costs bytes_per_block on the stage whichever group holds it: the page slots
        # of the other groups' layers (vLLM's padding layers) stay empty.
        held["padding"] += blocks * (stage.bytes_per_block - len(layers) * group.page_bytes)
        for layer in layers:
            if attention:
                kv = layer.kv_bytes_per_token(dtype)
                held["attention"] += num_tokens * kv
                held["rounding"] += (blocks * group.block_size - num_tokens) * kv
                held["padding"] += blocks * (group.page_bytes - group.block_size * kv)
            else:
                held["state"] += blocks * layer.state_page_bytes
                held["padding"] += blocks * (group.page_bytes - layer.state_page_bytes)
    return _filled(requests, budget, **held)


# --- natural ------------------------------------------------------------------------------------


def natural_split(plan: NaturalPlan, stage_index: int, requests: int, num_tokens: int) -> ByteSplit:
    stage = plan.stages[stage_index]
    slots = plan.state_slots_per_request
    held = dict(state=slots * stage.state_bytes_per_request)
    if stage.num_attention_layers:
        block = plan.attention_block_size
        unused_pages = stage.unused_state_pages_per_slot * stage.state_page_bytes
        held.update(
            attention=num_tokens * stage.kv_bytes_per_token,
            padding=slots * unused_pages
            + cdiv(num_tokens, block) * (stage.attention_padding_per_block + stage.state_region_bytes_per_block),
            rounding=(cdiv(num_tokens, block) * block - num_tokens) * stage.kv_bytes_per_token
            + slots * (stage.slot_rounding_bytes - unused_pages),
        )
    return _filled(requests, stage.budget_bytes, **held)


# --- physical -----------------------------------------------------------------------------------


def physical_split(stage: PhysicalStage, requests: int, num_tokens: int) -> ByteSplit:
    return _filled(
        requests,
        stage.budget_bytes,
        attention=num_tokens * stage.kv_bytes_per_token,
        state=stage.state_bytes_per_request,
    )
