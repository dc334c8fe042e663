"""The trace report as JSON. Bytes are integers; times are integer ns since the trace's first event.

  file                 the trace path
  header               the trace's header line as written ({} if it has none): version, events, dropped, ...
  duration_ns          last event minus first event
  counts               events, allocs, frees, slab_allocs, slab_frees, segment_maps, segment_unmaps, ooms,
                       unmatched_frees (frees whose
                       alloc the trace lacks: the ring dropped it), unmatched_free_bytes, live_at_end
                       (allocations never freed), dropped (header's; null if no header), devices, streams
  total                {peak_bytes, peak_t_ns, live_at_end_bytes} over all tags
  tags                 [{tag, allocs, bytes_allocated, peak_bytes, peak_t_ns, live_at_end_bytes}], by peak
  fragmentation        null for traces without segment events (dumped before they existed); otherwise
                       reserved = caching segments mapped + live slabs, live = live allocations + live
                       slabs, fragmentation = reserved - live (bytes the segments hold that no allocation
                       uses; a segment counts from the alloc it was mapped for, the event after its map):
                         reserved_peak_bytes, reserved_peak_t_ns, reserved_at_end_bytes,
                         peak_bytes, peak_t_ns (most reserved - live), at_end_bytes,
                         segments_at_end, segment_bytes_at_end (caching segments still mapped),
                         unmatched_unmaps (segment_unmaps whose segment_map the trace lacks)
  fragmentation_note   null when the numbers are exact; else why they are approximate (events dropped,
                       tracing started after segments were mapped) or why they cannot be computed
  largest              [{size, tag, stream, device, op, t_alloc_ns, lifetime_ns}] largest first (--top N);
                       lifetime_ns null: still live at the end of the trace
  timeline             {t_ns: [start of each interval], bytes: {tag: [most bytes live in the interval]},
                        reserved: [most bytes reserved in the interval], fragmentation: [most reserved - live
                        in the interval]}; reserved and fragmentation only with segment events
"""

from __future__ import annotations

import json

from hybrid_alloc.alloc_trace.summary import FRAGMENTATION_MISSING, Fragmentation, Summary, TagStats


def to_dict(s: Summary) -> dict:
    t0 = s.t0_ns
    return {
        "file": s.path,
        "header": s.header,
        "duration_ns": s.t1_ns - t0,
        "counts": {
            "events": s.events,
            "allocs": s.ops["alloc"],
            "frees": s.ops["free"],
            "slab_allocs": s.ops["slab_alloc"],
            "slab_frees": s.ops["slab_free"],
            "segment_maps": s.ops["segment_map"],
            "segment_unmaps": s.ops["segment_unmap"],
            "ooms": s.ops["oom"],
            "unmatched_frees": s.unmatched_frees,
            "unmatched_free_bytes": s.unmatched_free_bytes,
            "live_at_end": s.live_at_end,
            "dropped": s.header.get("dropped"),
            "devices": s.devices,
            "streams": s.streams,
        },
        "total": _peaks(s.total, t0),
        "tags": [{"tag": tag, "allocs": st.allocs, "bytes_allocated": st.bytes_allocated, **_peaks(st, t0)}
                 for tag, st in s.tags_by_peak()],
        "fragmentation": _fragmentation(s.fragmentation, t0),
        "fragmentation_note": FRAGMENTATION_MISSING if s.fragmentation is None else s.fragmentation.note,
        "largest": [
            {"size": a.size, "tag": a.tag, "stream": a.stream, "device": a.device, "op": a.op,
             "t_alloc_ns": a.t_alloc_ns - t0, "lifetime_ns": a.lifetime_ns}
            for a in s.largest
        ],
        "timeline": _timeline(s),
    }


def _timeline(s: Summary) -> dict:
    out = {"t_ns": s.timeline_t_ns, "bytes": {tag: s.timeline[st.index] for tag, st in s.tags.items()}}
    if s.fragmentation is not None:
        out["reserved"] = s.timeline_reserved
        out["fragmentation"] = s.timeline_fragmentation
    return out


def _fragmentation(f: Fragmentation | None, t0: int) -> dict | None:
    if f is None:
        return None
    return {
        "reserved_peak_bytes": f.reserved_peak, "reserved_peak_t_ns": f.reserved_peak_t_ns - t0,
        "reserved_at_end_bytes": f.reserved_at_end,
        "peak_bytes": f.peak, "peak_t_ns": f.peak_t_ns - t0, "at_end_bytes": f.at_end,
        "segments_at_end": f.segments_at_end, "segment_bytes_at_end": f.segment_bytes_at_end,
        "unmatched_unmaps": f.unmatched_unmaps,
    }


def _peaks(st: TagStats, t0: int) -> dict:
    return {"peak_bytes": st.peak, "peak_t_ns": st.peak_t_ns - t0, "live_at_end_bytes": st.live}


def dumps(s: Summary) -> str:
    return json.dumps(to_dict(s), indent=2)
