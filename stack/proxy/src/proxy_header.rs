//! The PROXY protocol header a pool with `proxy_protocol` sends first on
//! each new connection to an endpoint (HAProxy's proxy-protocol.txt, via
//! the `ppp` crate): the client's address and the VIP:port it reached.

use std::net::SocketAddr;

use crate::lb::ProxyProtocol;

/// The header for a connection from `client` to `vip`.
pub(crate) fn proxy_header(kind: ProxyProtocol, client: SocketAddr, vip: SocketAddr) -> Vec<u8> {
    match kind {
        ProxyProtocol::V1 => ppp::v1::Addresses::from((client, vip))
            .to_string()
            .into_bytes(),
        ProxyProtocol::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, vip),
        )
        .build()
        // Only writing into a Vec, which cannot fail.
        .expect("a PROXY v2 header of two addresses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_parse_back_to_the_same_addresses() {
        let client: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        let vip: SocketAddr = "10.77.0.10:6379".parse().unwrap();
        let v1 = proxy_header(ProxyProtocol::V1, client, vip);
        assert_eq!(v1, b"PROXY TCP4 198.51.100.7 10.77.0.10 40123 6379\r\n");
        let v2 = proxy_header(ProxyProtocol::V2, client, vip);
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((client, vip)),
            "{parsed:?}"
        );
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        let v6 = proxy_header(
            ProxyProtocol::V1,
            "[2001:db8::7]:1".parse().unwrap(),
            "[2001:db8::10]:443".parse().unwrap(),
        );
        assert_eq!(v6, b"PROXY TCP6 2001:db8::7 2001:db8::10 1 443\r\n");
    }
}

/// The most octets a trusted load balancer's PROXY header may take here
/// (v1 is at most 107; v2 with its TLVs is kept to this).
pub const PROXY_HEADER_MAX: usize = 4096;

/// What the first octets from a trusted load balancer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not all of the header yet.
    Incomplete,
    /// A header of `len` octets; `client` is the address it carries (None
    /// for v2 LOCAL / v1 UNKNOWN: the balancer's own connection, e.g. a
    /// health check, which keeps the connection's address).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    Invalid,
}

/// Reads a PROXY v2 (or v1) header at the start of `buf`.
pub fn parse_proxy_header(buf: &[u8]) -> Received {
    use ppp::PartialResult as _;
    use std::net::IpAddr;
    // v1 is a line: until its CRLF (at most 107 octets) it is incomplete,
    // whatever a parser makes of a prefix cut mid-field.
    const V1: &[u8] = b"PROXY ";
    let n = buf.len().min(V1.len());
    if buf[..n] == V1[..n] && !buf.windows(2).any(|w| w == b"\r\n") {
        return if buf.len() < 108 {
            Received::Incomplete
        } else {
            Received::Invalid
        };
    }
    let header = ppp::HeaderResult::parse(buf);
    if header.is_incomplete() {
        return if buf.len() >= PROXY_HEADER_MAX {
            Received::Invalid
        } else {
            Received::Incomplete
        };
    }
    let sock = |ip: IpAddr, port| Some(SocketAddr::new(ip, port));
    match header {
        ppp::HeaderResult::V2(Ok(h)) if h.len() <= PROXY_HEADER_MAX => {
            let client = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => sock(a.source_address.into(), a.source_port),
                ppp::v2::Addresses::IPv6(a) => sock(a.source_address.into(), a.source_port),
                _ => None,
            };
            Received::Header {
                len: h.len(),
                client,
            }
        }
        ppp::HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => sock(a.source_address.into(), a.source_port),
                ppp::v1::Addresses::Tcp6(a) => sock(a.source_address.into(), a.source_port),
                ppp::v1::Addresses::Unknown => None,
            };
            Received::Header {
                len: h.header.len(),
                client,
            }
        }
        _ => Received::Invalid,
    }
}

/// The v2 header's 12-octet signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether the first bytes a client sent begin with a whole PROXY v1
/// (`PROXY `) or v2 signature: from a source not trusted to send one, a
/// forged client address. Fewer bytes than a signature, even a prefix of
/// one, are not: the decision is taken on what the first read has, never
/// by waiting for more.
pub fn starts_with_proxy_signature(first: &[u8]) -> bool {
    first.starts_with(b"PROXY ") || first.starts_with(V2_SIGNATURE)
}

/// The octets `starts_with_proxy_signature` looks at.
pub(crate) const SIGNATURE_MAX: usize = 12;

/// Whether `ip` is in one of `prefixes` (address, prefix length).
pub(crate) fn in_prefixes(ip: std::net::IpAddr, prefixes: &[(std::net::IpAddr, u8)]) -> bool {
    use std::net::IpAddr::{V4, V6};
    prefixes.iter().any(|&(net, len)| match (ip, net) {
        (V4(a), V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (V6(a), V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    })
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn a_v2_or_v1_header_gives_its_length_and_client_and_the_rest_stays() {
        let client: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        let vip: SocketAddr = "10.77.0.10:443".parse().unwrap();
        for kind in [ProxyProtocol::V2, ProxyProtocol::V1] {
            let mut bytes = proxy_header(kind, client, vip);
            let len = bytes.len();
            bytes.extend_from_slice(b"\x16\x03\x01rest");
            assert_eq!(
                parse_proxy_header(&bytes),
                Received::Header {
                    len,
                    client: Some(client)
                }
            );
            for n in 0..len {
                assert_eq!(parse_proxy_header(&bytes[..n]), Received::Incomplete, "{n}");
            }
        }
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n\r\n"),
            Received::Invalid
        );
    }

    #[test]
    fn only_a_whole_signature_marks_a_spoofed_header() {
        let client: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        let vip: SocketAddr = "10.77.0.10:443".parse().unwrap();
        for kind in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let h = proxy_header(kind, client, vip);
            assert!(starts_with_proxy_signature(&h), "{kind:?}");
            let sig = if kind == ProxyProtocol::V1 { 6 } else { 12 };
            assert!(sig <= SIGNATURE_MAX);
            assert!(starts_with_proxy_signature(&h[..sig]));
            // A shorter first read goes through (no waiting for more).
            assert!(!starts_with_proxy_signature(&h[..sig - 1]));
        }
        for clean in [
            &b""[..],
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01",
            b"PROXYish",
            b"*1\r\n",
        ] {
            assert!(!starts_with_proxy_signature(clean));
        }
    }

    #[test]
    fn prefixes_match_by_their_length() {
        let p = [
            ("10.0.0.0".parse().unwrap(), 8),
            ("2001:db8::".parse().unwrap(), 32),
        ];
        assert!(in_prefixes("10.9.8.7".parse().unwrap(), &p));
        assert!(!in_prefixes("11.0.0.1".parse().unwrap(), &p));
        assert!(in_prefixes("2001:db8:1::1".parse().unwrap(), &p));
        assert!(!in_prefixes("2001:db9::1".parse().unwrap(), &p));
        assert!(in_prefixes(
            "192.0.2.1".parse().unwrap(),
            &[("0.0.0.0".parse().unwrap(), 0)]
        ));
    }
}
