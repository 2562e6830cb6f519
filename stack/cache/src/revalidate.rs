//! Revalidation: the conditional request for a stored response (RFC 9111
//! §4.3.1) and freshening it with a 304 (§4.3.4, §3.2).

use std::time::SystemTime;

use bytes::Bytes;

use crate::headers::{HeaderView, StoredHeaders, list_items, storable_field, trim};
use crate::meta::{CacheMeta, age_value, unix_secs};
use crate::policy::CachePolicyConfig;

/// The validators to add to the upstream request: `If-None-Match` from the
/// stored `ETag`, `If-Modified-Since` from `Last-Modified` (both when both
/// exist; §4.3.1). Values are shared `Bytes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditional {
    pub if_none_match: Option<Bytes>,
    pub if_modified_since: Option<Bytes>,
}

impl Conditional {
    /// Whether there is any validator (without one, revalidation is a full fetch).
    pub fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }

    /// The fields as (name, value) pairs.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &Bytes)> {
        self.if_none_match
            .iter()
            .map(|v| ("if-none-match", v))
            .chain(
                self.if_modified_since
                    .iter()
                    .map(|v| ("if-modified-since", v)),
            )
    }
}

/// The conditional fields for revalidating `meta`.
pub fn conditional_request(meta: &CacheMeta) -> Conditional {
    Conditional {
        if_none_match: meta.headers.get("etag").cloned(),
        if_modified_since: meta.headers.get("last-modified").cloned(),
    }
}

/// A 304 that does not select the stored response (§4.3.4): the caller
/// should fetch the full response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the 304's validators do not match the stored response")]
pub struct ValidatorMismatch;

fn strong_etag(v: &[u8]) -> Option<&[u8]> {
    let v = trim(v);
    (!v.starts_with(b"W/") && v.len() >= 2 && v[0] == b'"').then_some(v)
}

/// Freshens a stored response with a 304 (§4.3.4): the 304 must select it
/// (a strong ETag that is equal; else a Last-Modified that is equal; else,
/// without validators in the 304, the only stored response), then each of
/// the 304's fields replaces the stored ones of that name, except the
/// hop-by-hop ones and `Content-Length` (§3.2). The times are the
/// revalidation exchange's, so freshness restarts from it.
pub fn merge_not_modified(
    stored: &CacheMeta,
    not_modified: &(impl HeaderView + ?Sized),
    request_time: SystemTime,
    response_time: SystemTime,
    cfg: &CachePolicyConfig,
) -> Result<CacheMeta, ValidatorMismatch> {
    let mut new_etag: Option<Vec<u8>> = None;
    not_modified.for_each_value("etag", &mut |v| {
        new_etag.get_or_insert_with(|| trim(v).to_vec());
    });
    let stored_etag = stored.headers.get("etag").map(|v| trim(v));
    match new_etag.as_deref() {
        Some(n) if strong_etag(n).is_some() => {
            if stored_etag != Some(n) {
                return Err(ValidatorMismatch);
            }
        }
        Some(n) => {
            // A weak ETag selects by weak comparison (RFC 9110 §8.8.3.2).
            let weak = |e: &[u8]| e.strip_prefix(b"W/").unwrap_or(e).to_vec();
            if stored_etag.map(weak) != Some(weak(n)) {
                return Err(ValidatorMismatch);
            }
        }
        None => {
            let mut lm: Option<Vec<u8>> = None;
            not_modified.for_each_value("last-modified", &mut |v| {
                lm.get_or_insert_with(|| trim(v).to_vec());
            });
            if let Some(lm) = lm
                && stored.headers.get("last-modified").map(|v| trim(v)) != Some(&lm[..])
            {
                return Err(ValidatorMismatch);
            }
        }
    }

    let mut connection_named: Vec<Vec<u8>> = Vec::new();
    not_modified.for_each_value("connection", &mut |v| {
        connection_named.extend(list_items(v).map(|t| t.to_ascii_lowercase()));
    });
    let mut updates: Vec<(Bytes, Bytes)> = Vec::new();
    not_modified.for_each_field(&mut |n, v| {
        // The stored body's framing and encoding stay (a 304 describes no
        // body); a Set-Cookie is one client's, never merged into the shared
        // copy unless the route stores cookies.
        let kept = [
            &b"content-length"[..],
            b"content-encoding",
            b"content-range",
            b"content-type",
        ];
        let cookie = n.eq_ignore_ascii_case(b"set-cookie") && !cfg.store_set_cookie;
        if storable_field(n, &connection_named)
            && !kept.iter().any(|k| n.eq_ignore_ascii_case(k))
            && !cookie
        {
            updates.push((
                Bytes::from(n.to_ascii_lowercase()),
                Bytes::copy_from_slice(v),
            ));
        }
    });
    let mut fields: Vec<(Bytes, Bytes)> = stored
        .headers
        .fields
        .iter()
        .filter(|(n, _)| !updates.iter().any(|(u, _)| u == n))
        .cloned()
        .collect();
    fields.extend(updates);
    let headers = StoredHeaders {
        status: stored.headers.status,
        fields,
    };
    Ok(CacheMeta::from_stored(
        headers,
        age_value(not_modified),
        unix_secs(request_time),
        unix_secs(response_time),
        cfg,
    ))
}

/// Whether a response whose (merged) headers are `meta`'s may stay stored
/// by a shared cache: a 304 carrying `no-store`, `private` or `Vary: *`
/// withdraws that permission (RFC 9111 §3, §4.3.4), so the stored object
/// is evicted rather than freshened.
pub fn keeps_stored(meta: &CacheMeta) -> bool {
    let cc = crate::directives::CacheControl::parse(&meta.headers);
    !cc.no_store && !cc.private && !crate::policy::vary_star(&meta.headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::tests::{T0, at, date};

    fn stored(h: &[(&str, &str)]) -> CacheMeta {
        CacheMeta::new(200, h, at(T0), at(T0), &CachePolicyConfig::default())
    }

    fn merge(s: &CacheMeta, h: &[(&str, &str)], t: u64) -> Result<CacheMeta, ValidatorMismatch> {
        merge_not_modified(s, h, at(t), at(t), &CachePolicyConfig::default())
    }

    #[test]
    fn conditional_fields_from_validators() {
        let lm = date(T0 - 100);
        let m = stored(&[("ETag", "\"v1\""), ("Last-Modified", &lm)]);
        let c = conditional_request(&m);
        assert_eq!(c.if_none_match.as_deref(), Some(&b"\"v1\""[..]));
        assert_eq!(c.if_modified_since.as_deref(), Some(lm.as_bytes()));
        assert_eq!(c.fields().count(), 2);
        assert!(conditional_request(&stored(&[("Cache-Control", "max-age=1")])).is_empty());
    }

    #[test]
    fn merge_replaces_fields_keeps_body_framing_and_restarts_freshness() {
        let d0 = date(T0);
        let s = stored(&[
            ("Date", &d0),
            ("ETag", "\"v1\""),
            ("Cache-Control", "max-age=60"),
            ("Content-Length", "1234"),
            ("Content-Type", "text/html"),
            ("X-Old", "a"),
            ("X-Old", "b"),
        ]);
        assert!(!s.is_fresh(at(T0 + 100)));
        let d1 = date(T0 + 100);
        let m = merge(
            &s,
            &[
                ("Date", &d1),
                ("ETag", "\"v1\""),
                ("Cache-Control", "max-age=300"),
                ("Content-Length", "0"),
                ("X-Old", "c"),
                ("Set-Cookie", "session=one-clients"),
                ("Content-Type", "application/octet-stream"),
                ("Connection", "x-hop"),
                ("X-Hop", "1"),
                ("Age", "3"),
            ],
            T0 + 100,
        )
        .unwrap();
        assert_eq!(
            m.headers.get("content-length").unwrap(),
            "1234",
            "Content-Length not updated"
        );
        assert_eq!(m.headers.get("content-type").unwrap(), "text/html");
        assert!(
            m.headers.get("set-cookie").is_none(),
            "one client's cookie merged into the shared copy"
        );
        assert_eq!(m.headers.count("x-old"), 1);
        assert_eq!(m.headers.get("x-old").unwrap(), "c");
        assert!(m.headers.get("x-hop").is_none() && m.headers.get("connection").is_none());
        assert_eq!(m.freshness_lifetime, 300);
        assert_eq!(
            m.current_age(at(T0 + 100)),
            3,
            "age restarts from the 304's Age"
        );
        assert!(m.is_fresh(at(T0 + 302)));
    }

    #[test]
    fn selection_by_validators() {
        let lm = date(T0 - 50);
        let s = stored(&[("ETag", "\"v1\""), ("Last-Modified", &lm)]);
        assert_eq!(
            merge(&s, &[("ETag", "\"v2\"")], T0 + 1),
            Err(ValidatorMismatch)
        );
        assert!(
            merge(&s, &[("ETag", "W/\"v1\"")], T0 + 1).is_ok(),
            "weak comparison"
        );
        let other = date(T0 - 40);
        assert_eq!(
            merge(&s, &[("Last-Modified", &other)], T0 + 1),
            Err(ValidatorMismatch)
        );
        assert!(merge(&s, &[("Last-Modified", &lm)], T0 + 1).is_ok());
        assert!(
            merge(&s, &[("Cache-Control", "max-age=9")], T0 + 1).is_ok(),
            "no validators in the 304"
        );
        let weak = stored(&[("ETag", "W/\"v1\"")]);
        assert_eq!(
            merge(&weak, &[("ETag", "\"v1\"")], T0),
            Err(ValidatorMismatch),
            "a strong 304 ETag needs a strong match"
        );
    }
}
