"""The plugin's capacity log lines (vllm_plugin/capacity_log.py)."""

import pytest


def test_worker_log_names_stages_and_tp_ranks():
    """Log lines call pipeline stages stages and tensor-parallel ranks ranks (rank = stage * tp + TP rank)."""
    pytest.importorskip("vllm")
    from hybrid_alloc.vllm_plugin.capacity_log import worker_name

    assert [worker_name(r, 1) for r in range(3)] == ["stage 0", "stage 1", "stage 2"]
    assert [worker_name(r, 2) for r in range(4)] == ["stage 0 TP rank 0", "stage 0 TP rank 1",
                                                     "stage 1 TP rank 0", "stage 1 TP rank 1"]
