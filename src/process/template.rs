//! Placeholders in a worker program's arguments and environment values, so
//! that a server program that knows nothing of this crate (uvicorn, a plain
//! TCP server) is told where to listen in its own words:
//! `--port {port}`, `--uds {path}`, `WORKER={worker_id}`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::endpoint::Endpoint;
use crate::endpoint::EndpointKind;
use crate::launcher::LaunchError;
use crate::worker::WorkerId;

/// The placeholders, and the endpoint kind each needs (`None`: any).
const NAMES: [(&str, Option<EndpointKind>); 6] = [
    ("{endpoint}", None),
    ("{host}", Some(EndpointKind::Tcp)),
    ("{port}", Some(EndpointKind::Tcp)),
    ("{path}", Some(EndpointKind::Unix)),
    ("{worker_id}", None),
    ("{connections}", None),
];

/// Refuses a placeholder that `kind` cannot fill (`{port}` with Unix
/// sockets, `{path}` with TCP), naming it and where it was.
pub(super) fn check(text: &OsStr, kind: EndpointKind, place: &str) -> Result<(), LaunchError> {
    for (name, needs) in NAMES {
        if needs.is_some_and(|needs| needs != kind) && contains(text.as_bytes(), name.as_bytes()) {
            return Err(LaunchError::new(format!(
                "{place} {text:?} uses {name}, which {kind:?} endpoints do not have"
            )));
        }
    }
    Ok(())
}

/// What the placeholders stand for, for one launch.
pub(super) struct Values {
    endpoint: String,
    host: String,
    port: String,
    path: Vec<u8>,
    worker_id: String,
    connections: String,
}

impl Values {
    pub(super) fn new(endpoint: &Endpoint, worker: WorkerId, connections: usize) -> Self {
        let (host, port, path) = match endpoint {
            Endpoint::Tcp(addr) => (addr.ip().to_string(), addr.port().to_string(), Vec::new()),
            Endpoint::Unix(path) => (
                String::new(),
                String::new(),
                path.as_os_str().as_bytes().to_vec(),
            ),
            Endpoint::Named(_) => (String::new(), String::new(), Vec::new()),
        };
        Self {
            endpoint: endpoint.to_string(),
            host,
            port,
            path,
            worker_id: worker.to_string(),
            connections: connections.to_string(),
        }
    }

    /// `text` with every placeholder replaced; text without one is returned as is.
    pub(super) fn expand(&self, text: &OsStr) -> OsString {
        let bytes = text.as_bytes();
        if !bytes.contains(&b'{') {
            return text.to_owned();
        }
        let mut out = bytes.to_vec();
        for (name, value) in [
            ("{endpoint}", self.endpoint.as_bytes()),
            ("{host}", self.host.as_bytes()),
            ("{port}", self.port.as_bytes()),
            ("{path}", &self.path[..]),
            ("{worker_id}", self.worker_id.as_bytes()),
            ("{connections}", self.connections.as_bytes()),
        ] {
            out = replace(&out, name.as_bytes(), value);
        }
        OsString::from_vec(out)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest
        .windows(needle.len())
        .position(|window| window == needle)
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_other_text_kept() {
        let addr: SocketAddr = "127.0.0.1:8123".parse().unwrap();
        let values = Values::new(&Endpoint::Tcp(addr), WorkerId::new(2), 50);
        let expanded = values.expand(OsStr::new(
            "--bind {host}:{port} --id {worker_id}/{connections} {endpoint} {other}",
        ));
        assert_eq!(
            expanded,
            "--bind 127.0.0.1:8123 --id 2/50 tcp:127.0.0.1:8123 {other}"
        );
        let values = Values::new(&Endpoint::Unix("/tmp/w-2.sock".into()), WorkerId::new(2), 1);
        assert_eq!(
            values.expand(OsStr::new("--uds={path}")),
            "--uds=/tmp/w-2.sock"
        );
        assert_eq!(values.expand(OsStr::new("plain")), "plain");
    }

    #[test]
    fn a_placeholder_the_endpoint_kind_cannot_fill_is_refused() {
        assert!(check(OsStr::new("--port {port}"), EndpointKind::Unix, "argument").is_err());
        assert!(check(OsStr::new("--uds {path}"), EndpointKind::Tcp, "argument").is_err());
        assert!(
            check(
                OsStr::new("{endpoint} {worker_id}"),
                EndpointKind::Unix,
                "argument"
            )
            .is_ok()
        );
        let error = check(
            OsStr::new("{host}"),
            EndpointKind::Unix,
            "environment value",
        )
        .unwrap_err();
        assert!(error.to_string().contains("{host}"), "{error}");
    }
}
