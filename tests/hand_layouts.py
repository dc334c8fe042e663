"""Hand-built model layouts for the planner tests (no config file, no loader)."""

from __future__ import annotations

from hybrid_alloc.models.layout import CacheLayer, ModelLayout, StateTensor


def hand_layout(
    pattern: str,
    *,
    kv_heads: int = 4,
    head_size: int = 256,
    conv: tuple[int, ...] = (3, 8192),
    temporal: tuple[int, ...] = (32, 128, 128),
    kind: str = "gdn",
    dtype: str = "bfloat16",
    max_len: int = 32768,
    layer_weights: int = 0,
    num_speculative_tokens: int = 0,
) -> ModelLayout:
    """One decoder layer per character: "A" attention, "S" state, "B" both (Falcon-H1), "-" neither."""
    state = (StateTensor("conv", conv, dtype), StateTensor("temporal", temporal, "float32"))
    layers = []
    for index, char in enumerate(pattern):
        if char in "AB":
            layers.append(CacheLayer(f"model.layers.{index}.attn", index, "attention", kv_heads, head_size))
        if char in "SB":
            layers.append(CacheLayer(f"model.layers.{index}.mixer", index, kind, state=state))
    return ModelLayout(
        name=f"hand/{pattern}",
        source="test",
        model_type="test",
        architecture="Test",
        dtype=dtype,
        num_decoder_layers=len(pattern),
        max_position_embeddings=max_len,
        layers=tuple(layers),
        weight_bytes_per_decoder_layer=(layer_weights,) * len(pattern),
        num_speculative_tokens=num_speculative_tokens,
    )
