"""What a plan is computed for: the vLLM engine arguments that shape the KV cache (vLLM's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc import vllm_versions

SUPPORTED_VLLM_VERSIONS = tuple(reversed(vllm_versions.VERSIONS))  # newest first: the default
# vLLM's CacheDType (vllm/config/cache.py, vllm_versions.LATEST): every --kv-cache-dtype `vllm serve` accepts
# (tests/test_stock_parity_flags.py compares the two).
VLLM_KV_CACHE_DTYPES = (
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla", "nvfp4_ds_mla",
    "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc", "turboquant_3bit_nc", "octave_k3v4",
    "octave_k3v3", "octave_k3v3_compact", "ultraquant_4bit", "int4_per_token_head", "int8_per_token_head",
    "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
)
# The ones the planner lays out: one dtype per element, no scales in the page (fp8 = fp8_e4m3, 1 byte).
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
MAMBA_CACHE_MODES = ("align", "none")  # vLLM's MambaCacheMode
# vLLM's QuantizationMethods (vllm/model_executor/layers/quantization/__init__.py, LATEST): every --quantization
# `vllm serve` accepts (the planner estimates the weights of those in models.weights.QUANTIZATION_CONFIGS, and
# of any a config's quantization_config names).
VLLM_QUANTIZATION_METHODS = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)


@dataclass(frozen=True)
class Settings:
    hardware: str = "rtx3060"  # a key of hybrid_alloc.planner.hardware.HARDWARE
    vllm_version: str = vllm_versions.LATEST
    pp: int = 1
    tp: int = 1
    kv_cache_memory: int | None = None  # bytes per GPU; pins the budget like --kv-cache-memory-bytes
    gpu_memory: int | None = None  # bytes per GPU; overrides the hardware profile's memory
    gpu_memory_utilization: float = 0.92
    max_model_len: int | None = None  # None: vLLM's, derived from the config (models.max_model_len)
    max_num_seqs: int = 256  # vLLM's default on GPUs
    kv_cache_dtype: str = "auto"  # one of KV_CACHE_DTYPES
    block_size: int | None = None  # --block-size: None = vLLM's default, else skips the backend's preference
    mamba_block_size: int | None = None  # --mamba-block-size (prefix caching only; vLLM's hybrid alignment
    # overwrites it on stages with attention)
    mamba_ssm_cache_dtype: str = "auto"  # --mamba-ssm-cache-dtype
    # The CPU backend only: whether the target CPU has AVX512-BF16 (vLLM then keeps SSM state in float32,
    # hybrid_alloc.models.cpu_platform); None = this machine's answer.
    cpu_avx512_bf16: bool | None = None
    prefix_caching: bool = True  # vLLM's default; hybrids then run mamba_cache_mode "align"
    num_speculative_tokens: int = 0
    pp_layer_partition: str | None = None  # VLLM_PP_LAYER_PARTITION
    # Weights only (the budget estimate): --quantization names the checkpoint's method when the config read
    # has none (a bundled name traced for an AWQ / GPTQ / NVFP4 checkpoint); --language-model-only: no vision
    # encoder is loaded.
    quantization: str | None = None
    language_model_only: bool = False

    @property
    def mamba_cache_mode(self) -> str:
        return "align" if self.prefix_caching else "none"
