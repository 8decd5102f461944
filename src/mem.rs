//! Giving memory back to the kernel after bursts. glibc's malloc keeps what a burst (a pull, an
//! unpack, importing the built-in pause image) freed in its arenas, one per thread that allocated, and
//! raises its mmap threshold after large frees so that later big buffers come from those arenas too:
//! a daemon that pulled once keeps megabytes it no longer uses. berthd fixes the thresholds at start
//! ([`configure_allocator`]: big buffers are always mapped and unmapped, an arena's free top is
//! always trimmed) and calls [`release_free_memory`] when a burst is over, which returns the whole
//! free pages inside every arena (`malloc_trim(0)`).
#![allow(unsafe_code)]

/// Allocations from this size on get their own mapping, returned to the kernel when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;
/// Free memory at the top of an arena beyond this goes back to the kernel at once.
const TRIM_THRESHOLD: i32 = 256 * 1024;

/// Fixes glibc's mmap and trim thresholds (which otherwise grow after the first large free, up to
/// 32 and 64 MiB). Call once at start, before other threads allocate. A no-op on other C libraries.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's malloc parameters (under the main arena's lock); no
    // pointers are passed. Called at start, before the runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns the allocator's free pages to the kernel. A no-op where the C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no pointers
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freed burst is returned: RSS falls by most of it. Measured in a process of its own (the
    /// test below), since other tests allocate in this one at the same time.
    #[test]
    #[ignore = "run alone in its own process by a_freed_burst_goes_back_to_the_kernel"]
    fn burst_alone() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        release_free_memory();
        // Many mid-sized blocks (below the mmap threshold, so they come from an arena), all touched.
        let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8 | 1; 64 * 1024]).collect();
        // Something allocated after the burst and still in use keeps free() from trimming the
        // arena's top by itself, as in a daemon that goes on working.
        let pin = vec![1u8; 1024];
        let with_burst = rss_kib();
        drop(blocks);
        release_free_memory();
        let after = rss_kib();
        drop(pin);
        assert!(after + 16 * 1024 < with_burst, "32 MiB freed, RSS {with_burst} KiB → {after} KiB");
    }

    #[test]
    fn a_freed_burst_goes_back_to_the_kernel() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mem::tests::burst_alone", "--ignored", "--test-threads=1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
