#include "backend_host.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "common.h"

namespace hybrid_alloc {

namespace {

struct StreamState {
  uint64_t recorded = 0;   // sequence number of the last event recorded
  uint64_t completed = 0;  // every event with seq <= completed is done
  bool held = false;
};

struct HostEvent {
  Stream stream;
  uint64_t seq;
};

struct StreamTable {
  std::mutex mu;
  std::unordered_map<Stream, StreamState> streams;
  size_t pending = 0;  // approximate count for tests: recorded while held, not yet progressed
};

StreamTable& table() {
  static StreamTable* t = new StreamTable;  // leaked: usable from atexit handlers and late frees
  return *t;
}

class HostBackend final : public Backend {
 public:
  HostBackend() {
    const char* env = getenv("HYBRID_ALLOC_HOST_DEVICES");
    if (env) {
      long n = strtol(env, nullptr, 10);
      if (n >= 1 && n <= 64) ndev_ = static_cast<int>(n);
    }
  }
  const char* name() const override { return "host"; }
  int device_count() override { return ndev_; }
  size_t granularity(int) override { return kGranule; }

  void* alloc_segment(int device, size_t bytes, std::string* err) override {
    void* p = nullptr;
    int rc = posix_memalign(&p, kGranule, bytes);
    if (rc != 0) {
      *err = "host backend: posix_memalign(" + fmt_bytes(bytes) + ") on device " + std::to_string(device) +
             " failed: " + strerror(rc);
      return nullptr;
    }
    return p;
  }
  void free_segment(int, void* ptr, size_t) override { free(ptr); }

  void* reserve(int device, size_t bytes, std::string* err) override {
    size_t len = bytes + kGranule;
    void* p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      *err = "host backend: mmap reserve of " + fmt_bytes(bytes) + " on device " + std::to_string(device) +
             " failed: " + strerror(errno);
      return nullptr;
    }
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uintptr_t aligned = round_up(a, kGranule);
    if (aligned > a) munmap(p, aligned - a);
    size_t tail = (a + len) - (aligned + bytes);
    if (tail) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    return reinterpret_cast<void*>(aligned);
  }
  bool map(int device, void* base, size_t offset, size_t bytes, std::string* err) override {
    if (mprotect(static_cast<char*>(base) + offset, bytes, PROT_READ | PROT_WRITE) != 0) {
      *err = "host backend: mprotect map of " + fmt_bytes(bytes) + " on device " + std::to_string(device) +
             " failed: " + strerror(errno);
      return false;
    }
    return true;
  }
  void unmap(int, void* base, size_t offset, size_t bytes) override {
    char* p = static_cast<char*>(base) + offset;
    madvise(p, bytes, MADV_DONTNEED);
    mprotect(p, bytes, PROT_NONE);
  }
  void release(int, void* base, size_t bytes) override { munmap(base, bytes); }

  Event record_event(int, Stream stream) override {
    StreamTable& t = table();
    std::lock_guard<std::mutex> lk(t.mu);
    StreamState& st = t.streams[stream];
    uint64_t seq = ++st.recorded;
    if (!st.held)
      st.completed = seq;
    else
      ++t.pending;
    return new HostEvent{stream, seq};
  }
  bool event_done(Event event) override {
    auto* e = static_cast<HostEvent*>(event);
    StreamTable& t = table();
    std::lock_guard<std::mutex> lk(t.mu);
    return t.streams[e->stream].completed >= e->seq;
  }
  void destroy_event(Event event) override { delete static_cast<HostEvent*>(event); }

  bool mem_info(int, size_t* free_bytes, size_t* total_bytes) override {
    long page = sysconf(_SC_PAGESIZE), total = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
    if (page <= 0 || total <= 0) return false;
    *total_bytes = size_t(total) * size_t(page);
    *free_bytes = avail > 0 ? size_t(avail) * size_t(page) : 0;
    return true;
  }

 private:
  int ndev_ = 8;
};

void progress_locked(StreamTable& t, StreamState& st) {
  uint64_t n = st.recorded - st.completed;
  t.pending = t.pending >= n ? t.pending - n : 0;
  st.completed = st.recorded;
}

}  // namespace

void host_stream_hold(Stream s) {
  StreamTable& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  t.streams[s].held = true;
}

void host_stream_progress(Stream s) {
  StreamTable& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  progress_locked(t, t.streams[s]);
}

void host_stream_release(Stream s) {
  StreamTable& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  StreamState& st = t.streams[s];
  progress_locked(t, st);
  st.held = false;
}

size_t host_pending_events() {
  StreamTable& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  return t.pending;
}

std::unique_ptr<Backend> make_host_backend() { return std::unique_ptr<Backend>(new HostBackend); }

}  // namespace hybrid_alloc
