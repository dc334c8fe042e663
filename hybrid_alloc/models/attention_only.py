"""Decoder-only attention models (Llama, Qwen2/3, Mistral, ...): one attention cache per decoder layer,
no state. Head size and KV heads follow ``ModelArchConfigConvertorBase``: ``head_dim`` when set, else
hidden_size / num_attention_heads; ``num_key_value_heads`` defaulting to the query heads.
"""

from __future__ import annotations

from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.weights import attention_params, gated_mlp_params

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LINEAR_ATTENTION_LAYER_TYPES = False  # "linear_attention" in transformers' layer_types (cpu_platform)

# transformers defaults for the fields these configs may omit: (intermediate_size, max_position_embeddings).
_DEFAULTS = {"llama": (11008, 2048), "mistral": (14336, 131072), "qwen2": (22016, 32768), "qwen3": (22016, 32768)}


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    n = cfg.int("num_hidden_layers")
    hidden = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", heads))
    head_dim = cfg.get("head_dim", None) or hidden // heads
    intermediate, max_pos = _DEFAULTS[cfg.model_type]

    per_layer = attention_params(hidden, heads, kv, head_dim, tp) + gated_mlp_params(
        hidden, cfg.int("intermediate_size", intermediate), tp)
    layers = [attention_layer(f"model.layers.{i}.self_attn.attn", i, kv, head_dim) for i in range(n)]
    notes = []
    if cfg.get("sliding_window", None) and cfg.get("use_sliding_window", cfg.model_type == "mistral"):
        notes.append("sliding window declared in the config is not modelled: full-length KV assumed")
    return FamilyLayout(layers=layers, layer_params=[per_layer] * n, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 32000),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", max_pos), notes=notes)
