#include "common.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace hybrid_alloc {

namespace {
thread_local char t_error[2048];
}

void set_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t_error, sizeof t_error, fmt, ap);
  va_end(ap);
}

void set_error_str(const std::string& msg) { snprintf(t_error, sizeof t_error, "%s", msg.c_str()); }
void clear_error() { t_error[0] = '\0'; }
const char* last_error() { return t_error; }

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

void DeviceLock::lock_slow() {
  for (int i = 0; i < 64; ++i) {
    int c = 0;
    if (s_.load(std::memory_order_relaxed) == 0 && s_.compare_exchange_weak(c, 1, std::memory_order_acquire))
      return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  int c = s_.exchange(2, std::memory_order_acquire);
  while (c != 0) {
    syscall(SYS_futex, reinterpret_cast<int*>(&s_), FUTEX_WAIT_PRIVATE, 2, nullptr, nullptr, 0);
    c = s_.exchange(2, std::memory_order_acquire);
  }
}

void DeviceLock::wake() {
  syscall(SYS_futex, reinterpret_cast<int*>(&s_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

std::string fmt_bytes(uint64_t b) {
  char buf[64];
  const char* unit = "B";
  double v = double(b);
  if (b >= (1ull << 30)) {
    v /= double(1ull << 30);
    unit = "GiB";
  } else if (b >= (1ull << 20)) {
    v /= double(1ull << 20);
    unit = "MiB";
  } else if (b >= (1ull << 10)) {
    v /= 1024.0;
    unit = "KiB";
  }
  if (unit[0] == 'B')
    snprintf(buf, sizeof buf, "%llu B", (unsigned long long)b);
  else
    snprintf(buf, sizeof buf, "%.2f %s (%llu B)", v, unit, (unsigned long long)b);
  return buf;
}

std::string fmt_ptr(const void* p) {
  char buf[32];
  snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)(uintptr_t)p);
  return buf;
}

}  // namespace hybrid_alloc
