"""The trace as JSON. Contract (issue 2, section 7; names stable, additions free):
{"model", "vllm_version", "hardware", "settings": {...},
 "cpu_platform_rule": null on GPUs, else {"avx512_bf16", "source": "host" | "stated", "state_dtypes"},
 "stages": [{"stage", "layers": {"attention", "state"}, "kv_cache_memory_bytes",
             "stock": {"block_size", "mamba_page_size_padded", "num_groups", "bytes_per_block", "num_blocks"},
             "natural": {"attention_block_size", "num_attention_blocks", "state_slot_blocks",
                         "state_layers_per_tensor", "bytes"}}],
 "stock": {"num_blocks", "kv_cache_size_tokens", "max_concurrency"}  (or {"error": vLLM's reason}),
 "natural": {"kv_cache_size_tokens", "max_concurrency", "state_slots_per_request", "checkpoints"}
            (or {"error": the plugin's reason}),
 "derived_max_model_len": {"value", "key", "default"}}
Refusals are results, never exit codes: where one max_model_len request does not fit, the refusing layout's
"error" holds the refusal word for word, and its "capacity" / "bytes" entries are null. Where vLLM refuses
--max-model-len itself (above "derived_max_model_len", without VLLM_ALLOW_LONG_MAX_MODEL_LEN=1), no layout
exists: "stock" and "natural" both hold {"error": vLLM's reason}, "stages" and "capacity" are empty and
"pipeline" is null.
"kv_cache_memory_bytes" is the stage's KV cache budget (vLLM's available memory for the cache).
"kv_cache_size_tokens" / "max_concurrency" follow vLLM's definitions: concurrency = num_blocks / the
blocks one max_model_len request may hold (no max_num_seqs cap), tokens = concurrency x max_model_len.
"capacity" lists requests held at once (what the block pool admits together, the null block aside; capped
by max_num_seqs) at 512, 4096 and max_model_len tokens;
"bytes" splits each stage's budget at those lengths (see hybrid_alloc.planner.usage).
"state_slots_per_request" is the natural layout's m (1 + speculative tokens, prefix caching on or off);
"stock"'s per-group count is vLLM's MambaSpec. "checkpoints" (null with prefix caching off):
{"interval_tokens", "bytes_per_checkpoint" (one state slot on every stage), "accounting"}.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from hybrid_alloc.models.max_model_len import of_layout
from hybrid_alloc.planner.pipeline import pp_indices
from hybrid_alloc.planner.comparison import LayoutComparison, StartupRefusal

CHECKPOINT_ACCOUNTING = "cached and evictable, not charged at admission"


def _common(trace: LayoutComparison | StartupRefusal) -> dict:
    settings, derived = trace.settings, of_layout(trace.layout)
    return {
        "model": trace.layout.name,
        "source": trace.layout.source,
        "vllm_version": settings.vllm_version,
        "hardware": settings.hardware,
        "settings": {
            **asdict(settings),
            "max_model_len": trace.max_model_len,
            "mamba_cache_mode": settings.mamba_cache_mode,
        },
        # vLLM's CPU backend only (None on GPUs): the AVX512-BF16 state-dtype rule the layout was computed under.
        "cpu_platform_rule": None if trace.cpu_rule is None else {
            "avx512_bf16": trace.cpu_rule.avx512_bf16,
            "source": trace.cpu_rule.source,
            "state_dtypes": trace.layout.state_dtypes,
        },
        "derived_max_model_len": {"value": derived.value, "key": derived.key, "default": derived.default},
    }


def to_dict(trace: LayoutComparison | StartupRefusal) -> dict:
    if isinstance(trace, StartupRefusal):
        error = {"error": trace.error}
        return {**_common(trace), "stages": [], "stock": error, "natural": error, "capacity": [], "pipeline": None}
    settings = trace.settings
    stock, natural = trace.stock, trace.natural
    return {
        **_common(trace),
        "stages": [_stage(trace, index) for index in range(settings.pp)],
        "stock": {"error": stock.error} if stock.error else {
            "num_blocks": stock.num_blocks,
            "kv_cache_size_tokens": stock.kv_cache_size_tokens,
            "max_concurrency": stock.max_concurrency,
            "block_size": stock.block_size,
            "blocks_per_request": stock.blocks_per_request,
        },
        "natural": {"error": natural.error} if natural.error else {
            "kv_cache_size_tokens": natural.kv_cache_size_tokens,
            "max_concurrency": natural.max_concurrency,
            "num_blocks": natural.num_blocks,
            "attention_block_size": natural.attention_block_size,
            "state_slot_blocks": natural.state_slot_blocks,
            "state_slots_per_request": natural.state_slots_per_request,
            "blocks_per_request": natural.blocks_per_request(trace.max_model_len),
            "checkpoints": None if natural.checkpoint_interval is None else {
                "interval_tokens": natural.checkpoint_interval,
                "bytes_per_checkpoint": natural.checkpoint_bytes,
                "accounting": CHECKPOINT_ACCOUNTING,
            },
            "notes": list(natural.notes),
        },
        "capacity": [
            {"num_tokens": c.num_tokens, "stock": c.stock, "natural": c.natural, "physical": c.physical}
            for c in trace.capacities
        ],
        "pipeline": {
            "bottleneck_stage": {
                "stock": min(stock.stages, key=lambda s: s.num_blocks_alone).stage,
                "natural": natural.bottleneck_stage,
            },
            "suggestions": [
                {
                    "layout": p.layout,
                    "env": p.env,
                    "partition": list(p.partition),
                    "current": list(p.current),
                    "max_concurrency": p.max_concurrency,
                    "current_max_concurrency": p.current_max_concurrency,
                    "gain": p.gain,
                }
                for p in trace.partitions
            ],
        },
    }


def _stage(trace: LayoutComparison, index: int) -> dict:
    settings = trace.settings
    stock, natural = trace.stock.stages[index], trace.natural.stages[index]
    budget = trace.budgets[index]
    start, end = pp_indices(trace.layout.num_decoder_layers, index, settings.pp, settings.pp_layer_partition)
    return {
        "stage": index,
        "decoder_layers": [start, end],
        "layers": {"attention": natural.num_attention_layers, "state": natural.num_state_layers},
        "kv_cache_memory_bytes": budget.bytes,
        "budget": [
            {"label": line.label, "bytes": line.bytes, "estimate": line.estimate} for line in budget.lines
        ],
        "stock": {
            "block_size": stock.block_size,
            "mamba_page_size_padded": stock.mamba_page_size_padded,
            "num_groups": stock.num_groups,
            "bytes_per_block": stock.bytes_per_block,
            "num_blocks": stock.num_blocks,
            "attention_page_bytes": stock.attention_page_bytes,
            "state_page_bytes": stock.state_page_bytes,
            "bytes": stock.kv_cache_memory_bytes,
            "groups": [
                {"kind": g.kind, "layers": len(g.layer_names), "padding_layers": g.num_padding_layers}
                for g in stock.groups
            ],
        },
        "natural": {
            "attention_block_size": trace.natural.attention_block_size,
            "num_attention_blocks": natural.num_blocks,
            "state_slot_blocks": natural.state_slot_blocks,
            "state_layers_per_tensor": natural.state_layers_per_tensor,
            "bytes": natural.bytes,
            "attention_page_bytes": natural.attention_page_bytes,
            "state_page_bytes": natural.state_page_bytes,
            "unused_state_pages_per_slot": natural.unused_state_pages_per_slot,
            "state_region_layers": natural.state_region_layers,
            "slot_rounding_bytes": natural.slot_rounding_bytes,
        },
        "bytes": {
            str(c.num_tokens): {
                "stock": c.stock_split[index].as_dict() if c.stock_split else None,
                "natural": c.natural_split[index].as_dict() if c.natural_split else None,
                "physical": c.physical_split[index].as_dict(),
            }
            for c in trace.capacities
        },
    }


def dumps(trace: LayoutComparison | StartupRefusal) -> str:
    return json.dumps(to_dict(trace), indent=2)
