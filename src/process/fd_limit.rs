//! Raising the open-file limit, which many connections need.
//!
//! Every slot holds one socket, so a host with `num_workers × max_connections`
//! slots needs that many descriptors and some to spare. The soft limit is often
//! 1024 while the hard limit is far higher; a process may raise its own soft
//! limit up to the hard one.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises this process's soft limit on open files to at least `wanted`, as far as
/// the hard limit allows, and returns the soft limit now in force.
///
/// A result below `wanted` means the hard limit is lower: the host should say so,
/// since connections beyond the limit will fail to open.
///
/// # Errors
///
/// The operating system's error if the limits cannot be read or set.
pub fn raise_fd_limit(wanted: u64) -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    let target = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(target)
}

/// The descriptors a pool of `workers` × `connections` holds in the host, with
/// some to spare: one per connection, three pipes per worker (its lifeline,
/// stdout and stderr) and a few for the runtime and the host itself.
pub(crate) fn descriptors_needed(workers: usize, connections: usize) -> u64 {
    let per_worker = connections.saturating_add(3) as u64;
    (workers as u64)
        .saturating_mul(per_worker)
        .saturating_add(16)
}

/// This process's soft limit on open files, if it can be read.
pub(crate) fn soft_fd_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_lowers_the_limit_and_reports_what_is_in_force() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_fd_limit(1).unwrap(), soft);
        let raised = raise_fd_limit(hard).unwrap();
        assert_eq!(raised, hard.max(soft));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, raised);
        assert_eq!(soft_fd_limit(), Some(raised));
    }

    #[test]
    fn a_pool_needs_a_descriptor_per_connection_and_a_few_per_worker() {
        assert_eq!(descriptors_needed(2, 1000), 2022);
        assert_eq!(descriptors_needed(usize::MAX, usize::MAX), u64::MAX);
    }
}
