"""GPU allocation benchmark: hybrid_alloc (global mode) vs PyTorch's native caching allocator vs
cudaMallocAsync (PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync), same size mix, ratios in one run.

    python tests/gpu/bench_gpu.py            # runs the three allocators, each in a fresh process; table last
    python tests/gpu/bench_gpu.py --one ours # one allocator in this process, prints one JSON line

Each allocator is driven through torch.cuda.caching_allocator_alloc / caching_allocator_delete (PyTorch's
raw_alloc_with_stream / raw_delete on the current allocator: no tensor construction in the loop). The size
mix imitates LLM inference: 60% small (512 B - 1 MiB), 30% medium (1 - 20 MiB), 10% large (20 - 256 MiB),
log-uniform within each class, with a sliding live set (the same deterministic sequence for all).
ns/pair = (timed loop - the same loop with no-op alloc/free) / pairs. "held" = device memory in use by
the process at the end of the loop as the driver reports it (cuMemGetInfo), minus the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

MiB = 1 << 20
MODES = ("ours", "native", "async")


def size_mix(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        lo, hi = (512, MiB) if u < 0.6 else (MiB, 20 * MiB) if u < 0.9 else (20 * MiB, 256 * MiB)
        out.append(int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return out


def schedule(n: int, window: int = 48, seed: int = 1) -> list[tuple[int, int]]:
    """(op, arg): op 1 = alloc size arg into slot, op 0 = free the live block at index arg."""
    rng = random.Random(seed)
    sizes = size_mix(n, seed)
    ops, live = [], 0
    for s in sizes:
        while live >= window or (live and rng.random() < 0.45):
            ops.append((0, rng.randrange(live)))
            live -= 1
        ops.append((1, s))
        live += 1
    ops += [(0, 0)] * live
    return ops


def run_loop(ops, alloc, free, stream) -> int:
    live: list[tuple[int, int]] = []
    t0 = time.perf_counter_ns()
    for op, arg in ops:
        if op:
            live.append((alloc(arg, None, stream), arg))
        else:
            p, _ = live.pop(arg)
            free(p)
    return time.perf_counter_ns() - t0


def bench_one(mode: str, n: int) -> dict:
    if mode == "async":
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"
    import torch

    if mode == "ours":
        from hybrid_alloc import allocator as ha

        ha.install(hooks="auto")
    torch.cuda.init()
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info()
    stream = torch.cuda.current_stream().cuda_stream
    ops = schedule(n)
    alloc, free = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
    run_loop(ops, alloc, free, stream)  # warm the caches
    torch.cuda.synchronize()
    t = min(run_loop(ops, alloc, free, stream) for _ in range(3))
    # held memory at the peak of the live set: rerun the first half and sample
    half = ops[: len(ops) // 2]
    live = []
    for o, a in half:
        if o:
            live.append(alloc(a, None, stream))
        else:
            free(live.pop(a))
    torch.cuda.synchronize()
    held = (free0 - torch.cuda.mem_get_info()[0])
    for p in live:
        free(p)
    base = run_loop(ops, lambda s, d, st: 1, lambda p: None, stream)
    pairs = sum(1 for o, _ in ops if o)
    out = {
        "mode": mode,
        "pairs": pairs,
        "ns_per_pair": max(0.0, (t - base) / pairs),
        "ns_per_pair_with_loop": t / pairs,
        "held_mib": held / MiB,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    if mode == "ours":
        out["backend"] = ha.backend_name()
        out["hooks"] = len(ha.live_hooks())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", choices=MODES, help="run one allocator in this process")
    ap.add_argument("--pairs", type=int, default=20000, help="allocations per timed pass")
    ap.add_argument("--timeout", type=int, default=150, help="seconds per allocator process")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(bench_one(a.one, a.pairs)))
        return 0
    results, errors = [], []
    env = dict(os.environ)
    env.setdefault("HYBRID_ALLOC_BACKEND", "cuda")
    for mode in MODES:
        try:
            r = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--one", mode, "--pairs", str(a.pairs)],
                capture_output=True, text=True, env=env, timeout=a.timeout,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"{mode}: timed out after {a.timeout} s")
            continue
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not lines:
            errors.append(f"{mode}: rc {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        results.append(json.loads(lines[-1]))
    for e in errors:
        print("bench error:", e)
    if not results:
        return 1
    ref = next((r for r in results if r["mode"] == "native"), results[0])
    print(f"\nallocation benchmark on {results[0]['device']} (torch {results[0]['torch']}), "
          f"{results[0]['pairs']} malloc+free pairs, LLM-like size mix")
    print(f"{'allocator':<26}{'ns/pair':>10}{'vs native':>11}{'+loop ns':>10}{'held MiB':>10}")
    names = {"ours": "hybrid_alloc (global)", "native": "PyTorch caching", "async": "cudaMallocAsync"}
    for r in results:
        ratio = r["ns_per_pair"] / ref["ns_per_pair"] if ref["ns_per_pair"] else float("nan")
        print(f"{names[r['mode']]:<26}{r['ns_per_pair']:>10.0f}{ratio:>10.2f}x{r['ns_per_pair_with_loop']:>10.0f}"
              f"{r['held_mib']:>10.0f}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
