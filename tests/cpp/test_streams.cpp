#include "helpers.h"

TEST(streams_same_stream_immediate) {
  auto a = fresh();
  host_stream_hold(S(1));  // stream 1 has queued work: irrelevant for its own reuse
  void* p = a->malloc(8192, 0, S(1));
  a->free(p, 8192, 0, S(1));
  CHECK_EQ(stats_of(*a).pending_free_bytes, 0u);
  CHECK(a->malloc(8192, 0, S(1)) == p);
  a->free(p, 8192, 0, S(1));
  host_stream_release(S(1));
  CHECK_INVARIANTS(*a);
}

TEST(streams_record_stream_waits_for_event) {
  auto a = fresh();
  void* p = a->malloc(8192, 0, S(1));
  a->record_stream(p, S(2));
  a->record_stream(p, S(2));  // deduplicated
  a->record_stream(p, S(1));  // own stream: no-op
  host_stream_hold(S(2));
  a->free(p, 8192, 0, S(1));
  CHECK_EQ(stats_of(*a).pending_free_bytes, 8192u);
  CHECK_EQ(stats_of(*a).total.current, 0u);  // the caller freed it
  void* q = a->malloc(8192, 0, S(1));
  CHECK(q != p);  // still in use by stream 2
  CHECK_INVARIANTS(*a);
  host_stream_progress(S(2));  // stream 2 caught up
  void* r = a->malloc(8192, 0, S(1));
  CHECK(r == p);
  CHECK_EQ(stats_of(*a).pending_free_bytes, 0u);
  host_stream_release(S(2));
  a->free(q, 0, 0, S(1));
  a->free(r, 0, 0, S(1));
  CHECK_INVARIANTS(*a);
}

TEST(streams_two_users_need_both_events) {
  auto a = fresh();
  void* p = a->malloc(4096, 0, S(1));
  a->record_stream(p, S(2));
  a->record_stream(p, S(3));
  host_stream_hold(S(2));
  host_stream_hold(S(3));
  a->free(p, 4096, 0, S(1));
  host_stream_progress(S(2));
  void* q = a->malloc(4096, 0, S(1));
  CHECK(q != p);  // stream 3 still pending
  host_stream_progress(S(3));
  void* r = a->malloc(4096, 0, S(1));
  CHECK(r == p);
  host_stream_release(S(2));
  host_stream_release(S(3));
  a->free(q, 0, 0, S(1));
  a->free(r, 0, 0, S(1));
  CHECK_INVARIANTS(*a);
}

TEST(streams_cross_stream_free) {
  auto a = fresh();
  void* p = a->malloc(4096, 0, S(1));
  host_stream_hold(S(2));
  a->free(p, 4096, 0, S(2));  // freed from stream 2: a use of stream 2
  CHECK_EQ(stats_of(*a).pending_free_bytes, 4096u);
  void* q = a->malloc(4096, 0, S(2));
  CHECK(q != p);  // never on stream 2's list
  void* q1 = a->malloc(4096, 0, S(1));
  CHECK(q1 != p);  // and not yet on stream 1's
  host_stream_release(S(2));
  void* r = a->malloc(4096, 0, S(1));
  CHECK(r == p);  // back on its segment's stream once stream 2 is done
  for (void* x : {q, q1, r}) a->free(x, 0, 0, nullptr);
  CHECK_INVARIANTS(*a);
}

TEST(streams_empty_cache_waits_for_pending) {
  auto a = fresh();
  void* p = a->malloc(4096, 0, S(1));
  a->record_stream(p, S(2));
  host_stream_hold(S(2));
  a->free(p, 4096, 0, S(1));
  a->empty_cache();
  CHECK_EQ(stats_of(*a).num_segments, 1u);  // pending block: its segment is not released
  host_stream_release(S(2));
  a->empty_cache();
  CHECK_EQ(stats_of(*a).num_segments, 0u);
  CHECK_INVARIANTS(*a);
}
