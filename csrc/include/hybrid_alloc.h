/* hybrid-alloc public C ABI.
 *
 * Loaded by PyTorch with
 *   torch.cuda.memory.CUDAPluggableAllocator(path, "hybrid_alloc_malloc", "hybrid_alloc_free")
 * and driven by the pybind11 module hybrid_alloc._core (linked to the same library: one allocator state
 * per process). Only symbols prefixed hybrid_alloc_ are exported. No Python, no GIL; every function is
 * thread safe. Functions never abort: failures return NULL / a negative code and set the thread's
 * last error (hybrid_alloc_last_error).
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
HYBRID_ALLOC_API void *hybrid_alloc_malloc(ssize_t size, int device, hybrid_alloc_stream_t stream);
HYBRID_ALLOC_API void hybrid_alloc_free(void *ptr, ssize_t size, int device, hybrid_alloc_stream_t stream);
/* Optional hooks PyTorch accepts: set_init_fn, set_reset_fn, set_memory_fraction_fn, set_record_stream_fn,
 * set_begin_allocate_to_pool / set_end_allocate_to_pool / set_release_pool (graph capture pools). */
HYBRID_ALLOC_API void hybrid_alloc_init(int device_count);
HYBRID_ALLOC_API void hybrid_alloc_empty_cache(void); /* release cached, unused segments */
HYBRID_ALLOC_API void hybrid_alloc_set_memory_fraction(double fraction, int device);
HYBRID_ALLOC_API void hybrid_alloc_record_stream(void *ptr, hybrid_alloc_stream_t stream);
/* CUDA graph capture: allocations on `stream` while it captures go to private pool `pool_id`
 * and are not recycled to other use until the pool is released. */
HYBRID_ALLOC_API void hybrid_alloc_begin_capture(int device, uint64_t pool_id, hybrid_alloc_stream_t stream);
HYBRID_ALLOC_API void hybrid_alloc_end_capture(int device, uint64_t pool_id);
HYBRID_ALLOC_API void hybrid_alloc_release_pool(int device, uint64_t pool_id);

/* ---- Slab arena: named, tagged slabs of exact size that never move while they live ---- */
/* Reserve the device arena (bytes rounded up to the 2 MiB granule); 0 = grow on demand. Returns 0 or < 0. */
HYBRID_ALLOC_API int hybrid_alloc_arena_reserve(int device, size_t bytes);
HYBRID_ALLOC_API void *hybrid_alloc_slab_alloc(int device, size_t size, const char *name, const char *tag);
HYBRID_ALLOC_API int hybrid_alloc_slab_free(void *ptr); /* 0, or < 0 if ptr is not a live slab */

/* ---- Tags: a thread-local current tag charged with each allocation ("other" by default) ---- */
HYBRID_ALLOC_API int hybrid_alloc_set_tag(const char *tag); /* replaces the top of the stack */
HYBRID_ALLOC_API int hybrid_alloc_push_tag(const char *tag);
HYBRID_ALLOC_API int hybrid_alloc_pop_tag(void);
HYBRID_ALLOC_API const char *hybrid_alloc_current_tag(void);

/* ---- Statistics (versioned: callers set .version and .struct_size before the call) ---- */
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
  hybrid_alloc_counter arena;   /* slab arena */
  hybrid_alloc_counter caching; /* caching path */
  uint64_t arena_reserved_bytes; /* bytes of the arena reservation that are mapped */
  uint64_t num_ooms;
} hybrid_alloc_stats;

HYBRID_ALLOC_API int hybrid_alloc_get_stats(int device, hybrid_alloc_stats *out);
/* Per-tag counters; index 0..n-1 over the tags seen on this device. Returns the number of tags, or < 0. */
HYBRID_ALLOC_API int hybrid_alloc_get_tag_stats(int device, int index, char *tag_out, size_t tag_out_size,
                                                hybrid_alloc_counter *out);
HYBRID_ALLOC_API void hybrid_alloc_reset_peak_stats(int device);

/* ---- Trace: bounded ring of (time ns, op, device, stream, pointer, size, tag) ---- */
/* Writes the buffered events as JSON lines to `path`; returns the number written or < 0. */
HYBRID_ALLOC_API int64_t hybrid_alloc_trace_dump(const char *path);
HYBRID_ALLOC_API void hybrid_alloc_trace_enable(int enabled, size_t capacity_events);
HYBRID_ALLOC_API void hybrid_alloc_trace_clear(void);

/* ---- Configuration and errors ---- */
/* key=value, e.g. "alignment=256", "backend=host", "trace_capacity=1048576". Returns 0, or < 0 with
 * last_error naming the key and the accepted values. */
HYBRID_ALLOC_API int hybrid_alloc_configure(const char *key, const char *value);
HYBRID_ALLOC_API const char *hybrid_alloc_last_error(void); /* thread-local; "" if none */
HYBRID_ALLOC_API int hybrid_alloc_abi_version(void);
HYBRID_ALLOC_API const char *hybrid_alloc_backend_name(void); /* "host" or "cuda" */

#ifdef __cplusplus
}
#endif
#endif /* HYBRID_ALLOC_H */
