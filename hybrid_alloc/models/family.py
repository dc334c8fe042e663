"""What every family module returns, and the pieces they share (attention layer, mamba_* Mamba2 fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.cpu_platform import cpu_ssm_cache_dtype
from hybrid_alloc.models.hf_config import HFConfig
from hybrid_alloc.models.layout import ATTENTION, CacheLayer, StateTensor
from hybrid_alloc.models.state_shapes import mamba2_state, mamba_state_dtypes
from hybrid_alloc.models.weights import Params, mamba2_params


@dataclass
class Context:
    """One load request: the config, TP size, speculative tokens, the resolved model dtype, the user's
    ``--mamba-ssm-cache-dtype`` and whether vLLM's CPU platform applies its AVX512-BF16 state rule."""

    cfg: HFConfig
    tp: int
    num_spec: int
    dtype: str
    mamba_ssm_cache_dtype: str = "auto"
    cpu_avx512_bf16: bool = False  # vLLM's CPU backend on an AVX512-BF16 CPU (models/cpu_platform.py)
    linear_attention_layer_types: bool = False  # the family's LINEAR_ATTENTION_LAYER_TYPES
    cpu_rule_change: tuple[str, str] | None = None  # (ssm dtype before, after) where that rule changed it

    def state_dtypes(self, model_ssm_dtype: str = "auto") -> tuple[str, str]:
        """(conv, ssm) state dtypes: ``--mamba-ssm-cache-dtype``, else what the model's config hook sets
        (``model_ssm_dtype``), then the CPU platform's rule where it applies."""
        ssm = self.mamba_ssm_cache_dtype if self.mamba_ssm_cache_dtype != "auto" else model_ssm_dtype
        dtypes = mamba_state_dtypes(self.dtype, ssm)
        if self.cpu_avx512_bf16:
            ruled = mamba_state_dtypes(self.dtype, cpu_ssm_cache_dtype(ssm, self.linear_attention_layer_types))
            if ruled != dtypes:
                self.cpu_rule_change = (dtypes[1], ruled[1])
            dtypes = ruled
        return dtypes


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
    # A multimodal encoder vLLM loads beside the decoder, for the budget estimate (per TP rank, model
    # dtype): its parameters, and the elements live at the peak of vLLM's encoder profiling run.
    encoder_params: float = 0
    encoder_peak_elements: float = 0

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


@dataclass(frozen=True)
class Mamba2Fields:
    """Mamba2 dimensions under the ``mamba_*`` field names (Falcon-H1, Granite-4.0-H)."""

    inner: int  # the SSM width: mamba_d_ssm or mamba_expand * hidden_size
    heads: int
    head_dim: int
    groups: int
    state_size: int
    kernel: int

    @classmethod
    def read(cls, cfg: HFConfig, inner: int) -> Mamba2Fields:
        heads = cfg.int("mamba_n_heads", 128)
        head_dim = cfg.get("mamba_d_head", "auto")
        if head_dim == "auto":
            head_dim = inner // heads
        return cls(inner, heads, head_dim, cfg.int("mamba_n_groups", 1), cfg.int("mamba_d_state", 256),
                   cfg.int("mamba_d_conv", 4))

    def state(self, ctx: Context) -> tuple[StateTensor, ...]:
        return mamba2_state(ctx.tp, self.inner, self.groups, self.heads, self.head_dim, self.state_size,
                            self.kernel, ctx.num_spec, ctx.state_dtypes())

    def params(self, hidden: int, tp: int) -> Params:
        return mamba2_params(hidden, self.inner, self.groups, self.heads, self.state_size, self.kernel, tp)
