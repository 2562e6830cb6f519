//! Header access: a small trait over whatever header list the proxy holds,
//! the owned list the cache stores, and the comma-list splitter every
//! directive parser shares.

use bytes::Bytes;

/// Read access to a message's header fields, in order, duplicates kept.
/// Names compare ASCII case-insensitively.
pub trait HeaderView {
    /// Calls `f(name, value)` for each field line.
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8]));

    /// Calls `f(value)` for each line of the field `name`.
    fn for_each_value(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.for_each_field(&mut |n, v| {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                f(v)
            }
        });
    }

    /// Whether a field `name` is present.
    fn has(&self, name: &str) -> bool {
        let mut found = false;
        self.for_each_value(name, &mut |_| found = true);
        found
    }

    /// How many lines of `name` there are.
    fn count(&self, name: &str) -> usize {
        let mut n = 0;
        self.for_each_value(name, &mut |_| n += 1);
        n
    }
}

/// The first value of `name`, copied (used only off the hit path).
pub fn first_value(h: &(impl HeaderView + ?Sized), name: &str) -> Option<Vec<u8>> {
    let mut out = None;
    h.for_each_value(name, &mut |v| {
        if out.is_none() {
            out = Some(v.to_vec())
        }
    });
    out
}

impl<T: HeaderView + ?Sized> HeaderView for &T {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        (**self).for_each_field(f)
    }
}

impl HeaderView for [(&[u8], &[u8])] {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v) in self {
            f(n, v)
        }
    }
}

impl HeaderView for [(&str, &str)] {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v) in self {
            f(n.as_bytes(), v.as_bytes())
        }
    }
}

impl<const N: usize> HeaderView for [(&str, &str); N] {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        self.as_slice().for_each_field(f)
    }
}

/// Fields that describe one hop, never stored (RFC 9110 §7.6.1, RFC 9111
/// §3.1), plus `Age`, which the cache recomputes when it serves.
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "age",
];

/// A stored response's status and header fields: names lowercased, order
/// and duplicates kept, values shared as `Bytes` so a hit clones `Arc`s only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    pub status: u16,
    pub fields: Vec<(Bytes, Bytes)>,
}

impl StoredHeaders {
    /// Copies a response's fields, dropping the hop-by-hop ones, `Age` and
    /// those `Connection` names.
    pub fn from_response(status: u16, h: &(impl HeaderView + ?Sized)) -> Self {
        let mut connection_named: Vec<Vec<u8>> = Vec::new();
        h.for_each_value("connection", &mut |v| {
            for t in list_items(v) {
                connection_named.push(t.to_ascii_lowercase());
            }
        });
        let mut fields = Vec::new();
        h.for_each_field(&mut |n, v| {
            if !storable_field(n, &connection_named) {
                return;
            }
            fields.push((
                Bytes::from(n.to_ascii_lowercase()),
                Bytes::copy_from_slice(v),
            ));
        });
        StoredHeaders { status, fields }
    }

    /// The first value of `name` as `Bytes` (a refcount bump, no copy).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Total bytes of names and values, for the store's byte budget.
    pub fn weight(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + 16
    }
}

impl HeaderView for StoredHeaders {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v) in &self.fields {
            f(n, v)
        }
    }
}

/// Whether a received field may be kept in (or merged into) a stored response.
pub(crate) fn storable_field(name: &[u8], connection_named: &[Vec<u8>]) -> bool {
    !NOT_STORED
        .iter()
        .any(|x| name.eq_ignore_ascii_case(x.as_bytes()))
        && !connection_named
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
}

/// Splits a comma-separated field value (RFC 9110 §5.6.1) into trimmed,
/// non-empty elements. Commas inside quoted strings do not split.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut in_quote = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if in_quote && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quote = !in_quote;
                } else if b == b',' && !in_quote {
                    end = i;
                    break;
                }
            }
            let item = trim(&rest[..end]);
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                &[]
            };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

/// Trims optional whitespace (SP / HTAB) from both ends.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &str) -> Vec<&str> {
        list_items(v.as_bytes())
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn list_splits_outside_quotes_only() {
        assert_eq!(items(" a , b,,c "), ["a", "b", "c"]);
        assert_eq!(
            items(r#"no-cache="a, b", max-age=3"#),
            [r#"no-cache="a, b""#, "max-age=3"]
        );
        assert_eq!(items(r#"x="q\",w", y"#), [r#"x="q\",w""#, "y"]);
        assert!(items(" , ,\t").is_empty());
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_connection_named() {
        let h = [
            ("Content-Type", "text/plain"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Age", "5"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        let s = StoredHeaders::from_response(200, &h);
        let names: Vec<&[u8]> = s.fields.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"content-type"[..], b"set-cookie", b"set-cookie"]);
        assert_eq!(s.get("SET-COOKIE").unwrap(), "a=1");
        assert_eq!(s.count("set-cookie"), 2);
    }
}
