"""What a plan is computed for: the vLLM engine arguments that shape the KV cache (vLLM's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc import vllm_versions

SUPPORTED_VLLM_VERSIONS = tuple(reversed(vllm_versions.VERSIONS))  # newest first: the default
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8")


@dataclass(frozen=True)
class Settings:
    hardware: str = "rtx3060"  # a key of hybrid_alloc.planner.hardware.HARDWARE
    vllm_version: str = vllm_versions.LATEST
    pp: int = 1
    tp: int = 1
    kv_cache_memory: int | None = None  # bytes per GPU; pins the budget like --kv-cache-memory-bytes
    gpu_memory: int | None = None  # bytes per GPU; overrides the hardware profile's memory
    gpu_memory_utilization: float = 0.92
    max_model_len: int | None = None  # None: the model's max_position_embeddings, as vLLM does
    max_num_seqs: int = 256  # vLLM's default on GPUs
    kv_cache_dtype: str = "auto"
    mamba_ssm_cache_dtype: str = "auto"  # --mamba-ssm-cache-dtype
    # The CPU backend only: whether the target CPU has AVX512-BF16 (vLLM then keeps SSM state in float32,
    # hybrid_alloc.models.cpu_platform); None = this machine's answer.
    cpu_avx512_bf16: bool | None = None
    prefix_caching: bool = True  # vLLM's default; hybrids then run mamba_cache_mode "align"
    num_speculative_tokens: int = 0
    pp_layer_partition: str | None = None  # VLLM_PP_LAYER_PARTITION

    @property
    def mamba_cache_mode(self) -> str:
        return "align" if self.prefix_caching else "none"
