"""Jamba (Mamba1 + attention, MoE every other layer).

vLLM: ``models/jamba.py``; transformers' ``JambaConfig`` derives the layer kinds from
``attn_layer_period`` / ``attn_layer_offset`` (a ``layers_block_type`` in the file is not read) and the
MoE layers from ``expert_layer_period`` / ``expert_layer_offset``. Mamba1 states take no speculative slots.
"""

from __future__ import annotations

import math

from hybrid_alloc import vllm_versions
from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.state_shapes import mamba1_state
from hybrid_alloc.models.weights import Params, attention_params, gated_mlp_params, moe_params

MODEL_TYPES = ("jamba",)
LINEAR_ATTENTION_LAYER_TYPES = True  # "linear_attention" in transformers' layer_types (cpu_platform)


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    n = cfg.int("num_hidden_layers", 32)
    hidden = cfg.int("hidden_size", 4096)
    attn_period, attn_offset = cfg.int("attn_layer_period", 8), cfg.int("attn_layer_offset", 4)
    expert_period, expert_offset = cfg.int("expert_layer_period", 2), cfg.int("expert_layer_offset", 1)

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", 8))
    head_dim = hidden // heads

    intermediate = cfg.int("mamba_expand", 2) * hidden
    state_size, kernel = cfg.int("mamba_d_state", 16), cfg.int("mamba_d_conv", 4)
    dt_rank = cfg.get("mamba_dt_rank", "auto")
    if dt_rank == "auto":
        dt_rank = math.ceil(hidden / 16)
    state = mamba1_state(tp, intermediate, state_size, kernel, ctx.state_dtypes())
    # in_proj (x, z), conv1d, x_proj (dt, B, C), dt_proj, A, D, out_proj; dt/B/C layernorms.
    mamba = Params(mixer=(hidden * 2 * intermediate + intermediate * kernel + intermediate * (dt_rank + 2 * state_size)
                          + dt_rank * intermediate + intermediate * state_size + intermediate * hidden) / tp,
                   other=2 * intermediate / tp + dt_rank + 2 * state_size + 2 * hidden)
    attn = attention_params(hidden, heads, kv, head_dim, tp)
    ffn_size = cfg.int("intermediate_size", 14336)
    experts = cfg.int("num_experts", 16)

    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i in range(n):
        is_moe = experts > 1 and i % expert_period == expert_offset
        ffn = moe_params(hidden, experts, ffn_size, tp) if is_moe else gated_mlp_params(hidden, ffn_size, tp)
        if i % attn_period == attn_offset:
            layers.append(attention_layer(f"model.layers.{i}.attn", i, kv, head_dim))
            params.append(attn + ffn)
        else:
            layers.append(CacheLayer(name=f"model.layers.{i}.mixer", decoder_layer=i, kind="mamba1", state=state))
            params.append(mamba + ffn)
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 65536),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", 262144),
                        notes=[f"Mamba1 conv state takes no speculative-token slots in vLLM {vllm_versions.LATEST}"])
