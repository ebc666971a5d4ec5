//! [`Endpoint`]: where a worker accepts connections, and [`EndpointKind`], the
//! kind a launcher is asked to make.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a worker process accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// Any other address a host's own transport understands.
    Named(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// Which kind of [`Endpoint`] a launcher gives its workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointKind {
    /// A Unix domain socket: for the process launcher, `worker-N.sock` in its
    /// private directory, so there is no port to collide with and only the
    /// host's user can connect.
    #[default]
    Unix,
    /// A TCP port: for the process launcher, a free one on its TCP host,
    /// loopback unless told otherwise.
    Tcp,
}
