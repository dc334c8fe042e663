"""The per-layer cache layout of a model, as vLLM sees it on one tensor-parallel rank.

This is the contract between the model readers (``hybrid_alloc.models``), the planners
(``hybrid_alloc.planner``) and the vLLM plugin. Invariants:
- ``layers`` lists every layer that holds KV cache or state, in vLLM's layer order; a decoder layer
  may contribute two (Falcon-H1: attention and Mamba2) or none (MoE / MLP layers).
- Shapes and head counts are per tensor-parallel rank, exactly as vLLM computes them
  (``MambaStateShapeCalculator``, ``ModelConfig.get_num_kv_heads``).
- Attention bytes depend on ``--kv-cache-dtype``; the layout keeps the model dtype and lets the planner
  pick the cache dtype (``kv_bytes_per_token``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.max_model_len import DerivedMaxLen

# Bytes per element of the dtype names used in vLLM configs and ``--kv-cache-dtype``.
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}

ATTENTION = "attention"
STATE_KINDS = ("mamba1", "mamba2", "gdn", "short_conv", "linear_attention")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; supported: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class StateTensor:
    """One tensor of a recurrent state (e.g. conv or ssm/temporal), per request, per TP rank."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class CacheLayer:
    """One layer that holds KV cache (``kind == "attention"``) or recurrent state (a STATE_KINDS entry)."""

    name: str  # vLLM's layer prefix, e.g. "model.layers.3.self_attn"
    decoder_layer: int  # index into the model's decoder layers (pipeline-parallel splits use it)
    kind: str
    num_kv_heads: int = 0  # attention only, per TP rank
    head_size: int = 0  # attention only
    head_size_v: int = 0  # attention only; 0 means equal to head_size
    sliding_window: int | None = None  # attention only
    state: tuple[StateTensor, ...] = ()  # state layers only

    @property
    def is_attention(self) -> bool:
        return self.kind == ATTENTION

    @property
    def is_state(self) -> bool:
        return self.kind in STATE_KINDS

    @property
    def state_page_bytes(self) -> int:
        """vLLM's unpadded ``MambaSpec.page_size_bytes``: one request's state in this layer."""
        return sum(t.nbytes for t in self.state)

    def kv_bytes_per_token(self, cache_dtype: str) -> int:
        """K and V bytes per token in this layer (``FullAttentionSpec(block_size=1).page_size_bytes``)."""
        v = self.head_size_v or self.head_size
        return self.num_kv_heads * (self.head_size + v) * dtype_bytes(cache_dtype)


@dataclass(frozen=True)
class ModelLayout:
    name: str  # a short display name, e.g. "Qwen/Qwen3.5-9B"
    source: str  # where the config was read from (path or "bundled:<file>")
    model_type: str
    architecture: str
    dtype: str  # model dtype; "--kv-cache-dtype auto" resolves to it
    num_decoder_layers: int  # what vLLM's get_pp_indices splits
    max_position_embeddings: int
    layers: tuple[CacheLayer, ...]
    tp: int = 1
    num_speculative_tokens: int = 0
    # Weights, for the budget estimate: bytes on one TP rank of each decoder layer, and of the parts
    # outside them (embeddings on the first stage, final norm + LM head on the last).
    weight_bytes_per_decoder_layer: tuple[int, ...] = ()
    embedding_weight_bytes: int = 0
    head_weight_bytes: int = 0
    # A multimodal encoder (Qwen3.5/3.6 vision tower): its weights (first stage) and the estimated peak
    # activation of vLLM's encoder profiling run; 0 for text-only architectures.
    encoder_weight_bytes: int = 0
    encoder_activation_bytes: int = 0
    quant_bits: int | None = None  # from quantization_config, None = unquantised
    # What "--kv-cache-dtype auto" means for this checkpoint when not the model dtype (ModelOpt fp8 KV scheme).
    checkpoint_kv_cache_dtype: str | None = None
    notes: tuple[str, ...] = field(default=())
    # vLLM's max_model_len derivation from the config (models.max_model_len); None: max_position_embeddings
    derived_max_len: DerivedMaxLen | None = None

    @property
    def attention_layers(self) -> tuple[CacheLayer, ...]:
        return tuple(layer for layer in self.layers if layer.is_attention)

    @property
    def state_layers(self) -> tuple[CacheLayer, ...]:
        return tuple(layer for layer in self.layers if layer.is_state)

    @property
    def is_multimodal(self) -> bool:
        """A vision-language architecture (Qwen3.5/3.6 ``...ForConditionalGeneration``): vLLM loads its
        vision encoder unless ``--language-model-only`` is given."""
        return self.architecture.endswith("ForConditionalGeneration")

    @property
    def is_hybrid(self) -> bool:
        return bool(self.attention_layers) and bool(self.state_layers)

    @property
    def state_dtypes(self) -> list[str]:
        """Every dtype the state layers store, sorted."""
        return sorted({t.dtype for layer in self.state_layers for t in layer.state})

    def resolve_kv_cache_dtype(self, kv_cache_dtype: str = "auto") -> str:
        """The attention cache dtype vLLM uses for ``--kv-cache-dtype`` (``resolve_kv_cache_dtype_string``);
        an explicit float16 / bfloat16 must be the model dtype (``VllmConfig._reject_mismatched_float_kv_cache``)."""
        if kv_cache_dtype in ("float16", "bfloat16") and kv_cache_dtype != self.dtype:
            allowed = f"auto or {self.dtype}" if self.dtype in ("float16", "bfloat16") else "auto"
            raise UserError(f"{self.name}: --kv-cache-dtype {kv_cache_dtype} is incompatible with the model dtype "
                            f"{self.dtype} (vLLM refuses it); use {allowed}")
        if kv_cache_dtype != "auto":
            return kv_cache_dtype
        return self.checkpoint_kv_cache_dtype or self.dtype
