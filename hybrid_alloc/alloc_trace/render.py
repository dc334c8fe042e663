"""The trace report as rich tables: bytes per tag, the largest allocations, counts and what the trace lacks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from hybrid_alloc.alloc_trace.summary import FRAGMENTATION_MISSING, Summary
from hybrid_alloc.report.units import fmt_bytes


def fmt_ns(ns: int) -> str:
    """1.23 s, 45.6 ms, 789 us, 12 ns."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns} ns"


def print_summary(s: Summary, console: Console | None = None) -> None:
    console = console or Console()
    h = s.header
    console.print(
        f"[bold]{s.path}[/bold]: {s.events:,} events over {fmt_ns(s.t1_ns - s.t0_ns)}, "
        f"backend {h.get('backend', '?')}, devices {', '.join(map(str, s.devices))}, {s.streams} streams, "
        f"{h.get('dropped', '?')} events dropped by the trace ring"
    )
    console.print(_tag_table(s))
    console.print(_largest_table(s))
    o = s.ops
    console.print(
        f"allocs {o['alloc']:,} (slab {o['slab_alloc']:,}), frees {o['free']:,} (slab {o['slab_free']:,}), "
        f"ooms {o['oom']:,}, live at the end {s.live_at_end:,}"
    )
    if s.unmatched_frees:
        console.print(
            f"[yellow]{s.unmatched_frees:,} frees ({fmt_bytes(s.unmatched_free_bytes)}) have no alloc in the trace "
            "(the ring dropped it; raise trace_capacity): left out of the bytes live[/yellow]"
        )
    f = s.fragmentation
    if f is None:
        console.print(f"fragmentation: {FRAGMENTATION_MISSING}")
        return
    console.print(_fragmentation_table(s))
    if f.note:
        console.print(f"[yellow]fragmentation is {f.note}[/yellow]")


def _fragmentation_table(s: Summary) -> Table:
    f = s.fragmentation
    table = Table(title="Reserved and fragmentation (reserved = caching segments mapped + live slabs; "
                  "fragmentation = reserved - live)", title_justify="left")
    for name in ("", "peak", "peak at", "at end"):
        table.add_column(name, justify="left" if not name else "right")
    table.add_row("reserved", fmt_bytes(f.reserved_peak), fmt_ns(f.reserved_peak_t_ns - s.t0_ns),
                  fmt_bytes(f.reserved_at_end))
    table.add_row("live", fmt_bytes(s.total.peak), fmt_ns(s.total.peak_t_ns - s.t0_ns), fmt_bytes(s.total.live))
    table.add_row("[bold]fragmentation[/bold]", f"[bold]{fmt_bytes(f.peak)}[/bold]", fmt_ns(f.peak_t_ns - s.t0_ns),
                  fmt_bytes(f.at_end))
    table.caption = f"{f.segments_at_end:,} caching segments ({fmt_bytes(f.segment_bytes_at_end)}) mapped at the end"
    return table


def _tag_table(s: Summary) -> Table:
    table = Table(title="Bytes live per tag (times since the first event)", title_justify="left")
    for name in ("tag", "allocs", "allocated", "peak live", "peak at", "live at end"):
        table.add_column(name, justify="left" if name == "tag" else "right")
    for tag, st in s.tags_by_peak():
        table.add_row(tag, f"{st.allocs:,}", fmt_bytes(st.bytes_allocated), fmt_bytes(st.peak),
                      fmt_ns(st.peak_t_ns - s.t0_ns), fmt_bytes(st.live))
    t = s.total
    table.add_row("[bold]all tags[/bold]", f"{sum(st.allocs for st in s.tags.values()):,}",
                  fmt_bytes(sum(st.bytes_allocated for st in s.tags.values())), f"[bold]{fmt_bytes(t.peak)}[/bold]",
                  fmt_ns(t.peak_t_ns - s.t0_ns), fmt_bytes(t.live))
    return table


def _largest_table(s: Summary) -> Table:
    table = Table(title=f"The {len(s.largest)} largest allocations", title_justify="left")
    for name in ("size", "tag", "op", "device", "stream", "allocated at", "lifetime"):
        table.add_column(name, justify="right" if name in ("size", "allocated at", "lifetime") else "left")
    for a in s.largest:
        lifetime = "live at end" if a.lifetime_ns is None else fmt_ns(a.lifetime_ns)
        table.add_row(fmt_bytes(a.size), a.tag, a.op, str(a.device), a.stream, fmt_ns(a.t_alloc_ns - s.t0_ns),
                      lifetime)
    return table
