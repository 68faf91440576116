//! The memory allocator: jemalloc, with one arena and a background thread that hands freed memory back.
//!
//! Measured in the benchmarks (docs/benchmarks.md): with glibc's malloc limited to one arena, malloc, free
//! and the arena's lock took about a quarter of the worker's CPU at full load, and more arenas held more
//! memory. jemalloc's per-thread caches keep the runtime threads from contending, so one arena is enough.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at the first allocation; the `_RJEM_MALLOC_CONF` environment variable
/// overrides them. Freed pages go back to the system after a second, by jemalloc's own thread rather than
/// by the threads delivering webhooks.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static u8> =
    Some(&b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);
