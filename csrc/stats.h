// Statistics per device and per tag, and the process-wide tag registry with its thread-local stack.
//
// Tags are interned once into small ids (0 = "other", 1 = "weights", 2 = "kv_cache", 3 = "activations",
// 4 = "cudagraph", then caller tags in first-use order; at most kMaxTags). A tag name stays valid for the
// process lifetime. Each thread has a stack of tag ids; its top is charged with every allocation the thread
// makes. DeviceStats is not synchronised: it lives under its device's mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "hybrid_alloc.h"

namespace hybrid_alloc {

constexpr int kMaxTags = 256;
constexpr int kTagStackMax = 64;
enum : int { kTagOther = 0, kTagWeights = 1, kTagKvCache = 2, kTagActivations = 3, kTagCudagraph = 4 };

// Registry: returns the id of `name` (interning it), or -1 with *err set (bad name, registry full).
int tag_intern(const char* name, std::string* err);
const char* tag_name(int id);  // "?" for an unknown id
int tag_count();

// Thread-local stack. Return 0, or -1 with the thread's last error set.
int tag_current_id();
int tag_set(const char* name);
int tag_push(const char* name);
int tag_pop();

struct Counter {
  uint64_t current = 0, peak = 0, reserved = 0, alloc_count = 0, free_count = 0;
  void on_alloc(uint64_t b) {
    current += b;
    if (current > peak) peak = current;
    ++alloc_count;
  }
  void on_free(uint64_t b) {
    current -= b;
    ++free_count;
  }
  hybrid_alloc_counter to_c() const { return {current, peak, reserved, alloc_count, free_count}; }
};

enum class Path : uint8_t { Caching, Arena };

struct DeviceStats {
  Counter total, arena, caching;
  std::vector<Counter> tags;   // indexed by tag id
  std::vector<int> seen;       // tag ids in first-use order
  uint64_t num_ooms = 0, num_invalid_frees = 0;

  Counter& tag(int id) {
    if (static_cast<size_t>(id) >= tags.size() || !seen_flag[id]) mark_seen(id);
    return tags[id];
  }
  Counter& path(Path p) { return p == Path::Arena ? arena : caching; }

  void on_alloc(Path p, int tag_id, uint64_t bytes) {
    total.on_alloc(bytes);
    path(p).on_alloc(bytes);
    tag(tag_id).on_alloc(bytes);
  }
  void on_free(Path p, int tag_id, uint64_t bytes) {
    total.on_free(bytes);
    path(p).on_free(bytes);
    tag(tag_id).on_free(bytes);
  }
  // `path_delta` changes the path/total reserved (physical bytes); `tag_delta` the tag's attribution.
  void on_reserve(Path p, int64_t path_delta, int tag_id, int64_t tag_delta) {
    total.reserved += static_cast<uint64_t>(path_delta);
    path(p).reserved += static_cast<uint64_t>(path_delta);
    if (tag_id >= 0) tag(tag_id).reserved += static_cast<uint64_t>(tag_delta);
  }
  void reset_peaks();

 private:
  void mark_seen(int id);
  std::vector<uint8_t> seen_flag;
};

}  // namespace hybrid_alloc
