"""The devices a plan can be computed for, and what vLLM (``vllm_versions.LATEST``) picks by
default on each.

Memory is the total that ``torch.cuda.mem_get_info()`` / ``total_memory`` reports (what vLLM's
``requested_memory = total x gpu_memory_utilization`` starts from), taken from PyTorch
out-of-memory messages ("GPU 0 has a total capacity of N GiB", two decimals, Linux drivers);
the marketing size is larger. Values marked "estimate" were not seen in such a message.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.cpu_platform import host_has_avx512_bf16

GiB = 1 << 30


def _gib(value: float) -> int:
    return round(value * GiB)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    memory_bytes: int | None  # None on the CPU backend: its KV budget is set explicitly
    compute_capability: tuple[int, int] | None  # None: not a CUDA device
    # Default attention backend for a plain decoder with bf16/fp16 KV cache
    # (CudaPlatform.get_attn_backend_cls priorities; see attention_backend() for fp8 / head sizes).
    attention_backend: str
    # vLLM's default block size before hybrid alignment: CacheConfig.DEFAULT_BLOCK_SIZE (16) on
    # GPUs; CpuPlatform.update_block_size_for_backend asks for 128 on CPU.
    default_block_size: int
    # `vllm serve` default (EngineArgs.get_batch_defaults): 1024 for >= 70 GiB non-A100 GPUs,
    # else 256; 128 x world_size on CPU (the offline LLM class gets 256 x world_size there).
    default_max_num_seqs: int

    @property
    def is_cuda(self) -> bool:
        return self.compute_capability is not None

    @property
    def gdn_prefill_flashinfer(self) -> bool:
        """FlashInfer GDN prefill (``_resolve_gdn_prefill_backend``: exactly SM90 on the GPUs listed
        here). In "align" mode its GDN layers then declare a prefill checkpoint alignment of
        ``FLASHINFER_GDN_CHECKPOINT_ALIGNMENT`` (64 tokens) and one prefill checkpoint block."""
        return self.compute_capability == (9, 0)


# Smallest kernel block size each attention backend accepts, as `get_supported_kernel_block_sizes`
# reports on these devices: FlashAttention MultipleOf(16) (no FA4 on SM80-SM90 for head sizes
# <= 256), FlashInfer [16, 32, 64] (the >= 128 pages are Blackwell-only), Triton MultipleOf(16),
# CPU_ATTN MultipleOf(32).
KERNEL_BLOCK_SIZE = {"FLASH_ATTN": 16, "FLASHINFER": 16, "TRITON_ATTN": 16, "CPU_ATTN": 32}

HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", _gib(11.75), (8, 6), "FLASH_ATTN", 16, 256),
        HardwareProfile("rtx3080", "NVIDIA GeForce RTX 3080 10 GB", _gib(9.78), (8, 6), "FLASH_ATTN", 16, 256),
        HardwareProfile("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", _gib(23.65), (8, 9), "FLASH_ATTN", 16, 256),
        # A100 80 GB: 79.15 GiB (estimate); "a100" in the device name keeps it on the 256 tier.
        HardwareProfile("a100", "NVIDIA A100-SXM4-80GB", _gib(79.15), (8, 0), "FLASH_ATTN", 16, 256),
        HardwareProfile("h100", "NVIDIA H100 80GB HBM3", _gib(79.11), (9, 0), "FLASH_ATTN", 16, 1024),
        # H200 141 GB: 139.81 GiB (estimate; nvidia-smi shows 143771 MiB).
        HardwareProfile("h200", "NVIDIA H200 141 GB", _gib(139.81), (9, 0), "FLASH_ATTN", 16, 1024),
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


def attention_backend(hardware: HardwareProfile, head_size: int, kv_cache_dtype: str) -> str:
    """The backend ``CudaPlatform.get_attn_backend_cls`` selects for a causal, non-MLA decoder
    (priority FLASH_ATTN > FLASHINFER > TRITON_ATTN below SM100, first valid one wins):
    FlashAttention needs SM80+, head_size % 8 == 0 and <= 256, and for an fp8 KV cache FA3, i.e.
    SM90 (``flash_attn_supports_kv_cache_dtype``); FlashInfer takes head sizes 64/128/256/512."""
    if not hardware.is_cuda:
        return "CPU_ATTN"
    fp8 = kv_cache_dtype.startswith("fp8")
    if (
        hardware.compute_capability >= (8, 0)
        and head_size % 8 == 0
        and head_size <= 256
        and (not fp8 or hardware.compute_capability[0] == 9)
    ):
        return "FLASH_ATTN"
    if hardware.compute_capability >= (8, 0) and head_size in (64, 128, 256, 512):
        return "FLASHINFER"
    return "TRITON_ATTN"
