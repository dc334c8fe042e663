// ns per malloc+free pair through the C ABI (host backend) next to glibc malloc/free, same sequences,
// same run. Median of several repetitions.
//
// Workloads (sizes and orders drawn up front with a fixed seed, so both allocators see the same calls):
//   pair      : malloc then free at once (warm cache), realistic size mix
//   window    : 256 live blocks; each step frees a random live block and allocates a new one
//   small     : the window workload with small sizes only (512 B .. 1 MiB)
// Realistic mix: 90% small activations log-uniform in [512 B, 1 MiB], 10% large in [2 MiB, 64 MiB].
// Usage: bench_alloc [steps=200000] [reps=7]
#include <algorithm>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "hybrid_alloc.h"

namespace {

struct Work {
  std::vector<size_t> sizes;
  std::vector<uint32_t> victims;
};

Work make(size_t steps, bool small_only, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  Work w;
  w.sizes.resize(steps);
  w.victims.resize(steps);
  for (size_t i = 0; i < steps; ++i) {
    bool large = !small_only && u(rng) < 0.10;
    double lo = large ? std::log(2.0 * (1 << 20)) : std::log(512.0);
    double hi = large ? std::log(64.0 * (1 << 20)) : std::log(1.0 * (1 << 20));
    w.sizes[i] = static_cast<size_t>(std::exp(lo + (hi - lo) * u(rng)));
    w.victims[i] = static_cast<uint32_t>(rng());
  }
  return w;
}

// Thread CPU time, not wall time: the figure stays meaningful on a shared, oversubscribed machine (time
// spent descheduled is not the allocator's).
struct Clock {
  struct time_point {
    double ns;
  };
  static time_point now() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return {double(ts.tv_sec) * 1e9 + double(ts.tv_nsec)};
  }
};
double elapsed_ns(Clock::time_point a, Clock::time_point b) { return b.ns - a.ns; }

template <class Alloc, class Free>
double run_pair(const Work& w, Alloc al, Free fr) {
  auto t0 = Clock::now();
  for (size_t s : w.sizes) {
    void* p = al(s);
    fr(p, s);
  }
  auto t1 = Clock::now();
  return elapsed_ns(t0, t1) / double(w.sizes.size());
}

template <class Alloc, class Free>
double run_window(const Work& w, Alloc al, Free fr) {
  const size_t kLive = 256;
  std::vector<void*> live(kLive);
  std::vector<size_t> live_n(kLive);
  for (size_t i = 0; i < kLive; ++i) {
    live_n[i] = w.sizes[i];
    live[i] = al(live_n[i]);
  }
  auto t0 = Clock::now();
  for (size_t i = 0; i < w.sizes.size(); ++i) {
    size_t v = w.victims[i] % kLive;
    fr(live[v], live_n[v]);
    live_n[v] = w.sizes[i];
    live[v] = al(live_n[v]);
  }
  auto t1 = Clock::now();
  for (size_t i = 0; i < kLive; ++i) fr(live[i], live_n[i]);
  return elapsed_ns(t0, t1) / double(w.sizes.size());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void* ours_alloc(size_t n) { return hybrid_alloc_malloc(static_cast<ssize_t>(n), 0, nullptr); }
void ours_free(void* p, size_t n) { hybrid_alloc_free(p, static_cast<ssize_t>(n), 0, nullptr); }
// Keeps the compiler from pairing glibc's malloc/free away.
inline void escape(void* p) { asm volatile("" : : "g"(p) : "memory"); }
void* glibc_alloc(size_t n) {
  void* p = malloc(n);
  escape(p);
  return p;
}
void glibc_free(void* p, size_t) {
  escape(p);
  free(p);
}

}  // namespace

int main(int argc, char** argv) {
  size_t steps = argc > 1 ? strtoul(argv[1], nullptr, 10) : 200000;
  int reps = argc > 2 ? atoi(argv[2]) : 7;
  if (hybrid_alloc_configure("backend", "host") != 0) {
    fprintf(stderr, "%s\n", hybrid_alloc_last_error());
    return 1;
  }
  Work mix = make(steps, false, 1), small = make(steps, true, 2);
  struct Row {
    const char* name;
    const Work* w;
    bool window;
  } rows[] = {{"pair (mix)", &mix, false}, {"window (mix)", &mix, true}, {"window (small)", &small, true}};
  printf("backend %s, %zu steps x %d reps, median thread-CPU ns per malloc+free pair\n", hybrid_alloc_backend_name(), steps,
         reps);
  {  // machine speed reference: glibc's tcache fast path (a 64 B pair is ~10-15 ns on a quiet modern core)
    std::vector<double> cal;
    for (int i = 0; i < reps; ++i) {
      auto t0 = Clock::now();
      for (size_t k = 0; k < steps; ++k) glibc_free(glibc_alloc(64), 64);
      cal.push_back(elapsed_ns(t0, Clock::now()) / double(steps));
    }
    printf("calibration: glibc malloc(64)+free pair %.1f ns\n", median(cal));
  }
  printf("%-16s %12s %14s %12s %12s\n", "workload", "hybrid_alloc", "+trace on", "glibc", "ours/glibc");
  for (const Row& r : rows) {
    std::vector<double> ours, traced, glibc;
    for (int i = 0; i < reps; ++i) {
      hybrid_alloc_trace_enable(0, 0);
      ours.push_back(r.window ? run_window(*r.w, ours_alloc, ours_free) : run_pair(*r.w, ours_alloc, ours_free));
      hybrid_alloc_trace_enable(1, 65536);
      traced.push_back(r.window ? run_window(*r.w, ours_alloc, ours_free) : run_pair(*r.w, ours_alloc, ours_free));
      hybrid_alloc_trace_enable(0, 0);
      glibc.push_back(r.window ? run_window(*r.w, glibc_alloc, glibc_free) : run_pair(*r.w, glibc_alloc, glibc_free));
    }
    double o = median(ours), t = median(traced), g = median(glibc);
    printf("%-16s %12.1f %14.1f %12.1f %12.2f\n", r.name, o, t, g, o / g);
  }
  return 0;
}
