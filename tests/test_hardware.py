import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.planner.hardware import HARDWARE, attention_backend, get_hardware


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
        ("h100", "auto", 512, "FLASHINFER"),  # FA2/FA3 stop at 256
        ("h100", "fp8_e4m3", 128, "FLASH_ATTN"),  # fp8 = fp8_e4m3
        ("h100", "fp8_e5m2", 128, "FLASHINFER"),  # no FlashAttention version takes e5m2
        ("h20", "fp8", 128, "FLASH_ATTN"),  # Hopper: FA3
        ("l40s", "fp8", 128, "FLASHINFER"),  # Ada: FA2
        ("b200", "auto", 128, "FLASHINFER"),  # SM10.x puts FlashInfer first
        ("b200", "auto", 80, "FLASH_ATTN"),
        ("rtx5090", "auto", 128, "FLASH_ATTN"),  # SM12.x keeps FlashAttention first
        ("rtx5090", "fp8", 128, "FLASHINFER"),
        ("gb10", "fp8_e5m2", 80, "TRITON_ATTN"),
        ("cpu", "auto", 128, "CPU_ATTN"),
    ],
)
def test_attention_backend(name, kv_dtype, head_size, backend):
    assert attention_backend(HARDWARE[name], head_size, kv_dtype) == backend


def test_gdn_flashinfer_prefill_on_hopper_and_blackwell():
    """SM90 (H20 included), SM10.x and SM12.x; not Ampere / Ada (tests/test_stock_parity_flags.py runs vLLM's rule)."""
    assert {n for n, hw in HARDWARE.items() if hw.gdn_prefill_flashinfer} == {"h100", "h20", "h200", "b200", "rtx5090",
                                                                              "gb10"}


def test_issue_profiles_exist():
    """Issue 13 item 7: the GPUs users run, with SM versions as NVIDIA lists them."""
    capabilities = {"l4": (8, 9), "l40s": (8, 9), "rtx3090": (8, 6), "rtx5090": (12, 0), "gb10": (12, 1),
                    "h20": (9, 0), "b200": (10, 0)}
    assert {name: HARDWARE[name].compute_capability for name in capabilities} == capabilities


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
            platform.is_device_capability.side_effect = lambda capability: tuple(capability) == hw.compute_capability
            platform.is_tpu.return_value = False
            platform.is_cpu.return_value = False
            tokens, seqs = EngineArgs.get_batch_defaults(world_size=1)
        assert seqs[UsageContext.OPENAI_API_SERVER] == hw.default_max_num_seqs, hw.name
        assert tokens[UsageContext.OPENAI_API_SERVER] == hw.default_max_num_batched_tokens, hw.name
