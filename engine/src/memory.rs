//! Process-wide memory settings for the `btx` binary.
//!
//! A training step allocates and frees many tensor buffers of a few MB. glibc serves blocks
//! above its mmap threshold with fresh `mmap`s and returns freed heap tops to the kernel, so
//! every step pays page faults and zeroing for memory it just gave back (about a tenth of a
//! CPU training step in a profile of `btx bench train`, see bench/RESULTS.md). Keeping
//! buffers in the heap lets them be reused.

/// Serve large allocations from the heap and keep freed memory for reuse (glibc only;
/// elsewhere the system allocator's defaults stay).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once, at start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The process's peak resident memory (`VmHWM` of /proc/self/status), where the system
/// reports it.
pub fn peak_resident_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmHWM")
}

/// Memory the system can give without swapping (`MemAvailable` of /proc/meminfo), where it
/// reports it.
pub fn available_bytes() -> Option<u64> {
    proc_kb("/proc/meminfo", "MemAvailable")
}

/// The `key:  N kB` line of a /proc file, in bytes.
fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
