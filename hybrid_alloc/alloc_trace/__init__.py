"""`hybrid-alloc trace --from TRACE.jsonl`: a report of a recorded allocation trace (HYBRID_ALLOC_TRACE=path or
allocator.trace(path)): bytes live per tag over time, peaks, the largest allocations, counts.
summary.py reads the trace, render.py prints the tables, json_report.py the JSON, plot.py the PNG."""

from __future__ import annotations

from hybrid_alloc.alloc_trace.json_report import dumps
from hybrid_alloc.alloc_trace.plot import write_plot
from hybrid_alloc.alloc_trace.render import print_summary
from hybrid_alloc.alloc_trace.summary import summarize


def run(path: str, top: int, as_json: bool, plot: str | None) -> None:
    summary = summarize(path, top)
    if plot:
        write_plot(summary, plot)
    if as_json:
        print(dumps(summary))
    else:
        print_summary(summary)
