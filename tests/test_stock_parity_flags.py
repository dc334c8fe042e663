"""The trace's vLLM engine flags and GPU profiles against vLLM 0.33's own code.

(Named after test_stock_parity.py, whose harness it imports: collected after the modules that import vLLM's
workers before that harness reports CUDA.)

- The accepted values (--kv-cache-dtype, --quantization, --mamba-cache-mode, --mamba-ssm-cache-dtype) are
  vLLM's Literal types.
- Page bytes per token of every planned --kv-cache-dtype: vLLM's ``FullAttentionSpec``.
- The attention backend order per SM (``_get_backend_priorities``, run from vllm/platforms/cuda.py's source:
  the module needs libcuda) and what each candidate accepts (FlashAttention and Triton classes; FlashInfer's
  class attributes read from its source: its module needs the flashinfer package).
- FlashInfer GDN prefill per profile: the real ``_resolve_gdn_prefill_backend``.
- --block-size / --mamba-block-size / fp8 spellings on the new profiles: plan_stock against vLLM's block-size
  alignment, specs, grouping and capacity, with the harness of tests/test_stock_parity.py.
"""

from __future__ import annotations

import __future__
import ast
import copy
import json
from pathlib import Path
from typing import get_args
from unittest import mock

import pytest
from test_stock_parity import (  # noqa: F401 (imports vLLM with the test platform)
    BACKENDS,
    MAX_MODEL_LEN,
    _Cuda,
    _layout,
    _model_dir,
    _our_plan,
    _vllm_plan,
    _workers,
)

import vllm  # noqa: E402
from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.loader import MAMBA_DTYPES
from hybrid_alloc.planner.hardware import HARDWARE, attention_backend
from hybrid_alloc.planner.settings import (
    KV_CACHE_DTYPES,
    MAMBA_CACHE_MODES,
    VLLM_KV_CACHE_DTYPES,
    VLLM_QUANTIZATION_METHODS,
    Settings,
)
from vllm.config import CacheConfig, ModelConfig, ParallelConfig, VllmConfig
from vllm.config.cache import CacheDType, MambaCacheMode, MambaDType
from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as qwen_gdn
from vllm.model_executor.layers.quantization import QuantizationMethods
from vllm.platforms.interface import DeviceCapability
from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend
from vllm.v1.kv_cache_interface import FullAttentionSpec, get_kv_quant_mode

pytestmark = pytest.mark.vllm

VLLM_DIR = Path(vllm.__file__).parent
CUDA_PROFILES = [hw for hw in HARDWARE.values() if hw.is_cuda]
PLANNED = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN")


def test_accepted_values_are_vllms():
    assert VLLM_KV_CACHE_DTYPES == get_args(CacheDType)
    assert VLLM_QUANTIZATION_METHODS == get_args(QuantizationMethods)
    assert MAMBA_CACHE_MODES == get_args(MambaCacheMode)
    assert MAMBA_DTYPES == get_args(MambaDType)
    assert set(KV_CACHE_DTYPES) <= set(VLLM_KV_CACHE_DTYPES)


@pytest.mark.parametrize("dtype", [d for d in KV_CACHE_DTYPES if d != "auto"])
def test_page_bytes_per_token(dtype):
    layer = CacheLayer("attn", 0, "attention", num_kv_heads=4, head_size=256)
    spec = FullAttentionSpec(block_size=1, num_kv_heads=4, head_size=256, dtype=STR_DTYPE_TO_TORCH_DTYPE[dtype],
                             kv_quant_mode=get_kv_quant_mode(dtype))
    assert layer.kv_bytes_per_token(dtype) == spec.page_size_bytes


def _source_function(relpath: str, name: str, namespace: dict):
    """A module-level function from vLLM's source, without importing the module."""
    module = ast.parse((VLLM_DIR / relpath).read_text())
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            node.decorator_list = []  # functools.cache
            code = compile(ast.Module([node], []), relpath, "exec", flags=__future__.annotations.compiler_flag)
            exec(code, namespace)
            return namespace[name]
    raise LookupError(name)


def _flashinfer_facts() -> dict:
    """FlashInferBackend's kv cache dtypes, head sizes and compute capability range, from its source."""
    module = ast.parse((VLLM_DIR / "v1/attention/backends/flashinfer.py").read_text())
    cls = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "FlashInferBackend")
    facts = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and node.target.id == "supported_kv_cache_dtypes":
            facts["dtypes"] = ast.literal_eval(node.value)
        if isinstance(node, ast.FunctionDef) and node.name in ("get_supported_head_sizes",
                                                                "supports_compute_capability"):
            node = copy.deepcopy(node)
            node.decorator_list = []
            namespace = {"DeviceCapability": DeviceCapability}
            exec(compile(ast.Module([node], []), "flashinfer.py", "exec"), namespace)
            facts[node.name] = namespace[node.name]
    return facts


def _backend_priorities(capability) -> list[str]:
    priorities = _source_function("platforms/cuda.py", "_get_backend_priorities",
                                  {"AttentionBackendEnum": AttentionBackendEnum, "DeviceCapability": DeviceCapability})
    order = priorities(False, DeviceCapability(*capability))
    return [b.name for b in order if b.name in PLANNED]


def _fa_fp8(capability, dtype) -> bool:
    """``flash_attn_supports_kv_cache_dtype`` with vLLM's default FA version: FA3 on SM90, FA4 on SM10.x (the
    CUDA wheels' flash-attn build), FA2 elsewhere (no fp8); never fp8_e5m2. Not runnable without the kernels."""
    return dtype != "fp8_e5m2" and capability[0] in (9, 10)


@pytest.mark.parametrize("hw", CUDA_PROFILES, ids=lambda hw: hw.name)
def test_attention_backend_follows_vllms_priorities(hw):
    flashinfer = _flashinfer_facts()
    capability = DeviceCapability(*hw.compute_capability)

    def valid(backend: str, head_size: int, dtype: str) -> bool:
        if backend == "FLASH_ATTN":
            return (FlashAttentionBackend.supports_compute_capability(capability)
                    and FlashAttentionBackend.supports_head_size(head_size)
                    and dtype in FlashAttentionBackend.supported_kv_cache_dtypes
                    and (not dtype.startswith("fp8") or _fa_fp8(hw.compute_capability, dtype)))
        if backend == "FLASHINFER":
            return (flashinfer["supports_compute_capability"](None, capability)
                    and head_size in flashinfer["get_supported_head_sizes"](None)
                    and dtype in flashinfer["dtypes"])
        return dtype in TritonAttentionBackend.supported_kv_cache_dtypes

    order = _backend_priorities(hw.compute_capability)
    assert order[-1] == "TRITON_ATTN"
    # Head sizes over 256 are left out: FlashAttention takes them where FA4 is installed (is_fa_version_supported),
    # an install-time fact the planner does not model.
    for head_size in (64, 80, 96, 128, 256):
        for dtype in KV_CACHE_DTYPES:
            expected = next(b for b in order if valid(b, head_size, dtype))
            assert attention_backend(hw, head_size, dtype) == expected, (head_size, dtype)
    assert hw.attention_backend == attention_backend(hw, 128, "auto")


@pytest.mark.parametrize("hw", CUDA_PROFILES, ids=lambda hw: hw.name)
def test_gdn_flashinfer_prefill_per_profile(hw):
    """The real _resolve_gdn_prefill_backend with the profile's SM, head_k_dim 128 (every bundled GDN
    model) and vLLM's CUDA 13 wheels."""
    cc = hw.compute_capability
    platform = mock.Mock()
    platform.is_xpu.return_value = platform.is_rocm.return_value = False
    platform.is_cuda.return_value = True
    platform.is_device_capability.side_effect = lambda c: c == cc[0] * 10 + cc[1]
    platform.is_device_capability_family.side_effect = lambda f: cc[0] == f // 10
    platform.get_cuda_runtime_major.return_value = 13
    config = mock.Mock(additional_config={})
    config.model_config.hf_text_config.linear_key_head_dim = 128
    config.model_config.hf_text_config.linear_value_head_dim = 128
    with mock.patch.object(qwen_gdn, "current_platform", platform):
        _, backend = qwen_gdn._resolve_gdn_prefill_backend(config)
    assert (backend == "flashinfer") == hw.gdn_prefill_flashinfer


def _max_len(model_dir: str) -> int:
    return min(MAX_MODEL_LEN, json.loads(Path(model_dir, "config.json").read_text())["max_position_embeddings"])


def _vllm_config(model_dir, kv_dtype, prefix_caching, pp, block_size, mamba_block_size) -> VllmConfig:
    return VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=_max_len(model_dir)),
        cache_config=CacheConfig(cache_dtype=kv_dtype, enable_prefix_caching=prefix_caching, block_size=block_size,
                                 mamba_block_size=mamba_block_size),
        parallel_config=ParallelConfig(pipeline_parallel_size=pp),
    )


GiB = 1 << 30
CASES = [
    # (block_size, mamba_block_size, kv dtype, prefix caching)
    (None, None, "fp8_e4m3", True),
    (None, None, "fp8_e5m2", False),
    (32, None, "auto", True),
    (1024, None, "auto", False),
    (64, 256, "auto", True),
    (None, 512, "fp8_e5m2", True),
]


@pytest.mark.parametrize("hardware", ["rtx3060", "h20", "b200", "rtx5090"])
@pytest.mark.parametrize("config_name", ["Qwen--Qwen3.5-9B.json", "nvidia--Nemotron-H-8B-Base-8K.json",
                                         "meta-llama--Llama-3.1-8B.json"])
def test_block_size_flags_match_vllm(config_name, hardware, tmp_path_factory):
    hw = HARDWARE[hardware]
    model_dir = _model_dir(config_name, str(tmp_path_factory.getbasetemp()))
    with mock.patch.object(_Cuda, "capability", DeviceCapability(*hw.compute_capability)), \
            mock.patch.object(_Cuda, "get_cuda_runtime_major", classmethod(lambda cls: 13), create=True):
        for block_size, mamba_block_size, kv_dtype, prefix_caching in CASES:
            for pp in (1, 3):
                vc = _vllm_config(model_dir, kv_dtype, prefix_caching, pp, block_size, mamba_block_size)
                layout = _layout(vc)
                backend = BACKENDS[attention_backend(hw, vc.model_config.get_head_size(), kv_dtype)]
                settings = Settings(hardware=hardware, pp=pp, kv_cache_dtype=kv_dtype, prefix_caching=prefix_caching,
                                    max_model_len=_max_len(model_dir), block_size=block_size,
                                    mamba_block_size=mamba_block_size)
                workers = _workers(vc, layout, backend)
                budgets = [6 * GiB, 6 * GiB * 11 // 10, 6 * GiB * 9 // 10][:pp]
                case = f"{config_name} {hardware} block={block_size} mamba_block={mamba_block_size} {kv_dtype} " \
                       f"prefix_caching={prefix_caching} pp={pp}"
                assert _our_plan(layout, settings, budgets) == _vllm_plan(workers, budgets), case


def test_mamba_block_size_needs_prefix_caching(tmp_path_factory):
    """VllmConfig.validate_mamba_block_size, which the CLI mirrors (tests/test_cli.py)."""
    model_dir = _model_dir("Qwen--Qwen3.5-9B.json", str(tmp_path_factory.getbasetemp()))
    with pytest.raises(ValueError, match="--mamba-block-size can only be set with --enable-prefix-caching"):
        _vllm_config(model_dir, "auto", False, 1, None, 256)
    assert _vllm_config(model_dir, "auto", False, 1, None, MAX_MODEL_LEN).cache_config.mamba_cache_mode == "none"



@pytest.mark.parametrize("hardware", ["rtx3060", "h20"])
def test_mamba_block_size_on_a_state_only_stage(hardware, tmp_path_factory):
    """Nemotron-Nano-9B-v2 at PP=4 has a stage without attention: vLLM's alignment skips it, so
    --mamba-block-size stays the block of its state group (and splits the groups)."""
    hw = HARDWARE[hardware]
    model_dir = _model_dir("nvidia--NVIDIA-Nemotron-Nano-9B-v2.json", str(tmp_path_factory.getbasetemp()))
    with mock.patch.object(_Cuda, "capability", DeviceCapability(*hw.compute_capability)):
        for mamba_block_size in (None, 256, 2048):
            vc = _vllm_config(model_dir, "auto", True, 4, None, mamba_block_size)
            layout = _layout(vc)
            backend = BACKENDS[attention_backend(hw, vc.model_config.get_head_size(), "auto")]
            settings = Settings(hardware=hardware, pp=4, max_model_len=_max_len(model_dir),
                                mamba_block_size=mamba_block_size)
            budgets = [6 * GiB] * 4
            ours = _our_plan(layout, settings, budgets)
            assert ours == _vllm_plan(_workers(vc, layout, backend), budgets), mamba_block_size


def test_explicit_float_kv_cache_dtype_must_be_the_model_dtype(tmp_path_factory):
    """VllmConfig._reject_mismatched_float_kv_cache."""
    model_dir = _model_dir("Qwen--Qwen3.5-9B.json", str(tmp_path_factory.getbasetemp()))
    layout = _layout(_vllm_config(model_dir, "bfloat16", True, 1, None, None))
    assert layout.dtype == "bfloat16" and layout.resolve_kv_cache_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match='kv_cache_dtype="float16" is incompatible'):
        _vllm_config(model_dir, "float16", True, 1, None, None)
    with pytest.raises(UserError, match="--kv-cache-dtype float16 is incompatible"):
        layout.resolve_kv_cache_dtype("float16")
