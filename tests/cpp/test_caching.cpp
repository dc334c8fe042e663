#include <vector>

#include "helpers.h"

TEST(caching_reuse_same_stream) {
  auto a = fresh();
  void* p = a->malloc(1000, 0, S(1));
  REQUIRE(p);
  CHECK(reinterpret_cast<uintptr_t>(p) % 512 == 0);
  a->free(p, 1000, 0, S(1));
  void* q = a->malloc(900, 0, S(1));  // same 1024 B class: same block, at once
  CHECK(q == p);
  a->free(q, 900, 0, S(1));
  CHECK_EQ(stats_of(*a).num_segments, 1u);
  CHECK_EQ(stats_of(*a).caching.reserved, 2 * MiB);
  CHECK_INVARIANTS(*a);
}

TEST(caching_split_merge) {
  auto a = fresh();
  char* x = static_cast<char*>(a->malloc(512, 0, nullptr));
  char* y = static_cast<char*>(a->malloc(1536, 0, nullptr));
  char* z = static_cast<char*>(a->malloc(100, 0, nullptr));
  REQUIRE(x && y && z);
  CHECK_EQ(stats_of(*a).num_segments, 1u);  // all carved from one 2 MiB segment
  CHECK_INVARIANTS(*a);
  a->free(y, 1536, 0, nullptr);
  a->free(x, 512, 0, nullptr);  // merges with y's block
  CHECK_INVARIANTS(*a);
  char* w = static_cast<char*>(a->malloc(2048, 0, nullptr));  // fits the merged 2 KiB hole exactly
  CHECK(w == x);
  a->free(w, 2048, 0, nullptr);
  a->free(z, 100, 0, nullptr);
  CHECK_INVARIANTS(*a);
  // Whole segment free again: one allocation of 1 MiB comes from the same segment.
  char* big = static_cast<char*>(a->malloc(1 * MiB, 0, nullptr));
  CHECK(big == x);
  a->free(big, 1 * MiB, 0, nullptr);
  CHECK_EQ(stats_of(*a).num_segments, 1u);
}

TEST(caching_size_classes) {
  auto a = fresh();
  void* small = a->malloc(1 * MiB, 0, nullptr);  // small: 2 MiB segment
  CHECK_EQ(stats_of(*a).caching.reserved, 2 * MiB);
  void* mid = a->malloc(1 * MiB + 1, 0, nullptr);  // large < 10 MiB: 20 MiB segment
  CHECK_EQ(stats_of(*a).caching.reserved, 22 * MiB);
  void* mid2 = a->malloc(8 * MiB, 0, nullptr);  // same 20 MiB segment (split)
  CHECK_EQ(stats_of(*a).caching.reserved, 22 * MiB);
  void* huge = a->malloc(12 * MiB + 1, 0, nullptr);  // >= 10 MiB: rounded up to 2 MiB -> 14 MiB
  CHECK_EQ(stats_of(*a).caching.reserved, 36 * MiB);
  CHECK_EQ(stats_of(*a).num_segments, 3u);
  void* tail = a->malloc(10 * MiB + 1, 0, nullptr);  // fits the ~11 MiB left in the 20 MiB segment
  CHECK_EQ(stats_of(*a).num_segments, 3u);
  a->free(tail, 0, 0, nullptr);
  CHECK_EQ(stats_of(*a).caching.current, 1 * MiB + (1 * MiB + 1) + 8 * MiB + (12 * MiB + 1));
  for (void* p : {small, mid, mid2, huge}) a->free(p, 0, 0, nullptr);
  CHECK_INVARIANTS(*a);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).caching.reserved, 0u);
  CHECK_EQ(stats_of(*a).num_segments, 0u);
}

TEST(caching_empty_cache_keeps_live) {
  auto a = fresh();
  void* keep = a->malloc(4096, 0, nullptr);
  void* drop = a->malloc(3 * MiB, 0, nullptr);
  a->free(drop, 0, 0, nullptr);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).caching.reserved, 2 * MiB);  // the segment with a live block stays
  CHECK_EQ(stats_of(*a).num_segments, 1u);
  a->free(keep, 0, 0, nullptr);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).caching.reserved, 0u);
  CHECK_INVARIANTS(*a);
}

TEST(caching_per_stream_lists) {
  auto a = fresh();
  void* p = a->malloc(4096, 0, S(1));
  a->free(p, 4096, 0, S(1));
  void* q = a->malloc(4096, 0, S(2));  // another stream never gets stream 1's cached block
  CHECK(q != p);
  CHECK_EQ(stats_of(*a).num_segments, 2u);
  void* r = a->malloc(4096, 0, S(1));
  CHECK(r == p);
  a->free(q, 0, 0, S(2));
  a->free(r, 0, 0, S(1));
  CHECK_INVARIANTS(*a);
}

TEST(caching_devices_independent) {
  auto a = fresh();
  void* p0 = a->malloc(4096, 0, nullptr);
  void* p1 = a->malloc(4096, 1, nullptr);
  CHECK(p0 && p1 && p0 != p1);
  CHECK_EQ(stats_of(*a, 0).total.current, 4096u);
  CHECK_EQ(stats_of(*a, 1).total.current, 4096u);
  a->free(p1, 4096, 0, nullptr);  // wrong device given: still found on device 1
  CHECK_EQ(stats_of(*a, 1).total.current, 0u);
  CHECK_EQ(stats_of(*a, 0).num_invalid_frees, 0u);
  a->free(p0, 4096, 0, nullptr);
  CHECK_INVARIANTS(*a);
}

TEST(caching_many_blocks_rehash) {
  auto a = fresh();
  std::vector<void*> v;
  for (int i = 0; i < 5000; ++i) v.push_back(a->malloc(512 + (i % 7) * 512, 0, nullptr));
  for (void* p : v) CHECK(p != nullptr);
  CHECK_INVARIANTS(*a);
  for (size_t i = 0; i < v.size(); i += 2) a->free(v[i], 0, 0, nullptr);
  CHECK_INVARIANTS(*a);
  for (size_t i = 1; i < v.size(); i += 2) a->free(v[i], 0, 0, nullptr);
  CHECK_INVARIANTS(*a);
  CHECK_EQ(stats_of(*a).total.current, 0u);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).num_segments, 0u);
}
