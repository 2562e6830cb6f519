//! Reading a TLS ClientHello without terminating TLS (RFC 8446 §4.1.2,
//! RFC 6066 §3): the server name and the ALPN protocols a client asks for,
//! so a passthrough listener can pick an origin and forward the bytes
//! untouched. Sans-IO: it looks at what was received so far and says
//! whether it needs more. It parses what a hostile client sends, so every
//! length is checked against what is there and against `MAX_HELLO`.

/// The largest ClientHello accepted (its handshake message, over however
/// many records): browsers send ~0.5-2 KiB (post-quantum key shares
/// included); a peer asking us to buffer more is refused.
pub const MAX_HELLO: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST: u8 = 0;
/// Most ALPN protocols remembered (the rest are ignored).
const MAX_ALPN: usize = 8;

/// Why the bytes are not a ClientHello this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    #[error("not a TLS handshake record")]
    NotTls,
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("ClientHello larger than {MAX_HELLO} octets")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// What a ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// The `host_name` of the server_name extension, lowercased; None when
    /// the client sent none (e.g. it connected to an IP address).
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order (at most 8).
    pub alpn: Vec<Vec<u8>>,
}

/// Looks for a complete ClientHello at the start of `buf` (the first bytes
/// a client sent). `Ok(None)`: so far so good, more bytes needed.
pub fn peek_client_hello(buf: &[u8]) -> Result<Option<ClientHelloInfo>, PeekError> {
    // The handshake message may span records: gather their payloads until
    // its declared length is there.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        let Some(header) = rest.get(..5) else {
            return check_partial(&message, rest);
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(PeekError::NotTls);
        }
        // Legacy record version: 0x0301..=0x0304 in practice (0x03xx).
        if header[1] != 3 {
            return Err(PeekError::NotTls);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 {
            return Err(PeekError::Malformed("empty handshake record"));
        }
        if len > 1 << 14 {
            // RFC 8446 §5.1: a plaintext record carries at most 2^14 octets.
            return Err(PeekError::Malformed("record longer than 2^14"));
        }
        let Some(payload) = rest.get(5..5 + len) else {
            if message.len() + len > MAX_HELLO + 4 {
                return Err(PeekError::TooLarge);
            }
            return Ok(None);
        };
        message.extend_from_slice(payload);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(PeekError::NotClientHello);
            }
            let body_len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if body_len > MAX_HELLO {
                return Err(PeekError::TooLarge);
            }
            if message.len() >= 4 + body_len {
                return parse_hello(&message[4..4 + body_len]).map(Some);
            }
        }
        if message.len() > MAX_HELLO + 4 {
            return Err(PeekError::TooLarge);
        }
    }
}

/// Before a record header is complete: only a wrong first octet can be
/// refused already.
fn check_partial(message: &[u8], rest: &[u8]) -> Result<Option<ClientHelloInfo>, PeekError> {
    if message.is_empty() && rest.first().is_some_and(|&b| b != CONTENT_HANDSHAKE) {
        return Err(PeekError::NotTls);
    }
    Ok(None)
}

/// A cursor over the ClientHello body whose every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PeekError> {
        if self.0.len() < n {
            return Err(PeekError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PeekError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PeekError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1- or 2-octet length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], PeekError> {
        let n = self.u8(what)? as usize;
        self.take(n, what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], PeekError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_hello(body: &[u8]) -> Result<ClientHelloInfo, PeekError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    r.vec8("legacy_session_id")?;
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(PeekError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(PeekError::Malformed("legacy_compression_methods"));
    }
    let mut info = ClientHelloInfo::default();
    if r.is_empty() {
        // A hello without extensions (SSL 3-era clients): no SNI.
        return Ok(info);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    let mut seen_sni = false;
    while !exts.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        match kind {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err(PeekError::Malformed("duplicate server_name"));
                }
                seen_sni = true;
                info.server_name = server_name(data)?;
            }
            EXT_ALPN => info.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(info)
}

/// RFC 6066 §3: a list of names; one of type host_name is what counts.
fn server_name(data: &[u8]) -> Result<Option<String>, PeekError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("server_name list")?);
    if !r.is_empty() {
        return Err(PeekError::Malformed("server_name trailing octets"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("server_name type")?;
        let name = list.vec16("server_name")?;
        if kind == NAME_TYPE_HOST && host.is_none() {
            host = Some(hostname(name)?);
        }
    }
    Ok(host)
}

/// A DNS host name as RFC 6066 allows it: ASCII letters, digits, `-`, `.`
/// and `_` (seen in the wild), no trailing dot, 1..=253 octets.
fn hostname(name: &[u8]) -> Result<String, PeekError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.last() != Some(&b'.')
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(PeekError::Malformed("server_name is not a host name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// RFC 7301 §3.1: a list of non-empty protocol names.
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, PeekError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("alpn list")?);
    let mut out = Vec::new();
    while !list.is_empty() {
        let name = list.vec8("alpn protocol")?;
        if name.is_empty() {
            return Err(PeekError::Malformed("empty alpn protocol"));
        }
        if out.len() < MAX_ALPN {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client for `name`, with ALPN.
    fn hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn server_name_and_alpn_of_a_real_client_hello() {
        let h = hello("A.Example");
        let info = peek_client_hello(&h).unwrap().unwrap();
        assert_eq!(info.server_name.as_deref(), Some("a.example"));
        assert_eq!(info.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn every_prefix_asks_for_more_and_the_whole_hello_answers() {
        let h = hello("b.example");
        for n in 0..h.len() {
            assert_eq!(peek_client_hello(&h[..n]), Ok(None), "prefix {n}");
        }
        assert!(peek_client_hello(&h).unwrap().is_some());
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let h = hello("split.example");
        let body = &h[5..];
        // Two records of the same handshake message, cut mid-extension.
        let cut = body.len() / 2;
        let mut two = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        let info = peek_client_hello(&two).unwrap().unwrap();
        assert_eq!(info.server_name.as_deref(), Some("split.example"));
    }

    #[test]
    fn a_hello_to_an_ip_address_has_no_server_name() {
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let ip =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([10, 0, 0, 1]).into());
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), ip).unwrap();
        let mut h = Vec::new();
        c.write_tls(&mut h).unwrap();
        let info = peek_client_hello(&h).unwrap().unwrap();
        assert_eq!(info.server_name, None);
    }

    #[test]
    fn plain_http_and_other_records_are_not_tls() {
        assert_eq!(
            peek_client_hello(b"GET / HTTP/1.1\r\n"),
            Err(PeekError::NotTls)
        );
        assert_eq!(peek_client_hello(b"G"), Err(PeekError::NotTls));
        // An alert record, and a handshake record with an SSLv2-era version.
        assert_eq!(
            peek_client_hello(&[21, 3, 3, 0, 2, 2, 40]),
            Err(PeekError::NotTls)
        );
        assert_eq!(
            peek_client_hello(&[22, 2, 0, 0, 1, 1]),
            Err(PeekError::NotTls)
        );
    }

    #[test]
    fn a_server_hello_or_empty_record_is_refused() {
        assert_eq!(
            peek_client_hello(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Err(PeekError::NotClientHello)
        );
        assert!(matches!(
            peek_client_hello(&[22, 3, 3, 0, 0]),
            Err(PeekError::Malformed(_))
        ));
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_before_buffering_it() {
        // Handshake header declaring a 1 MiB ClientHello.
        let rec = [22, 3, 1, 0, 4, 1, 0x10, 0, 0];
        assert_eq!(peek_client_hello(&rec), Err(PeekError::TooLarge));
        // A record longer than TLS allows, before its payload arrives.
        assert_eq!(
            peek_client_hello(&[22, 3, 1, 0x40, 0x01]),
            Err(PeekError::Malformed("record longer than 2^14"))
        );
    }

    #[test]
    fn truncated_inner_lengths_are_malformed_not_panics() {
        let h = hello("c.example");
        // Shrink the declared body length so the parser runs out inside it.
        for cut in [10usize, 40, 45, 80] {
            let mut m = h.clone();
            let body_len = (h.len() - 9).min(cut);
            m.truncate(9 + body_len);
            let rec_len = (4 + body_len) as u16;
            m[3..5].copy_from_slice(&rec_len.to_be_bytes());
            m[6..9].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
            assert!(
                matches!(peek_client_hello(&m), Err(PeekError::Malformed(_))),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_server_name_that_is_not_a_host_name_is_malformed() {
        for bad in [&b"a b"[..], b"x.example.", b"", b"\xff"] {
            assert!(hostname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            hostname(b"Srv_1.Example-A.com").unwrap(),
            "srv_1.example-a.com"
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = peek_client_hello(&bytes);
        }

        #[test]
        fn a_mutated_real_hello_never_panics(pos in 0usize..300, val in proptest::prelude::any::<u8>()) {
            let mut h = hello("fuzz.example");
            let i = pos % h.len();
            h[i] = val;
            let _ = peek_client_hello(&h);
        }
    }
}
