"""plan_stock against vLLM 0.33's own functions, for every bundled config.

The vLLM side runs the real code: VllmConfig from a config.json (model hooks set mamba_cache_mode,
mamba_block_size, the SSM cache dtype), the real `Platform.update_block_size_for_backend` ->
`_align_hybrid_block_size` once per pipeline stage (each worker runs it on its own layers), the real
layer `get_kv_cache_spec` methods and `customize_attention_spec`, `resolve_kv_cache_layout`,
`get_global_kv_cache_groups`, `get_kv_cache_configs`, `generate_scheduler_kv_cache_config` and
`get_kv_cache_capacity`. The model classes' `get_mamba_state_shape_from_config` /
`get_mamba_state_dtype_from_config` give the state shapes of both sides.

What is patched or stubbed, and why (no GPU, no model weights here):
- `current_platform` is a `Platform` subclass with the CUDA enum whose `get_device_capability`
  returns the profile's (8.6 or 9.0): `CudaPlatform` itself cannot be imported without libcuda.
  It reports CUDA only after vLLM's modules are imported (their import-time CUDA branches load
  kernel extensions).
  Everything block-size related is `Platform` code, which `CudaPlatform` inherits unchanged.
- The attention backend class is the one `hardware.attention_backend` names (FlashAttention,
  or FlashInfer for fp8 below SM90): vLLM's selection needs the flash-attn extension to say which FA
  version it has. All three candidates have a 16-token kernel block on these GPUs. FlashInfer's
  module needs the flashinfer package: a stand-in with its kernel block sizes replaces it.
- Layers are instances of the real vLLM classes (Attention, QwenGatedDeltaNetAttention,
  MambaMixer2, MambaMixer) made without `__init__` (which allocates weights and needs CUDA), with
  the attributes `get_kv_cache_spec` reads set from the VllmConfig; the GDN checkpoint alignment
  comes from the real `_resolve_gdn_prefill_backend` exactly as `__init__` sets it.
- torchvision is stubbed when absent: `vllm.model_executor.models.qwen3_5` imports it for its image
  processor only.
"""

from __future__ import annotations

import copy
import importlib.machinery
import json
import sys
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

from hybrid_alloc.models.layout import CacheLayer, ModelLayout, StateTensor
from hybrid_alloc.planner.hardware import HARDWARE, attention_backend
from hybrid_alloc.planner.pipeline import stage_layers
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import plan_stock

pytestmark = pytest.mark.vllm

if "torchvision" not in sys.modules:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        for _name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
                      "torchvision.transforms.v2.functional", "torchvision.transforms.functional",
                      "torchvision.io", "torchvision.ops"):
            _stub = mock.MagicMock(__version__="0.28.0", __path__=[])
            _stub.__spec__ = importlib.machinery.ModuleSpec(_name, None)
            sys.modules[_name] = _stub

import torch  # noqa: E402
import vllm.platforms  # noqa: E402
from vllm.platforms.interface import DeviceCapability, Platform, PlatformEnum  # noqa: E402


class _Cuda(Platform):
    _enum = PlatformEnum.UNSPECIFIED  # CUDA once the vLLM modules are imported (see below)
    device_name = "cuda"
    device_type = "cuda"
    dispatch_key = "CUDA"
    ray_device_key = "GPU"
    dist_backend = "nccl"
    device_control_env_var = "CUDA_VISIBLE_DEVICES"
    capability = DeviceCapability(8, 6)

    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
        return cls.capability

    @classmethod
    def device_count(cls) -> int:
        return 8  # ParallelConfig checks pp x tp GPUs exist

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return True  # as CudaPlatform; the base Platform disables the hybrid KV cache manager


# Installed before vLLM's modules bind `current_platform`; it answers is_cuda() only after they are
# imported, so their import-time CUDA branches (kernel extensions) are not taken.
vllm.platforms._current_platform = _Cuda()

from vllm.config import CacheConfig, ModelConfig, ParallelConfig, VllmConfig  # noqa: E402
from vllm.config.vllm import set_current_vllm_config  # noqa: E402
from vllm.model_executor.layers.attention.attention import Attention  # noqa: E402
from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as qwen_gdn  # noqa: E402
from vllm.model_executor.layers.mamba.mamba_mixer import MambaMixer  # noqa: E402
from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2  # noqa: E402
from vllm.model_executor.models import ModelRegistry, registry  # noqa: E402
from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype  # noqa: E402
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend  # noqa: E402
from vllm.v1.attention.backends.gdn_attn import FLASHINFER_GDN_CHECKPOINT_ALIGNMENT  # noqa: E402
from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend  # noqa: E402


class FlashInferBackend(TritonAttentionBackend):
    """Stand-in: vllm.v1.attention.backends.flashinfer needs the flashinfer package. What the KV
    layout reads from it below SM100: kernel blocks [16, 32, 64] (`get_supported_kernel_block_sizes`
    without trtllm-gen pages), no spec customisation for fp8, no layout preference."""

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None):
        return [16, 32, 64]

    @staticmethod
    def get_name() -> str:
        return "FLASHINFER"
from vllm.v1.attention.backends.utils import (  # noqa: E402
    get_supported_kv_cache_layouts,
    resolve_kv_cache_layout,
)
from vllm.v1.core.kv_cache_config_builder import get_kv_cache_config_builder  # noqa: E402
from vllm.v1.core.kv_cache_planning import (  # noqa: E402
    _pool_bytes_per_block_from_builder,
    _project_kv_cache_groups_to_worker,
    get_global_kv_cache_groups,
    get_kv_cache_configs,
)
from vllm.v1.core.kv_cache_utils import (  # noqa: E402
    generate_scheduler_kv_cache_config,
    get_kv_cache_capacity,
)
from vllm.v1.kv_cache_interface import AttentionSpec  # noqa: E402
from vllm.v1.worker.utils import customize_attention_spec  # noqa: E402
import vllm.v1.worker.gpu_worker  # noqa: E402, F401  (the plugin patches Worker; its import-time CUDA checks need _C)

_Cuda._enum = PlatformEnum.CUDA
# ModelConfig inspects the model class in a subprocess (to keep CUDA out of the parent); here there
# is no CUDA, and in-process the torchvision stub applies.
registry._run_in_subprocess = lambda fn: fn()

CONFIGS = Path(__file__).resolve().parents[1] / "hybrid_alloc" / "models" / "configs"
BACKENDS = {"FLASH_ATTN": FlashAttentionBackend, "FLASHINFER": FlashInferBackend, "TRITON_ATTN": TritonAttentionBackend}
STATE_CLASSES = {"gdn": qwen_gdn.QwenGatedDeltaNetAttention, "mamba2": MambaMixer2, "mamba1": MambaMixer}
# vLLM runs the text-only class for a flattened Qwen3.5 text config
TEXT_ARCH = {
    "Qwen3_5ForConditionalGeneration": "Qwen3_5ForCausalLM",
    "Qwen3_5MoeForConditionalGeneration": "Qwen3_5MoeForCausalLM",
}
MAX_MODEL_LEN = 32768
GiB = 1 << 30
BUDGETS = (GiB // 4, 6 * GiB)  # per stage; the small one trips vLLM's one-request check often


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@cache
def _model_dir(config_name: str, tmp_root: str) -> str:
    config = json.loads((CONFIGS / config_name).read_text())
    config.pop("top_level_model_type", None)
    config.pop("layers_block_type", None)  # Jamba: a derived property in transformers' JambaConfig
    config["architectures"] = [TEXT_ARCH.get(a, a) for a in config["architectures"]]
    folder = Path(tmp_root) / config_name.removesuffix(".json")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@cache
def _vllm_config(model_dir: str, kv_dtype: str, prefix_caching: bool, pp: int) -> VllmConfig:
    max_len = min(MAX_MODEL_LEN, json.loads(Path(model_dir, "config.json").read_text())["max_position_embeddings"])
    return VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=max_len),
        cache_config=CacheConfig(cache_dtype=kv_dtype, enable_prefix_caching=prefix_caching),
        parallel_config=ParallelConfig(pipeline_parallel_size=pp),
    )


def _layer_kinds(hf_config, state_kind: str) -> list[list[str]]:
    """The cache layers of each decoder layer, in vLLM's construction order."""
    if hasattr(hf_config, "hybrid_override_pattern"):  # Nemotron-H
        return [{"*": ["attention"], "M": [state_kind]}.get(c, []) for c in hf_config.hybrid_override_pattern]
    if hf_config.model_type == "falcon_h1":  # attention and Mamba2 in every layer
        return [["attention", state_kind]] * hf_config.num_hidden_layers
    types = getattr(hf_config, "layers_block_type", None) or hf_config.layer_types
    return [["attention"] if t in ("attention", "full_attention") else [state_kind] for t in types]


def _state_kind(architecture: str) -> str:
    if architecture.startswith(("Qwen3_5", "Qwen3Next")):
        return "gdn"
    return "mamba1" if architecture.startswith("Jamba") else "mamba2"


def _layout(vc: VllmConfig) -> ModelLayout:
    """The layout vLLM sees: head counts from ModelConfig, states from the model class."""
    mc = vc.model_config
    model_cls, _ = ModelRegistry.resolve_model_cls(mc.architecture, model_config=mc)
    state_kind = _state_kind(mc.architecture)
    state = ()
    if mc.is_hybrid:
        shapes = model_cls.get_mamba_state_shape_from_config(vc)
        dtypes = model_cls.get_mamba_state_dtype_from_config(vc)
        state = tuple(StateTensor(f"s{i}", tuple(s), _dtype_name(d)) for i, (s, d) in enumerate(zip(shapes, dtypes)))
    kinds = _layer_kinds(mc.hf_text_config, state_kind) if mc.is_hybrid else [["attention"]] * mc.hf_text_config.num_hidden_layers
    layers = []
    for index, layer_kinds in enumerate(kinds):
        for kind in layer_kinds:
            if kind == "attention":
                layers.append(CacheLayer(f"layers.{index}.attn", index, kind,
                                         num_kv_heads=mc.get_num_kv_heads(vc.parallel_config), head_size=mc.get_head_size()))
            else:
                layers.append(CacheLayer(f"layers.{index}.{kind}", index, kind, state=state))
    return ModelLayout(mc.model, "vllm", mc.hf_text_config.model_type, mc.architecture, _dtype_name(mc.dtype),
                       len(kinds), mc.hf_text_config.max_position_embeddings, tuple(layers))


def _layer_module(layer: CacheLayer, vc: VllmConfig, backend, state_shapes, state_dtypes):
    """A real vLLM layer object, built without __init__ (see the module docstring)."""
    if layer.is_attention:
        module = Attention.__new__(Attention)
        torch.nn.Module.__init__(module)
        module.attn_type = "decoder"
        module.kv_cache_dtype = vc.cache_config.cache_dtype
        module.kv_cache_torch_dtype = kv_cache_dtype_str_to_dtype(vc.cache_config.cache_dtype, vc.model_config)
        module.sliding_window = None
        module.num_kv_heads = layer.num_kv_heads
        module.head_size = module.head_size_v = layer.head_size
        module.attn_backend = backend
        return module
    cls = STATE_CLASSES[layer.kind]
    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    module.get_state_shape = lambda: state_shapes
    module.get_state_dtype = lambda: state_dtypes
    if layer.kind == "gdn":  # QwenGatedDeltaNetAttention.__init__
        module.vllm_config = vc
        module._checkpoint_alignment = None
        _, prefill_backend = qwen_gdn._resolve_gdn_prefill_backend(vc)
        if vc.cache_config.mamba_cache_mode == "align" and prefill_backend == "flashinfer":
            module._checkpoint_alignment = FLASHINFER_GDN_CHECKPOINT_ALIGNMENT
    return module


def _workers(vc: VllmConfig, layout: ModelLayout, backend) -> tuple[VllmConfig, list[dict], list]:
    """Each pipeline stage's worker (block size alignment, layer specs), and the engine's config
    with the KV cache layout resolved."""
    mc = vc.model_config
    model_cls, _ = ModelRegistry.resolve_model_cls(mc.architecture, model_config=mc)
    shapes = dtypes = None
    if mc.is_hybrid:
        shapes = model_cls.get_mamba_state_shape_from_config(vc)
        dtypes = model_cls.get_mamba_state_dtype_from_config(vc)
    stage_specs, stage_configs = [], []
    for layers in stage_layers(layout, vc.parallel_config.pipeline_parallel_size):
        worker = copy.deepcopy(vc)
        context = worker.compilation_config.static_forward_context
        context.clear()
        for layer in layers:
            context[layer.name] = _layer_module(layer, worker, backend, shapes, dtypes)
        with set_current_vllm_config(worker):
            _Cuda.update_block_size_for_backend(worker)  # Platform's, as CudaPlatform inherits it
            specs = {}
            for name, module in context.items():
                spec = module.get_kv_cache_spec(worker)
                specs[name] = customize_attention_spec(backend, spec) if isinstance(spec, AttentionSpec) else spec
        stage_specs.append(specs)
        stage_configs.append(worker.cache_config)
    engine = copy.deepcopy(vc)
    resolve_kv_cache_layout(engine, [[m.name for m in get_supported_kv_cache_layouts([backend])]],
                            [s for specs in stage_specs for s in specs.values()])
    return engine, stage_specs, stage_configs


def _vllm_plan(workers: tuple[VllmConfig, list[dict], list], budgets: list[int]) -> dict:
    """What the engine core computes from the workers' specs and budgets."""
    engine, stage_specs, stage_configs = workers
    groups = get_global_kv_cache_groups(engine, stage_specs)
    stages = {
        "block_size": [c.block_size for c in stage_configs],
        "mamba_page_size_padded": [c.mamba_page_size_padded for c in stage_configs],
    }
    # Each worker's own block count before the engine takes the smallest (get_kv_cache_configs: a worker
    # projects the global groups onto its layers; a group with no layer there adds no bytes per block)
    builder = get_kv_cache_config_builder(engine)
    projected = [_project_kv_cache_groups_to_worker(groups, specs) for specs in stage_specs]
    stages["num_blocks_alone"] = [
        budget // _pool_bytes_per_block_from_builder(builder, engine, p) if p else 1
        for p, budget in zip(projected, budgets)
    ]
    try:
        configs = get_kv_cache_configs(engine, stage_specs, list(budgets), groups)
    except ValueError as exc:  # vLLM refuses to start: nothing more to compare
        return {**stages, "error": str(exc)}
    scheduler = generate_scheduler_kv_cache_config(configs)
    tokens, concurrency = get_kv_cache_capacity(engine, scheduler)
    return {
        **stages,
        "groups": [[tuple(g.layer_names) for g in c.kv_cache_groups] for c in configs],
        "tensors": [[(tuple(t.layers), t.size, t.offset, t.layer_stride, t.block_stride) for t in c.kv_cache_tensors] for c in configs],
        "num_blocks": configs[0].num_blocks,
        "tokens": tokens,
        "concurrency": concurrency,
        "engine_block_size": min(g.kv_cache_spec.block_size for g in scheduler.kv_cache_groups),
        "error": None,
    }


def _our_plan(layout: ModelLayout, settings: Settings, budgets: list[int]) -> dict:
    plan = plan_stock(layout, settings, budgets)
    stages = {
        "block_size": [s.block_size for s in plan.stages],
        "mamba_page_size_padded": [s.mamba_page_size_padded for s in plan.stages],
        "num_blocks_alone": [s.num_blocks_alone for s in plan.stages],
    }
    if plan.error:
        return {**stages, "error": plan.error}
    return {
        **stages,
        "groups": [[g.layer_names for g in s.groups] for s in plan.stages],
        "tensors": [[(t.layer_names, t.size, t.offset, t.layer_stride, t.block_stride) for t in s.tensors] for s in plan.stages],
        "num_blocks": plan.num_blocks,
        "tokens": plan.kv_cache_size_tokens,
        "concurrency": plan.max_concurrency,
        "engine_block_size": plan.block_size,
        "error": plan.error,
    }


CONFIG_NAMES = sorted(p.name for p in CONFIGS.glob("*.json") if "architectures" in json.loads(p.read_text()))


@pytest.mark.parametrize("hardware", ["rtx3060", "h100"])
@pytest.mark.parametrize("config_name", CONFIG_NAMES)
def test_stock_matches_vllm(config_name: str, hardware: str, tmp_path_factory) -> None:
    hw = HARDWARE[hardware]
    _Cuda.capability = DeviceCapability(*hw.compute_capability)
    model_dir = _model_dir(config_name, str(tmp_path_factory.getbasetemp()))
    for kv_dtype in ("auto", "fp8"):
        for prefix_caching in (True, False):
            for pp in (1, 3):
                vc = _vllm_config(model_dir, kv_dtype, prefix_caching, pp)
                layout = _layout(vc)
                backend = BACKENDS[attention_backend(hw, vc.model_config.get_head_size(), kv_dtype)]
                settings = Settings(hardware=hardware, pp=pp, kv_cache_dtype=kv_dtype,
                                    prefix_caching=prefix_caching, max_model_len=vc.model_config.max_model_len)
                workers = _workers(vc, layout, backend)
                for budget in BUDGETS:
                    budgets = [budget, budget * 11 // 10, budget * 9 // 10][:pp]
                    case = f"{config_name} {hardware} kv={kv_dtype} prefix_caching={prefix_caching} pp={pp} budget={budget}"
                    assert _our_plan(layout, settings, budgets) == _vllm_plan(workers, budgets), case


# Nemotron-H-8B's layers with its 4 attention layers moved together: at pp=2 and 3 some stages hold no layer
# of the attention group (or of some state groups), so vLLM projects empty groups onto those workers.
UNEVEN_PATTERNS = {
    "attention first": "M*M*M*M*" + "M-" * 22,
    "attention last": "M-" * 22 + "M*M*M*M*",
    "attention in the middle": "M-" * 11 + "M*M*M*M*" + "M-" * 11,
}


@pytest.mark.parametrize("where", UNEVEN_PATTERNS)
def test_stock_matches_vllm_with_stages_missing_a_group(where: str, tmp_path) -> None:
    hw = HARDWARE["rtx3060"]
    _Cuda.capability = DeviceCapability(*hw.compute_capability)
    config = json.loads((CONFIGS / "nvidia--Nemotron-H-8B-Base-8K.json").read_text())
    config["hybrid_override_pattern"] = UNEVEN_PATTERNS[where]
    config["num_hidden_layers"] = len(UNEVEN_PATTERNS[where])
    config.pop("top_level_model_type", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    empty_groups = 0
    for prefix_caching in (True, False):
        for pp in (2, 3):
            vc = _vllm_config(str(tmp_path), "auto", prefix_caching, pp)
            layout = _layout(vc)
            backend = BACKENDS[attention_backend(hw, vc.model_config.get_head_size(), "auto")]
            settings = Settings(hardware="rtx3060", pp=pp, prefix_caching=prefix_caching,
                                max_model_len=vc.model_config.max_model_len)
            workers = _workers(vc, layout, backend)
            groups = get_global_kv_cache_groups(workers[0], workers[1])
            empty_groups += sum(
                not g.layer_names for specs in workers[1] for g in _project_kv_cache_groups_to_worker(groups, specs)
            )
            for budget in BUDGETS:
                budgets = [budget, budget * 11 // 10, budget * 9 // 10][:pp]
                case = f"{where} prefix_caching={prefix_caching} pp={pp} budget={budget}"
                assert _our_plan(layout, settings, budgets) == _vllm_plan(workers, budgets), case
    assert empty_groups > 0  # the case this test is for occurred
