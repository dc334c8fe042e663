"""The devices a plan can be computed for, and what vLLM (``vllm_versions.LATEST``) picks by
default on each.

Memory is the total that ``torch.cuda.mem_get_info()`` / ``total_memory`` reports (what vLLM's
``requested_memory = total x gpu_memory_utilization`` starts from), taken from PyTorch
out-of-memory messages ("GPU 0 has a total capacity of N GiB", two decimals, Linux drivers) or a
CUDA device query's total; the marketing size is larger. Values marked "estimate" were not seen in
either. Each profile's comment names its source. The attention backend, its kernel block and the
GDN prefill kernel follow ``CudaPlatform`` for the profile's compute capability
(``tests/test_stock_parity.py`` checks them against vLLM's own selection).
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.cpu_platform import host_has_avx512_bf16

GiB = 1 << 30


def _gib(value: float) -> int:
    return round(value * GiB)


# The CUDA runtime vLLM runs on: the default `pip install vllm` wheel links libcudart.so.13 (and
# torch.version.cuda is 13.x), which `_resolve_gdn_prefill_backend` reads through
# `CudaPlatform.get_cuda_runtime_major()`. A CUDA 12 build keeps Blackwell GDN prefill on Triton.
CUDA_RUNTIME_MAJOR = 13


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str  # device name and marketing size (get_batch_defaults looks for "a100" in the name)
    memory_bytes: int | None  # None on the CPU backend: its KV budget is set explicitly
    compute_capability: tuple[int, int] | None  # None: not a CUDA device
    # Default attention backend for a plain decoder with bf16/fp16 KV cache and head size 128
    # (CudaPlatform.get_attn_backend_cls priorities; see attention_backend() for fp8 / head sizes).
    attention_backend: str
    # vLLM's default block size before hybrid alignment: CacheConfig.DEFAULT_BLOCK_SIZE (16) on
    # GPUs; CpuPlatform.update_block_size_for_backend asks for 128 on CPU.
    default_block_size: int
    # `vllm serve` default (EngineArgs.get_batch_defaults): 1024 for >= 160 GiB, and for >= 70 GiB
    # GPUs other than A100 and GB10 (compute capability 12.1), else 256; 128 x world_size on CPU
    # (the offline LLM class gets 256 x world_size there).
    default_max_num_seqs: int

    @property
    def is_cuda(self) -> bool:
        return self.compute_capability is not None

    def flashinfer_gdn_prefill(self, head_k_dim: int | None) -> bool:
        """Whether Gated DeltaNet prefill runs FlashInfer's kernel (``_resolve_gdn_prefill_backend``
        with the default "auto"): SM90 always; SM10x and SM12x when ``linear_key_head_dim`` is 128
        and the CUDA runtime is 13+ (``CUDA_RUNTIME_MAJOR``). In "align" mode its GDN layers then
        declare a prefill checkpoint alignment of ``FLASHINFER_GDN_CHECKPOINT_ALIGNMENT`` (64 tokens)
        and one prefill checkpoint block."""
        if not self.is_cuda:
            return False
        if self.compute_capability == (9, 0):
            return True
        return self.compute_capability[0] in (10, 12) and head_k_dim == 128 and CUDA_RUNTIME_MAJOR >= 13


def gdn_head_k_dim(layer) -> int | None:
    """``linear_key_head_dim`` of a Gated DeltaNet cache layer: the last axis of its temporal state
    (``gated_delta_net_state_shape``: conv state, then (v heads, head_v_dim, head_k_dim))."""
    if layer.kind != "gdn" or not layer.state:
        return None
    return layer.state[-1].shape[-1]


# Smallest kernel block size each attention backend accepts, as `get_supported_kernel_block_sizes`
# reports (what `_align_hybrid_block_size` aligns to): FlashAttention MultipleOf(16), except FA4's
# fp8 KV cache at head size 512 on SM90 ([64]: kernel_block_size() below) and FA4's head-256 kernel
# on SM100 ([128]; never reached by default: FlashInfer comes first there and takes head size 256);
# FlashInfer [16, 32, 64] (plus 128..1024 with trtllm-gen on SM100: the smallest is still 16);
# Triton MultipleOf(16); CPU_ATTN MultipleOf(32).
KERNEL_BLOCK_SIZE = {"FLASH_ATTN": 16, "FLASHINFER": 16, "TRITON_ATTN": 16, "CPU_ATTN": 32}

# Sources of the memory figures: "GPU 0 has a total capacity of N GiB" in a PyTorch out-of-memory
# message (Linux), or the exact total a CUDA device query printed; "estimate" where neither was found.
HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", _gib(11.75), (8, 6), "FLASH_ATTN", 16, 256),
        HardwareProfile("rtx3080", "NVIDIA GeForce RTX 3080 10 GB", _gib(9.78), (8, 6), "FLASH_ATTN", 16, 256),
        # 23.69 GiB: vLLM OOM on one RTX 3090 (github.com/OpenBMB/MiniCPM-V/issues/612).
        HardwareProfile("rtx3090", "NVIDIA GeForce RTX 3090 24 GB", _gib(23.69), (8, 6), "FLASH_ATTN", 16, 256),
        HardwareProfile("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", _gib(23.65), (8, 9), "FLASH_ATTN", 16, 256),
        # L4 24 GB: 22.05 GiB (estimate: nvidia-smi shows 23034 MiB = 22.49 GiB,
        # github.com/modal-labs/modal-client/pull/2797, less the ~0.4 GiB the driver keeps on the
        # other 24 GB Ada parts; no PyTorch OOM message from an L4 was found).
        HardwareProfile("l4", "NVIDIA L4 24 GB", _gib(22.05), (8, 9), "FLASH_ATTN", 16, 256),
        # L40S 48 GB: 44.42 GiB (8x L40S OOM, github.com/stepfun-ai/Step-Video-T2V/issues/8; another
        # driver reports 44.53, github.com/Wan-Video/Wan2.1/issues/205: the lower one is kept).
        HardwareProfile("l40s", "NVIDIA L40S 48 GB", _gib(44.42), (8, 9), "FLASH_ATTN", 16, 256),
        # RTX 5090 32 GB: 33677180928 bytes = 31.36 GiB (deviceQuery "Total amount of global
        # memory", driver 570, github.com/aikitoria/open-gpu-kernel-modules/issues/1; a PyTorch OOM
        # says 31.37 GiB, github.com/Wan-Video/Wan2.1/issues/465). SM120: FA2 (no FA3/FA4 there).
        HardwareProfile("rtx5090", "NVIDIA GeForce RTX 5090 32 GB", 33677180928, (12, 0), "FLASH_ATTN", 16, 256),
        # A100 80 GB: 79.15 GiB (estimate); "a100" in the device name keeps it on the 256 tier.
        HardwareProfile("a100", "NVIDIA A100-SXM4-80GB", _gib(79.15), (8, 0), "FLASH_ATTN", 16, 256),
        HardwareProfile("h100", "NVIDIA H100 80GB HBM3", _gib(79.11), (9, 0), "FLASH_ATTN", 16, 1024),
        # H20 96 GB (Hopper, SM90): 95.00 GiB (PyTorch OOM on an H20,
        # github.com/modelscope/DiffSynth-Studio/issues/1238).
        HardwareProfile("h20", "NVIDIA H20 96 GB", _gib(95.00), (9, 0), "FLASH_ATTN", 16, 1024),
        # H200 141 GB: 139.81 GiB (estimate; nvidia-smi shows 143771 MiB).
        HardwareProfile("h200", "NVIDIA H200 141 GB", _gib(139.81), (9, 0), "FLASH_ATTN", 16, 1024),
        # B200 180 GB (SM100): 178.35 GiB (CUDA device query "Total Global Memory: 178.35 GB",
        # github.com/pytorch/ao/pull/4002: GiB, as nvidia-smi's 183359 MiB = 179.06 GiB,
        # github.com/NVIDIA/TensorRT-LLM/issues/10278, less the driver's share). FlashInfer comes
        # first on SM100 (trtllm-gen); >= 160 GiB is the largest get_batch_defaults tier.
        HardwareProfile("b200", "NVIDIA B200 180 GB", _gib(178.35), (10, 0), "FLASHINFER", 16, 1024),
        # GB10 / DGX Spark (SM121): 121.69 GiB of the 128 GB LPDDR5x that CPU and GPU share: vLLM's
        # start-up check wants 105.87 GiB at 0.87 = 0.87 x 121.69
        # (github.com/MiaAI-Lab/GLM-5.3-Flash-EXL3-2x-DGX-Sparks/issues/47; also
        # github.com/llamastash/llamastash/issues/80, github.com/vllm-project/vllm/issues/48140).
        # NVML has no memory total there; vLLM falls back to the CUDA device total. Unified
        # memory: the OS, page cache and CPU-side buffers come out of the same pool, and
        # torch.cuda.mem_get_info's free figure excludes reclaimable page cache, so vLLM's start-up
        # check ("Free memory on device ... is less than desired") refuses the default 0.92
        # utilization unless the page cache is dropped; users run 0.75-0.85 (the vLLM recipes say
        # 0.85 for a single Spark). get_batch_defaults keeps cc 12.1 on the 256 tier despite the
        # memory. Trace it with the --gpu-memory-utilization you will launch with.
        HardwareProfile("gb10", "NVIDIA GB10 (DGX Spark) 128 GB unified", _gib(121.69), (12, 1), "FLASH_ATTN", 16, 256),
        HardwareProfile("cpu", "vLLM CPU backend (host memory)", None, None, "CPU_ATTN", 128, 128),
    )
}


def get_hardware(name: str) -> HardwareProfile:
    try:
        return HARDWARE[name]
    except KeyError:
        raise UserError(f"unknown hardware {name!r}; supported: {', '.join(HARDWARE)}") from None


@dataclass(frozen=True)
class CpuRule:
    """vLLM's CPU-platform state-dtype rule for a plan: whether it applies, and who said so."""

    avx512_bf16: bool
    source: str  # "host" (this machine's CPU flags) or "stated" (--[no-]cpu-avx512-bf16)


def cpu_rule(hardware: HardwareProfile, stated: bool | None) -> CpuRule | None:
    """None on GPUs (the rule is the CPU backend's); else the stated target CPU, or this machine's."""
    if hardware.is_cuda:
        return None
    if stated is None:
        return CpuRule(host_has_avx512_bf16(), "host")
    return CpuRule(stated, "stated")


def _flash_attn_valid(cc: tuple[int, int], head_size: int, kv_cache_dtype: str) -> bool:
    """FlashAttentionBackend.validate_configuration for a causal decoder with the vLLM wheel's
    flash-attn builds (FA2 everywhere SM80+, FA3 on SM9x, FA4 on SM9x/SM10x/SM11x)."""
    fa4 = cc[0] in (9, 10, 11)
    if cc < (8, 0) or head_size % 8 != 0:
        return False
    if head_size > 256 and not (fa4 and head_size <= 512):  # supports_head_size
        return False
    if kv_cache_dtype.startswith("fp8"):
        # flash_attn_supports_kv_cache_dtype: FA3 on SM90 (FA4 past head size 256, fp8 only at
        # 512), FA4 on SM100 up to head size 128 (larger heads fall back to FA2: no fp8 there;
        # head size 256 takes the hd256 kernel, which has no quantized KV cache).
        if kv_cache_dtype == "fp8_e5m2":
            return False
        if cc[0] == 9:
            return head_size <= 256 or head_size == 512
        return cc[0] == 10 and head_size <= 128
    return True


def _flashinfer_valid(cc: tuple[int, int], head_size: int) -> bool:
    """FlashInferBackend.validate_configuration: SM80..SM121, head sizes 64/128/256/512; every fp8
    KV cache dtype."""
    return (8, 0) <= cc <= (12, 1) and head_size in (64, 128, 256, 512)


def attention_backend(hardware: HardwareProfile, head_size: int, kv_cache_dtype: str) -> str:
    """The backend ``CudaPlatform.get_attn_backend_cls`` selects for a causal, non-MLA decoder:
    the first valid one of FLASHINFER > FLASH_ATTN > TRITON_ATTN on SM10x, of FLASH_ATTN >
    FLASHINFER > TRITON_ATTN elsewhere (``_get_backend_priorities``)."""
    if not hardware.is_cuda:
        return "CPU_ATTN"
    cc = hardware.compute_capability
    order = ("FLASHINFER", "FLASH_ATTN") if cc[0] == 10 else ("FLASH_ATTN", "FLASHINFER")
    for backend in order:
        if backend == "FLASH_ATTN" and _flash_attn_valid(cc, head_size, kv_cache_dtype):
            return backend
        if backend == "FLASHINFER" and _flashinfer_valid(cc, head_size):
            return backend
    return "TRITON_ATTN"


def kernel_block_size(hardware: HardwareProfile, head_size: int, kv_cache_dtype: str) -> int:
    """The smallest kernel block of the backend vLLM picks (``get_supported_kernel_block_sizes``):
    ``KERNEL_BLOCK_SIZE``, but 64 for FA4's fp8 KV cache at head size 512 on SM90
    (``_get_sm90_fa4_fp8_kv_block_size``), which is then also the preferred block size."""
    backend = attention_backend(hardware, head_size, kv_cache_dtype)
    if (
        backend == "FLASH_ATTN"
        and hardware.compute_capability[0] == 9
        and head_size == 512
        and kv_cache_dtype in ("fp8", "fp8_e4m3")
    ):
        return 64
    return KERNEL_BLOCK_SIZE[backend]
