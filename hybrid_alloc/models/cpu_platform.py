"""The one host-dependent layout rule of vLLM's CPU platform: the recurrent (SSM) state dtype.

``CpuPlatform.check_and_update_config`` (every supported release, after the model's own config hook) runs, on a
CPU where ``torch.cpu._is_avx512_bf16_supported()`` holds ("accelerated GDN uses AMX tiles or AVX-512BF16"):
``mamba_ssm_cache_dtype`` other than "float32" becomes "float32", except an explicit "float16"/"bfloat16"
on what ``_cpu_mamba_backend`` calls the accelerated GDN backend: a model whose transformers config lists
"linear_attention" in ``layer_types``. That is Qwen3-Next / Qwen3.5, but transformers 5 also names the Mamba
layers of Jamba, Granite-4.0-H, Nemotron-H and Zamba2 so (not Falcon-H1's or LFM2's): each family module
states it (``LINEAR_ATTENTION_LAYER_TYPES``). So a bf16 model keeps bf16 state on one CPU and gets float32
state (twice the bytes) on another unless ``--mamba-ssm-cache-dtype bfloat16`` is given where allowed. Other host checks of that platform choose kernels, not bytes
(conv-state layout "SD" is already the default; fp8 KV needs AVX-512 or AMX: a refusal, not a size).
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def host_has_avx512_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """What ``torch.cpu._is_avx512_bf16_supported()`` answers on this machine, without importing torch: the
    kernel's ``avx512_bf16`` CPU flag (Linux x86; anything else has no such flag and answers False)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx512_bf16" in line.split() for line in text.splitlines())


def cpu_ssm_cache_dtype(mamba_ssm_cache_dtype: str, linear_attention_layer_types: bool) -> str:
    """``cache_config.mamba_ssm_cache_dtype`` after the CPU platform's rule on an AVX512-BF16 CPU.

    ``mamba_ssm_cache_dtype``: the value after the model's hook ("auto" unless the user or the model set one);
    ``linear_attention_layer_types``: the config's ``layer_types`` include "linear_attention"."""
    if mamba_ssm_cache_dtype in ("float16", "bfloat16") and linear_attention_layer_types:
        return mamba_ssm_cache_dtype
    return "float32"
