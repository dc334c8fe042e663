"""Mamba2's in-prefill checkpoint export ("align" mode: prefix caching on) under the natural layout.

In "align" mode the Mamba2 metadata builder ends a chunk (``cu_chunk_seqlens``) exactly on a row's
checkpoint position; ``MambaMixer2`` then asks ``mamba_chunk_scan_combined_varlen`` for the state at every
chunk end (``return_intermediate_states=True``, rows indexed by chunk; the final states are the rows at
``last_chunk_indices``) and writes the checkpoint chunk's state and the conv inputs before it into the
checkpoint block (``store_prefill_checkpoint``). The builder exports on every chunk with a block boundary
inside it, while ``MambaManager`` reserves a block only on a prompt's last chunk (vLLM's default retention):
every other row's destination is the null block (id 0), a sink in stock vLLM. Under the natural layout id 0's
state page spans attention blocks 1..k-1, so those writes corrupted cached attention (Mamba2 outputs with
caching on differed from caching off, tests/engine/test_engine_checkpoint_keys.py).

- ``store_prefill_checkpoint`` (every platform): a row whose destination is the null block writes nothing
  (its offset is zeroed on the device, no host sync: the kernel's own "offset 0" rule); on the CPU platform
  a torch version of ``_store_prefill_checkpoint_kernel`` (Triton has no CPU backend there).
- ``_mamba_chunk_scan_combined_fwd`` (the CPU platform): stock, the CPU scan
  (``_mamba_chunk_scan_combined_fwd_cpu``, bound as ``ssd_combined._mamba_chunk_scan_combined_fwd``) ignores
  ``return_intermediate_states`` and returns one state per sequence ("index 14 is out of bounds for
  dimension 0 with size 4"). Here it returns the state after every chunk; elsewhere the original runs.

Details, on the CPU platform only (elsewhere both names call the original after the null filter):

- ``_mamba_chunk_scan_combined_fwd`` with ``return_intermediate_states=True`` runs vLLM's own CPU scan once
  per chunk rank: pass j scans the j-th chunk of every sequence that has one, from that sequence's state
  after pass j - 1 (pass 0: ``initial_states``, or zeros), and scatters the pass's ``out`` rows back.
  Invariants: chunks belong to one sequence each (``seq_idx``) and a sequence's chunks are consecutive;
  dt is prepared once for the whole batch as the CPU scan prepares it (bias, softplus, clamp; torch's
  vectorized softplus rounds a value by where it falls in the tensor) and the states carried between
  passes stay float32 (the scan's own accumulator), so every token sees the bits one scan of the batch
  gives it: ``out`` and the rows at ``last_chunk_indices`` equal the original's bitwise, and row j is the
  state that scan holds after chunk j (a separate scan of the prefix alone may differ in the last bits,
  through its own softplus), converted to ``state_dtype`` (else ``x.dtype``) as the original converts its
  states. With the flag off the original runs unchanged.
- ``store_prefill_checkpoint`` mirrors ``_store_prefill_checkpoint_kernel`` in torch: a row with offset
  <= 0 writes nothing; otherwise, with ``t0 = query_start_loc[row] + offset - state_len`` and
  ``dst = state_indices[row]``, ``conv_state[dst, d, h] = x[d, t0 + h]`` for ``h < state_len`` (the slots
  past ``state_len``, spec decoding's, are untouched; ``conv_state`` may be a transposed view, as with the
  "SD" layout) and ``ssm_state[dst]`` takes ``chunk_states[chunk_idx[row]]`` as one flat row. The
  checkpoint rule (``is_mamba_prefill_checkpoint_valid``: offset >= the hash block) keeps ``t0`` inside
  the row; a ``t0`` below 0, where the kernel reads outside ``x``, raises.

Imports nothing of vLLM at import time.
"""

from __future__ import annotations

from .patching import Patch


def _on_cpu() -> bool:
    from vllm.platforms import current_platform  # lazy: vllm

    return current_platform.is_cpu()


def _chunk_states(original, x, dt, A, B, C, chunk_size, out, z, initial_states, seq_idx, cu_chunk_seqlens,
                  state_dtype, **scan):
    """(nchunks, nheads, headdim, dstate): the state after each chunk; ``out`` filled. One CPU scan per
    chunk rank, over the sequences that have a chunk of that rank."""
    import torch  # lazy: torch (the plugin package imports without it)

    bounds = [int(v) for v in cu_chunk_seqlens.tolist()]
    owners = [int(v) for v in seq_idx.tolist()]
    assert len(bounds) == len(owners) + 1, "cu_chunk_seqlens has nchunks + 1 entries"
    by_seq: dict[int, list[int]] = {}  # sequence -> its chunks, in order
    for c, s in enumerate(owners):
        chunks = by_seq.setdefault(s, [])
        assert not chunks or chunks[-1] == c - 1, f"sequence {s}'s chunks are not consecutive"
        chunks.append(c)
    _, nheads, headdim = x.shape
    shape = (nheads, headdim, B.shape[-1])
    states = torch.empty((len(owners),) + shape, dtype=torch.float32, device=x.device)
    state = {  # sequence -> its float32 state after the chunks scanned so far
        s: initial_states[s].float() if initial_states is not None else x.new_zeros(shape, dtype=torch.float32)
        for s in by_seq
    }
    for rank in range(max(map(len, by_seq.values()), default=0)):
        batch = []  # (sequence, chunk) scanned in this pass
        for s, chunks in by_seq.items():
            if rank < len(chunks):
                c = chunks[rank]
                if bounds[c + 1] > bounds[c]:
                    batch.append((s, c))
                else:
                    states[c] = state[s]  # an empty chunk keeps the state it starts from
        if not batch:
            continue
        lengths = [bounds[c + 1] - bounds[c] for _, c in batch]
        rows = torch.cat([torch.arange(bounds[c], bounds[c + 1], device=x.device) for _, c in batch])
        cu = torch.tensor([0] + lengths, device=x.device).cumsum(0).to(torch.int32)
        ids = torch.arange(len(batch), dtype=torch.int32, device=x.device)
        sub_out = out.new_empty((rows.numel(),) + tuple(out.shape[1:]))
        final = original(
            x.index_select(0, rows), dt.index_select(0, rows), A, B.index_select(0, rows), C.index_select(0, rows),
            chunk_size, sub_out, z=None if z is None else z.index_select(0, rows),
            initial_states=torch.stack([state[s] for s, _ in batch]), return_intermediate_states=False,
            seq_idx=ids, cu_seqlens=cu, cu_chunk_seqlens=cu, last_chunk_indices=ids, state_dtype=torch.float32,
            **scan,
        )
        out.index_copy_(0, rows, sub_out)
        for i, (s, c) in enumerate(batch):
            state[s] = states[c] = final[i]
    return states.to(state_dtype if state_dtype is not None else x.dtype)


def _intermediate_states(original):
    import torch  # lazy: torch (the plugin package imports without it)

    def _mamba_chunk_scan_combined_fwd(x, dt, A, B, C, chunk_size, out, D=None, z=None, dt_bias=None,
                                       initial_states=None, return_intermediate_states=False, seq_idx=None,
                                       cu_seqlens=None, cu_chunk_seqlens=None, last_chunk_indices=None,
                                       dt_softplus=False, dt_limit=(0.0, float("inf")), state_dtype=None, **kwargs):
        if not (return_intermediate_states and _on_cpu()):
            return original(x, dt, A, B, C, chunk_size, out, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                            return_intermediate_states=return_intermediate_states, seq_idx=seq_idx,
                            cu_seqlens=cu_seqlens, cu_chunk_seqlens=cu_chunk_seqlens,
                            last_chunk_indices=last_chunk_indices, dt_softplus=dt_softplus, dt_limit=dt_limit,
                            state_dtype=state_dtype, **kwargs)
        # dt as the CPU scan prepares it, once for the whole batch: torch's vectorized softplus rounds a
        # token's dt by where it falls in the tensor, so preparing it per pass would change its bits
        dt_f = dt.float()
        if dt_bias is not None:
            dt_f = dt_f + dt_bias.float().unsqueeze(0)
        if dt_softplus:
            dt_f = torch.nn.functional.softplus(dt_f)
        if dt_limit[0] > 0.0 or dt_limit[1] < float("inf"):
            dt_f = dt_f.clamp(min=dt_limit[0], max=dt_limit[1])
        return _chunk_states(original, x, dt_f, A, B, C, chunk_size, out, z, initial_states, seq_idx,
                             cu_chunk_seqlens, state_dtype, D=D, dt_bias=None, dt_softplus=False,
                             dt_limit=(0.0, float("inf")), **kwargs)

    return _mamba_chunk_scan_combined_fwd


def _store(checkpoint, chunk_idx, x, conv_state, chunk_states, ssm_state, query_start_loc, *, state_len: int) -> None:
    """``_store_prefill_checkpoint_kernel`` in torch (see the module docstring)."""
    offsets = checkpoint.checkpoint_offsets.tolist()
    destinations = checkpoint.state_indices.tolist()
    sources = chunk_idx.tolist()
    starts = query_start_loc.tolist()
    for row, offset in enumerate(offsets):
        if offset <= 0:
            continue
        dst, t0 = int(destinations[row]), int(starts[row]) + int(offset) - state_len
        if t0 < 0:
            raise ValueError(f"checkpoint row {row}: offset {offset} reads x before token 0 (state_len {state_len})")
        conv_state[dst, :, :state_len] = x[:, t0 : t0 + state_len]
        ssm_state[dst].copy_(chunk_states[int(sources[row])].reshape(ssm_state[dst].shape))  # one flat row


def _store_without_null(original):
    """``store_prefill_checkpoint`` with null destinations dropped (every platform); the torch store on CPU."""
    from dataclasses import replace

    def store_prefill_checkpoint(checkpoint, chunk_idx, x, conv_state, chunk_states, ssm_state, query_start_loc, *,
                                 state_len: int) -> None:
        import torch  # lazy: torch
        from vllm.v1.attention.backends.utils import NULL_BLOCK_ID  # lazy: vllm

        offsets = checkpoint.checkpoint_offsets
        checkpoint = replace(checkpoint, checkpoint_offsets=torch.where(
            checkpoint.state_indices == NULL_BLOCK_ID, torch.zeros_like(offsets), offsets))
        if not _on_cpu():
            return original(checkpoint, chunk_idx, x, conv_state, chunk_states, ssm_state, query_start_loc,
                            state_len=state_len)
        _store(checkpoint, chunk_idx, x, conv_state, chunk_states, ssm_state, query_start_loc, state_len=state_len)

    return store_prefill_checkpoint


PATCHES = (
    Patch("_mamba_chunk_scan_combined_fwd", _intermediate_states),
    Patch("store_prefill_checkpoint", _store_without_null),
)
