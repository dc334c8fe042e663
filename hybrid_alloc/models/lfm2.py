"""LFM2: short-convolution or attention per decoder layer (``layer_types``, else ``full_attn_idxs``).

vLLM: ``models/lfm2.py``; ``conv_dim`` and ``block_dim`` have no default in transformers' ``Lfm2Config``
and must be in the file. The state is the layer's own ``ShortConv.get_state_shape`` (which counts
speculative tokens; the model class's ``get_mamba_state_shape_from_config`` does not).
"""

from __future__ import annotations

from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.state_shapes import short_conv_state
from hybrid_alloc.models.weights import Params, attention_params, gated_mlp_params

MODEL_TYPES = ("lfm2",)
LINEAR_ATTENTION_LAYER_TYPES = False  # "linear_attention" in transformers' layer_types (cpu_platform)


def _ff_dim(ctx: Context) -> int:
    """``Lfm2MLP``: 2/3 of intermediate_size, times the multiplier, rounded up to block_multiple_of."""
    cfg = ctx.cfg
    size = cfg.int("intermediate_size", 12288)
    if cfg.get("block_auto_adjust_ff_dim", True):
        size = int(2 * size / 3)
        multiplier = cfg.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            size = int(multiplier * size)
        multiple = cfg.int("block_multiple_of", 256)
        size = multiple * ((size + multiple - 1) // multiple)
    return size


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    n = cfg.int("num_hidden_layers", 32)
    hidden = cfg.int("hidden_size", 2560)
    if cfg.has("layer_types"):
        types = cfg.layer_types("layer_types", length=n)
    else:
        full = set(cfg.get("full_attn_idxs", list(range(n))))
        types = ["full_attention" if i in full else "conv" for i in range(n)]

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", 8))
    head_dim = hidden // heads
    conv_dim, kernel = cfg.int("conv_dim"), cfg.int("conv_L_cache", 3)
    state = short_conv_state(tp, conv_dim, kernel, ctx.num_spec, ctx.state_dtypes()[0])

    ffn = gated_mlp_params(cfg.int("block_dim"), _ff_dim(ctx), tp) + Params(other=2 * hidden)
    conv = Params(mixer=(hidden * 3 * conv_dim + conv_dim * kernel + conv_dim * hidden) / tp)
    attn = attention_params(hidden, heads, kv, head_dim, tp)
    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i, kind in enumerate(types[:n]):
        if kind == "full_attention":
            layers.append(attention_layer(f"model.layers.{i}.self_attn.attn", i, kv, head_dim))
            params.append(attn + ffn)
        else:
            layers.append(CacheLayer(name=f"model.layers.{i}.short_conv", decoder_layer=i, kind="short_conv",
                                     state=state))
            params.append(conv + ffn)
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 65536),
                        tie_word_embeddings=cfg.tie_word_embeddings(True),
                        max_position_embeddings=cfg.int("max_position_embeddings", 128000))
