// Caching path of one device (everything that is not an arena slab). Invariants at the top of caching.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "device_memory.h"
#include "stats.h"

namespace hybrid_alloc {

constexpr size_t kMinBlock = 512;                     // size granule of every block
constexpr size_t kSmallSize = size_t(1) << 20;        // requests <= 1 MiB are "small"
constexpr size_t kSmallSegment = size_t(2) << 20;     // small blocks are carved from 2 MiB segments
constexpr size_t kLargeSegment = size_t(20) << 20;    // large requests < 10 MiB share 20 MiB segments
constexpr size_t kLargeDirect = size_t(10) << 20;     // larger ones get a segment rounded up to 2 MiB
constexpr size_t kMaxRequest = size_t(1) << 48;
constexpr int kBins = 160;
constexpr int kBinWords = (kBins + 63) / 64;

struct Segment;
struct PoolState;

enum class BlockState : uint8_t { Free, Allocated, Pending, Deferred, Spare };

struct Block {
  char* ptr = nullptr;
  size_t size = 0;       // bytes of the block (multiple of kMinBlock)
  size_t requested = 0;  // bytes the caller asked for (while allocated)
  Segment* seg = nullptr;
  Block* prev = nullptr;  // address neighbours inside the segment
  Block* next = nullptr;
  Block* fprev = nullptr;  // free-list links (state Free) / spare list (state Spare)
  Block* fnext = nullptr;
  std::vector<Stream>* uses = nullptr;  // streams other than the segment's that used the block
  int tag = 0;
  int pending = 0;  // events not yet completed
  BlockState state = BlockState::Spare;
  uint8_t bin = 0;
};

// Free blocks of one (pool, stream, small|large): segregated bins (4 per power of two) + a bitmap.
struct FreeList {
  Stream stream = nullptr;
  bool small = false;
  size_t count = 0;
  uint64_t bits[kBinWords] = {};
  Block* heads[kBins] = {};
  void insert(Block* b);
  void remove(Block* b);
  Block* take(size_t size);  // smallest-bin fit, removed from the list; nullptr if none
};

struct Segment {
  char* base = nullptr;
  size_t size = 0;
  PoolState* pool = nullptr;
  FreeList* fl = nullptr;
  Stream stream = nullptr;
  int tag = 0;  // tag charged with the segment's reserved bytes
  Block* first = nullptr;
  Segment* sprev = nullptr;
  Segment* snext = nullptr;
};

struct PoolState {
  uint64_t id = 0;  // 0 = the general pool; otherwise a graph-capture pool
  bool released = false;
  size_t live = 0;  // blocks allocated, pending or deferred
  size_t nsegments = 0;
  Segment* segs = nullptr;
  std::vector<std::unique_ptr<FreeList>> lists;
  FreeList* last[2] = {nullptr, nullptr};  // last list used, [small]
  FreeList* list(Stream s, bool small);
};

// Open-addressing pointer -> Block map (linear probing, backward-shift deletion): no allocation per
// insert, unlike std::unordered_map.
class PtrMap {
 public:
  PtrMap() { rehash(1024); }
  void insert(const void* key, Block* b);
  Block* find(const void* key) const;
  Block* erase(const void* key);  // nullptr if absent
  size_t size() const { return size_; }
  template <class F>
  void for_each(F f) const {
    for (const Slot& s : slots_)
      if (s.key) f(s.val);
  }

 private:
  struct Slot {
    uintptr_t key = 0;
    Block* val = nullptr;
  };
  size_t index(uintptr_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }
  void rehash(size_t cap);
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 0;
};

// Called under the device mutex right after a segment is obtained from the backend (mapped = true) and
// right before one is returned to it (mapped = false): the allocator records trace events through it.
using SegmentHook = void (*)(void* ctx, bool mapped, const Segment& sg);

class Caching {
 public:
  Caching(DeviceMemory* mem, DeviceStats* stats);
  void set_segment_hook(SegmentHook fn, void* ctx) {
    hook_ = fn;
    hook_ctx_ = ctx;
  }
  ~Caching();
  Caching(const Caching&) = delete;
  Caching& operator=(const Caching&) = delete;

  // size in (0, kMaxRequest]. nullptr + *err when no memory could be obtained.
  Block* malloc(size_t size, Stream s, int tag, std::string* err);
  Block* lookup(const void* p) const { return live_.find(p); }
  Block* take_live(const void* p) { return live_.erase(p); }  // removes from the live map (nullptr: unknown)
  void free(Block* b, Stream s);  // b from take_live()
  void record_stream(Block* b, Stream s);

  bool capturing(Stream s) const;
  bool begin_capture(uint64_t pool_id, Stream s, std::string* err);
  void end_capture(uint64_t pool_id);
  bool release_pool(uint64_t pool_id, std::string* err);

  void process_events();
  void reap_done_events();
  size_t release_cached();  // frees whole free segments of the general pool; returns bytes

  size_t segments() const { return nsegments_; }
  size_t reserved() const { return reserved_; }
  size_t pending_bytes() const { return pending_bytes_; }
  size_t live_blocks() const { return live_.size(); }
  bool any_capture() const { return !captures_.empty(); }
  std::string describe() const;
  std::string check() const;  // "" when every invariant holds, else the first violation (tests)

 private:
  Block* get_block();
  void put_block(Block* b);
  Block* new_segment(PoolState* pool, FreeList* fl, size_t rounded, int tag, std::string* err);
  void free_segment(Segment* sg);
  void insert_free(Block* b);
  void finalize(Block* b, bool was_pending);
  void try_record(Block* b);
  void maybe_destroy_pool(PoolState* pool);
  void destroy_pool(PoolState* pool);
  PoolState* find_private(uint64_t id) const;
  std::string check_pool(const PoolState* pool, size_t* allocated) const;

  struct PendingEvent {
    Event ev;
    Block* block;
  };
  struct Capture {
    Stream stream;
    PoolState* pool;
  };

  DeviceMemory* mem_;
  DeviceStats* stats_;
  PoolState general_;
  std::vector<PoolState*> private_;
  std::vector<Capture> captures_;
  std::vector<PendingEvent> pending_;
  std::vector<Block*> deferred_;
  PtrMap live_;
  std::vector<std::unique_ptr<Block[]>> chunks_;
  Block* spare_ = nullptr;
  size_t nsegments_ = 0, reserved_ = 0, pending_bytes_ = 0;
  SegmentHook hook_ = nullptr;
  void* hook_ctx_ = nullptr;
};

}  // namespace hybrid_alloc
