"""hybrid_alloc.models against vLLM 0.33 itself, for every bundled config and the tiny Zamba2 / LFM2 ones.

Reference, per config:
- tp x speculative tokens: a real ``VllmConfig`` built from a temp folder holding the config.json (no
  weights) gives ``model_cls.get_mamba_state_shape_from_config`` / ``get_mamba_state_dtype_from_config``,
  ``ModelConfig.get_num_kv_heads(parallel_config)``. Speculative tokens come from an ngram
  ``SpeculativeConfig`` (no draft model needed).
- tp=1: the model itself, built on the meta device; each cache layer's ``get_kv_cache_spec`` gives the layer
  names, kinds, KV heads, head sizes, state shapes and dtypes vLLM allocates. Its parameter count checks the
  weight estimate.

What this CPU-only environment needs patched (test process only):
- ``VLLM_TARGET_DEVICE=cpu``: vLLM cannot infer a platform otherwise. The CPU platform's dtypes on x86 match
  CUDA compute capability >= 8.0 ("auto" float32 -> bfloat16).
- vLLM inspects model classes in a subprocess (to keep CUDA out of the parent); here it runs in-process.
- ``torchvision`` is absent (PyPI's build does not load beside CPU torch) but the Qwen3.5 model module
  imports transformers' Qwen2-VL image processor, which imports it unconditionally: an empty stand-in
  package is installed after transformers has recorded that torchvision is unavailable.
- Flattened Qwen3.5 copies (our bundling format) are nested back into ``text_config`` for vLLM; the
  ModelOpt ``quantization_config`` is dropped for vLLM (the CPU platform rejects it; cache layouts do not
  depend on weight quantization); the bundled Jamba copy's ``layers_block_type`` is dropped (transformers'
  ``JambaConfig`` derives it from attn_layer_period/offset and refuses it as input).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch  # noqa: E402
import transformers.models.auto.image_processing_auto  # noqa: E402,F401  (records torchvision as absent)
import vllm.config  # noqa: E402
import vllm.model_executor.models.registry as vllm_registry  # noqa: E402
from test_models import TINY_CONFIGS  # noqa: E402
from vllm.config import ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig  # noqa: E402
from vllm.model_executor.models import ModelRegistry  # noqa: E402

from hybrid_alloc.errors import ModelConfigError  # noqa: E402
from hybrid_alloc.models import load_layout  # noqa: E402
from hybrid_alloc.models.bundled import CONFIG_DIR, bundled_files  # noqa: E402

pytestmark = pytest.mark.vllm


class _Anything(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _StandIn(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        pass


try:
    import torchvision  # noqa: F401
except ImportError:
    sys.meta_path.insert(0, _TorchvisionStandIn())
vllm_registry._run_in_subprocess = lambda fn: fn()

MAMBA_KINDS = {"MAMBA1": "mamba1", "MAMBA2": "mamba2", "GDN_ATTN": "gdn", "SHORT_CONV": "short_conv",
               "LINEAR": "linear_attention"}
CONFIGS = {p.relative_to(CONFIG_DIR).as_posix(): p for p in bundled_files()}


def vllm_view(data: dict) -> dict:
    """The config.json vLLM is given: flattened Qwen3.5 nested back, ModelOpt quantization dropped."""
    data = dict(data)
    outer = data.pop("top_level_model_type", None)
    if outer and outer != data.get("model_type"):
        text = {k: v for k, v in data.items() if k != "architectures"}
        data = {"architectures": data["architectures"], "model_type": outer, "text_config": text,
                "tie_word_embeddings": text.get("tie_word_embeddings", False)}
    if str((data.get("quantization_config") or {}).get("quant_method", "")).startswith("modelopt"):
        data.pop("quantization_config")
    if data.get("model_type") == "jamba":
        data.pop("layers_block_type", None)
    return data


@pytest.fixture(scope="module", params=sorted(CONFIGS) + sorted(f"tiny:{k}" for k in TINY_CONFIGS))
def case(request, tmp_path_factory):
    """(case name, our config path, vLLM's model folder) for one config."""
    name = request.param
    folder = tmp_path_factory.mktemp("model")
    ours = folder / "ours.json"
    if name.startswith("tiny:"):
        ours.write_text(json.dumps(TINY_CONFIGS[name[5:]]))
    else:
        ours.write_text(CONFIGS[name].read_text())
    (folder / "config.json").write_text(json.dumps(vllm_view(json.loads(ours.read_text()))))
    return name, ours, folder


def build_vllm_config(folder: Path, tp: int, num_spec: int) -> VllmConfig:
    # A fresh ModelConfig each time: VllmConfig updates it once (mamba_ssm_cache_dtype hooks) and marks it.
    model_config = ModelConfig(model=str(folder), tokenizer=str(folder), skip_tokenizer_init=True)
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=num_spec, prompt_lookup_max=3,
                             prompt_lookup_min=1) if num_spec else None
    return VllmConfig(model_config=model_config, parallel_config=ParallelConfig(tensor_parallel_size=tp),
                      speculative_config=spec)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tp_sizes(layout) -> list[int]:
    """1, 2, 4 where the attention heads divide, and the first power of two past the KV head count."""
    sizes = [1, 2, 4]
    if layout.attention_layers:
        kv = layout.attention_layers[0].num_kv_heads
        sizes.append(next(t for t in (2, 4, 8, 16, 32, 64) if t > kv))
    return sorted(set(sizes))


@pytest.mark.parametrize("num_spec", [0, 2])
def test_state_shapes_dtypes_and_heads_match_vllm(case, num_spec):
    _, ours, folder = case
    base = load_layout(str(ours))
    checked = 0
    for tp in tp_sizes(base):
        try:
            layout = load_layout(str(ours), tp=tp, num_speculative_tokens=num_spec)
        except ModelConfigError:
            # Not splittable: vLLM must refuse too (config validation, or its calculators' exact division).
            with pytest.raises((ValueError, AssertionError)):
                vc = build_vllm_config(folder, tp, num_spec)
                cls, _ = ModelRegistry.resolve_model_cls(vc.model_config.architectures, vc.model_config)
                if base.state_layers:
                    cls.get_mamba_state_shape_from_config(vc)
                if base.attention_layers:
                    cls(vllm_config=vc)  # unreachable when validation refused the config
            continue
        vc = build_vllm_config(folder, tp, num_spec)
        mc = vc.model_config
        cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, mc)
        checked += 1
        if layout.state_layers:
            state = layout.state_layers[0].state
            shapes = cls.get_mamba_state_shape_from_config(vc)
            if layout.state_layers[0].kind == "short_conv" and num_spec:
                # LFM2's classmethod ignores speculative tokens, its ShortConv layers count them (the layer
                # spec is what vLLM allocates; compared at tp=1 in test_layers_match_vllm_model).
                shapes = tuple((s[0] + num_spec, *s[1:]) for s in shapes)
            assert tuple(t.shape for t in state) == tuple(tuple(s) for s in shapes)
            assert tuple(t.dtype for t in state) == tuple(map(dtype_name, cls.get_mamba_state_dtype_from_config(vc)))
        if layout.attention_layers:
            assert {a.num_kv_heads for a in layout.attention_layers} == {mc.get_num_kv_heads(vc.parallel_config)}
            assert {a.head_size for a in layout.attention_layers} == {mc.get_head_size()}
        assert layout.dtype == dtype_name(mc.dtype)
    assert checked


@pytest.fixture(scope="module")
def model_parallel():
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if not model_parallel_is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        with set_current_vllm_config(VllmConfig()):
            initialize_model_parallel(1, 1)


def test_layers_match_vllm_model(case, model_parallel, tmp_path):
    """tp=1, 2 speculative tokens: every cache layer vLLM builds, with its own KV cache spec."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.utils.torch_utils import set_default_torch_dtype

    name, ours, folder = case
    layout = load_layout(str(ours), num_speculative_tokens=2)
    data = json.loads((folder / "config.json").read_text())
    moe_as_mlp = "E" in data.get("hybrid_override_pattern", "")
    if moe_as_mlp:
        # vLLM's CPU FusedMoE refuses Nemotron-3's non-gated (relu2) experts; MoE and MLP layers hold no
        # cache, so building MLPs in their place leaves every cache layer (name, index, spec) unchanged.
        data["hybrid_override_pattern"] = data["hybrid_override_pattern"].replace("E", "-")
        (tmp_path / "config.json").write_text(json.dumps(data))
        folder = tmp_path
    vc = build_vllm_config(folder, 1, 2)
    cls, _ = ModelRegistry.resolve_model_cls(vc.model_config.architectures, vc.model_config)
    with set_current_vllm_config(vc), set_default_torch_dtype(vc.model_config.dtype), torch.device("meta"):
        model = cls(vllm_config=vc, prefix="")

    theirs = {}
    for layer_name, layer in vc.compilation_config.static_forward_context.items():
        spec = layer.get_kv_cache_spec(vc) if isinstance(layer, AttentionLayerBase) else None
        if spec is None:
            continue
        if hasattr(spec, "shapes"):
            theirs[layer_name] = (MAMBA_KINDS[spec.mamba_type.name], tuple(map(tuple, spec.shapes)),
                            tuple(map(dtype_name, spec.dtypes)))
        else:
            theirs[layer_name] = ("attention", spec.num_kv_heads, spec.head_size, spec.head_size_v, spec.sliding_window)
    mine = {}
    for layer in layout.layers:
        if layer.is_attention:
            mine[layer.name] = ("attention", layer.num_kv_heads, layer.head_size, layer.head_size_v or layer.head_size,
                                layer.sliding_window)
        else:
            mine[layer.name] = (layer.kind, tuple(t.shape for t in layer.state), tuple(t.dtype for t in layer.state))
    assert mine == theirs

    # Weight estimate against the language model's own parameters (vision towers are not estimated):
    # unquantized, full-size checkpoints (the flattened copies that lack weight
    # fields read the same class defaults as vLLM, so they compare too).
    if not (name.startswith("tiny:") or moe_as_mlp or json.loads(ours.read_text()).get("quantization_config")):
        params = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("visual."))
        estimate = sum(layout.weight_bytes_per_decoder_layer) + layout.embedding_weight_bytes + layout.head_weight_bytes
        assert estimate == pytest.approx(params, rel=0.03)
