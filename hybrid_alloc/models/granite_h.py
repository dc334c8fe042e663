"""Granite-4.0-H (``granitemoehybrid``): Mamba2 or attention per decoder layer (``layer_types``), each
followed by an optional MoE and a shared MLP.

vLLM: ``models/granitemoehybrid.py`` (attention head size = hidden_size / num_attention_heads);
defaults from transformers' ``GraniteMoeHybridConfig`` (legacy "mamba"/"attention" names remapped).
"""

from __future__ import annotations

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.family import Context, FamilyLayout, Mamba2Fields, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.weights import Params, attention_params, gated_mlp_params, moe_params

MODEL_TYPES = ("granitemoehybrid",)
LINEAR_ATTENTION_LAYER_TYPES = True  # "linear_attention" in transformers' layer_types (cpu_platform)


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    n = cfg.int("num_hidden_layers", 32)
    hidden = cfg.int("hidden_size", 4096)
    field = "layer_types" if cfg.has("layer_types") else "layers_block_type"
    types = cfg.layer_types(field, ["linear_attention"] * n, length=n)
    if not set(types) <= {"linear_attention", "full_attention"}:
        raise ModelConfigError(f"{cfg.source}: {field} must list {n} entries of mamba/attention")

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", heads))
    head_dim = hidden // heads

    intermediate = cfg.int("mamba_expand", 2) * hidden
    mamba_fields = Mamba2Fields.read(cfg, intermediate)
    state = mamba_fields.state(ctx)

    experts = cfg.int("num_local_experts", 8)
    ffn = Params(other=hidden)
    if experts > 0:
        ffn = ffn + moe_params(hidden, experts, cfg.int("intermediate_size", 11008), tp)
    shared = cfg.int("shared_intermediate_size", 1024)
    if shared:
        ffn = ffn + gated_mlp_params(hidden, shared, tp)
    mamba = mamba_fields.params(hidden, tp) + ffn
    attn = attention_params(hidden, heads, kv, head_dim, tp) + ffn

    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i, kind in enumerate(types[:n]):
        if kind == "linear_attention":
            layers.append(CacheLayer(name=f"model.layers.{i}.mixer", decoder_layer=i, kind="mamba2", state=state))
            params.append(mamba)
        else:
            layers.append(attention_layer(f"model.layers.{i}.self_attn.attn", i, kv, head_dim))
            params.append(attn)
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 32000),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", 2048))
