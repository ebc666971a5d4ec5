//! Who the client is behind a reverse proxy: `X-Forwarded-For` and
//! `X-Forwarded-Proto`, believed only from a peer named in
//! `--forwarded-allow-ips`, with uvicorn's semantics.
//!
//! Any client can send these headers, so from an untrusted peer they are
//! ignored and the connection's own address stands. From a trusted one, the
//! client is read from the right of `X-Forwarded-For`: each proxy appends the
//! address it got the request from, so the first entry from the right that
//! is not a trusted proxy is the client, and whatever lies left of it is what
//! that client claimed. With `*` every peer and every entry is trusted, and
//! the leftmost entry is the client.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// `--forwarded-allow-ips` by default: the proxy on the same host.
pub const DEFAULT_FORWARDED_ALLOW_IPS: &str = "127.0.0.1";

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    /// `*`: every peer, a Unix socket's too.
    any: bool,
    networks: Vec<Network>,
}

/// An address, or a network in CIDR form (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                same_prefix(&network.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                same_prefix(&network.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` agree.
fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let address = address.to_canonical();
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of addresses and networks, `*` for any peer.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut trusted = Self {
            any: false,
            networks: Vec::new(),
        };
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item == "*" {
                trusted.any = true;
            } else {
                trusted.networks.push(item.parse()?);
            }
        }
        Ok(trusted)
    }
}

/// Who a request comes from, as the app and the access log see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The client's host and port; port 0 when a proxy named it, since
    /// `X-Forwarded-For` carries no port. `None` for a Unix socket's peer.
    pub client: Option<(String, u16)>,
    /// `http`, or what a trusted proxy said (`https` behind TLS termination).
    pub scheme: &'static str,
}

impl Remote {
    /// The connection's own peer: what a request means without proxy headers.
    pub fn direct(peer: Option<SocketAddr>) -> Self {
        Self {
            client: peer.map(|peer| (peer.ip().to_string(), peer.port())),
            scheme: "http",
        }
    }
}

impl TrustedProxies {
    /// Whether `peer` (`None`: a Unix socket's) may set forwarding headers.
    fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        self.any || peer.is_some_and(|ip| self.trusts(ip))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// Whether an `X-Forwarded-For` entry names a trusted proxy; an entry
    /// that is no address (`unknown`, an obfuscated name) is not one.
    fn trusts_entry(&self, entry: &str) -> bool {
        self.any || entry.parse().is_ok_and(|ip| self.trusts(ip))
    }

    /// Who a request that came from `peer` with `headers` is from.
    pub fn remote(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Remote {
        let mut remote = Remote::direct(peer);
        if !self.trusts_peer(peer.map(|peer| peer.ip())) {
            return remote;
        }
        // The last one, as uvicorn reads it; only the two schemes an HTTP
        // scope can have are taken.
        if let Some(proto) = headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
        {
            match proto.trim().to_ascii_lowercase().as_str() {
                "http" => remote.scheme = "http",
                "https" => remote.scheme = "https",
                _ => {}
            }
        }
        if let Some(host) = self.client_host(headers) {
            remote.client = Some((host, 0));
        }
        remote
    }

    /// The client named by `X-Forwarded-For` (its repeats read as one list,
    /// in order), if it names one.
    fn client_host(&self, headers: &HeaderMap) -> Option<String> {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        let leftmost = *entries.first()?;
        if self.any {
            return Some(leftmost.to_owned());
        }
        let client = entries
            .iter()
            .rev()
            .find(|entry| !self.trusts_entry(entry))
            .copied()
            // Every hop is a trusted proxy: the first is the client.
            .unwrap_or(leftmost);
        Some(client.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    fn client(remote: &Remote) -> Option<&str> {
        remote.client.as_ref().map(|(host, _)| host.as_str())
    }

    #[test]
    fn an_untrusted_peer_keeps_its_own_address_and_scheme() {
        let trusted: TrustedProxies = DEFAULT_FORWARDED_ALLOW_IPS.parse().unwrap();
        let forwarded = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let remote = trusted.remote(peer("127.0.0.2"), &forwarded);
        assert_eq!(
            remote,
            Remote {
                client: Some(("127.0.0.2".into(), 40000)),
                scheme: "http"
            }
        );
        // A Unix socket's peer is trusted only with `*`.
        assert_eq!(trusted.remote(None, &forwarded), Remote::direct(None));
    }

    #[test]
    fn a_trusted_peer_names_the_client_and_scheme() {
        let trusted: TrustedProxies = "127.0.0.1".parse().unwrap();
        let forwarded = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", " HTTPS "),
        ]);
        let remote = trusted.remote(peer("127.0.0.1"), &forwarded);
        assert_eq!(
            remote,
            Remote {
                client: Some(("203.0.113.9".into(), 0)),
                scheme: "https"
            }
        );
        // No headers: the peer stands.
        assert_eq!(
            trusted.remote(peer("127.0.0.1"), &HeaderMap::new()),
            Remote::direct(peer("127.0.0.1"))
        );
        // A scheme an HTTP scope cannot have is ignored.
        let odd = headers(&[("x-forwarded-proto", "gopher")]);
        assert_eq!(trusted.remote(peer("127.0.0.1"), &odd).scheme, "http");
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: TrustedProxies = "127.0.0.1, 10.0.0.0/8".parse().unwrap();
        // The client claimed 1.1.1.1; 198.51.100.7 is what the first proxy
        // (10.1.2.3) saw, so it is the client.
        let chain = headers(&[
            ("x-forwarded-for", "1.1.1.1, 198.51.100.7"),
            ("x-forwarded-for", "10.1.2.3"),
        ]);
        let remote = trusted.remote(peer("127.0.0.1"), &chain);
        assert_eq!(client(&remote), Some("198.51.100.7"));
        // Every hop trusted: the leftmost is the client.
        let internal = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.2.3")]);
        let remote = trusted.remote(peer("127.0.0.1"), &internal);
        assert_eq!(client(&remote), Some("10.9.9.9"));
        // An entry that is no address is never a trusted proxy.
        let unknown = headers(&[("x-forwarded-for", "203.0.113.1, unknown, 10.1.2.3")]);
        let remote = trusted.remote(peer("127.0.0.1"), &unknown);
        assert_eq!(client(&remote), Some("unknown"));
    }

    #[test]
    fn a_star_trusts_every_peer_and_takes_the_leftmost_entry() {
        let trusted: TrustedProxies = "*".parse().unwrap();
        let chain = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7")]);
        assert_eq!(
            client(&trusted.remote(peer("192.0.2.1"), &chain)),
            Some("203.0.113.9")
        );
        assert_eq!(client(&trusted.remote(None, &chain)), Some("203.0.113.9"));
    }

    #[test]
    fn networks_match_by_prefix_in_both_families() {
        let trusted: TrustedProxies = "192.168.4.0/22, fd00::/8, ::1".parse().unwrap();
        for inside in [
            "192.168.4.1",
            "192.168.7.255",
            "fd12::1",
            "::1",
            "::ffff:192.168.5.5",
        ] {
            assert!(trusted.trusts(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["192.168.8.0", "192.168.3.255", "fe80::1", "127.0.0.1"] {
            assert!(!trusted.trusts(outside.parse().unwrap()), "{outside}");
        }
        let all: TrustedProxies = "0.0.0.0/0".parse().unwrap();
        assert!(all.trusts("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn a_list_that_does_not_parse_is_refused_naming_the_item() {
        for bad in ["localhost", "10.0.0.0/33", "::/129", "10.0.0.1/x"] {
            let error = bad.parse::<TrustedProxies>().unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert_eq!(
            " 127.0.0.1 ,, ".parse::<TrustedProxies>().unwrap(),
            "127.0.0.1".parse().unwrap()
        );
    }
}
