"""The KV cache budget: pinned, or estimated from memory, weights and allowances."""

from __future__ import annotations

from dataclasses import replace
from math import ceil

import pytest
from hand_layouts import hand_layout

from hybrid_alloc.errors import UserError
from hybrid_alloc.planner import kv_budget as B
from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.settings import Settings

GiB = 1 << 30
LAYER = 200 * 2**20


def layout():
    return replace(
        hand_layout("SSSA" * 8, layer_weights=LAYER), embedding_weight_bytes=GiB, head_weight_bytes=GiB // 2
    )


def lines(budget) -> dict[str, int]:
    return {line.label: line.bytes for line in budget.lines}


def test_pinned_budget_is_exact_on_every_stage():
    budgets = B.kv_cache_budgets(layout(), Settings(pp=3, kv_cache_memory=5 * GiB), get_hardware("rtx3060"))
    assert [b.bytes for b in budgets] == [5 * GiB] * 3
    assert not any(b.estimated for b in budgets)


def test_estimate_pieces_per_stage():
    hardware = get_hardware("rtx3060")
    settings = Settings(pp=3, pp_layer_partition="12,10,10")
    budgets = B.kv_cache_budgets(layout(), settings, hardware)
    requested = ceil(hardware.memory_bytes * 0.92)
    for budget, layers, kinds in zip(budgets, (12, 10, 10), ("SSSA" * 3, "SSSASSSASS", "SASSSASSSA")):
        got = lines(budget)
        assert got[f"memory ({hardware.name})"] + got["x 0.92 (gpu_memory_utilization)"] == requested
        assert got["weights: decoder layers"] == -layers * LAYER
        assert got["non-torch memory"] == -(B.NON_TORCH + B.NCCL)  # PP: the stage talks to the others
        assert got["activations (2048 tokens)"] == -2048 * B.ACTIVATION_BYTES_PER_TOKEN
        state, other = kinds.count("S"), kinds.count("A")
        assert got["CUDA graphs (86)"] == -86 * (state * B.CUDA_GRAPH_BYTES_PER_STATE_LAYER
                                                 + other * B.CUDA_GRAPH_BYTES_PER_LAYER)
        assert budget.bytes == sum(got.values()) and budget.estimated
    assert lines(budgets[0])["weights: embeddings"] == -GiB
    assert lines(budgets[2])["weights: final norm + LM head"] == -GiB // 2
    assert "weights: embeddings" not in lines(budgets[1]) and "weights: final norm + LM head" not in lines(budgets[1])
    # Stage 0 carries two more decoder layers (weights and CUDA-graph pieces: one more S, one more A) and
    # the embeddings: the smallest.
    assert budgets[0].bytes == budgets[1].bytes - 2 * LAYER - GiB \
        - 86 * (B.CUDA_GRAPH_BYTES_PER_STATE_LAYER + B.CUDA_GRAPH_BYTES_PER_LAYER)


def test_single_gpu_large_tier_has_no_nccl_and_more_batched_tokens():
    got = lines(B.kv_cache_budgets(layout(), Settings(hardware="h100"), get_hardware("h100"))[0])
    assert got["non-torch memory"] == -B.NON_TORCH
    assert got["activations (8192 tokens)"] == -8192 * B.ACTIVATION_BYTES_PER_TOKEN


def test_gpu_memory_overrides_the_profile():
    settings = Settings(gpu_memory=32 * GiB, gpu_memory_utilization=0.5)
    got = lines(B.kv_cache_budgets(layout(), settings, get_hardware("rtx3060"))[0])
    assert got["memory"] + got["x 0.5 (gpu_memory_utilization)"] == 16 * GiB


def test_budget_too_small_names_the_numbers():
    with pytest.raises(UserError, match=r"stage 0: .*weights: decoder layers -6\.25 GiB.*--kv-cache-memory"):
        B.kv_cache_budgets(layout(), Settings(gpu_memory=4 * GiB), get_hardware("rtx3060"))


def test_cpu_needs_a_memory_size():
    with pytest.raises(UserError, match="--kv-cache-memory"):
        B.kv_cache_budgets(layout(), Settings(hardware="cpu"), get_hardware("cpu"))
    got = lines(B.kv_cache_budgets(layout(), Settings(hardware="cpu", gpu_memory=64 * GiB), get_hardware("cpu"))[0])
    assert "CUDA graphs" not in got


@pytest.mark.parametrize("max_num_seqs, num_spec, piecewise, full", [
    # vLLM's "Profiling CUDA graph memory: PIECEWISE=.. FULL=.." lines in real logs
    (256, 0, 51, 35),  # vllm#39559: PIECEWISE=51 (largest=512), FULL=35 (largest=256)
    (2, 3, 5, 0),  # club-3090#104: MTP 3, PIECEWISE=5 (largest=16)
    (4, 3, 7, 0),  # club-3090 PR#44: PIECEWISE=7 (largest=32)
    (1, 3, 4, 0),  # club-3090#617: PIECEWISE=4 (largest=8)
])
def test_cudagraph_count_matches_vllm_logs(max_num_seqs, num_spec, piecewise, full):
    settings = Settings(max_num_seqs=max_num_seqs, num_speculative_tokens=num_spec)
    assert B.cudagraph_count(settings, get_hardware("rtx4090")) == piecewise + full


def test_multimodal_encoder_weights_and_profiling_peak():
    encoder = replace(layout(), encoder_weight_bytes=GiB, encoder_activation_bytes=3 * GiB)
    budgets = B.kv_cache_budgets(encoder, Settings(gpu_memory=48 * GiB, pp=2), get_hardware("rtx4090"))
    first, last = lines(budgets[0]), lines(budgets[1])
    assert first["weights: vision encoder"] == -GiB and first["activations (encoder profiling)"] == -3 * GiB
    # The encoder runs on the first stage only; the last keeps the decoder's activations.
    assert "weights: vision encoder" not in last and last["activations (2048 tokens)"] == -2048 * B.ACTIVATION_BYTES_PER_TOKEN

