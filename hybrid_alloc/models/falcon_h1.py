"""Falcon-H1: every decoder layer runs attention AND Mamba2 in parallel, so it holds two caches.

vLLM: ``models/falcon_h1.py``. The attention cache is ``model.layers.{i}.attn``; the Mamba branch is
renamed ``model.{num_hidden_layers + i}.mixer`` so every cache layer has its own index. Defaults from
transformers' ``FalconH1Config``.
"""

from __future__ import annotations

from hybrid_alloc.models.family import Context, FamilyLayout, Mamba2Fields, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.weights import attention_params, gated_mlp_params

MODEL_TYPES = ("falcon_h1",)
LINEAR_ATTENTION_LAYER_TYPES = False  # "linear_attention" in transformers' layer_types (cpu_platform)


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    n = cfg.int("num_hidden_layers", 32)
    hidden = cfg.int("hidden_size", 4096)

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", heads))
    head_dim = cfg.int("head_dim", hidden // heads)

    # mamba_d_ssm: the class default is 1024; an explicit null means mamba_expand * hidden_size.
    d_ssm = cfg.text["mamba_d_ssm"] if "mamba_d_ssm" in cfg.text else 1024
    if d_ssm is None:
        d_ssm = int(cfg.int("mamba_expand", 2) * hidden)
    mamba = Mamba2Fields.read(cfg, d_ssm)
    state = mamba.state(ctx)

    per_layer = (attention_params(hidden, heads, kv, head_dim, tp)
                 + mamba.params(hidden, tp)
                 + gated_mlp_params(hidden, cfg.int("intermediate_size", 14336), tp))
    layers: list[CacheLayer] = []
    for i in range(n):
        layers.append(attention_layer(f"model.layers.{i}.attn", i, kv, head_dim))
        layers.append(CacheLayer(name=f"model.{n + i}.mixer", decoder_layer=i, kind="mamba2", state=state))
    return FamilyLayout(layers=layers, layer_params=[per_layer] * n, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 128000),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", 8192),
                        notes=["attention and Mamba2 in every decoder layer (two cache layers each)"])
