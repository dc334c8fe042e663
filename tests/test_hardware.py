import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.planner.hardware import HARDWARE, attention_backend, get_hardware, kernel_block_size


def test_unknown_hardware_lists_names():
    with pytest.raises(UserError, match="rtx3060.*h100.*cpu"):
        get_hardware("tpu")


@pytest.mark.parametrize(
    "name,kv_dtype,head_size,backend",
    [
        ("rtx3060", "auto", 256, "FLASH_ATTN"),
        ("rtx3060", "fp8", 128, "FLASHINFER"),  # FA2 has no fp8 KV cache
        ("rtx3060", "fp8", 80, "TRITON_ATTN"),  # FlashInfer has no head size 80
        ("h100", "fp8", 256, "FLASH_ATTN"),  # FA3
        ("h100", "auto", 512, "FLASH_ATTN"),  # FA3 stops at 256, FA4 (in the wheel, SM9x) takes 512
        ("h100", "fp8", 384, "TRITON_ATTN"),  # FA4's fp8 KV cache only at 512 on SM90
        ("rtx3060", "auto", 512, "FLASHINFER"),  # no FA4 below SM90
        ("l40s", "fp8", 128, "FLASHINFER"),
        ("h20", "fp8", 128, "FLASH_ATTN"),
        ("rtx5090", "auto", 256, "FLASH_ATTN"),  # SM120: FA2 first, as on SM8x
        ("rtx5090", "fp8", 128, "FLASHINFER"),
        ("gb10", "auto", 512, "FLASHINFER"),
        ("b200", "auto", 128, "FLASHINFER"),  # SM100: FlashInfer first
        ("b200", "fp8", 256, "FLASHINFER"),
        ("b200", "auto", 96, "FLASH_ATTN"),  # not a FlashInfer head size
        ("b200", "fp8", 96, "FLASH_ATTN"),  # FA4 has fp8 up to head size 128 on SM100
        ("b200", "fp8", 192, "TRITON_ATTN"),  # FA4 falls back to FA2 (no fp8) past 128
        ("cpu", "auto", 128, "CPU_ATTN"),
    ],
)
def test_attention_backend(name, kv_dtype, head_size, backend):
    assert attention_backend(HARDWARE[name], head_size, kv_dtype) == backend


def test_profiles_default_backend_is_bf16_head_128():
    for hw in HARDWARE.values():
        assert attention_backend(hw, 128, "auto") == hw.attention_backend, hw.name


def test_kernel_block_size():
    assert kernel_block_size(HARDWARE["h100"], 512, "fp8") == 64  # FA4 fp8 KV pages on SM90
    assert kernel_block_size(HARDWARE["h100"], 512, "auto") == 16
    assert kernel_block_size(HARDWARE["b200"], 128, "auto") == 16
    assert kernel_block_size(HARDWARE["cpu"], 128, "auto") == 32


def test_gdn_flashinfer_prefill():
    """SM90 always; SM10x/SM12x with head_k_dim 128 on the CUDA 13 build."""
    with_128 = [n for n, hw in HARDWARE.items() if hw.flashinfer_gdn_prefill(128)]
    assert with_128 == ["rtx5090", "h100", "h20", "h200", "b200", "gb10"]
    assert [n for n, hw in HARDWARE.items() if hw.flashinfer_gdn_prefill(64)] == ["h100", "h20", "h200"]


def test_required_profiles_exist():
    assert {"l4", "l40s", "rtx3090", "rtx5090", "gb10", "h20", "b200"} <= set(HARDWARE)


@pytest.mark.vllm
def test_default_max_num_seqs_follow_vllm_tiers():
    """EngineArgs.get_batch_defaults with the profile's memory and name."""
    from unittest import mock

    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    for hw in HARDWARE.values():
        if not hw.is_cuda:
            continue
        with mock.patch("vllm.engine.arg_utils.current_platform") as platform:
            platform.get_device_total_memory.return_value = hw.memory_bytes
            platform.get_device_name.return_value = hw.description
            platform.is_device_capability.side_effect = lambda cap, hw=hw: cap == hw.compute_capability
            platform.is_tpu.return_value = False
            platform.is_cpu.return_value = False
            _, seqs = EngineArgs.get_batch_defaults(world_size=1)
        assert seqs[UsageContext.OPENAI_API_SERVER] == hw.default_max_num_seqs, hw.name
