// Slab arena of one device: one virtual reservation carved into named, tagged slabs of exact size.
//
// Invariants (checked by tests/cpp/test_arena.cpp and the fuzz):
//  - the reservation [base, base + capacity) never moves while it exists; a live slab never moves;
//  - free_ holds disjoint, non-adjacent extents (adjacent ones are coalesced at once), ordered by offset;
//    the carved ranges of live_ (pending slabs included) and the extents of free_ tile [0, capacity)
//    exactly: every byte is in one slab or one free extent (alignment padding stays a free extent);
//  - a slab's offset is a multiple of the alignment it was allocated with (base is granule aligned) and
//    its carved size is its size rounded up to that alignment;
//  - a granule is mapped whenever a live (or pending) slab overlaps it; granules no slab overlaps stay
//    mapped (cached) until trim(); users_[g] counts the slabs overlapping granule g;
//  - physical bytes are charged to the device's DeviceMemory granule by granule (map) and returned on unmap.
// Not synchronised: callers hold the device mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backend.h"
#include "device_memory.h"
#include "stats.h"

namespace hybrid_alloc {

struct Slab {
  size_t size = 0;    // exact requested bytes
  size_t carved = 0;  // bytes taken from the arena
  int tag = 0;
  std::string name;
  Event pending = nullptr;  // non-null while a stream-ordered free waits for this event
};

class Arena {
 public:
  Arena(DeviceMemory* mem, DeviceStats* stats) : mem_(mem), stats_(stats) {}
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // bytes == 0: on demand (reserved lazily at the first slab). Fails while slabs are live.
  bool reserve(size_t bytes, std::string* err);
  void* alloc(size_t size, size_t alignment, bool best_fit, int tag, const char* name, std::string* err);
  // Immediate free; false if p is not the start of a live, non-pending slab. *out gets the slab.
  bool free(void* p, Slab* out);
  // Stream-ordered free: the slab's range returns to the free list once `ev` is done (process_pending).
  bool free_after(void* p, Event ev, Slab* out);
  void process_pending();
  size_t trim();  // unmaps granules no slab overlaps; returns bytes unmapped

  bool contains(const void* p) const {
    return base_ && p >= base_ && p < static_cast<const char*>(base_) + capacity_;
  }
  const Slab* find(const void* p) const;
  const std::map<size_t, Slab>& live() const { return live_; }
  const std::map<size_t, size_t>& free_extents() const { return free_; }
  char* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t mapped_bytes() const { return mapped_ * gran_; }
  size_t live_count() const { return live_.size(); }
  std::string describe() const;  // state for error messages

 private:
  bool ensure_reserved(std::string* err);
  void release_all();
  bool map_range(size_t off, size_t len, std::string* err);
  void unuse_range(size_t off, size_t len);
  void insert_free(size_t off, size_t len);
  void finish_free(std::map<size_t, Slab>::iterator it);

  DeviceMemory* mem_;
  DeviceStats* stats_;
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t requested_ = 0;  // 0 = on demand
  size_t gran_ = 0;
  size_t mapped_ = 0;  // granules mapped
  size_t pending_count_ = 0;
  std::map<size_t, size_t> free_;  // offset -> length
  std::map<size_t, Slab> live_;    // offset -> slab (pending ones included)
  std::vector<uint32_t> users_;
  std::vector<uint8_t> is_mapped_;
};

}  // namespace hybrid_alloc
