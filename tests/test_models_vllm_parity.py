"""hybrid_alloc.models against vLLM 0.33 itself, for every bundled config and the tiny Zamba2 / LFM2 ones.

Reference, per config:
- tp x speculative tokens: a real ``VllmConfig`` built from a folder holding the config.json (no weights)
  gives ``model_cls.get_mamba_state_shape_from_config`` / ``get_mamba_state_dtype_from_config``,
  ``ModelConfig.get_num_kv_heads(parallel_config)`` and ``get_head_size()``. Speculative tokens come from
  an ngram ``SpeculativeConfig`` (no draft model needed).
- tp=1 with 2 speculative tokens: the model itself, built on the meta device; each cache layer's
  ``get_kv_cache_spec`` gives the layer names, kinds, KV heads, head sizes, state shapes and dtypes vLLM
  allocates. Its parameter count checks the weight estimate.

vLLM runs in ONE child process (this file run as a script): other test modules install their own
``current_platform`` in the pytest process (test_stock_parity: a CUDA stand-in), and building models needs
the CPU platform. What the child patches (CPU-only machine):
- ``VLLM_TARGET_DEVICE=cpu``: vLLM cannot infer a platform otherwise. The CPU platform's dtypes on x86 match
  CUDA compute capability >= 8.0 ("auto" float32 -> bfloat16).
- The CPU platform's one host-dependent layout rule (``hybrid_alloc.models.cpu_platform``: SSM state in
  float32 on an AVX512-BF16 CPU) is pinned per case by replacing ``torch.cpu._is_avx512_bf16_supported``:
  every tp x speculative-token case and the meta model run without it (what GPUs build), and ``RULE_CASES``
  run under both answers, so a machine of either kind checks both.
- vLLM inspects model classes in a grandchild process; here it runs in the child itself.
- ``torchvision`` is absent (PyPI's build does not load beside CPU torch) but the Qwen3.5 model module
  imports transformers' Qwen2-VL image processor, which imports it unconditionally: an empty stand-in
  package is installed after transformers has recorded that torchvision is unavailable.
- The config vLLM reads: flattened Qwen3.5 copies (our bundling format) nested back into ``text_config``
  (their ``vision_config`` at the top level, where the published file has it);
  the ModelOpt ``quantization_config`` dropped (the CPU platform rejects it; cache layouts do not depend on
  weight quantization); the bundled Jamba copy's ``layers_block_type`` dropped (transformers' JambaConfig
  derives it from attn_layer_period/offset and refuses it as input).
- Nemotron-3 MoE layers ('E') are built as MLP layers ('-') for the meta model: vLLM's CPU FusedMoE refuses
  non-gated (relu2) experts. Neither holds a cache, so every cache layer (name, index, spec) is unchanged;
  the parameter count is then not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SPEC_TOKENS = (0, 2)
# (tp, speculative tokens, AVX512-BF16 answer, --mamba-ssm-cache-dtype) run besides every (tp, spec, False, "auto")
RULE_CASES = [(1, 0, avx, ssm) for avx in (False, True) for ssm in ("auto", "bfloat16", "float16")]


# ---------------------------------------------------------------------------------------------- child side

def _child(request: list[dict]) -> dict:
    """Everything vLLM says about each case; an exception is recorded as a string."""
    import importlib.abc
    import importlib.machinery
    import socket
    import types

    os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    import torch
    import transformers.models.auto.image_processing_auto  # noqa: F401  (records torchvision as absent)
    import vllm.model_executor.models.registry as vllm_registry
    from vllm.config import CacheConfig, ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.model_executor.models import ModelRegistry
    from vllm.utils.torch_utils import set_default_torch_dtype

    class Anything(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything(name, (), {})

    class StandIn(types.ModuleType):
        __path__: list[str] = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything(name, (), {})

    class TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname.split(".")[0] == "torchvision":
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            return StandIn(spec.name)

        def exec_module(self, module):
            pass

    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, TorchvisionStandIn())
    vllm_registry._run_in_subprocess = lambda fn: fn()

    def dtype_name(dtype) -> str:
        return str(dtype).removeprefix("torch.")

    def build(folder: str, tp: int, num_spec: int, avx512_bf16: bool = False, ssm_dtype: str = "auto") -> VllmConfig:
        # A fresh ModelConfig each time: VllmConfig updates it once (mamba_ssm_cache_dtype hooks) and marks it.
        model_config = ModelConfig(model=folder, tokenizer=folder, skip_tokenizer_init=True)
        spec = SpeculativeConfig(method="ngram", num_speculative_tokens=num_spec, prompt_lookup_max=3,
                                 prompt_lookup_min=1) if num_spec else None
        torch.cpu._is_avx512_bf16_supported = lambda: avx512_bf16  # the CPU platform's answer for this case
        return VllmConfig(model_config=model_config, parallel_config=ParallelConfig(tensor_parallel_size=tp),
                          cache_config=CacheConfig(mamba_ssm_cache_dtype=ssm_dtype), speculative_config=spec)

    def classmethods(folder: str, tp: int, num_spec: int, avx512_bf16: bool, ssm_dtype: str) -> dict:
        vc = build(folder, tp, num_spec, avx512_bf16, ssm_dtype)
        mc = vc.model_config
        cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, mc)
        out = {"dtype": dtype_name(mc.dtype), "kv_heads": mc.get_num_kv_heads(vc.parallel_config),
               "head_size": mc.get_head_size()}
        if hasattr(cls, "get_mamba_state_shape_from_config"):
            out["shapes"] = [list(s) for s in cls.get_mamba_state_shape_from_config(vc)]
            out["dtypes"] = [dtype_name(d) for d in cls.get_mamba_state_dtype_from_config(vc)]
        return out

    def meta_model(folder: str) -> dict:
        vc = build(folder, 1, 2)
        cls, _ = ModelRegistry.resolve_model_cls(vc.model_config.architectures, vc.model_config)
        with set_current_vllm_config(vc), set_default_torch_dtype(vc.model_config.dtype), torch.device("meta"):
            model = cls(vllm_config=vc, prefix="")
        layers = {}
        for name, layer in vc.compilation_config.static_forward_context.items():
            spec = layer.get_kv_cache_spec(vc) if isinstance(layer, AttentionLayerBase) else None
            if spec is None:
                continue
            if hasattr(spec, "shapes"):
                layers[name] = [spec.mamba_type.name, [list(s) for s in spec.shapes], list(map(dtype_name, spec.dtypes))]
            else:
                layers[name] = ["attention", spec.num_kv_heads, spec.head_size, spec.head_size_v, spec.sliding_window]
        params = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("visual."))
        visual = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("visual."))
        return {"layers": layers, "params": params, "visual_params": visual}

    def attempt(fn, *args) -> dict:
        try:
            return fn(*args)
        except Exception as e:  # recorded per case; the parent decides whether a refusal was expected
            return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                 distributed_init_method=f"tcp://127.0.0.1:{port}")
    with set_current_vllm_config(VllmConfig()):
        initialize_model_parallel(1, 1)

    return {case["name"]: {
        "combos": {"/".join(map(str, combo)): attempt(classmethods, case["folder"], *combo) for combo in case["combos"]},
        "meta": attempt(meta_model, case["meta_folder"]),
    } for case in request}


# --------------------------------------------------------------------------------------------- parent side

def vllm_view(data: dict) -> dict:
    """The config.json vLLM is given (see the module docstring)."""
    data = dict(data)
    outer = data.pop("top_level_model_type", None)
    if outer and outer != data.get("model_type"):
        text = {k: v for k, v in data.items() if k not in ("architectures", "vision_config")}
        data = {"architectures": data["architectures"], "model_type": outer, "text_config": text,
                "tie_word_embeddings": text.get("tie_word_embeddings", False)} | (
            {"vision_config": data["vision_config"]} if "vision_config" in data else {})
    if str((data.get("quantization_config") or {}).get("quant_method", "")).startswith("modelopt"):
        data.pop("quantization_config")
    if data.get("model_type") == "jamba":
        data.pop("layers_block_type", None)
    return data


def tp_sizes(layout) -> list[int]:
    """1, 2, 4, and the first power of two past the KV head count (replicated KV heads)."""
    sizes = {1, 2, 4}
    if layout.attention_layers:
        kv = layout.attention_layers[0].num_kv_heads
        sizes.add(next(t for t in (2, 4, 8, 16, 32, 64) if t > kv))
    return sorted(sizes)


def _cases() -> dict[str, dict]:
    from test_models import TINY_CONFIGS

    from hybrid_alloc.models.bundled import CONFIG_DIR, bundled_files

    cases = {p.relative_to(CONFIG_DIR).as_posix(): json.loads(p.read_text()) for p in bundled_files()}
    cases.update({f"tiny:{k}": v for k, v in TINY_CONFIGS.items()})
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def vllm_answers(tmp_path_factory) -> tuple[dict, dict]:
    """(our config paths, vLLM's answers) for every case, from one child process."""
    from hybrid_alloc.models import load_layout

    import vllm  # noqa: F401  (the test environment has vLLM: fail here, not silently, if it does not)

    root = tmp_path_factory.mktemp("vllm_parity")
    ours, request = {}, []
    for i, (name, data) in enumerate(CASES.items()):
        folder = root / f"case{i}"
        folder.mkdir()
        ours[name] = folder / "ours.json"
        ours[name].write_text(json.dumps(data))
        view = vllm_view(data)
        (folder / "config.json").write_text(json.dumps(view))
        meta_folder = folder
        if "E" in view.get("hybrid_override_pattern", ""):
            meta_folder = root / f"case{i}-moe-as-mlp"
            meta_folder.mkdir()
            view = view | {"hybrid_override_pattern": view["hybrid_override_pattern"].replace("E", "-")}
            (meta_folder / "config.json").write_text(json.dumps(view))
        combos = [(tp, spec, False, "auto") for tp in tp_sizes(load_layout(str(ours[name]))) for spec in SPEC_TOKENS]
        combos += [c for c in RULE_CASES if c not in combos]
        request.append({"name": name, "folder": str(folder), "meta_folder": str(meta_folder), "combos": combos})
    answer_file = root / "answers.json"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, str(answer_file)], input=json.dumps(request), text=True, env=env,
                   check=True, capture_output=True, timeout=600)
    return ours, json.loads(answer_file.read_text())


MAMBA_KINDS = {"MAMBA1": "mamba1", "MAMBA2": "mamba2", "GDN_ATTN": "gdn", "SHORT_CONV": "short_conv",
               "LINEAR": "linear_attention"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_shapes_dtypes_and_heads_match_vllm(vllm_answers, name):
    from hybrid_alloc.errors import ModelConfigError
    from hybrid_alloc.models import load_layout

    ours, answers = vllm_answers
    checked = 0
    for combo, theirs in answers[name]["combos"].items():
        tp, spec, avx512_bf16, ssm_dtype = combo.split("/")
        tp, spec = int(tp), int(spec)
        try:
            layout = load_layout(str(ours[name]), tp=tp, num_speculative_tokens=spec, mamba_ssm_cache_dtype=ssm_dtype,
                                 cpu_avx512_bf16=avx512_bf16 == "True")
        except ModelConfigError:
            # Not splittable: vLLM must refuse too (config validation, or its calculators' exact division).
            assert "error" in theirs, (combo, theirs)
            continue
        assert "error" not in theirs, (combo, theirs)
        checked += 1
        assert layout.dtype == theirs["dtype"]
        if layout.state_layers:
            state = layout.state_layers[0].state
            shapes = [list(s) for s in theirs["shapes"]]
            if layout.state_layers[0].kind == "short_conv":
                # LFM2's classmethod ignores speculative tokens; its ShortConv layers (what vLLM allocates,
                # compared in test_layers_match_vllm_model) count them.
                shapes[0][0] += spec
            assert [list(t.shape) for t in state] == shapes, combo
            assert [t.dtype for t in state] == theirs["dtypes"], combo
        if layout.attention_layers:
            assert {a.num_kv_heads for a in layout.attention_layers} == {theirs["kv_heads"]}, combo
            assert {a.head_size for a in layout.attention_layers} == {theirs["head_size"]}, combo
    assert checked


def test_cpu_rule_cases_exercise_both_answers(vllm_answers):
    """The pinned AVX512-BF16 answer reaches vLLM: it changes some state dtype (and keeps GDN's explicit bf16)."""
    _, answers = vllm_answers
    changed = {name for name, a in answers.items()
               if a["combos"].get("1/0/True/auto", {}).get("dtypes") != a["combos"].get("1/0/False/auto", {}).get("dtypes")}
    assert "tiny:zamba2" in changed and "Qwen--Qwen3-Next-80B-A3B-Instruct.json" in changed
    qwen_next = answers["Qwen--Qwen3-Next-80B-A3B-Instruct.json"]["combos"]
    assert qwen_next["1/0/True/bfloat16"]["dtypes"] == ["bfloat16", "bfloat16"]
    assert qwen_next["1/0/True/auto"]["dtypes"] == ["bfloat16", "float32"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_layers_match_vllm_model(vllm_answers, name):
    """tp=1, 2 speculative tokens: every cache layer vLLM builds, with its own KV cache spec."""
    from hybrid_alloc.models import load_layout

    ours, answers = vllm_answers
    theirs = answers[name]["meta"]
    assert "error" not in theirs, theirs
    layout = load_layout(str(ours[name]), num_speculative_tokens=2)
    mine = {}
    for layer in layout.layers:
        if layer.is_attention:
            mine[layer.name] = ["attention", layer.num_kv_heads, layer.head_size, layer.head_size_v or layer.head_size,
                                layer.sliding_window]
        else:
            mine[layer.name] = [layer.kind, [list(t.shape) for t in layer.state], [t.dtype for t in layer.state]]
    expected = {n: ([MAMBA_KINDS[v[0]], *v[1:]] if v[0] != "attention" else v) for n, v in theirs["layers"].items()}
    assert mine == expected

    # Weight estimate against the language model's parameters: unquantized, full-size checkpoints built
    # whole (flattened copies lacking weight fields read the same class defaults as vLLM, so they compare too).
    # The vision tower's against vLLM's ``visual.*`` parameters wherever the config has a vision_config.
    data = CASES[name]
    if not (name.startswith("tiny:") or "E" in data.get("hybrid_override_pattern", "")
            or data.get("quantization_config")):
        estimate = sum(layout.weight_bytes_per_decoder_layer) + layout.embedding_weight_bytes + layout.head_weight_bytes
        assert estimate == pytest.approx(theirs["params"], rel=0.03)
    if "vision_config" in data:  # exact: the tower is unquantized in every bundled checkpoint
        assert layout.encoder_weight_bytes == theirs["visual_params"] > 0


if __name__ == "__main__":
    result = _child(json.loads(sys.stdin.read()))
    Path(sys.argv[1]).write_text(json.dumps(result))
