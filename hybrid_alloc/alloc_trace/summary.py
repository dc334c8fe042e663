"""One streaming pass over a JSON-lines allocation trace (the format in csrc/include/hybrid_alloc.h) into a
Summary. Memory is O(live allocations + tags + top N) plus three compact arrays for the timeline: no
per-event Python objects are kept."""

from __future__ import annotations

import heapq
import json
import re
from array import array
from dataclasses import dataclass, field

from hybrid_alloc.errors import UserError

FIELDS = ("t_ns", "op", "device", "stream", "ptr", "size", "tag")
ALLOC_OPS = ("alloc", "slab_alloc")
FREE_OPS = ("free", "slab_free")
OPS = ALLOC_OPS + FREE_OPS + ("oom",)
TIMELINE_POINTS = 200
# The event line exactly as trace.cpp prints it: parsed without json.loads (5x faster); any other line
# (the header, a hand-edited or reformatted event) goes through json.loads.
_DUMPED_EVENT = re.compile(
    r'\{"t_ns":(\d+),"op":"([a-z_]+)","device":(-?\d+),"stream":"(0x[0-9a-f]+)","ptr":"(0x[0-9a-f]+)",'
    r'"size":(\d+),"tag":"([^"\\]*)","pool":\d+\}\s*$'
)
# The dump format has request events only: nothing says how much the allocator held (segments, arena).
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
            st = tags[a[1]]
            st.live -= size
            total.live -= size
            keep(a, t, n)
        else:
            continue  # oom: counted only
        if st.live > st.peak:
            st.peak, st.peak_t_ns = st.live, t
        if total.live > total.peak:
            total.peak, total.peak_t_ns = total.live, t
        ts.append(t)
        rows.append(st.index)
        values.append(st.live)

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
    return summary


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
