//! The on-disk format of one stored object (one file per variant).
//!
//! ```text
//! fixed part (PREFIX bytes, little-endian):
//!   magic "FGCD" | version u16 | reserved u16 | header_len u32 | body_len u64 | crc32 u32
//! header (header_len bytes), every byte string as u32 length + bytes:
//!   full key | variant bytes | status u16 | field count u32, (name, value)* |
//!   request_time u64 | response_time u64 | corrected_initial_age u64 |
//!   freshness_lifetime u64 | directive flags u8 | stale_while_revalidate u32 |
//!   stale_if_error u32 | vary count u32, name* | tag count u32, tag*
//! body (body_len bytes)
//! ```
//!
//! The CRC-32 covers the header and the body: a scan checks the fixed part,
//! the header and the file length (a torn write is caught without reading
//! bodies); a load, which reads the body anyway, checks the CRC too.
//!
//! Hand-written rather than serde + a binary codec: the cache crate has no
//! serde, `CacheMeta` is small and stable, and a manual layout keeps the
//! versioning and the bounds on lengths (a corrupt file must not make us
//! allocate gigabytes) explicit. bincode, the usual choice, is no longer
//! maintained.

use bytes::Bytes;
use smallvec::SmallVec;

use crate::headers::StoredHeaders;
use crate::meta::{CacheMeta, StoredDirectives};

pub(crate) const MAGIC: &[u8; 4] = b"FGCD";
/// Bumped on any layout change; files of another version are deleted.
pub(crate) const VERSION: u16 = 1;
/// Bytes of the fixed part.
pub(crate) const PREFIX: usize = 24;
/// The largest header a file may declare (keys, fields, tags).
const MAX_HEADER: usize = 1 << 20;

/// Why a file was rejected (it is then deleted and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a ferrogate cache file")]
    Magic,
    #[error("cache file format version {0} is not supported")]
    Version(u16),
    #[error("the file is truncated or has trailing bytes")]
    Length,
    #[error("the header is malformed")]
    Header,
    #[error("the checksum does not match")]
    Checksum,
}

/// The fixed part of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub header_len: usize,
    pub body_len: u64,
    pub crc: u32,
}

impl Prefix {
    pub fn file_len(&self) -> u64 {
        PREFIX as u64 + self.header_len as u64 + self.body_len
    }
}

/// What a file's header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub full_key: Bytes,
    pub variant: Bytes,
    pub meta: CacheMeta,
    pub tags: SmallVec<[Bytes; 4]>,
}

/// Encodes the header part (without the fixed prefix).
pub(crate) fn encode_header(
    full_key: &[u8],
    variant: &[u8],
    meta: &CacheMeta,
    tags: &[Bytes],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(full_key.len() + variant.len() + meta.weight() + 64);
    put_bytes(&mut out, full_key);
    put_bytes(&mut out, variant);
    out.extend_from_slice(&meta.headers.status.to_le_bytes());
    put_u32(&mut out, meta.headers.fields.len());
    for (n, v) in &meta.headers.fields {
        put_bytes(&mut out, n);
        put_bytes(&mut out, v);
    }
    for t in [
        meta.request_time,
        meta.response_time,
        meta.corrected_initial_age,
        meta.freshness_lifetime,
    ] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let d = &meta.directives;
    let flags = u8::from(d.no_cache)
        | u8::from(d.revalidate_when_stale) << 1
        | u8::from(d.stale_while_revalidate.is_some()) << 2
        | u8::from(d.stale_if_error.is_some()) << 3;
    out.push(flags);
    out.extend_from_slice(&d.stale_while_revalidate.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&d.stale_if_error.unwrap_or(0).to_le_bytes());
    put_u32(&mut out, meta.vary.len());
    for v in &meta.vary {
        put_bytes(&mut out, v);
    }
    put_u32(&mut out, tags.len());
    for t in tags {
        put_bytes(&mut out, t);
    }
    out
}

/// The fixed part for a header and a body.
pub(crate) fn encode_prefix(header: &[u8], body_len: u64, crc: u32) -> [u8; PREFIX] {
    let mut p = [0u8; PREFIX];
    p[..4].copy_from_slice(MAGIC);
    p[4..6].copy_from_slice(&VERSION.to_le_bytes());
    p[8..12].copy_from_slice(&(header.len() as u32).to_le_bytes());
    p[12..20].copy_from_slice(&body_len.to_le_bytes());
    p[20..24].copy_from_slice(&crc.to_le_bytes());
    p
}

pub(crate) fn decode_prefix(p: &[u8; PREFIX]) -> Result<Prefix, FormatError> {
    if &p[..4] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = u16::from_le_bytes([p[4], p[5]]);
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let header_len = u32::from_le_bytes(p[8..12].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER {
        return Err(FormatError::Header);
    }
    Ok(Prefix {
        header_len,
        body_len: u64::from_le_bytes(p[12..20].try_into().expect("8 bytes")),
        crc: u32::from_le_bytes(p[20..24].try_into().expect("4 bytes")),
    })
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

/// Reads the header bytes; every length is checked against what is left.
struct Cursor {
    buf: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Result<Bytes, FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Header)?;
        if end > self.buf.len() {
            return Err(FormatError::Header);
        }
        let b = self.buf.slice(self.at..end);
        self.at = end;
        Ok(b)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N)?[..].try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<usize, FormatError> {
        Ok(u32::from_le_bytes(self.fixed()?) as usize)
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    fn bytes(&mut self) -> Result<Bytes, FormatError> {
        let n = self.u32()?;
        self.take(n)
    }

    /// A count of items, each at least `min` bytes: bounded by what is left.
    fn count(&mut self, min: usize) -> Result<usize, FormatError> {
        let n = self.u32()?;
        if n.saturating_mul(min) > self.buf.len() - self.at {
            return Err(FormatError::Header);
        }
        Ok(n)
    }
}

/// Decodes a header (values share `buf`, no copies).
pub(crate) fn decode_header(buf: Bytes) -> Result<Header, FormatError> {
    let mut c = Cursor { buf, at: 0 };
    let full_key = c.bytes()?;
    let variant = c.bytes()?;
    let status = u16::from_le_bytes(c.fixed()?);
    let n = c.count(8)?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push((c.bytes()?, c.bytes()?));
    }
    let request_time = c.u64()?;
    let response_time = c.u64()?;
    let corrected_initial_age = c.u64()?;
    let freshness_lifetime = c.u64()?;
    let [flags] = c.fixed()?;
    let swr = u32::from_le_bytes(c.fixed()?);
    let sie = u32::from_le_bytes(c.fixed()?);
    let n = c.count(4)?;
    let mut vary = Vec::with_capacity(n);
    for _ in 0..n {
        vary.push(c.bytes()?);
    }
    let n = c.count(4)?;
    let mut tags = SmallVec::with_capacity(n);
    for _ in 0..n {
        tags.push(c.bytes()?);
    }
    if c.at != c.buf.len() || flags >> 4 != 0 || vary.is_empty() != variant.is_empty() {
        return Err(FormatError::Header);
    }
    Ok(Header {
        full_key,
        variant,
        meta: CacheMeta {
            headers: StoredHeaders { status, fields },
            request_time,
            response_time,
            corrected_initial_age,
            freshness_lifetime,
            directives: StoredDirectives {
                no_cache: flags & 1 != 0,
                revalidate_when_stale: flags & 2 != 0,
                stale_while_revalidate: (flags & 4 != 0).then_some(swr),
                stale_if_error: (flags & 8 != 0).then_some(sie),
            },
            vary,
        },
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::CachePolicyConfig;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample() -> (CacheMeta, SmallVec<[Bytes; 4]>) {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = CacheMeta::new(
            203,
            &[
                ("Cache-Control", "max-age=60, stale-while-revalidate=5"),
                ("Vary", "Accept-Encoding"),
                ("Set-Cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("ETag", "\"x\""),
            ],
            t,
            t + Duration::from_secs(2),
            &CachePolicyConfig::default(),
        );
        (meta, smallvec::smallvec![Bytes::from_static(b"t1")])
    }

    #[test]
    fn header_round_trips() {
        let (meta, tags) = sample();
        let h = encode_header(b"https://h/a", b"accept-encoding:gzip\n", &meta, &tags);
        let d = decode_header(Bytes::from(h.clone())).unwrap();
        assert_eq!(&d.full_key[..], b"https://h/a");
        assert_eq!(&d.variant[..], b"accept-encoding:gzip\n");
        assert_eq!(d.meta, meta);
        assert_eq!(d.tags, tags);
        let p = encode_prefix(&h, 7, 99);
        assert_eq!(
            decode_prefix(&p).unwrap(),
            Prefix {
                header_len: h.len(),
                body_len: 7,
                crc: 99
            }
        );
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let (meta, tags) = sample();
        let h = encode_header(b"https://h/a", b"accept-encoding:gzip\n", &meta, &tags);
        for cut in 0..h.len() {
            assert!(decode_header(Bytes::copy_from_slice(&h[..cut])).is_err());
        }
        let mut long = h.clone();
        long.push(0);
        assert!(decode_header(Bytes::from(long)).is_err());
        // A huge declared count must not allocate.
        let mut bad = Vec::new();
        put_bytes(&mut bad, b"k");
        put_bytes(&mut bad, b"");
        bad.extend_from_slice(&200u16.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_header(Bytes::from(bad)), Err(FormatError::Header));
        let mut p = encode_prefix(&h, 0, 0);
        p[0] = b'X';
        assert_eq!(decode_prefix(&p), Err(FormatError::Magic));
        let mut p = encode_prefix(&h, 0, 0);
        p[4] = 9;
        assert_eq!(decode_prefix(&p), Err(FormatError::Version(9)));
    }
}
