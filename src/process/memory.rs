//! A worker process's resident memory, for `max_worker_rss`: read from
//! `/proc/PID/status` on Linux, where the core must not look.

/// The resident memory of process `pid` in bytes, from `/proc/PID/status`
/// (`VmRSS`); `None` where there is no such file.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes_and_garbage_is_none() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: lots kB"), None);
        assert_eq!(parse_vm_rss(""), None);
    }

    #[test]
    fn this_process_has_a_resident_size_on_linux() {
        let rss = resident_bytes(std::process::id());
        if cfg!(target_os = "linux") {
            assert!(rss.is_some_and(|bytes| bytes > 0));
        }
    }
}
