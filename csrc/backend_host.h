// Host backend: aligned host memory standing in for device memory, so every line of the allocator runs
// without a GPU.
//  - segments: posix_memalign(2 MiB) (read/write host memory);
//  - arena: reserve = mmap(PROT_NONE, MAP_NORESERVE) aligned to 2 MiB, map = mprotect(READ|WRITE),
//    unmap = madvise(DONTNEED) + mprotect(PROT_NONE), release = munmap: the shape of CUDA VMM;
//  - streams: any pointer value is a stream id; events carry (stream, sequence number);
//  - event completion is controllable (the test hooks below, also exported as
//    hybrid_alloc_host_stream_hold/progress/release): by default a stream's work completes at once, so an
//    event is done as soon as it is recorded. After hold(s), events recorded on s stay pending until
//    progress(s) (or release(s)) says the stream caught up. The stream table is process-wide (shared by
//    every host backend instance) and thread safe.
//  - device_count: 8 fake devices (HYBRID_ALLOC_HOST_DEVICES=1..64 overrides);
//    mem_info: total = physical RAM, free = available RAM.
#pragma once

#include "backend.h"

namespace hybrid_alloc {

void host_stream_hold(Stream s);
void host_stream_progress(Stream s);
void host_stream_release(Stream s);
size_t host_pending_events();  // events recorded and not yet completed, all streams (for tests)

}  // namespace hybrid_alloc
