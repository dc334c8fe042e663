"""The trace report as JSON. Bytes are integers; times are integer ns since the trace's first event.

  file                 the trace path
  header               the trace's header line as written ({} if it has none): version, events, dropped, ...
  duration_ns          last event minus first event
  counts               events, allocs, frees, slab_allocs, slab_frees, ooms, unmatched_frees (frees whose
                       alloc the trace lacks: the ring dropped it), unmatched_free_bytes, live_at_end
                       (allocations never freed), dropped (header's; null if no header), devices, streams
  total                {peak_bytes, peak_t_ns, live_at_end_bytes} over all tags
  tags                 [{tag, allocs, bytes_allocated, peak_bytes, peak_t_ns, live_at_end_bytes}], by peak
  fragmentation        null: the trace format has no reserved/segment events
  fragmentation_note   what the trace lacks for it
  largest              [{size, tag, stream, device, op, t_alloc_ns, lifetime_ns}] largest first (--top N);
                       lifetime_ns null: still live at the end of the trace
  timeline             {t_ns: [start of each interval], bytes: {tag: [most bytes live in the interval]}}
"""

from __future__ import annotations

import json

from hybrid_alloc.alloc_trace.summary import FRAGMENTATION_MISSING, Summary, TagStats


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
        "fragmentation": None,
        "fragmentation_note": FRAGMENTATION_MISSING,
        "largest": [
            {"size": a.size, "tag": a.tag, "stream": a.stream, "device": a.device, "op": a.op,
             "t_alloc_ns": a.t_alloc_ns - t0, "lifetime_ns": a.lifetime_ns}
            for a in s.largest
        ],
        "timeline": {"t_ns": s.timeline_t_ns,
                     "bytes": {tag: s.timeline[st.index] for tag, st in s.tags.items()}},
    }


def _peaks(st: TagStats, t0: int) -> dict:
    return {"peak_bytes": st.peak, "peak_t_ns": st.peak_t_ns - t0, "live_at_end_bytes": st.live}


def dumps(s: Summary) -> str:
    return json.dumps(to_dict(s), indent=2)
