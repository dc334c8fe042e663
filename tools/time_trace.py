"""Time `hybrid-alloc trace` over every bundled config, in process (the budget: under 3 s in total).

    python tools/time_trace.py [extra trace flags...]

Each model runs the whole command (layout, budget, stock and natural plans, partition search with --pp,
JSON output) with `--hardware h100 --kv-cache-memory 16GiB --max-model-len 32768` and the given flags.
Exits 1 when the total exceeds LIMIT_S.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

from hybrid_alloc.cli import main
from hybrid_alloc.models import bundled_models

LIMIT_S = 3.0
FLAGS = ["--hardware", "h100", "--kv-cache-memory", "16GiB", "--max-model-len", "32768", "--json"]


def time_all(extra: list[str] = ()) -> dict[str, float]:
    """Seconds per bundled model; raises AssertionError naming a model whose trace fails."""
    seconds = {}
    for name in bundled_models():
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(["trace", name, *FLAGS, *extra])
        seconds[name] = time.perf_counter() - start
        assert code == 0, f"{name}: {err.getvalue().strip()}"
    return seconds


if __name__ == "__main__":
    seconds = time_all(sys.argv[1:])
    for name, s in seconds.items():
        print(f"{s * 1000:8.1f} ms  {name}")
    total = sum(seconds.values())
    print(f"{total:8.3f} s   total over {len(seconds)} bundled configs (limit {LIMIT_S} s)")
    sys.exit(0 if total < LIMIT_S else 1)
