//! Cache keys.
//!
//! The **primary key** is the byte string
//! `scheme "://" lowercase(host) path ["?" sorted, filtered query]`
//! followed, per configured request header, by `"\n" name ":" values`.
//! It is never built on a lookup: [`KeyParts::emit`] produces it in pieces,
//! which a keyed 128-bit hash consumes (so a hit allocates nothing) and which
//! the store compares against the full key it keeps for each object (so a
//! hash collision is a miss, never a wrong response). The query is split at
//! `&`, empty and ignored parameters dropped, the rest sorted bytewise
//! (percent-encoding is not decoded: `a=%41` and `a=A` are two keys).
//!
//! The **secondary (variant) key** hashes the request's values of the
//! stored response's `Vary` names, whitespace normalized; an absent header
//! differs from an empty one. `Vary: *` is never stored (policy).

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use foldhash::quality::FixedState;
use smallvec::SmallVec;

use crate::headers::{HeaderView, trim};

/// What goes into the primary key besides scheme, host and path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyConfig {
    /// Query parameter names left out of the key (e.g. `utm_source`).
    pub ignore_params: Vec<Bytes>,
    /// Leave the whole query out of the key.
    pub ignore_query: bool,
    /// Request header names (lowercase) whose values join the key.
    pub headers: Vec<Bytes>,
}

/// A keyed 128-bit hash: two independently seeded foldhash states. The seed
/// is the engine's (stable across restarts if configured, random otherwise);
/// collisions cost a miss, not a wrong answer, because full keys are compared.
#[derive(Clone, Debug)]
pub struct KeyHasher {
    a: FixedState,
    b: FixedState,
}

impl KeyHasher {
    pub fn new(seed: u128) -> Self {
        KeyHasher {
            a: FixedState::with_seed(seed as u64 ^ 0x9e37_79b9_7f4a_7c15),
            b: FixedState::with_seed((seed >> 64) as u64 ^ 0xc2b2_ae3d_27d4_eb4f),
        }
    }

    /// The hash of a byte string given whole: equal to the hash of the same
    /// bytes emitted in pieces (the sink cuts its input into fixed blocks),
    /// so a full key read back from disk hashes to its [`CacheKey::hash`].
    pub fn hash_bytes(&self, bytes: &[u8]) -> u128 {
        let mut s = self.sink();
        s.write(bytes);
        s.finish()
    }

    fn sink(&self) -> HashSink {
        HashSink {
            a: self.a.build_hasher(),
            b: self.b.build_hasher(),
            buf: [0; 64],
            len: 0,
            total: 0,
        }
    }
}

/// Feeds the hashers in fixed 64-byte blocks so that the hash depends only
/// on the byte stream, not on how it was cut into pieces.
struct HashSink {
    a: foldhash::quality::FoldHasher<'static>,
    b: foldhash::quality::FoldHasher<'static>,
    buf: [u8; 64],
    len: usize,
    total: u64,
}

impl HashSink {
    fn write(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = (64 - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == 64 {
                self.a.write(&self.buf);
                self.b.write(&self.buf);
                self.len = 0;
            }
        }
    }

    fn finish(mut self) -> u128 {
        self.a.write(&self.buf[..self.len]);
        self.b.write(&self.buf[..self.len]);
        self.a.write_u64(self.total);
        self.b.write_u64(self.total);
        (u128::from(self.a.finish()) << 64) | u128::from(self.b.finish())
    }
}

/// The parts of a request that make its primary key, borrowed.
#[derive(Clone, Copy)]
pub struct KeyParts<'a> {
    pub scheme: &'a str,
    pub host: &'a [u8],
    /// The request target's path and query (origin form), already
    /// normalized by the router.
    pub path_and_query: &'a [u8],
    pub headers: &'a dyn HeaderView,
}

impl<'a> KeyParts<'a> {
    /// Emits the primary key in pieces (see the module doc).
    pub fn emit(&self, cfg: &KeyConfig, out: &mut dyn FnMut(&[u8])) {
        out(self.scheme.as_bytes());
        out(b"://");
        emit_lower(host_sans_default_port(self.scheme, self.host), out);
        let (path, query) = match self.path_and_query.iter().position(|&b| b == b'?') {
            Some(i) => (
                &self.path_and_query[..i],
                Some(&self.path_and_query[i + 1..]),
            ),
            None => (self.path_and_query, None),
        };
        out(path);
        if let (Some(q), false) = (query, cfg.ignore_query) {
            // Stack space for the common case; long queries spill to the heap.
            let mut params: SmallVec<[&[u8]; 16]> = q
                .split(|&b| b == b'&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let name = param_name(p);
                    !cfg.ignore_params.iter().any(|i| decoded_eq(name, i))
                })
                .collect();
            // By name only, stably: repeated parameters keep their order
            // (`?a=2&a=1` and `?a=1&a=2` may be different resources).
            params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
            for (i, p) in params.iter().enumerate() {
                out(if i == 0 { b"?" } else { b"&" });
                out(p);
            }
        }
        for name in &cfg.headers {
            out(b"\n");
            out(name);
            out(b":");
            emit_values(self.headers, name, out);
        }
    }

    /// The key's 128-bit hash.
    pub fn hash(&self, cfg: &KeyConfig, h: &KeyHasher) -> u128 {
        let mut s = h.sink();
        self.emit(cfg, &mut |p| s.write(p));
        s.finish()
    }

    /// The full key (stored with the object; built on inserts only).
    pub fn to_bytes(&self, cfg: &KeyConfig) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.path_and_query.len() + self.host.len() + 16);
        self.emit(cfg, &mut |p| v.extend_from_slice(p));
        v
    }

    /// Whether the key equals `full` (no allocation).
    pub fn matches(&self, cfg: &KeyConfig, full: &[u8]) -> bool {
        let mut rest = full;
        let mut ok = true;
        self.emit(cfg, &mut |p| {
            if ok && rest.starts_with(p) {
                rest = &rest[p.len()..];
            } else {
                ok = false;
            }
        });
        ok && rest.is_empty()
    }
}

/// A primary key computed for one request: its parts and their hash.
#[derive(Clone, Copy)]
pub struct CacheKey<'a> {
    pub parts: KeyParts<'a>,
    pub cfg: &'a KeyConfig,
    pub hash: u128,
}

impl<'a> CacheKey<'a> {
    pub fn new(parts: KeyParts<'a>, cfg: &'a KeyConfig, h: &KeyHasher) -> Self {
        CacheKey {
            hash: parts.hash(cfg, h),
            parts,
            cfg,
        }
    }

    pub fn matches(&self, full: &[u8]) -> bool {
        self.parts.matches(self.cfg, full)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.parts.to_bytes(self.cfg)
    }
}

/// The normalized prefix that a purge by `scheme://host/path-prefix` matches
/// against full keys.
pub fn purge_prefix(scheme: &str, host: &[u8], path_prefix: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(scheme.as_bytes());
    v.extend_from_slice(b"://");
    emit_lower(host_sans_default_port(scheme, host), &mut |p| {
        v.extend_from_slice(p)
    });
    v.extend_from_slice(path_prefix);
    v
}

/// The URL part of a key (scheme, host, path, normalized query; no
/// request headers): what an exact purge matches.
pub fn url_bytes(parts: &KeyParts<'_>, cfg: &KeyConfig) -> Vec<u8> {
    let mut v = parts.to_bytes(cfg);
    if let Some(i) = v.iter().position(|&b| b == b'\n') {
        v.truncate(i);
    }
    v
}

/// The host without the scheme's default port (`:80` for http, `:443` for
/// https): `example.com:443` and `example.com` are one origin.
fn host_sans_default_port<'h>(scheme: &str, host: &'h [u8]) -> &'h [u8] {
    let port: &[u8] = if scheme.eq_ignore_ascii_case("http") {
        b":80"
    } else if scheme.eq_ignore_ascii_case("https") {
        b":443"
    } else {
        return host;
    };
    host.strip_suffix(port).unwrap_or(host)
}

fn emit_lower(s: &[u8], out: &mut dyn FnMut(&[u8])) {
    let mut buf = [0u8; 32];
    for chunk in s.chunks(32) {
        let b = &mut buf[..chunk.len()];
        b.copy_from_slice(chunk);
        b.make_ascii_lowercase();
        out(b);
    }
}

/// Emits all values of `name`: each line trimmed, runs of whitespace as one
/// space, none around commas, lines joined by `,`; absent → `\0`.
fn emit_values(h: &dyn HeaderView, name: &[u8], out: &mut dyn FnMut(&[u8])) {
    let mut first = true;
    let name = std::str::from_utf8(name).unwrap_or("");
    h.for_each_value(name, &mut |v| {
        if !first {
            out(b",");
        }
        first = false;
        let v = trim(v);
        let mut pending_space = false;
        let mut last = 0u8;
        for &b in v {
            if b == b' ' || b == b'\t' {
                pending_space = true;
                continue;
            }
            if pending_space && b != b',' && last != b',' {
                out(b" ");
            }
            pending_space = false;
            out(std::slice::from_ref(&b));
            last = b;
        }
    });
    if first {
        out(b"\0");
    }
}

/// Emits the variant key of `req` for `vary`: per name, `name ":" values "\n"`.
fn emit_variant(vary: &[Bytes], req: &dyn HeaderView, out: &mut dyn FnMut(&[u8])) {
    for name in vary {
        out(name);
        out(b":");
        emit_values(req, name, out);
        out(b"\n");
    }
}

/// The variant hash of a request for a response whose `Vary` names are
/// `vary` (lowercase, sorted); 0 when there are none.
pub fn variant_hash(vary: &[Bytes], req: &dyn HeaderView, h: &KeyHasher) -> u128 {
    if vary.is_empty() {
        return 0;
    }
    let mut s = h.sink();
    emit_variant(vary, req, &mut |p| s.write(p));
    // Keep 0 for "no Vary".
    s.finish().max(1)
}

/// The variant hash of stored variant bytes (see [`variant_bytes`]): equal
/// to [`variant_hash`] of a request that produced them.
pub fn variant_hash_of_bytes(vary: &[Bytes], variant: &[u8], h: &KeyHasher) -> u128 {
    if vary.is_empty() {
        return 0;
    }
    h.hash_bytes(variant).max(1)
}

/// The variant key's bytes (kept with a stored object, so that a lookup
/// compares the request's actual header values, not only their hash).
pub fn variant_bytes(vary: &[Bytes], req: &dyn HeaderView) -> Vec<u8> {
    let mut v = Vec::new();
    emit_variant(vary, req, &mut |p| v.extend_from_slice(p));
    v
}

/// Whether `req`'s variant key for `vary` equals `stored` (no allocation).
pub fn variant_matches(vary: &[Bytes], req: &dyn HeaderView, stored: &[u8]) -> bool {
    let mut rest = stored;
    let mut ok = true;
    emit_variant(vary, req, &mut |p| {
        if ok && rest.starts_with(p) {
            rest = &rest[p.len()..];
        } else {
            ok = false;
        }
    });
    ok && rest.is_empty()
}

/// Whether the percent-encoded `raw` decodes to `want` (case-sensitive,
/// RFC 3986 §6.2.2: `utm%5Fsource` is `utm_source`, `UTM_SOURCE` is not).
/// No allocation.
fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    let mut w = want.iter();
    while i < raw.len() {
        let b = match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                i += 3;
                h << 4 | l
            }
            (b, _, _) => {
                i += 1;
                b
            }
        };
        if w.next() != Some(&b) {
            return false;
        }
    }
    w.next().is_none()
}

/// A query parameter's name (the bytes before `=`).
fn param_name(p: &[u8]) -> &[u8] {
    p.split(|&b| b == b'=').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [(&str, &str); 0] = [];

    fn key(pq: &str, cfg: &KeyConfig) -> Vec<u8> {
        KeyParts {
            scheme: "https",
            host: b"Example.COM",
            path_and_query: pq.as_bytes(),
            headers: &NONE,
        }
        .to_bytes(cfg)
    }

    fn hash_of(host: &str, pq: &str, hdrs: &[(&str, &str)], cfg: &KeyConfig) -> u128 {
        KeyParts {
            scheme: "https",
            host: host.as_bytes(),
            path_and_query: pq.as_bytes(),
            headers: &hdrs,
        }
        .hash(cfg, &KeyHasher::new(7))
    }

    #[test]
    fn primary_key_normalization() {
        let c = KeyConfig {
            ignore_params: vec![Bytes::from_static(b"utm_source")],
            ..Default::default()
        };
        assert_eq!(
            key("/a/b?z=1&a=2&&utm_source=x&a=1", &c),
            b"https://example.com/a/b?a=2&a=1&z=1"
        );
        assert_eq!(key("/a/b?utm_source=x", &c), b"https://example.com/a/b");
        // Review #15: names compare percent-decoded, case-sensitively.
        assert_eq!(
            key("/a?utm%5Fsource=x&%75tm_source=y", &c),
            b"https://example.com/a"
        );
        assert_eq!(
            key("/a?UTM_SOURCE=x", &c),
            b"https://example.com/a?UTM_SOURCE=x"
        );
        assert_eq!(
            key("/a?utm_sourc%=x", &c),
            b"https://example.com/a?utm_sourc%=x"
        );
        assert_eq!(
            key("/A/B", &c),
            b"https://example.com/A/B",
            "path case kept"
        );
        let nq = KeyConfig {
            ignore_query: true,
            ..Default::default()
        };
        assert_eq!(key("/x?b=1", &nq), b"https://example.com/x");
        let hk = KeyConfig {
            headers: vec![Bytes::from_static(b"x-device")],
            ..Default::default()
        };
        let p = KeyParts {
            scheme: "http",
            host: b"h",
            path_and_query: b"/",
            headers: &[("X-Device", " mobile ")],
        };
        assert_eq!(p.to_bytes(&hk), b"http://h/\nx-device:mobile");
        let p = KeyParts {
            scheme: "http",
            host: b"h",
            path_and_query: b"/",
            headers: &NONE,
        };
        assert_eq!(p.to_bytes(&hk), b"http://h/\nx-device:\0");
        // Review #7: default ports are not part of the key.
        let port = |scheme, host: &'static [u8]| {
            KeyParts {
                scheme,
                host,
                path_and_query: b"/",
                headers: &NONE,
            }
            .to_bytes(&KeyConfig::default())
        };
        assert_eq!(port("https", b"H:443"), b"https://h/");
        assert_eq!(port("http", b"h:80"), b"http://h/");
        assert_eq!(port("http", b"h:443"), b"http://h:443/");
        assert_eq!(port("https", b"h:8443"), b"https://h:8443/");
        assert_eq!(purge_prefix("https", b"H:443", b"/a"), b"https://h/a");
    }

    #[test]
    fn hash_follows_normalized_key_and_matches_compares_full_key() {
        let c = KeyConfig::default();
        assert_eq!(
            hash_of("EXAMPLE.com", "/p?b=2&a=1", &NONE, &c),
            hash_of("example.com", "/p?a=1&b=2", &NONE, &c)
        );
        assert_ne!(
            hash_of("example.com", "/p?a=1", &NONE, &c),
            hash_of("example.com", "/p?a=2", &NONE, &c)
        );
        // Repeated parameters keep their order (origins may read them as a
        // list); different names are sorted.
        assert_ne!(
            hash_of("example.com", "/p?a=2&a=1", &NONE, &c),
            hash_of("example.com", "/p?a=1&a=2", &NONE, &c)
        );
        assert_eq!(
            hash_of("example.com", "/p?b=1&a=2&a=1", &NONE, &c),
            hash_of("example.com", "/p?a=2&b=1&a=1", &NONE, &c)
        );
        assert_ne!(
            hash_of("example.com", "/p", &NONE, &c),
            hash_of("example.org", "/p", &NONE, &c)
        );
        let seeded = |seed| {
            KeyParts {
                scheme: "https",
                host: b"h",
                path_and_query: b"/",
                headers: &NONE,
            }
            .hash(&c, &KeyHasher::new(seed))
        };
        assert_ne!(seeded(1), seeded(2), "keyed");
        let p = KeyParts {
            scheme: "https",
            host: b"Example.com",
            path_and_query: b"/p?b&a",
            headers: &NONE,
        };
        assert!(p.matches(&c, b"https://example.com/p?a&b"));
        assert!(!p.matches(&c, b"https://example.com/p?a&b&c"));
        assert!(!p.matches(&c, b"https://example.com/p?a"));
        assert!(!p.matches(&c, b"https://example.com/q?a&b"));
    }

    #[test]
    fn variant_hash_normalizes_whitespace_and_distinguishes_absent() {
        let h = KeyHasher::new(3);
        let vary = [
            Bytes::from_static(b"accept-encoding"),
            Bytes::from_static(b"accept-language"),
        ];
        let v = |hs: &[(&str, &str)]| variant_hash(&vary, &hs, &h);
        let base = v(&[("Accept-Encoding", "gzip, br"), ("Accept-Language", "en")]);
        assert_eq!(
            base,
            v(&[
                ("accept-language", "en"),
                ("accept-encoding", "  gzip ,\tbr ")
            ])
        );
        assert_eq!(
            base,
            v(&[
                ("accept-encoding", "gzip"),
                ("accept-encoding", "br"),
                ("accept-language", "en")
            ]),
            "lines join by comma"
        );
        assert_ne!(
            base,
            v(&[("Accept-Encoding", "br, gzip"), ("Accept-Language", "en")]),
            "order matters"
        );
        assert_ne!(base, v(&[("Accept-Encoding", "gzip, br")]));
        assert_ne!(
            v(&[("Accept-Encoding", "")]),
            v(&NONE),
            "empty differs from absent"
        );
        assert_ne!(
            v(&[("Accept-Encoding", "a b")]),
            v(&[("Accept-Encoding", "ab")])
        );
        assert_eq!(variant_hash(&[], &[("Accept", "x")].as_slice(), &h), 0);
        assert_ne!(base, 0);
        let a = [("Accept-Encoding", "gzip, br"), ("Accept-Language", "en")];
        let stored = variant_bytes(&vary, &a);
        assert!(variant_matches(
            &vary,
            &[("accept-language", "en"), ("accept-encoding", "gzip ,br")],
            &stored
        ));
        assert!(!variant_matches(
            &vary,
            &[("Accept-Encoding", "gzip")],
            &stored
        ));
        assert!(!variant_matches(
            &vary,
            &[
                ("Accept-Encoding", "gzip, br"),
                ("Accept-Language", "en-US")
            ],
            &stored
        ));
    }

    /// The disk tier rehashes full keys read back from files: hashing them
    /// whole must give what hashing the emitted pieces gave.
    #[test]
    fn whole_bytes_hash_like_emitted_pieces() {
        let h = KeyHasher::new(0xfeed);
        let hk = KeyConfig {
            headers: vec![Bytes::from_static(b"x-device")],
            ..Default::default()
        };
        let long = format!("/{}?b=2&a=1", "seg/".repeat(40));
        for (pq, cfg) in [
            ("/", KeyConfig::default()),
            ("/a?z=1&y=2", KeyConfig::default()),
            (long.as_str(), KeyConfig::default()),
            (long.as_str(), hk.clone()),
        ] {
            let p = KeyParts {
                scheme: "https",
                host: b"Example.com:443",
                path_and_query: pq.as_bytes(),
                headers: &[("X-Device", "  tab  let ")],
            };
            let k = CacheKey::new(p, &cfg, &h);
            assert_eq!(h.hash_bytes(&k.to_bytes()), k.hash, "{pq}");
        }
        let vary = [
            Bytes::from_static(b"accept-encoding"),
            Bytes::from_static(b"accept-language"),
        ];
        let req = [("Accept-Encoding", "gzip, br"), ("Accept-Language", "en")];
        let bytes = variant_bytes(&vary, &req);
        assert_eq!(
            variant_hash_of_bytes(&vary, &bytes, &h),
            variant_hash(&vary, &req, &h)
        );
        assert_eq!(variant_hash_of_bytes(&[], b"", &h), 0);
    }

    proptest::proptest! {
        #[test]
        fn hash_independent_of_param_order(mut params in proptest::collection::vec("[a-z]{1,3}=[a-z0-9]{0,70}", 0..12)) {
            let c = KeyConfig::default();
            // Distinct names (repeated names keep their order on purpose).
            params.sort_by(|a, b| param_name(a.as_bytes()).cmp(param_name(b.as_bytes())));
            params.dedup_by(|a, b| param_name(a.as_bytes()) == param_name(b.as_bytes()));
            let q1 = format!("/p?{}", params.join("&"));
            params.reverse();
            let q2 = format!("/p?{}", params.join("&"));
            let p1 = KeyParts { scheme: "https", host: b"h", path_and_query: q1.as_bytes(), headers: &NONE };
            let p2 = KeyParts { scheme: "https", host: b"h", path_and_query: q2.as_bytes(), headers: &NONE };
            let h = KeyHasher::new(9);
            proptest::prop_assert_eq!(p1.hash(&c, &h), p2.hash(&c, &h));
            proptest::prop_assert!(p2.matches(&c, &p1.to_bytes(&c)));
        }
    }
}
