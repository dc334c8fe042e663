// The allocator: per-device state (one mutex guarding the arena, the caching path, the statistics and
// the trace ring of that device) over one backend. c_api.cpp wraps one process-wide instance; tests may
// build their own instances over a host backend.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <sys/types.h>

#include "arena.h"
#include "backend.h"
#include "device_memory.h"
#include "caching.h"
#include "common.h"
#include "hybrid_alloc.h"
#include "stats.h"
#include "trace.h"

namespace hybrid_alloc {

class Allocator;

struct DeviceState {
  DeviceState(Backend* b, int device) : arena(&memory, &stats), caching(&memory, &stats) {
    memory.backend = b;
    memory.device = device;
  }
  DeviceLock mu;
  DeviceMemory memory;
  DeviceStats stats;
  TraceRing trace;
  Arena arena;
  Caching caching;
  double fraction = 0;  // set_memory_fraction (0 = none)
  Allocator* owner = nullptr;  // for the segment trace hook
};

class Allocator {
 public:
  explicit Allocator(std::unique_ptr<Backend> backend);
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  Backend* backend() const { return backend_.get(); }
  int device_count() const { return ndev_; }

  // The PyTorch calls. Errors go to the thread's last error; nothing throws.
  void* malloc(ssize_t size, int device, Stream s);
  void free(void* p, ssize_t size, int device, Stream s);
  void record_stream(void* p, Stream s);
  void empty_cache();
  int set_memory_fraction(double fraction, int device);
  int begin_capture(int device, uint64_t pool_id, Stream s);
  int end_capture(int device, uint64_t pool_id);
  int release_pool(int device, uint64_t pool_id);

  int arena_reserve(int device, size_t bytes);
  void* slab_alloc(int device, size_t size, const char* name, const char* tag);
  int slab_free(void* p);
  int get_slab(int device, int index, hybrid_alloc_slab_info* out);

  int get_stats(int device, hybrid_alloc_stats* out);
  int get_tag_stats(int device, int index, char* tag_out, size_t tag_out_size, hybrid_alloc_counter* out);
  int reset_peak_stats(int device);

  int64_t trace_dump(const char* path);
  void trace_enable(bool enabled, size_t capacity);
  void trace_clear();
  uint64_t trace_dropped();

  int configure(const char* key, const char* value);

  // Tests: runs every invariant check of every device; "" when all hold.
  std::string check();

 private:
  DeviceState* dev(int device, const char* what);
  DeviceState* existing(int device) const {
    return device >= 0 && device < ndev_ ? devs_[device].load(std::memory_order_acquire) : nullptr;
  }
  bool is_arena_tag(int tag) const {
    return (arena_tags_[tag >> 6].load(std::memory_order_relaxed) >> (tag & 63)) & 1;
  }
  void* arena_malloc(DeviceState* d, size_t size, int tag, Stream s);
  bool free_on(DeviceState* d, void* p, Stream s);
  void update_limit(DeviceState* d);  // under d->mu
  void record(DeviceState* d, TraceOp op, const void* p, uint64_t size, Stream s, int tag, uint64_t pool) {
    if (trace_on_.load(std::memory_order_relaxed))
      d->trace.push(TraceEvent{now_ns(), reinterpret_cast<uintptr_t>(p), size, reinterpret_cast<uintptr_t>(s),
                               pool, d->memory.device, static_cast<uint16_t>(tag), op},
                    trace_capacity_.load(std::memory_order_relaxed));
  }
  static void segment_event(void* ctx, bool mapped, const Segment& sg) {  // Caching's SegmentHook
    DeviceState* d = static_cast<DeviceState*>(ctx);
    d->owner->record(d, mapped ? TraceOp::SegmentMap : TraceOp::SegmentUnmap, sg.base, sg.size, sg.stream, sg.tag,
                     sg.pool->id);
  }
  void oom(DeviceState* d, const char* path, size_t size, int tag, Stream s, const std::string& why);
  std::string state(DeviceState* d);

  // configure(): one handler per key, found in kConfigKeys; each returns why the value is bad, "" once applied.
  struct ConfigKey {
    const char* key;
    std::string (Allocator::*apply)(const std::string& value);
  };
  static const ConfigKey kConfigKeys[];
  std::string config_alignment(const std::string& v);
  std::string config_arena_fit(const std::string& v);
  std::string config_arena_tags(const std::string& v);
  std::string config_backend(const std::string& v);
  std::string config_device_limit(const std::string& v);
  std::string config_trace(const std::string& v);
  std::string config_trace_capacity(const std::string& v);

  std::unique_ptr<Backend> backend_;
  int ndev_ = 0;
  std::unique_ptr<std::atomic<DeviceState*>[]> devs_;
  std::mutex create_mu_;
  std::mutex config_mu_;

  std::atomic<size_t> alignment_{256};
  std::atomic<bool> best_fit_{false};
  std::atomic<bool> trace_on_{false};
  std::atomic<size_t> trace_capacity_{65536};
  std::atomic<uint64_t> device_limit_{0};
  std::atomic<uint64_t> arena_tags_[kMaxTags / 64] = {};
};

}  // namespace hybrid_alloc
