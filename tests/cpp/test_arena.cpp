#include <cstring>

#include "helpers.h"

TEST(arena_carve_free_coalesce) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 8 * MiB) == 0);
  char* p1 = static_cast<char*>(a->slab_alloc(0, 1000, "layer0.kv", "kv_cache"));
  char* p2 = static_cast<char*>(a->slab_alloc(0, 3000, "layer0.state", "kv_cache"));
  char* p3 = static_cast<char*>(a->slab_alloc(0, 256, "layer1.kv", "kv_cache"));
  REQUIRE(p1 && p2 && p3);
  // First fit, exact sizes rounded to the 256 B alignment: packed back to back.
  CHECK(p2 == p1 + 1024);
  CHECK(p3 == p2 + 3072);
  CHECK_INVARIANTS(*a);
  hybrid_alloc_slab_info info{};
  CHECK_EQ(a->get_slab(0, 1, &info), 3);
  CHECK(info.ptr == p2);
  CHECK_EQ(info.size, 3000u);
  CHECK_EQ(info.carved, 3072u);
  CHECK(std::string(info.name) == "layer0.state");
  CHECK(std::string(info.tag) == "kv_cache");
  // Memory is mapped read/write and does not move.
  memset(p1, 0xab, 1000);
  memset(p2, 0xcd, 3000);
  CHECK_EQ(a->slab_free(p2), 0);
  CHECK_INVARIANTS(*a);
  CHECK(static_cast<unsigned char>(p1[999]) == 0xab);
  CHECK_EQ(a->slab_free(p2), -1);  // no longer live
  // The hole is reused first-fit by a request that fits it.
  char* p4 = static_cast<char*>(a->slab_alloc(0, 2048, "x", nullptr));
  CHECK(p4 == p2);
  CHECK_EQ(a->slab_free(p4), 0);
  CHECK_EQ(a->slab_free(p1), 0);
  CHECK_EQ(a->slab_free(p3), 0);
  CHECK_INVARIANTS(*a);
  // Everything coalesced back into one extent: the whole reservation fits one slab again.
  char* big = static_cast<char*>(a->slab_alloc(0, 8 * MiB, "all", nullptr));
  CHECK(big == p1);
  CHECK_EQ(a->slab_free(big), 0);
}

TEST(arena_alignment) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 16 * MiB) == 0);
  REQUIRE(a->configure("alignment", "4096") == 0);
  void* ps[5];
  for (int i = 0; i < 5; ++i) {
    ps[i] = a->slab_alloc(0, 1 + 777 * i, nullptr, nullptr);
    REQUIRE(ps[i]);
    CHECK(reinterpret_cast<uintptr_t>(ps[i]) % 4096 == 0);
  }
  REQUIRE(a->configure("alignment", "65536") == 0);
  void* q = a->slab_alloc(0, 100, nullptr, nullptr);
  CHECK(reinterpret_cast<uintptr_t>(q) % 65536 == 0);
  CHECK_INVARIANTS(*a);  // the padding in front of q stays a free extent
  for (const char* bad : {"0", "3", "8", "4194304", "abc", "-256", ""}) {
    CHECK(a->configure("alignment", bad) < 0);
    CHECK_CONTAINS(last_error(), "alignment");
  }
  for (void* p : ps) CHECK_EQ(a->slab_free(p), 0);
  CHECK_EQ(a->slab_free(q), 0);
  CHECK_INVARIANTS(*a);
}

TEST(arena_best_fit) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 4 * MiB) == 0);
  // Layout: [A 64K][x 16K][B 32K][y 16K][rest]: free A and B -> holes of 64K (low) and 32K (high).
  char* A = static_cast<char*>(a->slab_alloc(0, 64 << 10, "A", nullptr));
  char* x = static_cast<char*>(a->slab_alloc(0, 16 << 10, "x", nullptr));
  char* B = static_cast<char*>(a->slab_alloc(0, 32 << 10, "B", nullptr));
  char* y = static_cast<char*>(a->slab_alloc(0, 16 << 10, "y", nullptr));
  REQUIRE(A && x && B && y);
  a->slab_free(A);
  a->slab_free(B);
  void* first = a->slab_alloc(0, 20 << 10, "f", nullptr);
  CHECK(first == A);  // first fit: lowest address
  a->slab_free(first);
  REQUIRE(a->configure("arena_fit", "best") == 0);
  void* best = a->slab_alloc(0, 20 << 10, "b", nullptr);
  CHECK(best == B);  // best fit: smallest hole
  CHECK(a->configure("arena_fit", "worst") < 0);
  CHECK_INVARIANTS(*a);
}

TEST(arena_exhaustion) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 4 * MiB) == 0);
  void* p = a->slab_alloc(0, 3 * MiB, "big", "weights");
  REQUIRE(p);
  void* q = a->slab_alloc(0, 2 * MiB, "layer7.kv", "kv_cache");
  CHECK(q == nullptr);
  std::string e = last_error();
  CHECK_CONTAINS(e, "out of memory");
  CHECK_CONTAINS(e, "2097152");
  CHECK_CONTAINS(e, "kv_cache");
  CHECK_CONTAINS(e, "layer7.kv");
  CHECK_CONTAINS(e, "arena capacity");
  CHECK_CONTAINS(e, "largest free extent");
  CHECK_EQ(stats_of(*a).num_ooms, 1u);
  CHECK(a->slab_alloc(0, 0, "zero", nullptr) == nullptr);
  CHECK(a->arena_reserve(0, 8 * MiB) < 0);  // live slab
  CHECK_CONTAINS(last_error(), "live");
  CHECK_EQ(a->slab_free(p), 0);
  CHECK_EQ(a->arena_reserve(0, 8 * MiB), 0);
  CHECK(a->slab_alloc(0, 6 * MiB, "fits now", nullptr) != nullptr);
}

TEST(arena_mapping_granules) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 64 * MiB) == 0);
  CHECK_EQ(stats_of(*a).arena_reserved_bytes, 64 * MiB);
  CHECK_EQ(stats_of(*a).arena.reserved, 0u);  // nothing mapped yet
  void* p = a->slab_alloc(0, 1 * MiB, "a", nullptr);
  CHECK_EQ(stats_of(*a).arena.reserved, 2 * MiB);
  void* q = a->slab_alloc(0, 3 * MiB, "b", nullptr);  // [1, 4) MiB: granules 0 and 1
  CHECK_EQ(stats_of(*a).arena.reserved, 4 * MiB);
  memset(q, 1, 3 * MiB);
  a->slab_free(p);
  a->slab_free(q);
  CHECK_EQ(stats_of(*a).arena.reserved, 4 * MiB);  // cached until empty_cache
  a->empty_cache();
  CHECK_EQ(stats_of(*a).arena.reserved, 0u);
  CHECK_INVARIANTS(*a);
}

TEST(arena_on_demand) {
  auto a = fresh();
  void* p = a->slab_alloc(0, 5000, "lazy", nullptr);  // no reserve: on demand
  REQUIRE(p);
  CHECK(stats_of(*a).arena_reserved_bytes >= 2 * MiB);
  CHECK_EQ(stats_of(*a).arena.current, 5000u);
  CHECK_EQ(a->slab_free(p), 0);
}

TEST(arena_tag_routes_malloc) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 32 * MiB) == 0);
  REQUIRE(tag_push("kv_cache") == 0);
  void* p = a->malloc(5 * MiB + 3, 0, S(1));
  REQUIRE(tag_pop() == 0);
  REQUIRE(p);
  CHECK_EQ(a->get_slab(0, 99, nullptr), 1);  // served by the arena
  CHECK_EQ(stats_of(*a).arena.current, 5 * MiB + 3);
  CHECK_EQ(stats_of(*a).caching.current, 0u);
  // Freed through the pluggable path while stream 1 still has queued work: the range stays taken.
  host_stream_hold(S(1));
  a->free(p, 5 * MiB + 3, 0, S(1));
  CHECK_EQ(a->get_slab(0, 99, nullptr), 0);
  CHECK_EQ(stats_of(*a).arena.current, 0u);
  void* q = a->slab_alloc(0, 1 * MiB, "q", nullptr);
  CHECK(q != p);
  host_stream_release(S(1));
  a->slab_free(q);
  void* r = a->slab_alloc(0, 1 * MiB, "r", nullptr);
  CHECK(r == p);  // the stream caught up: the range is back
  CHECK(a->configure("arena_tags", "") == 0);
  REQUIRE(tag_push("kv_cache") == 0);
  void* c = a->malloc(4096, 0, S(1));
  REQUIRE(tag_pop() == 0);
  CHECK_EQ(stats_of(*a).caching.current, 4096u);  // arena_tags="" routes nothing
  a->free(c, 4096, 0, S(1));
  a->slab_free(r);
  CHECK_INVARIANTS(*a);
}
