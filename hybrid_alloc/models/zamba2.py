"""Zamba2: a Mamba2 mixer in every decoder layer; "hybrid" layers also run one of ``num_mem_blocks``
shared transformer blocks, whose weights are shared but whose KV caches are not.

vLLM: ``models/zamba2.py``. Each hybrid layer k (k-th in ``hybrid_layer_ids``) gets its own ``Attention``
named ``model.attn.{j}``, j numbered block by block (``bare_block * ceil-ish(H / M) + k // M``); Mamba
mixers are named ``{H + i}.mixer`` (H = number of hybrid layers). KV heads = query heads; head size =
``attention_head_dim`` = 2 * hidden_size / num_attention_heads (transformers' ``Zamba2Config``).
"""

from __future__ import annotations

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.state_shapes import mamba2_state
from hybrid_alloc.models.weights import Params, gated_mlp_params, mamba2_params

MODEL_TYPES = ("zamba2",)
LINEAR_ATTENTION_LAYER_TYPES = True  # "linear_attention" in transformers' layer_types (cpu_platform)


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    hidden = cfg.int("hidden_size", 2560)
    types = cfg.layer_types("layers_block_type")
    if not set(types) <= {"linear_attention", "hybrid"}:
        raise ModelConfigError(f"{cfg.source}: layers_block_type must hold only 'mamba' and 'hybrid' entries")
    hybrid_ids = [i for i, t in enumerate(types) if t == "hybrid"]
    num_hybrid, mem_blocks = len(hybrid_ids), cfg.int("num_mem_blocks", 1)

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, heads)
    attn_hidden = 2 * hidden
    head_dim = attn_hidden // heads

    intermediate = cfg.int("mamba_expand", 2) * hidden
    m_heads, n_groups = cfg.int("n_mamba_heads", 8), cfg.int("mamba_ngroups", 1)
    state_size, kernel = cfg.int("mamba_d_state", 64), cfg.int("mamba_d_conv", 4)
    state = mamba2_state(tp, intermediate, n_groups, m_heads, intermediate // m_heads, state_size, kernel,
                         ctx.num_spec, ctx.state_dtypes())

    mamba = mamba2_params(hidden, intermediate, n_groups, m_heads, state_size, kernel, tp)
    # A shared block: qkv + o over attention_hidden_size (2 x hidden), gated MLP; counted once, at the first
    # hybrid layer that uses it. Every hybrid layer adds its own hidden x hidden output linear.
    block = Params(mixer=(3 * attn_hidden * attn_hidden + attn_hidden * hidden) / tp, other=2 * attn_hidden) + \
        gated_mlp_params(hidden, cfg.int("intermediate_size", 4 * hidden), tp)
    per_hybrid = Params(mixer=hidden * hidden)

    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i, kind in enumerate(types):
        p = mamba
        if kind == "hybrid":
            k = hybrid_ids.index(i)
            bare = k % mem_blocks
            j = bare * (num_hybrid + mem_blocks - 1) // mem_blocks + k // mem_blocks
            layers.append(attention_layer(f"model.attn.{j}", i, kv, head_dim))
            p = p + per_hybrid + (block if k < mem_blocks else Params())
        layers.append(CacheLayer(name=f"{num_hybrid + i}.mixer", decoder_layer=i, kind="mamba2", state=state))
        params.append(p)
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 32000),
                        tie_word_embeddings=cfg.tie_word_embeddings(True),
                        max_position_embeddings=cfg.int("max_position_embeddings", 4096),
                        notes=[f"{num_hybrid} attention caches share {mem_blocks} transformer block(s) of weights"])
