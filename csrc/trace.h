// Allocation trace: a bounded ring of fixed-size events per device (lives under the device mutex, so
// recording costs no extra lock), merged by time when dumped as JSON lines (format in hybrid_alloc.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hybrid_alloc {

// SegmentMap/SegmentUnmap: the caching path obtained a segment from / returned one to the backend (ptr =
// segment base, size = segment bytes, tag = the tag charged with it, pool = its graph pool).
enum class TraceOp : uint8_t { Alloc, Free, SlabAlloc, SlabFree, Oom, SegmentMap, SegmentUnmap };
const char* trace_op_name(TraceOp op);

struct TraceEvent {
  uint64_t t_ns;
  uint64_t ptr;
  uint64_t size;
  uint64_t stream;
  uint64_t pool;
  int32_t device;
  uint16_t tag;
  TraceOp op;
};

class TraceRing {
 public:
  // Allocates the buffer on first push (so a disabled trace costs no memory).
  void push(const TraceEvent& e, size_t capacity) {
    if (buf_.size() != capacity) resize(capacity);
    buf_[head_ % capacity] = e;
    if (++head_ > capacity) ++dropped_;
  }
  void resize(size_t capacity);  // clears
  void clear();
  void snapshot(std::vector<TraceEvent>* out) const;  // oldest first
  uint64_t dropped() const { return dropped_; }

 private:
  std::vector<TraceEvent> buf_;
  uint64_t head_ = 0;     // events ever pushed since the last clear
  uint64_t dropped_ = 0;  // overwritten events since the last clear
};

// Writes header + events (sorted by time) as JSON lines. Returns events written, or -1 with *err.
int64_t write_trace_jsonl(const char* path, std::vector<TraceEvent>& events, uint64_t dropped,
                          size_t capacity, const char* backend, std::string* err);

}  // namespace hybrid_alloc
