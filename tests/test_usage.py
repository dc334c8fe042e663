"""Where the bytes go: every split accounts for the whole budget, and per-request bytes match the pools."""

from __future__ import annotations

import random

import pytest
from hand_layouts import hand_layout

from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.physical import physical_capacity, physical_stages
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.natural import vllm_state_blocks_per_request
from hybrid_alloc.planner.stock import plan_stock
from hybrid_alloc.planner.usage import (
    CATEGORIES,
    natural_split,
    physical_split,
    stock_blocks_per_request,
    stock_capacity,
    stock_split,
)

PATTERNS = ["SSSA" * 4, "SSA" * 5, "SA" * 6 + "SSSSS", "A" * 6, "AAAASSSSSSSSSSS", "B" * 4]


def cases():
    rng = random.Random(7)
    for _ in range(30):
        pp = rng.choice([1, 2, 3])
        kind = rng.choice(["gdn", "mamba2"])
        spec = rng.choice([0, 0, 2])
        yield (
            hand_layout(rng.choice(PATTERNS), kind=kind, head_size=rng.choice([128, 256]), num_speculative_tokens=spec),
            Settings(
                hardware=rng.choice(["rtx3060", "h100"]),
                pp=pp,
                max_num_seqs=10**6,
                prefix_caching=rng.random() < 0.5,
                num_speculative_tokens=spec,
                max_model_len=4096,
            ),
            [rng.randrange(200, 800) * 2**20 for _ in range(pp)],
        )


@pytest.mark.parametrize("layout, settings, budgets", list(cases()))
def test_splits_account_for_every_byte(layout, settings, budgets):
    hardware = get_hardware(settings.hardware)
    stock = plan_stock(layout, settings, budgets)
    natural = plan_natural(layout, settings, budgets, hardware)
    physical = physical_stages(layout, settings, budgets)
    for length in (1, 512, 4096):
        n_stock = stock_capacity(stock, length, settings.max_num_seqs)
        n_natural = natural.capacity(length)
        n_physical = physical_capacity(physical, length, settings.max_num_seqs)
        assert n_stock <= n_physical and n_natural <= n_physical
        for index, budget in enumerate(budgets):
            splits = [
                stock_split(layout, settings, stock.stages[index], budget, n_stock, length),
                natural_split(natural, index, n_natural, length),
                physical_split(physical[index], n_physical, length),
            ]
            for split in splits:
                assert sum(getattr(split, c) for c in CATEGORIES) == budget
                assert min(getattr(split, c) for c in CATEGORIES) >= 0
            # What the requests hold is whole block ids of the pool.
            held_stock = budget - splits[0].unused
            assert held_stock == n_stock * stock_blocks_per_request(stock, length) * stock.stages[index].bytes_per_block
            stage = natural.stages[index]
            if stage.num_attention_layers:
                held = budget - splits[1].unused
                assert held == n_natural * natural.blocks_per_request(length) * stage.bytes_per_block


@pytest.mark.parametrize("layout, settings, budgets", list(cases()))
def test_stock_blocks_per_request_is_vllms_at_max_model_len(layout, settings, budgets):
    stock = plan_stock(layout, settings, budgets)
    assert stock_blocks_per_request(stock, settings.max_model_len) == stock.blocks_per_request


@pytest.mark.parametrize("layout, settings, budgets", list(cases()))
def test_vllm_state_blocks_match_stock_groups(layout, settings, budgets):
    if not layout.state_layers:
        return
    stock = plan_stock(layout, settings, budgets)
    state_blocks = {g.blocks_per_request for g in stock.stages[0].groups if g.kind != "attention"}
    assert state_blocks == {vllm_state_blocks_per_request(layout, settings, get_hardware(settings.hardware))}
