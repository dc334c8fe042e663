"""What every family module returns, and the attention layer they share."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.hf_config import HFConfig
from hybrid_alloc.models.layout import ATTENTION, CacheLayer
from hybrid_alloc.models.weights import Params


@dataclass
class Context:
    """One load request: the config, TP size, speculative tokens and the resolved model dtype."""

    cfg: HFConfig
    tp: int
    num_spec: int
    dtype: str


@dataclass
class FamilyLayout:
    """A family's reading of a config; the loader adds dtype, embeddings, LM head and provenance."""

    layers: list[CacheLayer]
    layer_params: list[Params]  # one per decoder layer, per TP rank
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    notes: list[str] = field(default_factory=list)

    @property
    def num_decoder_layers(self) -> int:
        return len(self.layer_params)


def kv_heads_per_rank(ctx: Context, num_heads: int, num_kv_heads: int) -> int:
    """vLLM's attention layers (and ``ModelConfig.get_num_kv_heads``): KV heads split over TP, replicated
    when ``tp > num_kv_heads``; query heads must divide evenly (``verify_with_parallel_config``)."""
    tp = ctx.tp
    if num_heads % tp:
        raise ModelConfigError(
            f"{ctx.cfg.source}: {num_heads} attention heads are not divisible by tensor parallel size {tp}")
    if (num_kv_heads >= tp and num_kv_heads % tp) or (num_kv_heads < tp and tp % num_kv_heads):
        raise ModelConfigError(
            f"{ctx.cfg.source}: {num_kv_heads} KV heads cannot be split or replicated over tensor parallel size {tp}")
    return max(1, num_kv_heads // tp)


def attention_layer(name: str, decoder_layer: int, num_kv_heads_per_rank: int, head_size: int,
                    sliding_window: int | None = None) -> CacheLayer:
    return CacheLayer(name=name, decoder_layer=decoder_layer, kind=ATTENTION,
                      num_kv_heads=num_kv_heads_per_rank, head_size=head_size, sliding_window=sliding_window)
