// Small shared helpers: rounding, the thread-local last error, clocks, byte formatting.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace hybrid_alloc {

constexpr size_t kGranule = size_t(2) << 20;  // 2 MiB: arena mapping granule, small segment size

inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
inline bool is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

// Thread-local last error (a fixed buffer: no allocation, no TLS destructor).
void set_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void set_error_str(const std::string& msg);
void clear_error();
const char* last_error();

uint64_t now_ns();

// The per-device lock: a futex mutex (0 free, 1 locked, 2 locked with waiters; Drepper's "Futexes are
// tricky" mutex 3) with a short spin. Cheaper than pthread_mutex_t in the uncontended hot path; its
// ordering is plain acquire/release atomics, so TSan models it.
class DeviceLock {
 public:
  void lock() {
    int c = 0;
    if (__builtin_expect(s_.compare_exchange_strong(c, 1, std::memory_order_acquire), 1)) return;
    lock_slow();
  }
  void unlock() {
    if (__builtin_expect(s_.exchange(0, std::memory_order_release) == 2, 0)) wake();
  }

 private:
  void lock_slow();
  void wake();
  std::atomic<int> s_{0};
};                  // CLOCK_MONOTONIC
std::string fmt_bytes(uint64_t b);  // "1.50 MiB (1572864 B)"
std::string fmt_ptr(const void* p);

}  // namespace hybrid_alloc
