"""Reconciliation of one GPU: what NVML measured for a process against the budget it was planned with.

Pure arithmetic. The plugin's startup report (one JSON file per worker, `REPORT_SCHEMA`) carries the
budget and the allocator's tagged bytes; `hybrid-alloc verify --report` and the plugin read it back.

Report JSON (schema "hybrid-alloc/startup-report/1"), all sizes in bytes:
  {"schema": "hybrid-alloc/startup-report/1", "pid": int, "gpu_uuid": str, "pp_rank": int, "tp_rank": int,
   "budget": {"weights": n, "peak_activations": n, "non_torch": n, "cuda_graphs": n, "kv_cache": n,
              "cuda_context": n},
   "plan_tags": {tag: n},        # bytes the plan gives each allocator tag (e.g. "kv_cache")
   "allocator_tags": {tag: n}}   # the allocator's tag_stats()[tag]["current"] after the KV cache is allocated
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from hybrid_alloc.errors import UserError

REPORT_SCHEMA = "hybrid-alloc/startup-report/1"
MiB = 1 << 20

# Default tolerance: max(256 MiB, 3% of the budget). What the budget cannot know to the MiB: the CUDA
# context is an estimate (it varies by a few hundred MiB with driver, architecture and lazy module
# loading, which keeps loading kernels after vLLM's baseline), NCCL allocates its pipeline buffers on
# first use (tens of MiB per peer), and NVML counts whole 2 MiB pages while the caching allocator rounds
# segments up to 2 / 20 MiB. Anything beyond that is memory the plan does not explain.
TOLERANCE_FLOOR = 256 * MiB
TOLERANCE_FRACTION = 0.03


@dataclass(frozen=True)
class PlannedMemory:
    """One worker's planned device memory, in bytes (vLLM's profiler numbers + the KV plan + context): the
    whole process, not the planner's KV cache budget. The report's JSON calls it "budget"."""

    weights: int
    peak_activations: int
    non_torch: int
    cuda_graphs: int
    kv_cache: int
    cuda_context: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class TagCheck:
    tag: str
    planned: int | None  # None: the plan has no such tag
    tagged: int | None  # None: the allocator has no such tag

    @property
    def exact(self) -> bool:
        return self.planned == self.tagged


@dataclass(frozen=True)
class Reconciliation:
    measured: int
    budget: PlannedMemory
    tolerance: int
    tags: tuple[TagCheck, ...]

    @property
    def unaccounted(self) -> int:
        """Measured minus budget: positive is memory the plan does not explain."""
        return self.measured - self.budget.total

    @property
    def verdict(self) -> str:
        """"ok" within [budget - peak activations - tolerance, budget + tolerance] (an idle worker may
        not hold its activation peak) with every tag exact; else "over", "under" or "tags differ"."""
        if self.unaccounted > self.tolerance:
            return "over"
        if self.unaccounted < -(self.budget.peak_activations + self.tolerance):
            return "under"
        return "ok" if all(t.exact for t in self.tags) else "tags differ"

    def rows(self) -> list[tuple[str, int]]:
        """The breakdown: each budget line, then "unaccounted", then the NVML measurement."""
        lines = [(f.name.replace("_", " "), getattr(self.budget, f.name)) for f in fields(self.budget)]
        return [*lines, ("unaccounted", self.unaccounted), ("measured (NVML)", self.measured)]


def default_tolerance(budget: PlannedMemory) -> int:
    return max(TOLERANCE_FLOOR, int(budget.total * TOLERANCE_FRACTION))


def reconcile(measured: int, budget: PlannedMemory, plan_tags: dict[str, int], allocator_tags: dict[str, int],
              tolerance: int | None = None) -> Reconciliation:
    tags = tuple(TagCheck(tag, plan_tags.get(tag), allocator_tags.get(tag))
                 for tag in sorted(plan_tags.keys() | allocator_tags.keys()))
    return Reconciliation(measured, budget, default_tolerance(budget) if tolerance is None else tolerance, tags)


@dataclass(frozen=True)
class Report:
    """A plugin startup report (module docstring)."""

    pid: int
    gpu_uuid: str
    pp_rank: int
    tp_rank: int
    budget: PlannedMemory
    plan_tags: dict[str, int]
    allocator_tags: dict[str, int]


def load_report(path: str) -> Report:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read the report: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise UserError(f"{path}: not a hybrid-alloc startup report (schema {REPORT_SCHEMA!r} expected)")
    try:
        return Report(
            pid=int(data["pid"]), gpu_uuid=str(data["gpu_uuid"]),
            pp_rank=int(data.get("pp_rank", 0)), tp_rank=int(data.get("tp_rank", 0)),
            budget=PlannedMemory(**{f.name: int(data["budget"][f.name]) for f in fields(PlannedMemory)}),
            plan_tags={str(k): int(v) for k, v in data["plan_tags"].items()},
            allocator_tags={str(k): int(v) for k, v in data["allocator_tags"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{path}: malformed report: missing or bad field {error}") from None


