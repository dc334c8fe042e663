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
    # `vllm serve` default (EngineArgs.get_batch_defaults): 1024 for >= 70 GiB GPUs other than A100
    # and GB10, else 256; 128 x world_size on CPU (the offline LLM class gets 256 x world_size there).
    default_max_num_seqs: int

    @property
    def is_cuda(self) -> bool:
        return self.compute_capability is not None

    @property
    def default_max_num_batched_tokens(self) -> int | None:
        """`vllm serve`'s default (EngineArgs.get_batch_defaults) on CUDA GPUs: 16384 from 160 GiB up,
        8192 on the other 1024-sequence GPUs, else 2048; None on CPU (set by the CPU branch)."""
        if not self.is_cuda:
            return None
        if self.memory_bytes >= 160 * GiB:
            return 16384
        return 8192 if self.default_max_num_seqs >= 1024 else 2048

    @property
    def gdn_prefill_flashinfer(self) -> bool:
        """FlashInfer GDN prefill (``_resolve_gdn_prefill_backend``): SM90, and SM10.x / SM12.x with
        ``head_k_dim == 128`` (every bundled GDN model) on a CUDA 13 runtime (vLLM's wheels: cutlass-dsl
        cu13). In "align" mode its GDN layers then declare a prefill checkpoint alignment of
        ``FLASHINFER_GDN_CHECKPOINT_ALIGNMENT`` (64 tokens) and one prefill checkpoint block."""
        return self.compute_capability == (9, 0) or (self.is_cuda and self.compute_capability[0] in (10, 12))


# Smallest kernel block size each attention backend accepts, as `get_supported_kernel_block_sizes`
# reports on these devices: FlashAttention MultipleOf(16) (its 64-token FA4 pages are for fp8 head
# size 512 on SM90 and head size 256 on FA4, where FlashInfer is picked first), FlashInfer [16, 32, 64]
# (+ 128..1024 with trtllm-gen on SM100: the smallest stays 16), Triton MultipleOf(16), CPU_ATTN
# MultipleOf(32).
KERNEL_BLOCK_SIZE = {"FLASH_ATTN": 16, "FLASHINFER": 16, "TRITON_ATTN": 16, "CPU_ATTN": 32}


def _profile(name, description, gib, capability, backend, max_num_seqs) -> HardwareProfile:
    return HardwareProfile(name, description, _gib(gib), capability, backend, 16, max_num_seqs)


# Sources: the "total capacity" in a PyTorch out-of-memory message (issue cited), else "estimate".
# default_max_num_seqs: 1024 from 70 GiB up (A100 and GB10 excepted), else 256.
HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        _profile("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", 11.75, (8, 6), "FLASH_ATTN", 256),
        # 9.78 GiB: zai-org/CogVideo#34
        _profile("rtx3080", "NVIDIA GeForce RTX 3080 10 GB", 9.78, (8, 6), "FLASH_ATTN", 256),
        # 23.70 GiB: GaoLii/DSP#10
        _profile("rtx3090", "NVIDIA GeForce RTX 3090 24 GB", 23.70, (8, 6), "FLASH_ATTN", 256),
        # 23.65 GiB: TRI-ML/packnet-sfm#250
        _profile("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", 23.65, (8, 9), "FLASH_ATTN", 256),
        # 31.36 GiB (estimate; 33,677,180,928 B); SM 12.0: FA2 first (FlashAttention has no fp8 there)
        _profile("rtx5090", "NVIDIA GeForce RTX 5090 32 GB", 31.36, (12, 0), "FLASH_ATTN", 256),
        # 22.05 GiB (estimate; nvidia-smi shows 23034 MiB: lmstudio-ai/lmstudio-bug-tracker#1638)
        _profile("l4", "NVIDIA L4 24 GB", 22.05, (8, 9), "FLASH_ATTN", 256),
        # 44.53 GiB: Wan-Video/Wan2.1#205. L40S totals differ by host (nvidia-smi reports 46068 MiB on L40S
        # hosts; the driver keeps a host-dependent part): 44.40 GiB under vLLM in vllm-project/vllm#23230, 44.42 GiB in
        # stepfun-ai/Step-Video-T2V#8 (an L40 shows 44.40 GiB: QwenLM/Qwen3-VL#2097). No source singles out
        # one value, so the first one found stays; other hosts may have up to 133 MiB less.
        _profile("l40s", "NVIDIA L40S 48 GB", 44.53, (8, 9), "FLASH_ATTN", 256),
        # A100 80 GB: 79.15 GiB (estimate); "a100" in the device name keeps it on the 256 tier.
        _profile("a100", "NVIDIA A100-SXM4-80GB", 79.15, (8, 0), "FLASH_ATTN", 256),
        _profile("h100", "NVIDIA H100 80GB HBM3", 79.11, (9, 0), "FLASH_ATTN", 1024),
        # H20 96 GB: 95.00 GiB (estimate); Hopper, SM 9.0.
        _profile("h20", "NVIDIA H20 96 GB", 95.00, (9, 0), "FLASH_ATTN", 1024),
        # H200 141 GB: 139.81 GiB (estimate; nvidia-smi shows 143771 MiB).
        _profile("h200", "NVIDIA H200 141 GB", 139.81, (9, 0), "FLASH_ATTN", 1024),
        # B200 180 GB: 178.35 GiB (estimate); SM 10.0 prefers FlashInfer.
        _profile("b200", "NVIDIA B200 180 GB", 178.35, (10, 0), "FLASHINFER", 1024),
        # DGX Spark (GB10, 128 GB unified with the CPU): 121.69 GiB,
        # MiaAI-Lab/GLM-5.3-Flash-EXL3-2x-DGX-Sparks#47; SM 12.1 (kept on the 256 tier by vLLM).
        _profile("gb10", "NVIDIA GB10 (DGX Spark) 128 GB unified", 121.69, (12, 1), "FLASH_ATTN", 256),
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
    """The backend ``CudaPlatform.get_attn_backend_cls`` selects for a causal, non-MLA decoder: the
    first valid one of ``_get_backend_priorities`` (FLASHINFER > FLASH_ATTN > TRITON_ATTN on SM10.x,
    FLASH_ATTN > FLASHINFER > TRITON_ATTN elsewhere)."""
    if not hardware.is_cuda:
        return "CPU_ATTN"
    order = ("FLASHINFER", "FLASH_ATTN") if hardware.compute_capability[0] == 10 else ("FLASH_ATTN", "FLASHINFER")
    for backend in order:
        if _BACKEND_SUPPORTS[backend](hardware.compute_capability, head_size, kv_cache_dtype):
            return backend
    return "TRITON_ATTN"  # any head size, every dtype the planner takes


def _flash_attn_supports(capability: tuple[int, int], head_size: int, kv_cache_dtype: str) -> bool:
    """FlashAttention: SM80+, head_size % 8 == 0 and <= 256 (up to 512 only where FA4 is installed: not
    modelled); an fp8 KV cache only as fp8/fp8_e4m3 with FA3 (SM90) or FA4 (SM10.x)
    (``flash_attn_supports_kv_cache_dtype``; never fp8_e5m2)."""
    if capability < (8, 0) or head_size % 8 or head_size > 256:
        return False
    if kv_cache_dtype.startswith("fp8"):
        return kv_cache_dtype in ("fp8", "fp8_e4m3") and capability[0] in (9, 10)
    return True


def _flashinfer_supports(capability: tuple[int, int], head_size: int, kv_cache_dtype: str) -> bool:
    """FlashInfer: SM80 to SM12.1, head sizes 64/128/256/512, fp8 in all three spellings."""
    return (8, 0) <= capability <= (12, 1) and head_size in (64, 128, 256, 512)


_BACKEND_SUPPORTS = {"FLASH_ATTN": _flash_attn_supports, "FLASHINFER": _flashinfer_supports}
