"""One streaming pass over a JSON-lines allocation trace (the format in csrc/include/hybrid_alloc.h) into a
Summary. Memory is O(live allocations + mapped segments + tags + top N) plus compact arrays for the
timelines: no per-event Python objects are kept.

Fragmentation (traces with segment events): reserved = bytes of the caching segments mapped (segment_map
minus segment_unmap) + bytes of the live arena slabs (a slab is its own reservation: reserved = live);
live = bytes of the live allocations + live slabs; fragmentation = reserved - live, i.e. the bytes the
caching segments hold that no live allocation uses (cached free blocks, split remainders, rounding)."""

from __future__ import annotations

import heapq
import json
import re
from array import array
from dataclasses import dataclass, field
from operator import sub

from hybrid_alloc.errors import UserError

FIELDS = ("t_ns", "op", "device", "stream", "ptr", "size", "tag")
ALLOC_OPS = ("alloc", "slab_alloc")
FREE_OPS = ("free", "slab_free")
SEGMENT_OPS = ("segment_map", "segment_unmap")
OPS = ALLOC_OPS + FREE_OPS + ("oom",) + SEGMENT_OPS
TIMELINE_POINTS = 200
# The event line exactly as trace.cpp prints it: parsed without json.loads (5x faster); any other line
# (the header, a hand-edited or reformatted event) goes through json.loads.
_DUMPED_EVENT = re.compile(
    r'\{"t_ns":(\d+),"op":"([a-z_]+)","device":(-?\d+),"stream":"(0x[0-9a-f]+)","ptr":"(0x[0-9a-f]+)",'
    r'"size":(\d+),"tag":"([^"\\]*)","pool":\d+\}\s*$'
)
# Traces dumped before segment events existed: nothing says how much the allocator held (segments, arena).
FRAGMENTATION_MISSING = (
    "the trace records requests only (alloc/free/slab/oom), no reserved or segment events: reserved minus "
    "live cannot be computed from it (allocator.stats() reports reserved bytes in a running process)"
)


@dataclass(slots=True)
class TagStats:
    index: int = 0  # row in Summary.timeline
    allocs: int = 0
    bytes_allocated: int = 0
    live: int = 0  # bytes live now; at the end of the pass: live at the end of the trace
    peak: int = 0
    peak_t_ns: int = 0  # absolute time of the first event that reached `peak`


@dataclass
class Fragmentation:
    """Reserved and reserved - live (module docstring); times absolute, bytes integers."""

    reserved_peak: int
    reserved_peak_t_ns: int
    reserved_at_end: int
    peak: int  # most reserved - live at any event
    peak_t_ns: int
    at_end: int
    segments_at_end: int  # caching segments still mapped at the end
    segment_bytes_at_end: int
    unmatched_unmaps: int  # segment_unmap without its segment_map in the trace (mapped before it / dropped)
    note: str | None  # why the numbers are approximate; None when the trace has all it needs


@dataclass
class Allocation:
    size: int
    tag: str
    stream: str
    device: int
    op: str
    t_alloc_ns: int  # absolute
    lifetime_ns: int | None  # None: still live at the end of the trace


@dataclass
class Summary:
    path: str
    header: dict
    ops: dict[str, int]  # events per op
    unmatched_frees: int  # frees whose alloc is not in the trace (the ring dropped it)
    unmatched_free_bytes: int
    live_at_end: int  # allocations never freed in the trace
    devices: list[int]
    streams: int
    t0_ns: int
    t1_ns: int
    tags: dict[str, TagStats]  # by tag, first-seen order
    total: TagStats
    largest: list[Allocation]  # by size, largest first
    timeline_t_ns: list[int] = field(default_factory=list)  # start of each interval, relative to t0_ns
    timeline: list[list[int]] = field(default_factory=list)  # [tag index][interval]: most bytes live in it
    fragmentation: Fragmentation | None = None  # None: the trace has no segment events (an older dump)
    timeline_reserved: list[int] = field(default_factory=list)  # [interval]: most bytes reserved in it
    timeline_fragmentation: list[int] = field(default_factory=list)  # [interval]: most reserved - live in it

    @property
    def events(self) -> int:
        return sum(self.ops.values())

    def tags_by_peak(self) -> list[tuple[str, TagStats]]:
        return sorted(self.tags.items(), key=lambda item: item[1].peak, reverse=True)


def summarize(path: str, top: int = 10) -> Summary:
    try:
        f = open(path, encoding="utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot read the trace ({error.strerror})") from None
    with f:
        try:
            return _summarize(f, path, top)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file (not UTF-8)") from None


def _summarize(lines, path: str, top: int) -> Summary:
    loads, dumped = json.loads, _DUMPED_EVENT.match
    header: dict = {}
    ops = dict.fromkeys(OPS, 0)
    tags: dict[str, TagStats] = {}
    total = TagStats()
    live: dict[tuple, tuple] = {}  # (device, ptr) -> (size, tag, stream, device, op, t_ns)
    heap: list[tuple] = []  # min-heap of the `top` largest finished allocations: (size, line, live[key], t_free)
    streams, devices = set(), set()
    unmatched = unmatched_bytes = 0
    t0 = t1 = None
    # Timeline: after every alloc/free, the tag's row and its bytes live.
    ts, rows, values = array("q"), array("l"), array("q")
    reserved = Reserved()
    record, mapped = reserved.record, reserved.mapped

    def keep(a, t_free, n):  # a: the live[] tuple; t_free None: live at the end; n: a unique tiebreak
        if len(heap) < top:
            heapq.heappush(heap, (a[0], n, a, t_free))
        elif a[0] > heap[0][0]:
            heapq.heapreplace(heap, (a[0], n, a, t_free))

    for n, line in enumerate(lines, 1):
        fast = dumped(line)
        if fast:
            t, op, device, stream, ptr, size, tag = fast.groups()
            t, device, size = int(t), int(device), int(size)
        else:
            if not line.strip():
                continue
            try:
                rec = loads(line)
            except ValueError as error:
                raise UserError(f"{path}:{n}: not a JSON line ({getattr(error, 'msg', error)})") from None
            if type(rec) is not dict:
                raise UserError(f"{path}:{n}: not a JSON object")
            if rec.get("type") == "header":
                header = rec
                continue
            try:
                t, op, device, stream, ptr, size, tag = (rec[k] for k in FIELDS)
            except KeyError as error:
                raise UserError(f"{path}:{n}: the event lacks the field {error.args[0]!r}") from None
            if type(t) is not int or type(size) is not int or type(device) is not int:
                raise UserError(f"{path}:{n}: t_ns, size and device must be integers")
        if op not in ops:
            raise UserError(f"{path}:{n}: unknown op {op!r} (expected one of {', '.join(OPS)})")
        ops[op] += 1
        if t0 is None:
            t0 = t
        t1 = t
        streams.add(stream)
        devices.add(device)
        if op in ALLOC_OPS:
            # The ring drops the oldest events first, so a pointer still live here has no later free dropped.
            live[(device, ptr)] = (size, tag, stream, device, op, t)
            if op == "slab_alloc":
                reserved.bytes += size
            st = tags.get(tag)
            if st is None:
                st = tags[tag] = TagStats(index=len(tags))
            st.allocs += 1
            st.bytes_allocated += size
            st.live += size
            total.live += size
        elif op in FREE_OPS:
            a = live.pop((device, ptr), None)
            if a is None:
                unmatched += 1
                unmatched_bytes += size
                continue
            size = a[0]
            if a[4] == "slab_alloc":
                reserved.bytes -= size
            st = tags[a[1]]
            st.live -= size
            total.live -= size
            keep(a, t, n)
        elif op == "segment_map":
            mapped((device, ptr), size, t)
            continue
        elif op == "segment_unmap":
            if not reserved.unmapped((device, ptr)):
                continue
            st = None
        else:
            continue  # oom: counted only
        if st is not None:
            if st.live > st.peak:
                st.peak, st.peak_t_ns = st.live, t
            if total.live > total.peak:
                total.peak, total.peak_t_ns = total.live, t
            ts.append(t)
            rows.append(st.index)
            values.append(st.live)
        record(t, total.live)

    if t0 is None:
        raise UserError(f"{path}: the trace holds no events")
    for n, a in enumerate(live.values(), 1):
        keep(a, None, -n)
    summary = Summary(
        path=path, header=header, ops=ops, unmatched_frees=unmatched, unmatched_free_bytes=unmatched_bytes,
        live_at_end=len(live), devices=sorted(devices), streams=len(streams), t0_ns=t0, t1_ns=t1, tags=tags,
        total=total, largest=[
            Allocation(*a, lifetime_ns=None if t_free is None else t_free - a[5])
            for _, _, a, t_free in sorted(heap, key=lambda item: item[0], reverse=True)
        ],
    )
    summary.timeline_t_ns, summary.timeline = _timeline(ts, rows, values, len(tags), t0, t1)
    if header.get("segments") or ops["segment_map"] or ops["segment_unmap"]:
        series = reserved.fragmentation_series()
        note = _approximate(header, unmatched, reserved.unmatched_unmaps, min(series, default=0))
        summary.fragmentation = reserved.fragmentation(total.live, t0, note, series)
        timelines = _series(reserved.ts, reserved.values, series, t0, t1)
        summary.timeline_reserved, summary.timeline_fragmentation = timelines
    return summary


class Reserved:
    """Reserved bytes over the pass (module docstring): the mapped caching segments ((device, ptr) -> size)
    plus the live arena slabs. ``record`` keeps (time, reserved, live) after every event that changes either;
    peaks and reserved - live are computed from those series once, after the pass.
    Invariant: ``bytes == segment_bytes + live slab bytes`` and ``segment_bytes == sum(segments.values())``."""

    __slots__ = ("segments", "segment_bytes", "bytes", "unmatched_unmaps", "ts", "values", "lives")

    def __init__(self) -> None:
        self.segments: dict[tuple, int] = {}
        self.segment_bytes = self.bytes = self.unmatched_unmaps = 0
        self.ts, self.values, self.lives = array("q"), array("q"), array("q")

    def record(self, t: int, live: int) -> None:
        """After an event that changed reserved or live (``live``: bytes of every live allocation)."""
        self.ts.append(t)
        self.values.append(self.bytes)
        self.lives.append(live)

    def mapped(self, key: tuple, size: int, t: int) -> None:
        """A segment_map. Mapped for the alloc that follows it: reserved - live keeps its last value until
        that alloc (else every new segment would show as a spike of its whole size between the two events)."""
        last = self.values[-1] - self.lives[-1] if self.values else 0
        self.segments[key] = size
        self.segment_bytes += size
        self.bytes += size
        self.record(t, self.bytes - last)

    def unmapped(self, key: tuple) -> bool:
        """A segment_unmap; False when its segment_map is not in the trace (nothing changes then)."""
        size = self.segments.pop(key, None)
        if size is None:
            self.unmatched_unmaps += 1
            return False
        self.segment_bytes -= size
        self.bytes -= size
        return True

    def fragmentation_series(self) -> array:
        """reserved - live at every recorded event."""
        return array("q", map(sub, self.values, self.lives))

    def fragmentation(self, live: int, t0: int, note: str | None, series: array) -> Fragmentation:
        """``series``: fragmentation_series(). A peak's time is the first event that reached it."""
        peak, peak_t = _first_max(self.ts, self.values)
        frag_peak, frag_peak_t = _first_max(self.ts, series)
        return Fragmentation(
            reserved_peak=peak, reserved_peak_t_ns=peak_t or t0, reserved_at_end=self.bytes,
            peak=frag_peak, peak_t_ns=frag_peak_t or t0, at_end=self.bytes - live,
            segments_at_end=len(self.segments), segment_bytes_at_end=self.segment_bytes,
            unmatched_unmaps=self.unmatched_unmaps, note=note,
        )


def _first_max(ts: array, values: array) -> tuple[int, int]:
    """(the largest value if above 0 else 0, the time of its first occurrence, 0 with it)."""
    top = max(values, default=0)
    return (top, ts[values.index(top)]) if top > 0 else (0, 0)


def _approximate(header: dict, unmatched_frees: int, unmatched_unmaps: int, frag_min: int) -> str | None:
    """Why reserved / fragmentation are not exact, or None."""
    why = []
    if header.get("dropped"):
        why.append(f"the ring dropped {header['dropped']:,} events (raise trace_capacity)")
    elif unmatched_frees or unmatched_unmaps:
        why.append("the trace lacks the alloc or segment_map of some frees or segment_unmaps")
    if frag_min < 0:
        why.append("allocations came from segments mapped before tracing started (reserved undercounted)")
    return "approximate: " + "; ".join(why) if why else None


def _series(ts, rvalues, fvalues, t0: int, t1: int) -> tuple[list[int], list[int]]:
    """The intervals of _timeline; the most reserved and reserved - live at any time in each (one pass)."""
    width = (t1 - t0) // TIMELINE_POINTS + 1
    count = (t1 - t0) // width + 1
    rout, fout = [0] * count, [0] * count
    rcur = fcur = 0
    bucket = 0
    rmax = fmax = 0
    for t, r, f in zip(ts, rvalues, fvalues):
        b = (t - t0) // width
        if b != bucket:
            rout[bucket], fout[bucket] = rmax, fmax
            rout[bucket + 1 : b] = [rcur] * (b - bucket - 1)
            fout[bucket + 1 : b] = [fcur] * (b - bucket - 1)
            bucket, rmax, fmax = b, rcur, fcur
        rcur, fcur = r, f
        if r > rmax:
            rmax = r
        if f > fmax:
            fmax = f
    rout[bucket], fout[bucket] = rmax, fmax
    rout[bucket + 1 :] = [rcur] * (count - 1 - bucket)
    fout[bucket + 1 :] = [fcur] * (count - 1 - bucket)
    return rout, fout


def _timeline(ts, rows, values, ntags: int, t0: int, t1: int) -> tuple[list[int], list[list[int]]]:
    """At most TIMELINE_POINTS equal intervals; per tag, the most bytes live at any time in each interval."""
    width = (t1 - t0) // TIMELINE_POINTS + 1
    count = (t1 - t0) // width + 1
    series = [[0] * count for _ in range(ntags)]
    current = [0] * ntags
    bucket = 0

    def carry(upto):  # intervals bucket+1..upto start with the bytes live carried in
        for line, carried in zip(series, current):
            line[bucket + 1 : upto + 1] = [carried] * (upto - bucket)

    for t, row, value in zip(ts, rows, values):
        b = (t - t0) // width
        if b != bucket:
            carry(b)
            bucket = b
        current[row] = value
        if value > series[row][b]:
            series[row][b] = value
    carry(count - 1)  # after the last alloc/free (frees without an alloc, ooms)
    return [b * width for b in range(count)], series
