"""Recurrent state shapes and dtypes per TP rank: a pure-Python copy of vLLM's (``vllm_versions.LATEST``)
``MambaStateShapeCalculator`` / ``MambaStateDtypeCalculator``
(``vllm/model_executor/layers/mamba/mamba_utils.py``), without torch.

Conv states use vLLM's default "SD" layout ``(state_len, dim)`` (``VLLM_SSM_CONV_STATE_LAYOUT`` unset);
``num_spec`` speculative tokens lengthen the conv window where vLLM passes them (Mamba2, GDN, short conv).
ReplaySSM ring buffers (``--mamba-backend`` replay options, off by default) are not modelled.
"""

from __future__ import annotations

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.layout import StateTensor


def divide(numerator: int, denominator: int, what: str) -> int:
    """``vllm.distributed.divide``: vLLM asserts exact division; here it is a user error."""
    if numerator % denominator:
        raise ModelConfigError(f"tensor parallel size {denominator} does not divide {what} ({numerator})")
    return numerator // denominator


def extra_groups_for_head_shards(n_groups: int, tp: int) -> int:
    """Groups are replicated so that every head shard holds the groups its heads need."""
    return 0 if n_groups % tp == 0 else tp - n_groups


def _conv(dim: int, state_len: int, dtype: str) -> StateTensor:
    return StateTensor("conv", (state_len, dim), dtype)


def mamba1_state(tp: int, intermediate_size: int, state_size: int, conv_kernel: int,
                 dtypes: tuple[str, str]) -> tuple[StateTensor, ...]:
    dim = divide(intermediate_size, tp, "the Mamba intermediate size")
    return (_conv(dim, conv_kernel - 1, dtypes[0]), StateTensor("ssm", (dim, state_size), dtypes[1]))


def mamba2_state(tp: int, intermediate_size: int, n_groups: int, num_heads: int, head_dim: int,
                 state_size: int, conv_kernel: int, num_spec: int,
                 dtypes: tuple[str, str]) -> tuple[StateTensor, ...]:
    n_groups += extra_groups_for_head_shards(n_groups, tp)
    conv_dim = intermediate_size + 2 * n_groups * state_size
    return (
        _conv(divide(conv_dim, tp, "the Mamba2 conv dimension"), conv_kernel - 1 + num_spec, dtypes[0]),
        StateTensor("ssm", (divide(num_heads, tp, "the Mamba2 head count"), head_dim, state_size), dtypes[1]),
    )


def gated_delta_net_state(tp: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int,
                          conv_kernel: int, num_spec: int,
                          dtypes: tuple[str, str]) -> tuple[StateTensor, ...]:
    conv_dim = head_k_dim * num_k_heads * 2 + head_v_dim * num_v_heads
    return (
        _conv(divide(conv_dim, tp, "the GDN conv dimension"), conv_kernel - 1 + num_spec, dtypes[0]),
        StateTensor("ssm", (divide(num_v_heads, tp, "the GDN value head count"), head_v_dim, head_k_dim),
                    dtypes[1]),
    )


def short_conv_state(tp: int, conv_dim: int, conv_kernel: int, num_spec: int, dtype: str) -> tuple[StateTensor, ...]:
    return (_conv(divide(conv_dim, tp, "the short-conv dimension"), conv_kernel - 1 + num_spec, dtype),)


def mamba_state_dtypes(model_dtype: str, mamba_ssm_cache_dtype: str = "auto",
                       mamba_cache_dtype: str = "auto") -> tuple[str, str]:
    """``_mamba_state_dtype``: conv follows ``--mamba-cache-dtype`` ("auto" = model dtype); the
    ssm/temporal state follows ``--mamba-ssm-cache-dtype``, "auto" meaning the conv dtype."""
    conv = model_dtype if mamba_cache_dtype == "auto" else mamba_cache_dtype
    return conv, conv if mamba_ssm_cache_dtype == "auto" else mamba_ssm_cache_dtype
