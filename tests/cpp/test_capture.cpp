#include "helpers.h"

TEST(capture_private_pool) {
  auto a = fresh();
  Stream cap = S(10), other = S(11);
  void* before = a->malloc(4096, 0, cap);
  a->free(before, 4096, 0, cap);  // cached in the general pool on `cap`
  REQUIRE(a->begin_capture(0, 7, cap) == 0);
  void* x = a->malloc(4096, 0, cap);
  CHECK(x != before);  // captured allocations never come from the general pool
  CHECK_EQ(tag_stats(*a, "cudagraph").current, 4096u);  // default tag -> cudagraph during capture
  REQUIRE(tag_push("activations") == 0);
  void* y = a->malloc(4096, 0, cap);
  REQUIRE(tag_pop() == 0);
  CHECK_EQ(tag_stats(*a, "activations").current, 4096u);  // an explicit tag is kept
  void* o = a->malloc(4096, 0, other);  // a non-capturing stream: general pool
  CHECK_EQ(tag_stats(*a, "other").current, 4096u);
  a->free(x, 4096, 0, cap);
  void* x2 = a->malloc(4096, 0, cap);  // reuse inside the same capture pool is allowed
  CHECK(x2 == x);
  CHECK_EQ(a->end_capture(0, 7), 0);
  void* after = a->malloc(4096, 0, cap);  // capture over: general pool again
  CHECK(after == before);
  a->free(x2, 4096, 0, cap);
  a->free(y, 4096, 0, cap);
  void* again = a->malloc(4096, 0, cap);
  CHECK(again != x2 && again != y);  // pool 7's blocks are not recycled to other use
  CHECK_INVARIANTS(*a);
  size_t reserved = stats_of(*a).caching.reserved;
  a->empty_cache();
  CHECK_EQ(stats_of(*a).caching.reserved, reserved - 0);  // general segment busy, pool 7 kept
  CHECK_EQ(a->release_pool(0, 7), 0);
  CHECK_EQ(stats_of(*a).caching.reserved, reserved - 2 * MiB);  // pool 7's segment returned
  a->free(o, 0, 0, other);
  a->free(after, 0, 0, cap);
  a->free(again, 0, 0, cap);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).caching.reserved, 0u);
  CHECK_INVARIANTS(*a);
}

TEST(capture_release_waits_for_live_blocks) {
  auto a = fresh();
  REQUIRE(a->begin_capture(0, 3, S(5)) == 0);
  void* g = a->malloc(64 << 10, 0, S(5));
  a->end_capture(0, 3);
  CHECK_EQ(a->release_pool(0, 3), 0);
  CHECK_EQ(stats_of(*a).num_segments, 1u);  // the graph still owns a live block
  a->free(g, 64 << 10, 0, S(5));
  CHECK_EQ(stats_of(*a).num_segments, 0u);  // released with its last block
  CHECK_EQ(a->release_pool(0, 12345), 0);   // unknown pool: no-op
  CHECK_INVARIANTS(*a);
}

TEST(capture_pool_reused_by_next_capture) {
  auto a = fresh();
  REQUIRE(a->begin_capture(0, 9, S(5)) == 0);
  void* g = a->malloc(1 << 16, 0, S(5));
  a->free(g, 0, 0, S(5));
  a->end_capture(0, 9);
  REQUIRE(a->begin_capture(0, 9, S(5)) == 0);  // a second graph sharing pool 9
  void* h = a->malloc(1 << 16, 0, S(5));
  CHECK(h == g);
  a->free(h, 0, 0, S(5));
  a->end_capture(0, 9);
  a->release_pool(0, 9);
  CHECK_EQ(stats_of(*a).num_segments, 0u);
}

TEST(capture_frees_deferred_until_end) {
  auto a = fresh();
  void* p = a->malloc(4096, 0, S(1));  // general pool, before the capture
  void* q = a->malloc(4096, 0, S(2));
  a->record_stream(q, S(3));
  REQUIRE(a->begin_capture(0, 4, S(1)) == 0);
  a->free(p, 4096, 0, S(1));  // freed on the capturing stream: the graph may read it
  a->free(q, 4096, 0, S(2));  // needs an event, cannot be recorded during a capture
  CHECK_EQ(stats_of(*a).pending_free_bytes, 8192u);
  void* p2 = a->malloc(4096, 0, S(7));
  CHECK(p2 != p && p2 != q);
  a->end_capture(0, 4);
  CHECK_EQ(stats_of(*a).pending_free_bytes, 0u);  // host events complete at once
  void* p3 = a->malloc(4096, 0, S(1));
  CHECK(p3 == p);
  a->free(p2, 0, 0, S(7));
  a->free(p3, 0, 0, S(1));
  a->release_pool(0, 4);
  CHECK_INVARIANTS(*a);
}

TEST(capture_errors) {
  auto a = fresh();
  CHECK(a->begin_capture(0, 0, S(1)) < 0);
  CHECK_CONTAINS(last_error(), "pool id 0");
  REQUIRE(a->begin_capture(0, 5, S(1)) == 0);
  CHECK(a->release_pool(0, 5) < 0);
  CHECK_CONTAINS(last_error(), "still capturing");
  a->end_capture(0, 5);
  CHECK_EQ(a->release_pool(0, 5), 0);
  CHECK(a->begin_capture(99, 5, S(1)) < 0);
  CHECK_CONTAINS(last_error(), "bad device");
}
