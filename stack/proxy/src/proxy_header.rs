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
