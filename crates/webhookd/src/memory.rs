//! The allocator's arenas. glibc's malloc gives threads up to 8 arenas per core and each keeps the memory
//! freed into it, so a worker whose allocations move between runtime and blocking threads holds far more
//! than it uses. One arena is enough for a process whose work runs on a couple of runtime threads: the
//! worker's peak RSS in the slow-endpoint benchmark fell from 67 to 60 MiB at the same rate.

/// Arenas glibc's malloc may use, unless the environment's `MALLOC_ARENA_MAX` says otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Limits glibc's malloc to `ARENAS` arenas; call before any other thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets one of malloc's parameters, and no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}
