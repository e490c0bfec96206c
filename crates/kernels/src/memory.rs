//! How the process's allocator should treat the memory the ops free.
//!
//! The binary installs mimalloc as its global allocator (a training step allocates and
//! frees every activation and gradient, and the system allocator returns each large one to
//! the kernel). This module holds the one run-time setting that goes with it.

/// `mi_option_purge_delay` in mimalloc.h (the same index in its v2 and v3; the -sys crate
/// does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process rather than handing it back to the kernel.
///
/// By default mimalloc returns memory that stayed free for a second, and a training step's
/// activations, freed at the end of one step and needed again in the next, then come back
/// as fresh pages that the kernel zeroes: thousands of page faults per step. The process
/// keeps its peak instead, which it reaches every step anyway. `MIMALLOC_PURGE_DELAY`, when
/// set, still decides.
///
/// mimalloc's option table is plain memory that every allocating thread reads, so the
/// option is only set while the process has a single thread: call this first thing in
/// `main`. Returns whether it was set.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || !single_threaded() {
        return false;
    }
    // SAFETY: a documented option of the mimalloc library that the -sys crate links, set by
    // value while no other thread exists that could read the option table concurrently.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    true
}

/// Whether the process has exactly one thread (Linux's /proc; elsewhere unknown, so no).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .map(|count| count.trim() == "1")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    /// The test harness runs tests on threads of its own, so the option is refused here:
    /// the guard that keeps the write from racing with other threads' reads works.
    #[test]
    fn refused_while_other_threads_exist() {
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(2)));
        assert!(!super::keep_freed_memory());
    }
}
