"""`hybrid-alloc trace --from TRACE.jsonl` on traces recorded from the host backend through hybrid_alloc.allocator:
the report's peaks, live bytes, largest allocations and counts against what the test itself allocated and freed;
malformed traces (one line on stderr, exit code 2); --json keys; --plot."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

from hybrid_alloc import allocator  # noqa: E402
from hybrid_alloc.alloc_trace.summary import summarize  # noqa: E402
from hybrid_alloc.cli import main  # noqa: E402
from hybrid_alloc.report.units import fmt_bytes  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
S = 0x77  # the activations' stream


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Record a trace of known operations; returns its path. Bytes live after each step in the comments."""
    torch = pytest.importorskip("torch")
    core = allocator.core()
    path = str(tmp_path_factory.mktemp("trace") / "trace.jsonl")
    allocator.trace_enable(True, 4096)
    allocator.trace_clear()
    try:
        with allocator.tag("ta_weights"):
            w1 = core.malloc(3 * MiB, 0, 0)  # weights 3M
        w2 = allocator.slab_alloc(MiB + 5, tag="ta_weights")  # weights 4M+5 (its peak)
        with allocator.tag("ta_act"):
            a1 = core.malloc(2 * MiB, 0, S)  # act 2M
            a2 = core.malloc(512 * KiB, 0, S)  # act 2.5M (its peak); all 6.5M+5
        core.free(a1, 2 * MiB, 0, S)  # act 0.5M
        with allocator.tag("ta_act"):
            a3 = core.malloc(MiB, 0, S)  # act 1.5M
        kv = allocator.host_tensor(4 * MiB, tag="ta_kv", dtype=torch.uint8)  # kv 4M; all 9.5M+5 (the peak)
        del kv  # kv 0
        core.free(w1, 3 * MiB, 0, 0)  # weights 1M+5
        allocator.trace(path)
    finally:
        allocator.trace_enable(False, 0)
    core.free(a2, 512 * KiB, 0, S)
    core.free(a3, MiB, 0, S)
    allocator.slab_free(w2)
    return path


def _events(path):
    return allocator.parse_trace(path).events


def _run(capsys, *args):
    code = main(["trace", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_peaks_live_and_counts(recorded):
    s = summarize(recorded, top=3)
    events = _events(recorded)
    kv_alloc, kv_free = [e for e in events if e["tag"] == "ta_kv"]
    peaks = {tag: (st.peak, st.live, st.allocs) for tag, st in s.tags.items()}
    assert peaks == {
        "ta_weights": (4 * MiB + 5, MiB + 5, 2),
        "ta_act": (2 * MiB + 512 * KiB, MiB + 512 * KiB, 3),
        "ta_kv": (4 * MiB, 0, 1),
    }
    assert (s.total.peak, s.total.live) == (9 * MiB + 512 * KiB + 5, 2 * MiB + 512 * KiB + 5)
    assert s.total.peak_t_ns == s.tags["ta_kv"].peak_t_ns == kv_alloc["t_ns"]
    assert s.tags["ta_weights"].peak_t_ns == [e for e in events if e["size"] == MiB + 5][0]["t_ns"]
    requests = {op: n for op, n in s.ops.items() if not op.startswith("segment_")}  # segments: see below
    assert requests == {"alloc": 4, "slab_alloc": 2, "free": 2, "slab_free": 1, "oom": 0}
    assert (s.live_at_end, s.unmatched_frees, s.header["dropped"]) == (3, 0, 0)
    largest = [(a.size, a.tag, a.stream, a.op) for a in s.largest]
    assert largest == [(4 * MiB, "ta_kv", "0x0", "slab_alloc"), (3 * MiB, "ta_weights", "0x0", "alloc"),
                       (2 * MiB, "ta_act", hex(S), "alloc")]
    assert s.largest[0].lifetime_ns == kv_free["t_ns"] - kv_alloc["t_ns"]


def test_frees_whose_alloc_the_ring_dropped(tmp_path, capsys):
    core = allocator.core()
    path = str(tmp_path / "small_ring.jsonl")
    allocator.trace_enable(True, 4)  # keeps the last 4 events: free p2, alloc p4, free p3, free p4
    try:
        with allocator.tag("ta_ring"):
            p1, p2, p3 = (core.malloc(n * MiB, 0, 0) for n in (1, 2, 3))
            core.free(p1, MiB, 0, 0)
            core.free(p2, 2 * MiB, 0, 0)
            p4 = core.malloc(5 * MiB, 0, 0)
            core.free(p3, 3 * MiB, 0, 0)
            core.free(p4, 5 * MiB, 0, 0)
        allocator.trace(path)
    finally:
        allocator.trace_enable(False, 0)
    s = summarize(path)
    assert (s.unmatched_frees, s.unmatched_free_bytes) == (2, 5 * MiB)
    assert s.header["events"] == 4 and s.header["dropped"] >= 4  # 8 requests + segment_maps, 4 kept
    assert (s.tags["ta_ring"].peak, s.total.live, s.live_at_end) == (5 * MiB, 0, 0)
    code, out, _ = _run(capsys, "--from", path)
    assert code == 0 and "2 frees (5.00 MiB) have no alloc in the trace" in " ".join(out.split())


def test_table(recorded, capsys):
    code, out, err = _run(capsys, "--from", recorded)
    assert (code, err) == (0, "")
    assert "ta_weights" in out and "ta_kv" in out and fmt_bytes(9 * MiB + 512 * KiB + 5) in out
    assert "Reserved and fragmentation" in out and "no reserved or segment events" not in " ".join(out.split())


def test_json(recorded, capsys):
    code, out, _ = _run(capsys, "--from", recorded, "--json", "--top", "2")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"file", "header", "duration_ns", "counts", "total", "tags", "fragmentation",
                           "fragmentation_note", "largest", "timeline"}
    assert set(report["counts"]) == {"events", "allocs", "frees", "slab_allocs", "slab_frees", "segment_maps",
                                     "segment_unmaps", "ooms",
                                     "unmatched_frees", "unmatched_free_bytes", "live_at_end", "dropped",
                                     "devices", "streams"}
    assert [t["tag"] for t in report["tags"]] == ["ta_weights", "ta_kv", "ta_act"]  # by peak
    assert set(report["tags"][0]) == {"tag", "allocs", "bytes_allocated", "peak_bytes", "peak_t_ns",
                                      "live_at_end_bytes"}
    assert [a["size"] for a in report["largest"]] == [4 * MiB, 3 * MiB]
    assert set(report["largest"][0]) == {"size", "tag", "stream", "device", "op", "t_alloc_ns", "lifetime_ns"}
    assert set(report["fragmentation"]) == {"reserved_peak_bytes", "reserved_peak_t_ns", "reserved_at_end_bytes",
                                            "peak_bytes", "peak_t_ns", "at_end_bytes", "segments_at_end",
                                            "segment_bytes_at_end", "unmatched_unmaps"}
    assert report["counts"]["events"] == len(_events(recorded))
    # Each interval holds the most bytes live in it: the highest interval is the peak.
    timeline = report["timeline"]
    assert {tag: max(v) for tag, v in timeline["bytes"].items()} == {t["tag"]: t["peak_bytes"] for t in report["tags"]}
    assert all(len(v) == len(timeline["t_ns"]) for v in timeline["bytes"].values())
    assert max(timeline["reserved"]) == report["fragmentation"]["reserved_peak_bytes"]
    assert max(timeline["fragmentation"]) == report["fragmentation"]["peak_bytes"]
    assert len(timeline["reserved"]) == len(timeline["fragmentation"]) == len(timeline["t_ns"])


def test_plot(recorded, tmp_path, capsys):
    png = tmp_path / "trace.png"
    code, _, _ = _run(capsys, "--from", recorded, "--plot", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write(tmp_path, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    return str(path)


def _copy_with(recorded, tmp_path, line_no, text):
    lines = open(recorded).read().splitlines()
    lines[line_no - 1] = text
    return _write(tmp_path, "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda rec, tmp: str(tmp / "missing.jsonl"), "cannot read the trace (No such file or directory)"),
        (lambda rec, tmp: _write(tmp, ""), "the trace holds no events"),
        (lambda rec, tmp: _write(tmp, open(rec).readline()), "the trace holds no events"),
        (lambda rec, tmp: _copy_with(rec, tmp, 3, '{"t_ns": 1, "op": "alloc"'), ":3: not a JSON line"),
        (lambda rec, tmp: _copy_with(rec, tmp, 2, '{"t_ns":1,"op":"alloc","device":0,"stream":"0x0","ptr":"0x1"}'),
         ":2: the event lacks the field 'size'"),
        (lambda rec, tmp: _copy_with(rec, tmp, 4, json.dumps({**_events(rec)[2], "op": "realloc"})),
         ":4: unknown op 'realloc'"),
        (lambda rec, tmp: _copy_with(rec, tmp, 2, json.dumps({**_events(rec)[0], "size": "1"})),
         ":2: t_ns, size and device must be integers"),
    ],
    ids=["missing", "empty", "header-only", "not-json", "lacks-field", "unknown-op", "size-not-int"],
)
def test_bad_trace(recorded, tmp_path, capsys, make, message):
    code, out, err = _run(capsys, "--from", make(recorded, tmp_path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_model_with_from_is_a_usage_error(recorded, capsys):
    code, _, err = _run(capsys, "qwen3.5-9b", "--from", recorded)
    assert code == 2 and "either MODEL or --from" in err


def test_reformatted_json_lines_read_the_same(recorded, tmp_path):
    # Lines not exactly as trace.cpp prints them go through json.loads: same numbers.
    path = tmp_path / "spaced.jsonl"
    path.write_text("".join(json.dumps(json.loads(line), indent=None) + "\n" for line in open(recorded)))
    a, b = summarize(recorded), summarize(str(path))
    assert [b.tags, b.total, b.largest, b.ops, b.timeline] == [a.tags, a.total, a.largest, a.ops, a.timeline]


F = 0x5E6  # a stream no other test uses: its segments are mapped inside the trace


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """A trace whose reserved and fragmentation are known by hand (comments: reserved, live, reserved - live)."""
    core = allocator.core()
    path = str(tmp_path_factory.mktemp("frag") / "frag.jsonl")
    core.empty_cache()  # no free segment mapped before the trace is unmapped inside it
    allocator.trace_enable(True, 4096)
    allocator.trace_clear()
    try:
        with allocator.tag("fr_small"):
            s1 = core.malloc(100_000, 0, F)  # maps a 2 MiB small segment: 2M, 100000, 2M - 100000
        with allocator.tag("fr_large"):
            l1 = core.malloc(3 * MiB, 0, F)  # maps a 20 MiB segment: 22M, 3M + 100000, 19M - 100000
        sl = allocator.slab_alloc(MiB, tag="fr_slab")  # a slab: reserved = live: 23M, 4M + 100000, same
        core.free(l1, 3 * MiB, 0, F)  # 23M, 1M + 100000, 22M - 100000 (the peak)
        core.empty_cache()  # unmaps the 20 MiB segment: 3M, 1M + 100000, 2M - 100000
        allocator.slab_free(sl)  # 2M, 100000, 2M - 100000
        core.free(s1, 100_000, 0, F)  # 2M, 0, 2M (the small segment stays cached)
        allocator.trace(path)
    finally:
        allocator.trace_enable(False, 0)
    core.empty_cache()
    return path


def test_fragmentation_by_hand(fragmented):
    s = summarize(fragmented)
    events = _events(fragmented)
    f = s.fragmentation
    assert s.header["segments"] == 1
    assert [(e["op"], e["size"]) for e in events if e["op"].startswith("segment_")] == [
        ("segment_map", 2 * MiB), ("segment_map", 20 * MiB), ("segment_unmap", 20 * MiB)]
    free_l1 = [e for e in events if e["op"] == "free" and e["size"] == 3 * MiB][0]
    slab = [e for e in events if e["op"] == "slab_alloc"][0]
    assert (f.peak, f.peak_t_ns) == (22 * MiB - 100_000, free_l1["t_ns"])
    assert (f.reserved_peak, f.reserved_peak_t_ns) == (23 * MiB, slab["t_ns"])
    assert (f.reserved_at_end, f.at_end, f.segments_at_end, f.segment_bytes_at_end) == (2 * MiB, 2 * MiB, 1, 2 * MiB)
    assert (f.unmatched_unmaps, f.note) == (0, None)
    # The series hold each interval's most bytes: the last interval holds at least the final value (the
    # final events can share it with earlier, larger ones: timing decides, so no equality there).
    assert max(s.timeline_reserved) == 23 * MiB and s.timeline_reserved[-1] >= 2 * MiB
    assert max(s.timeline_fragmentation) == 22 * MiB - 100_000 and s.timeline_fragmentation[-1] >= 2 * MiB


def test_fragmentation_json_and_table(fragmented, capsys):
    code, out, _ = _run(capsys, "--from", fragmented, "--json")
    report = json.loads(out)
    t0 = _events(fragmented)[0]["t_ns"]
    free_l1 = [e for e in _events(fragmented) if e["op"] == "free" and e["size"] == 3 * MiB][0]
    assert report["fragmentation"] == {
        "reserved_peak_bytes": 23 * MiB, "reserved_peak_t_ns": report["fragmentation"]["reserved_peak_t_ns"],
        "reserved_at_end_bytes": 2 * MiB, "peak_bytes": 22 * MiB - 100_000, "peak_t_ns": free_l1["t_ns"] - t0,
        "at_end_bytes": 2 * MiB, "segments_at_end": 1, "segment_bytes_at_end": 2 * MiB, "unmatched_unmaps": 0}
    assert report["fragmentation_note"] is None
    assert (report["counts"]["segment_maps"], report["counts"]["segment_unmaps"]) == (2, 1)
    code, out, _ = _run(capsys, "--from", fragmented)
    assert code == 0 and fmt_bytes(22 * MiB - 100_000) in out and fmt_bytes(23 * MiB) in out


def test_old_trace_without_segment_events(fragmented, tmp_path, capsys):
    """A dump from before segment events (no "segments" in the header, no segment lines): the note, no numbers."""
    lines = []
    for line in open(fragmented):
        rec = json.loads(line)
        if rec.get("type") == "header":
            del rec["segments"]
            lines.append(json.dumps(rec))
        elif not rec["op"].startswith("segment_"):
            lines.append(line.rstrip("\n"))
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(lines) + "\n")
    assert summarize(str(old)).fragmentation is None
    code, out, _ = _run(capsys, "--from", str(old), "--json")
    report = json.loads(out)
    assert report["fragmentation"] is None and "no reserved or segment events" in report["fragmentation_note"]
    assert "reserved" not in report["timeline"]
    code, out, _ = _run(capsys, "--from", str(old))
    assert code == 0 and "no reserved or segment events" in " ".join(out.split())


def test_fragmentation_when_tracing_starts_late(tmp_path):
    """Segments mapped before the trace: reserved is undercounted, and the report says so."""
    core = allocator.core()
    path = str(tmp_path / "late.jsonl")
    core.empty_cache()
    p = core.malloc(3 * MiB, 0, F + 1)  # maps a 20 MiB segment before tracing
    allocator.trace_enable(True, 4096)
    allocator.trace_clear()
    try:
        q = core.malloc(MiB + 512 * KiB, 0, F + 1)  # carved from the untraced segment
        core.free(p, 3 * MiB, 0, F + 1)
        core.free(q, MiB + 512 * KiB, 0, F + 1)
        core.empty_cache()  # unmaps a segment the trace never saw mapped
        allocator.trace(path)
    finally:
        allocator.trace_enable(False, 0)
    f = summarize(path).fragmentation
    assert f.unmatched_unmaps == 1 and f.segments_at_end == 0
    assert f.note.startswith("approximate:") and "mapped before tracing started" in f.note
