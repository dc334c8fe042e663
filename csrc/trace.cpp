#include "trace.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "stats.h"

namespace hybrid_alloc {

const char* trace_op_name(TraceOp op) {
  switch (op) {
    case TraceOp::Alloc: return "alloc";
    case TraceOp::Free: return "free";
    case TraceOp::SlabAlloc: return "slab_alloc";
    case TraceOp::SlabFree: return "slab_free";
    case TraceOp::Oom: return "oom";
    case TraceOp::SegmentMap: return "segment_map";
    case TraceOp::SegmentUnmap: return "segment_unmap";
  }
  return "?";
}

void TraceRing::resize(size_t capacity) {
  buf_.assign(capacity, TraceEvent{});
  buf_.shrink_to_fit();
  head_ = dropped_ = 0;
}

void TraceRing::clear() { head_ = dropped_ = 0; }

void TraceRing::snapshot(std::vector<TraceEvent>* out) const {
  size_t cap = buf_.size();
  if (cap == 0) return;
  uint64_t n = head_ < cap ? head_ : cap;
  for (uint64_t i = head_ - n; i < head_; ++i) out->push_back(buf_[i % cap]);
}

int64_t write_trace_jsonl(const char* path, std::vector<TraceEvent>& events, uint64_t dropped,
                          size_t capacity, const char* backend, std::string* err) {
  std::stable_sort(events.begin(), events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.t_ns < b.t_ns; });
  FILE* f = fopen(path, "w");
  if (!f) {
    *err = std::string("cannot open '") + path + "' for writing: " + strerror(errno);
    return -1;
  }
  fprintf(f, "{\"type\":\"header\",\"version\":1,\"events\":%zu,\"dropped\":%llu,\"capacity\":%zu,"
             "\"backend\":\"%s\",\"segments\":1}\n",
          events.size(), (unsigned long long)dropped, capacity, backend);
  for (const TraceEvent& e : events)
    fprintf(f,
            "{\"t_ns\":%llu,\"op\":\"%s\",\"device\":%d,\"stream\":\"0x%llx\",\"ptr\":\"0x%llx\","
            "\"size\":%llu,\"tag\":\"%s\",\"pool\":%llu}\n",
            (unsigned long long)e.t_ns, trace_op_name(e.op), e.device, (unsigned long long)e.stream,
            (unsigned long long)e.ptr, (unsigned long long)e.size, tag_name(e.tag),
            (unsigned long long)e.pool);
  bool ok = !ferror(f);
  if (fclose(f) != 0) ok = false;
  if (!ok) {
    *err = std::string("write error on '") + path + "': " + strerror(errno);
    return -1;
  }
  return static_cast<int64_t>(events.size());
}

}  // namespace hybrid_alloc
