// The memory backend under the allocator: where bytes physically come from, and stream/event ordering.
// Two implementations: backend_host.cpp (aligned host memory, fake streams and events; runs every line of
// the allocator logic without a GPU) and backend_cuda.cpp (CUDA driver API loaded at run time with
// dlopen("libcuda.so.1") + cuGetProcAddress; virtual memory for the arena). No static cudart anywhere.
//
// Invariants: every function is thread safe; none throws (failures return false / nullptr and fill
// `err`); a reservation's address range never moves while it exists.
// How the allocator calls it (allocator.cpp, arena.cpp, caching.cpp):
//  - every call for device d is made under d's allocator mutex, so calls for one device never overlap;
//  - alloc_segment sizes are multiples of 2 MiB; the returned pointer must be aligned to >= 2 MiB on CUDA
//    (cuMemAlloc gives that) and is aligned to the 2 MiB granule on the host;
//  - map/unmap are called ONE GRANULE AT A TIME (offset and bytes == granularity(device)), and unmap only
//    on a granule previously mapped (so a CUDA backend may keep one cuMemCreate handle per granule);
//    release is called after every granule was unmapped; map must make the range read/write for device;
//  - record_event may return nullptr on failure: the allocator then keeps the block out of reuse and
//    retries later; destroy_event is called exactly once per non-null event, after event_done or at
//    teardown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hybrid_alloc {

using Stream = void*;  // cudaStream_t / CUstream as PyTorch passes it; an opaque id on the host backend
using Event = void*;   // CUevent on CUDA; an opaque id on the host backend

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual int device_count() = 0;
  virtual size_t granularity(int device) = 0;  // physical mapping granule (2 MiB on CUDA)

  // Plain segments for the caching path (cuMemAlloc / aligned host memory).
  virtual void* alloc_segment(int device, size_t bytes, std::string* err) = 0;
  virtual void free_segment(int device, void* ptr, size_t bytes) = 0;

  // Arena: reserve a virtual range, then map / unmap physical memory at granule-aligned offsets.
  virtual void* reserve(int device, size_t bytes, std::string* err) = 0;
  virtual bool map(int device, void* base, size_t offset, size_t bytes, std::string* err) = 0;
  virtual void unmap(int device, void* base, size_t offset, size_t bytes) = 0;
  virtual void release(int device, void* base, size_t bytes) = 0;

  // Stream ordering: record an event on a stream; query whether it has completed; destroy it.
  virtual Event record_event(int device, Stream stream) = 0;
  virtual bool event_done(Event event) = 0;
  virtual void destroy_event(Event event) = 0;

  // Device memory as the driver sees it (free, total); false if unknown.
  virtual bool mem_info(int device, size_t* free_bytes, size_t* total_bytes) = 0;
};

// HYBRID_ALLOC_BACKEND=auto|cuda|host. auto = cuda when libcuda.so.1 loads and a device exists, else host.
std::unique_ptr<Backend> make_backend(const std::string& choice, std::string* err);
std::unique_ptr<Backend> make_host_backend();
std::unique_ptr<Backend> make_cuda_backend(std::string* err);  // nullptr + err when unavailable

}  // namespace hybrid_alloc
