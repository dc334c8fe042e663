"""The natural layout, checked against a second computation: a block-by-block simulation of the pool."""

from __future__ import annotations

import math
import random

import pytest
from hand_layouts import hand_layout

from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.checkpoints import checkpoint_interval_tokens
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.natural import vllm_state_blocks_per_request
from hybrid_alloc.vllm_plugin.block_pool import FreeRuns

GPU = get_hardware("rtx3060")


def smallest(predicate) -> int:
    n = 0
    while not predicate(n):
        n += 1
    return n


def dealt_state_bytes(layers) -> list[int]:
    """Deal a stage's state layers to its attention tensors one by one: state bytes per tensor per slot."""
    attention = [layer for layer in layers if layer.is_attention]
    per_tensor = [0] * len(attention)
    for index, layer in enumerate(layer for layer in layers if layer.is_state):
        per_tensor[index % len(attention)] += layer.state_page_bytes
    return per_tensor


def simulate_stage_slot_blocks(layers, block: int) -> int | None:
    """The k one stage needs, by search: the fewest attention pages of a tensor that hold its state pages."""
    attention = [layer for layer in layers if layer.is_attention]
    if not attention or not any(layer.is_state for layer in layers):
        return None
    page = min(block * layer.kv_bytes_per_token("bfloat16") for layer in attention)
    return smallest(lambda n: n * page >= max(dealt_state_bytes(layers)))


def simulate_num_blocks(stages, budgets, block: int, k: int) -> int:
    """The largest block count whose tensors fit every stage's budget, by counting up. A tensor whose k
    natural pages cannot hold its dealt state pages gets a page stride of a whole number of 256-byte units
    that can (the smallest such)."""

    def stride(layers, layer) -> int:
        natural = block * layer.kv_bytes_per_token("bfloat16")
        fullest = max(dealt_state_bytes(layers), default=0)
        return natural if k * natural >= fullest else 256 * smallest(lambda units: k * 256 * units >= fullest)

    def allocated(layers, n: int) -> int:
        attention = [layer for layer in layers if layer.is_attention]
        if attention:
            return sum(n * stride(layers, layer) for layer in attention)
        return sum((n // k) * layer.state_page_bytes for layer in layers if layer.is_state)

    return smallest(lambda n: any(allocated(ls, n + 1) > b for ls, b in zip(stages, budgets)))


def simulate_admitted(num_blocks: int, k: int, slots: int, attention_blocks: int, limit: int) -> int:
    """Admit identical requests into the plugin's own free structure (``block_pool.FreeRuns``) until one does
    not fit: block 0 is the null block, state slots take the highest free runs of k ids aligned from id 0,
    attention the lowest free ids."""
    free = FreeRuns(num_blocks, k, range(1, num_blocks))
    admitted = 0
    while admitted < limit:
        if free.num_free_runs < slots or free.num_free - slots * k < attention_blocks:
            return admitted
        for _ in range(slots):
            free.take_run()
        free.take_lowest(attention_blocks)
        admitted += 1
    return admitted


PATTERNS = ["SSSA" * 4, "SSA" * 5, "SA" * 6 + "SSSSS", "A" * 6, "S" * 5, "AAAASSSSSSSSSSS", "B" * 4]


@pytest.mark.parametrize("seed", range(40))
def test_plan_matches_pool_simulation(seed):
    rng = random.Random(seed)
    pattern = rng.choice(PATTERNS)
    pp = rng.choice([1, 2, 3])
    layout = hand_layout(
        pattern,
        kv_heads=rng.choice([1, 2, 4]),
        head_size=rng.choice([64, 128, 256]),
        temporal=(rng.choice([4, 16, 32]), 64, rng.choice([32, 64, 128])),
    )
    settings = Settings(pp=pp, max_num_seqs=10**6, prefix_caching=rng.random() < 0.5)
    budgets = [rng.randrange(20, 120) * 2**20 for _ in range(pp)]
    plan = plan_natural(layout, settings, budgets, GPU)
    stages = stage_layers(layout, pp)

    has_attention, has_state = bool(layout.attention_layers), bool(layout.state_layers)
    needed = [k for k in (simulate_stage_slot_blocks(layers, 16) for layers in stages) if k]
    k = plan.state_slot_blocks
    if has_attention and has_state:
        # One stage: its own k. Several: a shared k between what the stages need (see the next test).
        assert min(needed) <= k <= max(needed) and (len(set(needed)) > 1 or k == needed[0])
    else:
        assert k == (1 if has_state else 0)
    if has_attention:
        assert plan.num_blocks == simulate_num_blocks(stages, budgets, 16, max(k, 1))
    m = 1 if has_state else 0  # one running slot, prefix caching on or off
    for length in (1, 16, 17, 500, 4096):
        attention_blocks = -(-length // 16) if has_attention else 0
        expected = simulate_admitted(plan.num_blocks, max(k, 1), m, attention_blocks, limit=10**6)
        assert plan.capacity(length) == expected, (pattern, pp, length)
    for stage, budget in zip(plan.stages, budgets):
        assert stage.bytes <= budget


def test_qwen35_9b_numbers_from_the_design():
    """DESIGN.md: Qwen3.5-9B (24 GDN + 8 attention) at 8 GiB: k = 99 blocks of 16 tokens, 16384 blocks."""
    layout = hand_layout("SSSA" * 8)
    settings = Settings(prefix_caching=False, max_num_seqs=1024)
    plan = plan_natural(layout, settings, [8 * 2**30], GPU)
    stage = plan.stages[0]
    # One GDN page (conv + float32 temporal) against one 16-token page of one attention layer.
    state_page = 3 * 8192 * 2 + 32 * 128 * 128 * 4
    page = 16 * 4 * 256 * 2 * 2
    assert (stage.state_page_bytes, stage.attention_page_bytes) == (state_page, page)
    assert stage.state_layers_per_tensor == 3
    assert plan.state_slot_blocks * page >= 3 * state_page > (plan.state_slot_blocks - 1) * page
    assert plan.num_blocks * 8 * page == 8 * 2**30
    assert plan.capacity(512) == (plan.num_blocks - 1) // (32 + plan.state_slot_blocks)
    assert stage.unused_state_pages_per_slot == 0


def test_capacity_is_monotone_in_length_and_budget():
    layout = hand_layout("SSSA" * 4)
    settings = Settings(max_num_seqs=10**6)
    small, large = (plan_natural(layout, settings, [b * 2**20], GPU) for b in (200, 400))
    lengths = [1, 15, 16, 17, 100, 512, 4096, 32768]
    for plan in (small, large):
        caps = [plan.capacity(length) for length in lengths]
        assert caps == sorted(caps, reverse=True)
    assert all(small.capacity(length) <= large.capacity(length) for length in lengths)


def test_max_num_seqs_caps_capacity():
    layout = hand_layout("SSSA" * 2)
    plan = plan_natural(layout, Settings(max_num_seqs=7), [2**30], GPU)
    assert plan.capacity(16) == 7 < plan.fit(16)


def test_pp_shared_slot_maximises_capacity():
    # Stage 0 holds 1 attention + 3 state layers (k for r=3), stage 1 1 attention + 1 state layer (r=1).
    layout = hand_layout("SSSA" + "SA")
    settings = Settings(pp=2, pp_layer_partition="4,2", max_num_seqs=10**6, max_model_len=8192)
    budgets = [300 * 2**20, 100 * 2**20]
    plan = plan_natural(layout, settings, budgets, GPU)
    first, second = plan.stages
    assert first.slot_blocks_needed > second.slot_blocks_needed
    assert second.slot_blocks_needed <= plan.state_slot_blocks <= first.slot_blocks_needed
    assert plan.num_blocks == min(first.max_blocks, second.max_blocks)
    # Bytes are re-derived from the shared block count, not each stage's own fit.
    for stage in plan.stages:
        assert stage.bytes == plan.num_blocks * stage.bytes_per_block <= stage.budget_bytes
    # The chosen k is the best over the whole range by the pool simulation: the geometric mean of the
    # requests admitted at 512, 4096 and max_model_len tokens (ties to the larger k).
    m = plan.state_slots_per_request

    def simulated_score(k):
        forced = plan_natural(layout, settings, budgets, GPU, state_slot_blocks=k)
        num_blocks = simulate_num_blocks(stage_layers(layout, 2, "4,2"), budgets, 16, k)
        assert forced.num_blocks == num_blocks
        admitted = [simulate_admitted(num_blocks, k, m, -(-n // 16), 10**6) for n in (512, 4096, 8192)]
        return math.prod(1 + a for a in admitted), k

    best = max(range(second.slot_blocks_needed, first.slot_blocks_needed + 1), key=simulated_score)
    assert plan.state_slot_blocks == best
    # Here the shared k is below stage 0's need: stage 0 pads its attention page stride.
    assert best < first.slot_blocks_needed and first.attention_padding_per_block > 0


def test_state_only_stage_keeps_slots():
    layout = hand_layout("AASS" + "SSSS")
    settings = Settings(pp=2, max_num_seqs=10**6)
    budget = 50 * 2**20
    plan = plan_natural(layout, settings, [budget, budget], GPU)
    state_only = plan.stages[1]
    assert state_only.is_state_only and plan.bottleneck_stage == 1
    # Four state-only tensors, one state page per slot each; the shared pool has exactly that many slots.
    slots = budget // (4 * layout.state_layers[0].state_page_bytes)
    assert plan.num_blocks // plan.state_slot_blocks == slots
    assert state_only.bytes == slots * state_only.state_bytes_per_request
    assert plan.fit(1) == slots - 1  # one slot per request, prefix caching on too; slot 0 holds the null block


def test_attention_only_model_has_no_slots():
    plan = plan_natural(hand_layout("A" * 4), Settings(max_num_seqs=10**6), [2**28], GPU)
    assert (plan.state_slot_blocks, plan.state_slots_per_request) == (0, 0)
    assert plan.capacity(4096) == (plan.num_blocks - 1) // 256
    assert any("no state layer" in note for note in plan.notes)


def test_state_only_model_capacity_ignores_length():
    plan = plan_natural(hand_layout("S" * 4), Settings(max_num_seqs=10**6), [2**28], GPU)
    assert plan.attention_block_size is None
    assert plan.capacity(1) == plan.capacity(10**6) > 0
    assert any("no attention layer" in note for note in plan.notes)


def test_unused_state_pages_reported():
    # 2 attention tensors host 5 state layers: r = 3, one page position per slot unused.
    plan = plan_natural(hand_layout("AASSSSS"), Settings(), [2**30], GPU)
    assert plan.stages[0].unused_state_pages_per_slot == 2 * 3 - 5


def test_cpu_backend_uses_32_token_blocks():
    plan = plan_natural(hand_layout("SSSA"), Settings(hardware="cpu"), [2**28], get_hardware("cpu"))
    assert plan.attention_block_size == 32


@pytest.mark.parametrize(
    "prefix_caching, spec, sm90, expected",
    [(False, 0, False, 1), (False, 2, False, 3), (True, 0, False, 2), (True, 1, True, 4)],
)
def test_vllm_state_blocks_follow_mamba_spec(prefix_caching, spec, sm90, expected):
    settings = Settings(prefix_caching=prefix_caching, num_speculative_tokens=spec)
    hardware = get_hardware("h100" if sm90 else "rtx3060")
    assert vllm_state_blocks_per_request(hand_layout("SSSA"), settings, hardware) == expected
    # Mamba2 exports prefill checkpoints on every device.
    if prefix_caching:
        mamba2 = hand_layout("SSSA", kind="mamba2")
        assert vllm_state_blocks_per_request(mamba2, settings, get_hardware("rtx3060")) == 3 + spec


@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
@pytest.mark.parametrize("spec", [0, 2])
def test_natural_request_holds_one_running_slot_per_token_in_flight(prefix_caching, kind, spec):
    """m = 1 + speculative tokens whatever the mode: checkpoints are cached slots, not admission charges."""
    layout = hand_layout("SSSA" * 2, kind=kind, num_speculative_tokens=spec)
    settings = Settings(prefix_caching=prefix_caching, num_speculative_tokens=spec, max_num_seqs=10**6)
    plan = plan_natural(layout, settings, [2**30], get_hardware("h100"))
    assert plan.state_slots_per_request == 1 + spec
    assert plan.blocks_per_request(100) == 7 + (1 + spec) * plan.state_slot_blocks


@pytest.mark.parametrize(
    "k, block, interval",
    [(1, 16, 256), (16, 16, 256), (17, 16, 512), (99, 16, 2048), (128, 16, 2048), (129, 16, 4096),
     (5, 32, 512), (0, 16, 256), (1, 48, 768), (20, 48, 1056), (3, 32, 512)],
)
def test_checkpoint_interval_is_k_blocks_rounded_up_to_a_power_of_two(k, block, interval):
    """At least 16 blocks (planner.checkpoints.MIN_BLOCKS); a power of two rounded up to the block."""
    assert checkpoint_interval_tokens(k, block) == interval
    assert interval % block == 0 and interval >= max(1, k, 16) * block


def test_checkpoint_interval_in_the_plan_only_with_prefix_caching():
    layout = hand_layout("SSSA" * 8)  # Qwen3.5-9B's shape: k = 99 blocks of 16 tokens
    on, off = (plan_natural(layout, Settings(prefix_caching=p), [8 * 2**30], GPU) for p in (True, False))
    assert on.state_slot_blocks == off.state_slot_blocks == 99
    assert (on.checkpoint_interval, off.checkpoint_interval) == (2048, None)
    assert on.checkpoint_bytes == on.stages[0].slot_bytes == 99 * on.stages[0].bytes_per_block
    assert off.checkpoint_bytes == 0
    attention_only = plan_natural(hand_layout("A" * 4), Settings(), [2**28], GPU)
    assert attention_only.checkpoint_interval is None and attention_only.checkpoint_bytes == 0


def simulate_region_bytes_per_block(layers, block: int, k: int) -> int:
    """Bytes per block id of a stage that keeps, in each attention tensor, the state pages k natural pages
    hold (dealt one by one, at most r each) and stacks the rest in a state region of a whole number of
    256-byte units per block id (the smallest whose k units hold them)."""
    attention = [layer for layer in layers if layer.is_attention]
    states = [layer.state_page_bytes for layer in layers if layer.is_state]
    page, biggest = block * attention[0].kv_bytes_per_token("bfloat16"), max(states)
    r = -(-len(states) // len(attention))
    room = [min(r, k * page // biggest) for _ in attention]
    rest = max(0, len(states) - sum(room))
    return len(attention) * page + 256 * smallest(lambda units: k * 256 * units >= rest * biggest)


def test_state_region_where_padding_costs_more():
    """Stage 0 holds 9 state layers on 2 attention layers (r = 5), stage 1 8 on 3 (r = 3): at the k stage 1
    needs, padding stage 0's two attention strides to 5 state pages per slot costs more than 3 layers in a
    state region, and the plan's block count is the simulation's with the cheaper layout per stage."""
    layout = hand_layout("SSSASSSSASS" + "SASSASSASSS")
    settings = Settings(pp=2, pp_layer_partition="11,11", max_num_seqs=10**6, prefix_caching=False)
    budgets = [3 * 2**30, 3 * 2**30]
    stages = stage_layers(layout, 2, "11,11")
    plan = plan_natural(layout, settings, budgets, GPU)
    first, second = plan.stages
    assert (first.state_region_layers, second.state_region_layers) == (3, 0)
    assert first.attention_padding_per_block == 0 and first.state_layers_per_tensor == 3
    k = plan.state_slot_blocks
    assert k == second.slot_blocks_needed < first.slot_blocks_needed
    region = simulate_region_bytes_per_block(stages[0], 16, k)
    padded = 2 * 256 * smallest(lambda units: k * 256 * units >= max(dealt_state_bytes(stages[0])))
    assert first.bytes_per_block == region < padded
    expected = min(budgets[0] // region, budgets[1] // second.bytes_per_block)
    assert plan.num_blocks == expected
    # The region holds exactly the 3 pages the attention tensors leave: nothing unused, and the byte split's
    # parts add up to the stage's bytes (usage: a region block under attention is padding).
    assert first.unused_state_pages_per_slot == 0
    assert first.slot_bytes == k * first.bytes_per_block >= first.state_bytes_per_request
    # Same layers, forced to pad (k = stage 0's own need): no region.
    assert plan_natural(layout, settings, budgets, GPU, state_slot_blocks=first.slot_blocks_needed).stages[0].state_region_layers == 0
