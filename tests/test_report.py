"""The rich tables, JSON and plot of a trace built from hand-made layouts (no config loader)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hand_layouts import hand_layout
from rich.console import Console

from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.comparison import compare_layout
from hybrid_alloc.report import json_report, render
from hybrid_alloc.report.plot import write_plot
from hybrid_alloc.report.units import fmt_bytes

GiB = 1 << 30


def qwen_like():
    return replace(
        hand_layout("SSSA" * 8, layer_weights=300 << 20, max_len=262144),
        embedding_weight_bytes=2 * GiB,
        head_weight_bytes=GiB,
    )


def rendered(trace) -> str:
    console = Console(record=True, width=160)
    render.print_trace(trace, console)
    return console.export_text()


def test_tables_show_both_layouts_per_stage_and_estimates():
    trace = compare_layout(qwen_like(), Settings(pp=3, max_model_len=32768))
    text = rendered(trace)
    assert text.count("Stage ") == 3
    for row in ("attention block", "state page", "bytes per block", "blocks", "padding", "rounding", "unused"):
        assert row in text
    assert "528 tokens" in text and "16 tokens" in text  # vLLM's inflated block vs the natural one
    assert "estimate" in text
    assert "Bottleneck stage" in text
    for capacity in trace.capacities:
        assert f"{capacity.num_tokens:,}" in text


def test_pinned_budget_is_not_labelled_estimate():
    text = rendered(compare_layout(qwen_like(), Settings(kv_cache_memory=8 * GiB, max_model_len=32768)))
    assert "estimate" not in text and "8.00 GiB" in text


def test_json_round_trips_and_splits_cover_the_budget():
    trace = compare_layout(qwen_like(), Settings(pp=2, max_model_len=32768, kv_cache_memory=4 * GiB))
    doc = json.loads(json_report.dumps(trace))
    assert [c["num_tokens"] for c in doc["capacity"]] == [512, 4096, 32768]
    for stage in doc["stages"]:
        for per_length in stage["bytes"].values():
            for split in per_length.values():
                assert sum(v for k, v in split.items() if k != "requests") == 4 * GiB
    assert doc["natural"]["state_slot_blocks"] == doc["stages"][0]["natural"]["state_slot_blocks"]


def test_pp_suggestion_moves_layers_off_the_bottleneck():
    # Stage 0 carries the embeddings and its budget is the smallest: moving a layer off it helps stock vLLM.
    trace = compare_layout(qwen_like(), Settings(pp=2, max_model_len=32768))
    stock = [p for p in trace.partitions if p.layout == "stock"]
    assert stock and stock[0].partition[0] < stock[0].current[0] and stock[0].gain > 0
    assert "VLLM_PP_LAYER_PARTITION=" in rendered(trace)


def test_too_small_for_one_request_is_a_result_in_tables_and_json():
    trace = compare_layout(qwen_like(), Settings(kv_cache_memory=GiB))
    assert trace.max_model_len == 262144 and trace.stock.error and trace.natural.error
    assert [(c.stock, c.natural) for c in trace.capacities][-1] == (None, None)
    text = " ".join(rendered(trace).split())
    assert trace.stock.error in text and trace.natural.error in text
    doc = json.loads(json_report.dumps(trace))
    assert doc["stock"] == {"error": trace.stock.error} and doc["natural"] == {"error": trace.natural.error}
    assert all(stage["bytes"]["262144"]["natural"] is None for stage in doc["stages"])


def test_plot_of_a_refusal(tmp_path):
    path = tmp_path / "p.png"
    write_plot(compare_layout(qwen_like(), Settings(kv_cache_memory=GiB)), str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plot_is_a_png(tmp_path):
    path = tmp_path / "p.png"
    write_plot(compare_layout(qwen_like(), Settings(pp=2, max_model_len=32768)), str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("n, text", [(512, "512 B"), (65536, "64.0 KiB"), (2162688, "2.06 MiB"),
                                     (12 * GiB, "12.0 GiB"), (-963 << 20, "-963 MiB")])
def test_byte_format(n, text):
    assert fmt_bytes(n) == text
