"""Reconciliation arithmetic, tolerance, tags and the startup report schema."""

from __future__ import annotations

import json

import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.validation.reconcile import MiB, REPORT_SCHEMA, PlannedMemory, load_report, reconcile

GiB = 1 << 30
BUDGET = PlannedMemory(weights=2 * GiB, peak_activations=512 * MiB, non_torch=128 * MiB, cuda_graphs=256 * MiB,
                kv_cache=7 * GiB, cuda_context=400 * MiB)
TAGS = {"kv_cache": 7 * GiB}


def test_budget_total_and_breakdown_rows():
    rec = reconcile(BUDGET.total + 100 * MiB, BUDGET, TAGS, TAGS)
    assert BUDGET.total == 9 * GiB + 1296 * MiB
    rows = dict(rec.rows())
    assert rows["unaccounted"] == 100 * MiB and rows["measured (NVML)"] == BUDGET.total + 100 * MiB
    assert sum(v for k, v in rec.rows()[:6]) == BUDGET.total


def test_tolerance_is_256_mib_or_three_percent():
    assert reconcile(0, BUDGET, {}, {}).tolerance == int(BUDGET.total * 0.03)
    small = PlannedMemory(1, 0, 0, 0, 0, 0)
    assert reconcile(0, small, {}, {}).tolerance == 256 * MiB


@pytest.mark.parametrize("delta_mib, verdict", [(0, "ok"), (300, "ok"), (400, "over"), (-800, "ok"), (-1000, "under")])
def test_verdict_window(delta_mib, verdict):
    # tolerance 3% of 10.27 GiB = 315 MiB; an idle worker may lack its 512 MiB activation peak
    assert reconcile(BUDGET.total + delta_mib * MiB, BUDGET, TAGS, TAGS).verdict == verdict


def test_tags_must_match_exactly():
    rec = reconcile(BUDGET.total, BUDGET, TAGS, {"kv_cache": 7 * GiB - 4096, "misc": 1})
    assert rec.verdict == "tags differ"
    assert [(t.tag, t.exact) for t in rec.tags] == [("kv_cache", False), ("misc", False)]


def test_report_round_trip_and_errors(tmp_path):
    report = {"schema": REPORT_SCHEMA, "pid": 42, "gpu_uuid": "GPU-x", "pp_rank": 1, "tp_rank": 0,
              "budget": {k: getattr(BUDGET, k) for k in BUDGET.__dataclass_fields__},
              "plan_tags": TAGS, "allocator_tags": TAGS}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    loaded = load_report(str(path))
    assert (loaded.pid, loaded.pp_rank, loaded.budget) == (42, 1, BUDGET)
    del report["budget"]["kv_cache"]
    path.write_text(json.dumps(report))
    with pytest.raises(UserError, match="kv_cache"):
        load_report(str(path))
    path.write_text("{}")
    with pytest.raises(UserError, match="schema"):
        load_report(str(path))
