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
        ("cpu", "auto", 128, "CPU_ATTN"),
    ],
)
def test_attention_backend(name, kv_dtype, head_size, backend):
    assert attention_backend(HARDWARE[name], head_size, kv_dtype) == backend


def test_gdn_flashinfer_prefill_only_on_sm90():
    assert [n for n, hw in HARDWARE.items() if hw.gdn_prefill_flashinfer] == ["h100", "h200"]


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
            platform.is_device_capability.return_value = False
            platform.is_tpu.return_value = False
            platform.is_cpu.return_value = False
            _, seqs = EngineArgs.get_batch_defaults(world_size=1)
        assert seqs[UsageContext.OPENAI_API_SERVER] == hw.default_max_num_seqs, hw.name
