//! The reverse proxies whose `X-Forwarded-For` header is believed (`trusted_proxies`), and
//! the client address of a request seen through them.
//!
//! Anyone can send `X-Forwarded-For`, so the header counts only when the TCP peer is a
//! listed proxy, and then only as far as the chain of listed proxies goes: the client is
//! the right-most address in the header that is not itself a listed proxy. With no proxy
//! listed (the default) the header is ignored and the client is the TCP peer. Pure: no I/O.

use super::ParseError;
use std::fmt;
use std::net::IpAddr;

/// Addresses and networks (`10.0.0.0/8`, `::1`) of the trusted reverse proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// A comma-separated list of IP addresses or CIDR networks; empty: none.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| {
                ParseError::new(format!(
                    "'{item}' is not an IP address or network (e.g. 10.0.0.0/8, 192.0.2.7, ::1)"
                ))
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                    ParseError::new(format!("'{item}': the prefix length must be 0 to {max}"))
                })?,
            };
            nets.push((ip, len));
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a listed proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, len)| match (canonical(*net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            _ => false,
        })
    }

    /// The client of a request from `peer` carrying `forwarded_for` (the values of every
    /// `X-Forwarded-For` header, in order).
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Not an address: nothing further left can be believed.
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as the IPv4
/// address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (bytes, bits) = (usize::from(len / 8), len % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    bits == 0 || {
        let mask = 0xffu8 << (8 - bits);
        a[bytes] & mask == b[bytes] & mask
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(ip, len)| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if *len == max {
                    ip.to_string()
                } else {
                    format!("{ip}/{len}")
                }
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_addresses_parse_and_match() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.0.2.7 ,::1, 2001:db8::/32").unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("::ffff:10.1.1.1")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("2001:db8:ffff::1")));
        assert!(!t.contains(ip("2001:db9::1")));
        assert_eq!(t.to_string(), "10.0.0.0/8,192.0.2.7,::1,2001:db8::/32");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["proxy.local", "10.0.0.0/33", "::/129", "10.0.0.1/x"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        let odd = TrustedProxies::parse("172.16.0.0/12").unwrap();
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.1")));
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop_and_only_behind_a_trusted_peer() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // A direct client cannot choose its address.
        assert_eq!(t.client(ip("203.0.113.9"), &["1.2.3.4"]), ip("203.0.113.9"));
        // Through the proxy: the address the proxy saw.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["198.51.100.7"]),
            ip("198.51.100.7")
        );
        // A spoofed hop on the left is skipped: the proxy appended the real one.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["1.2.3.4, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Two proxies in a row, and several headers.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["198.51.100.7", "10.0.0.9"]),
            ip("198.51.100.7")
        );
        // No header, or garbage: the peer (or the last believable hop).
        assert_eq!(t.client(ip("10.0.0.2"), &[]), ip("10.0.0.2"));
        assert_eq!(t.client(ip("10.0.0.2"), &["unknown"]), ip("10.0.0.2"));
        // Nothing trusted: the header never counts.
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.2"), &["198.51.100.7"]),
            ip("10.0.0.2")
        );
    }
}
