"""Bytes live per tag over time, one line per tag (the most live in each interval), and the bytes reserved
(traces with segment events) as a dashed line, as a PNG.
Drawn through report.png.write_png (matplotlib only with --plot)."""

from __future__ import annotations

from hybrid_alloc.alloc_trace.summary import Summary
from hybrid_alloc.report.png import write_png


def write_plot(summary: Summary, path: str) -> None:
    write_png(path, lambda plt: _draw(summary, plt))


def _draw(s: Summary, plt):
    mib = float(1 << 20)
    seconds = [t / 1e9 for t in s.timeline_t_ns]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for tag, st in s.tags_by_peak():
        ax.step(seconds, [v / mib for v in s.timeline[st.index]], where="post",
                label=f"{tag} (peak {st.peak / mib:,.1f} MiB)")
    f = s.fragmentation
    if f is not None:
        ax.step(seconds, [v / mib for v in s.timeline_reserved], where="post", color="black", linestyle="--",
                label=f"reserved (peak {f.reserved_peak / mib:,.1f} MiB, fragmentation peak {f.peak / mib:,.1f} MiB)")
    ax.set_xlabel("seconds since the first event")
    ax.set_ylabel("MiB live (most in each interval)")
    ax.set_title(f"{s.path}: bytes live per tag, {s.events:,} events", fontsize=9)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.12)  # tight_layout: slow
    return fig
