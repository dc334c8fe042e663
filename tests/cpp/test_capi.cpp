// The exact C ABI, through libhybrid_alloc.so, as PyTorch (CUDAPluggableAllocator) and ctypes call it.
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "check.h"
#include "hybrid_alloc.h"

namespace {
const char* g_self = nullptr;
hybrid_alloc_stream_t S(uintptr_t id) { return reinterpret_cast<hybrid_alloc_stream_t>(id); }
hybrid_alloc_stats stats(int device) {
  hybrid_alloc_stats s{};
  s.version = HYBRID_ALLOC_STATS_VERSION;
  s.struct_size = sizeof s;
  hybrid_alloc_get_stats(device, &s);
  return s;
}
}  // namespace

TEST(capi_pytorch_calls) {
  CHECK_EQ(hybrid_alloc_abi_version(), HYBRID_ALLOC_ABI_VERSION);
  CHECK_EQ(hybrid_alloc_configure("backend", "host"), 0);
  hybrid_alloc_init(1);
  CHECK(std::string(hybrid_alloc_backend_name()) == "host");
  void* p = hybrid_alloc_malloc(1 << 20, 0, S(0));
  REQUIRE(p);
  CHECK_EQ(stats(0).caching.current, 1u << 20);
  hybrid_alloc_record_stream(p, S(2));
  hybrid_alloc_host_stream_hold(S(2));
  hybrid_alloc_free(p, 1 << 20, 0, S(0));
  CHECK_EQ(stats(0).pending_free_bytes, 1u << 20);
  hybrid_alloc_host_stream_release(S(2));
  void* q = hybrid_alloc_malloc(1 << 20, 0, S(0));
  CHECK(q == p);
  hybrid_alloc_free(q, 1 << 20, 0, S(0));
  hybrid_alloc_set_memory_fraction(0.5, 0);
  CHECK(stats(0).limit_bytes > 0);
  hybrid_alloc_set_memory_fraction(0.0, 0);
  hybrid_alloc_begin_capture(0, 11, S(3));
  void* g = hybrid_alloc_malloc(4096, 0, S(3));
  hybrid_alloc_end_capture(0, 11);
  hybrid_alloc_free(g, 4096, 0, S(3));
  hybrid_alloc_release_pool(0, 11);
  hybrid_alloc_empty_cache();
  CHECK_EQ(stats(0).total.reserved, 0u);
  CHECK_EQ(stats(0).total.current, 0u);
}

TEST(capi_errors_never_crash) {
  int x = 0;
  hybrid_alloc_free(&x, 4, 0, S(0));
  CHECK(std::string(hybrid_alloc_last_error()).find("unknown pointer") != std::string::npos);
  CHECK_EQ(stats(0).num_invalid_frees, 1u);
  CHECK(hybrid_alloc_malloc(-1, 0, S(0)) == nullptr);
  CHECK(hybrid_alloc_configure("alignment", "100") < 0);
  CHECK(std::string(hybrid_alloc_last_error()).find("power of two") != std::string::npos);
  CHECK(hybrid_alloc_configure("backend", "cuda") < 0);  // too late: host already runs
  CHECK(hybrid_alloc_get_stats(0, nullptr) < 0);
  CHECK(hybrid_alloc_slab_free(&x) < 0);
  CHECK(hybrid_alloc_pop_tag() < 0);
  hybrid_alloc_record_stream(&x, S(1));
  hybrid_alloc_begin_capture(0, 0, S(1));  // rejected, reported
  CHECK(std::string(hybrid_alloc_last_error()).find("pool id 0") != std::string::npos);
}

TEST(capi_slabs_tags_stats) {
  CHECK_EQ(hybrid_alloc_arena_reserve(0, 32u << 20), 0);
  CHECK_EQ(hybrid_alloc_push_tag("weights"), 0);
  CHECK(std::string(hybrid_alloc_current_tag()) == "weights");
  void* w = hybrid_alloc_malloc(1000, 0, S(0));
  CHECK_EQ(hybrid_alloc_pop_tag(), 0);
  void* s = hybrid_alloc_slab_alloc(0, 5000, "layer0.kv", "kv_cache");
  REQUIRE(w && s);
  hybrid_alloc_slab_info info{};
  CHECK_EQ(hybrid_alloc_get_slab(0, 0, &info), 1);
  CHECK(info.ptr == s);
  CHECK(std::string(info.name) == "layer0.kv");
  int n = hybrid_alloc_get_tag_stats(0, 0, nullptr, 0, nullptr);
  bool found = false;
  for (int i = 0; i < n; ++i) {
    char name[HYBRID_ALLOC_TAG_MAX];
    hybrid_alloc_counter c{};
    hybrid_alloc_get_tag_stats(0, i, name, sizeof name, &c);
    if (std::string(name) == "weights") {
      found = true;
      CHECK_EQ(c.current, 1000u);
    }
  }
  CHECK(found);
  hybrid_alloc_free(w, 1000, 0, S(0));
  CHECK_EQ(hybrid_alloc_slab_free(s), 0);
  hybrid_alloc_reset_peak_stats(0);
  CHECK_EQ(stats(0).total.peak, 0u);
}

TEST(capi_trace_at_exit) {
  std::string path = "/tmp/ha_exit_trace_" + std::to_string(getpid()) + ".jsonl";
  std::string cmd = "HYBRID_ALLOC_BACKEND=host HYBRID_ALLOC_TRACE=" + path + " " + g_self + " --child";
  REQUIRE(system(cmd.c_str()) == 0);
  std::ifstream f(path);
  std::string line;
  int n = 0;
  bool header = false;
  while (std::getline(f, line)) {
    if (n == 0) header = line.find("\"type\":\"header\"") != std::string::npos;
    ++n;
  }
  CHECK(header);
  CHECK_EQ(n, 1 + 4);  // segment_map, alloc, slab_alloc, free; the live slab is still live at exit
  std::remove(path.c_str());
}

int main(int argc, char** argv) {
  g_self = argv[0];
  if (argc > 1 && std::string(argv[1]) == "--child") {
    // Exits with live memory and tracing on: the atexit dump must work and nothing may crash.
    void* p = hybrid_alloc_malloc(4096, 0, nullptr);
    hybrid_alloc_slab_alloc(0, 4096, "left-live", nullptr);
    hybrid_alloc_free(p, 4096, 0, nullptr);
    return 0;
  }
  return ha_test::run_all(argc, argv);
}
