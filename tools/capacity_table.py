"""Stock vs natural capacity for every bundled model, as a Markdown table (issue 2's closing table).

    python tools/capacity_table.py [--hardware rtx3060] [--kv-cache-memory 8GiB] [--no-prefix-caching]

Requests of 512 / 4096 / 32768 tokens held at once under one pinned budget, PP=1, for --kv-cache-dtype
auto and fp8; "x" = natural / stock. Models vLLM refuses at max_model_len 32768 show "-".
"""

from __future__ import annotations

import argparse

from hybrid_alloc.cli import parse_size
from hybrid_alloc.models import bundled_models, load_layout
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.comparison import StartupRefusal, compare_layout

LENGTHS = (512, 4096, 32768)


def rows(hardware: str, budget: int, prefix_caching: bool):
    for name in bundled_models():
        layout = load_layout(name)
        if not layout.is_hybrid:
            continue
        cells = []
        for dtype in ("auto", "fp8"):
            settings = Settings(hardware=hardware, kv_cache_memory=budget, max_model_len=32768,
                                kv_cache_dtype=dtype, prefix_caching=prefix_caching, max_num_seqs=10**6)
            trace = compare_layout(layout, settings)
            if isinstance(trace, StartupRefusal):  # 32768 above the model's derived max_model_len
                cells += ["-"] * len(LENGTHS)
                continue
            by_length = {c.num_tokens: c for c in trace.capacities}
            for length in LENGTHS:
                c = by_length[length]
                cells.append("-" if c.stock is None or c.natural is None else f"{c.stock} / {c.natural} ({c.natural / max(c.stock, 1):.2f}x)")
        yield name, cells


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="rtx3060")
    parser.add_argument("--kv-cache-memory", default="8GiB", type=parse_size)
    parser.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    head = [f"{d} {n}" for d in ("bf16", "fp8") for n in ("512", "4k", "32k")]
    print(f"stock / natural requests held at once: {args.hardware}, {args.kv_cache_memory / 2**30:g} GiB KV, "
          f"PP=1, prefix caching {'on' if args.prefix_caching else 'off'}, max_num_seqs uncapped\n")
    print("| model | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for name, cells in rows(args.hardware, args.kv_cache_memory, args.prefix_caching):
        print(f"| {name} | " + " | ".join(cells) + " |")
