/* hybrid-alloc public C ABI.
 *
 * Loaded by PyTorch with
 *   torch.cuda.memory.CUDAPluggableAllocator(path, "hybrid_alloc_malloc", "hybrid_alloc_free")
 * and driven by the pybind11 module hybrid_alloc._core (linked to the same library: one allocator state
 * per process). Only symbols prefixed hybrid_alloc_ are exported. No Python, no GIL; every function is
 * thread safe. Functions never abort and never throw: failures return NULL / a negative code and set the
 * calling thread's last error (hybrid_alloc_last_error).
 *
 * Two paths under one per-device lock:
 *  - the caching path (hybrid_alloc_malloc/free): 512 B size granules, small (<= 1 MiB) blocks carved from
 *    2 MiB segments, large blocks from 20 MiB segments (requests < 10 MiB) or segments of the request
 *    rounded up to 2 MiB; blocks split and merge inside their segment; per-stream free lists;
 *    stream-ordered reuse (see hybrid_alloc_record_stream); private graph-capture pools.
 *  - the slab arena (hybrid_alloc_slab_alloc/free): one virtual reservation per device, physical memory
 *    mapped per 2 MiB granule, named/tagged slabs of exact size that never move.
 *    hybrid_alloc_malloc requests made while the current tag is an "arena tag" (configure key arena_tags,
 *    default "kv_cache") are served from the arena too (so a KV cache allocated through
 *    torch.cuda.MemPool lands in a natural slab).
 */
#ifndef HYBRID_ALLOC_H
#define HYBRID_ALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#ifdef __cplusplus
extern "C" {
#endif

#define HYBRID_ALLOC_API __attribute__((visibility("default")))
#define HYBRID_ALLOC_ABI_VERSION 1
#define HYBRID_ALLOC_STATS_VERSION 1
#define HYBRID_ALLOC_TAG_MAX 32 /* bytes of a tag name including the terminating NUL */

/* The stream type as PyTorch passes it (cudaStream_t is a pointer); the host backend treats it as an id. */
typedef void *hybrid_alloc_stream_t;

/* ---- The calls PyTorch makes (CUDAPluggableAllocator) ---- */
/* size 0 returns NULL without error; size < 0 or exhaustion returns NULL with last_error set (on
 * exhaustion it names the request size, tag, stream and the caching/arena state). */
HYBRID_ALLOC_API void *hybrid_alloc_malloc(ssize_t size, int device, hybrid_alloc_stream_t stream);
/* `stream` is the stream the free is issued on: when it differs from the allocation stream it counts as
 * a use (as record_stream). NULL ptr is a no-op; an unknown pointer (never allocated, double free) is a
 * recorded error (last_error + stats.num_invalid_frees), never a crash. */
HYBRID_ALLOC_API void hybrid_alloc_free(void *ptr, ssize_t size, int device, hybrid_alloc_stream_t stream);
/* Optional hooks PyTorch accepts: set_init_fn, set_reset_fn, set_memory_fraction_fn, set_record_stream_fn,
 * set_begin_allocate_to_pool / set_end_allocate_to_pool / set_release_pool (graph capture pools). */
HYBRID_ALLOC_API void hybrid_alloc_init(int device_count);
/* Returns free whole segments of the caching path and unmaps arena granules no live slab touches. */
HYBRID_ALLOC_API void hybrid_alloc_empty_cache(void);
/* Caps the memory held on `device` (caching segments + mapped arena granules) at fraction x total. */
HYBRID_ALLOC_API void hybrid_alloc_set_memory_fraction(double fraction, int device);
/* Stream-ordered reuse: a block freed on its allocation stream with no recorded uses is reusable at once
 * on that stream. Once `stream` (!= the allocation stream) used it, the block becomes reusable only after
 * an event recorded at free time on every using stream has completed. */
HYBRID_ALLOC_API void hybrid_alloc_record_stream(void *ptr, hybrid_alloc_stream_t stream);
/* CUDA graph capture: allocations on `stream` while it captures go to private pool `pool_id` (charged to
 * tag "cudagraph" when the current tag is the default "other") and are not recycled to other use until
 * the pool is released; blocks of the pool freed before release are reused only by that pool.
 * end_capture ends every capture into `pool_id` on `device`. release_pool returns the pool's segments
 * once its last block is freed (at once if none is live); releasing an unknown pool is a no-op. */
HYBRID_ALLOC_API void hybrid_alloc_begin_capture(int device, uint64_t pool_id, hybrid_alloc_stream_t stream);
HYBRID_ALLOC_API void hybrid_alloc_end_capture(int device, uint64_t pool_id);
HYBRID_ALLOC_API void hybrid_alloc_release_pool(int device, uint64_t pool_id);

/* ---- Slab arena: named, tagged slabs of exact size that never move while they live ---- */
/* Reserve the device arena (bytes rounded up to the 2 MiB granule); 0 = on demand (a reservation of the
 * device's total memory, mapped granule by granule as slabs need it). Fails (< 0) while slabs are live. */
HYBRID_ALLOC_API int hybrid_alloc_arena_reserve(int device, size_t bytes);
/* A slab of exactly `size` bytes aligned to the configured alignment (default 256). tag NULL = current
 * tag; name may be NULL. Slab frees through hybrid_alloc_slab_free are immediate (the caller orders
 * them); arena blocks freed through hybrid_alloc_free wait for an event on the freeing stream. */
HYBRID_ALLOC_API void *hybrid_alloc_slab_alloc(int device, size_t size, const char *name, const char *tag);
HYBRID_ALLOC_API int hybrid_alloc_slab_free(void *ptr); /* 0, or < 0 if ptr is not a live slab */

typedef struct hybrid_alloc_slab_info {
  void *ptr;
  uint64_t size;    /* exact requested size */
  uint64_t carved;  /* bytes taken from the arena (size rounded up to the alignment) */
  uint64_t offset;  /* from the arena base */
  char name[64];    /* truncated */
  char tag[HYBRID_ALLOC_TAG_MAX];
} hybrid_alloc_slab_info;
/* Live slabs of `device` in address order: fills *out for slab `index` and returns the number of live
 * slabs (index out of range: only the count), or < 0. */
HYBRID_ALLOC_API int hybrid_alloc_get_slab(int device, int index, hybrid_alloc_slab_info *out);

/* ---- Tags: a thread-local stack charged with each allocation ("other" at the bottom by default) ----
 * Names: 1..31 bytes of [A-Za-z0-9_.:-]; at most 256 distinct tags per process. Built in: other, weights,
 * kv_cache, activations, cudagraph. */
HYBRID_ALLOC_API int hybrid_alloc_set_tag(const char *tag); /* replaces the top of the stack */
HYBRID_ALLOC_API int hybrid_alloc_push_tag(const char *tag); /* < 0 when 64 deep */
HYBRID_ALLOC_API int hybrid_alloc_pop_tag(void);             /* < 0 at the bottom */
HYBRID_ALLOC_API const char *hybrid_alloc_current_tag(void); /* valid for the process lifetime */

/* ---- Statistics (versioned: callers set .version and .struct_size before the call) ----
 * current/peak count the bytes callers asked for (exact, not rounded). reserved counts bytes held from
 * the backend: caching segments (per tag: segments created for an allocation of that tag) and mapped
 * arena granules (per tag: the slab's carved bytes). */
typedef struct hybrid_alloc_counter {
  uint64_t current; /* live bytes */
  uint64_t peak;    /* maximum of current since start or the last reset */
  uint64_t reserved; /* bytes held from the backend on behalf of this tag/device (live + cached) */
  uint64_t alloc_count;
  uint64_t free_count;
} hybrid_alloc_counter;

typedef struct hybrid_alloc_stats {
  uint32_t version;     /* HYBRID_ALLOC_STATS_VERSION */
  uint32_t struct_size; /* sizeof(hybrid_alloc_stats) */
  hybrid_alloc_counter total;
  hybrid_alloc_counter arena;   /* slab arena (.reserved = mapped granules) */
  hybrid_alloc_counter caching; /* caching path (.reserved = segments held) */
  uint64_t arena_reserved_bytes; /* size of the arena's virtual reservation (0 if none yet) */
  uint64_t num_ooms;
  uint64_t num_invalid_frees;   /* frees of unknown pointers charged to this device */
  uint64_t num_segments;        /* caching segments held */
  uint64_t pending_free_bytes;  /* freed blocks waiting for stream events or a capture's end */
  uint64_t limit_bytes;         /* cap on reserved bytes (device_limit_bytes / memory fraction); 0 = none */
} hybrid_alloc_stats;

HYBRID_ALLOC_API int hybrid_alloc_get_stats(int device, hybrid_alloc_stats *out);
/* Per-tag counters; index 0..n-1 over the tags seen on this device (first-use order). Returns the number
 * of tags (index out of range: only the count), or < 0. */
HYBRID_ALLOC_API int hybrid_alloc_get_tag_stats(int device, int index, char *tag_out, size_t tag_out_size,
                                                hybrid_alloc_counter *out);
HYBRID_ALLOC_API void hybrid_alloc_reset_peak_stats(int device);

/* ---- Trace: bounded ring (per device) of (time ns, op, device, stream, pointer, size, tag) ----
 * Off by default (zero cost); on with hybrid_alloc_trace_enable or HYBRID_ALLOC_TRACE=path (then dumped
 * to path at process exit). When a ring is full the oldest event is overwritten and counted as dropped.
 * Dump format, JSON lines: first a header
 *   {"type":"header","version":1,"events":N,"dropped":D,"capacity":C,"backend":"host","segments":1}
 * then one event per line in time order:
 *   {"t_ns":T,"op":"alloc","device":0,"stream":"0x0","ptr":"0x7f..","size":512,"tag":"other","pool":0}
 * t_ns: CLOCK_MONOTONIC ns; op: alloc|free (caching path), slab_alloc|slab_free (arena), oom (ptr "0x0",
 * size = request), segment_map|segment_unmap (the caching path took a segment from / gave one back to
 * the backend: ptr = segment base, size = segment bytes, tag = the tag charged with it, stream = the
 * segment's stream); size: bytes requested; pool: graph pool id (0 = general). "segments":1 in the header
 * marks traces that record segment events (older dumps lack it). Segments mapped before tracing started
 * (or dropped from the ring) are absent: reserved bytes are exact when tracing is on from the start. */
HYBRID_ALLOC_API int64_t hybrid_alloc_trace_dump(const char *path); /* events written, or < 0 */
/* capacity_events: ring size per device (0 = keep; default 65536). Changing it clears the rings. */
HYBRID_ALLOC_API void hybrid_alloc_trace_enable(int enabled, size_t capacity_events);
HYBRID_ALLOC_API void hybrid_alloc_trace_clear(void);
HYBRID_ALLOC_API uint64_t hybrid_alloc_trace_dropped(void);

/* ---- Configuration and errors ----
 * Keys (values are strings):
 *   backend            auto|cuda|host (only before the first allocation; env HYBRID_ALLOC_BACKEND)
 *   alignment          slab alignment, a power of two in [16, 2097152] (default 256)
 *   arena_fit          first|best (default first)
 *   arena_tags         comma-separated tags whose hybrid_alloc_malloc requests use the arena
 *                      (default "kv_cache"; "" = none)
 *   device_limit_bytes cap on bytes held per device (segments + mapped granules); 0 = none
 *   trace              0|1
 *   trace_capacity     events per device ring, >= 1
 * Returns 0, or < 0 with last_error naming the key and the accepted values. */
HYBRID_ALLOC_API int hybrid_alloc_configure(const char *key, const char *value);
HYBRID_ALLOC_API const char *hybrid_alloc_last_error(void); /* thread-local; "" if none */
HYBRID_ALLOC_API int hybrid_alloc_abi_version(void);
HYBRID_ALLOC_API const char *hybrid_alloc_backend_name(void); /* "host" or "cuda" (creates the backend) */

/* ---- Host backend test hooks (no effect on CUDA streams) ----
 * Host streams complete their work at once by default: an event recorded on them is done immediately.
 * hold(stream): events recorded on `stream` from now on stay pending (simulates queued GPU work);
 * progress(stream): every event recorded so far on `stream` completes (the GPU caught up), hold stays;
 * release(stream): progress + end the hold. Return 0. */
HYBRID_ALLOC_API int hybrid_alloc_host_stream_hold(hybrid_alloc_stream_t stream);
HYBRID_ALLOC_API int hybrid_alloc_host_stream_progress(hybrid_alloc_stream_t stream);
HYBRID_ALLOC_API int hybrid_alloc_host_stream_release(hybrid_alloc_stream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* HYBRID_ALLOC_H */
