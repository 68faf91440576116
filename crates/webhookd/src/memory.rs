//! The memory allocator: jemalloc, with one arena and a background thread that hands freed memory back.
//!
//! Measured in the benchmarks (docs/benchmarks.md): with glibc's malloc limited to one arena, malloc, free
//! and the arena's lock took about a quarter of the worker's CPU at full load, and more arenas held more
//! memory. jemalloc's per-thread caches keep the runtime threads from contending, so one arena is enough.

#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options; the `_RJEM_MALLOC_CONF` environment variable is applied over them.
// Read at the first allocation. Dirty pages go back to the system gradually within about a second, purged
// by jemalloc's own thread rather than by the threads delivering webhooks. The symbol carries the `_rjem_`
// prefix of tikv-jemalloc-sys's default build; tests/ops.rs checks that the options are in effect.
#[cfg(unix)]
#[export_name = "_rjem_malloc_conf"]
// SAFETY: the pointer comes from a C string literal, which is 'static and NUL-terminated.
static MALLOC_CONF: Option<&std::ffi::c_char> = Some(unsafe {
    &*c"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr()
});
