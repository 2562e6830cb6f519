//! The verified client identity of an mTLS connection: the leaf
//! certificate's subject common name and its DNS / URI subject alternative
//! names, read with a small DER walk (the certificate has already been
//! verified by rustls/webpki, so it is well formed; anything unexpected
//! simply yields no identity).

/// What the proxy passes upstream about a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: Option<String>,
    /// `DNS:name` and `URI:uri` entries, in certificate order.
    pub sans: Vec<String>,
}

/// Reads one DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Keeps printable ASCII only, so a value can never break a header line.
fn printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

fn common_name(mut name: &[u8]) -> Option<String> {
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while let Some((_, set, rest)) = tlv(name) {
        name = rest;
        let mut set = set;
        while let Some((_, atv, r)) = tlv(set) {
            set = r;
            let (tag, oid, val) = tlv(atv)?;
            if tag == 0x06 && oid == OID_CN {
                let (_, v, _) = tlv(val)?;
                return Some(printable(v));
            }
        }
    }
    None
}

fn sans(mut exts: &[u8], out: &mut Vec<String>) -> Option<()> {
    // Extensions ::= SEQUENCE OF Extension { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    while let Some((_, ext, rest)) = tlv(exts) {
        exts = rest;
        let (_, oid, mut after) = tlv(ext)?;
        if oid != OID_SAN {
            continue;
        }
        let (mut tag, mut val, r) = tlv(after)?;
        if tag == 0x01 {
            after = r;
            (tag, val, _) = tlv(after)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (_, mut names, _) = tlv(val)?;
        while let Some((t, v, r)) = tlv(names) {
            names = r;
            match t {
                0x82 => out.push(format!("DNS:{}", printable(v))),
                0x86 => out.push(format!("URI:{}", printable(v))),
                _ => {}
            }
        }
    }
    Some(())
}

impl ClientIdentity {
    /// The identity of a DER certificate (None: not a parsable certificate).
    pub fn from_der(cert: &[u8]) -> Option<Self> {
        let (_, cert, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(cert)?;
        let mut b = tbs;
        let (tag, _, r) = tlv(b)?;
        if tag == 0xa0 {
            b = r; // explicit version
        }
        let (_, _, b) = tlv(b)?; // serial
        let (_, _, b) = tlv(b)?; // signature algorithm
        let (_, _, b) = tlv(b)?; // issuer
        let (_, _, b) = tlv(b)?; // validity
        let (_, subject, mut b) = tlv(b)?;
        let mut id = ClientIdentity {
            common_name: common_name(subject),
            sans: Vec::new(),
        };
        (_, _, b) = tlv(b)?; // subject public key info
        while let Some((tag, v, r)) = tlv(b) {
            b = r;
            if tag == 0xa3 {
                let (_, exts, _) = tlv(v)?;
                sans(exts, &mut id.sans);
            }
        }
        Some(id)
    }
}

/// Names of the request headers that carry the verified client identity to
/// the upstream. Client-sent headers of these names are always removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Subject common name.
    pub common_name: Option<String>,
    /// Comma-separated `DNS:` / `URI:` subject alternative names.
    pub sans: Option<String>,
}

impl IdentityHeaders {
    pub fn is_empty(&self) -> bool {
        self.common_name.is_none() && self.sans.is_none()
    }

    /// Whether a client-sent header must be dropped.
    pub fn is_identity_header(&self, name: &str) -> bool {
        [&self.common_name, &self.sans]
            .into_iter()
            .flatten()
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_identity() {
        assert_eq!(ClientIdentity::from_der(b""), None);
        assert_eq!(ClientIdentity::from_der(&[0x30, 0x82, 0xff]), None);
        assert_eq!(ClientIdentity::from_der(&[0x30, 0x00]), None);
    }

    #[test]
    fn values_cannot_break_header_lines() {
        assert_eq!(printable(b"a\r\nb"), "a??b");
    }
}
