//! `Cache-Control` (RFC 9111 §5.2), `Pragma` (§5.4) parsing.
//!
//! Every line of every `Cache-Control` field is one list. Names are
//! case-insensitive; arguments may be tokens or quoted strings (§5.2:
//! recipients accept both). Invalid or conflicting freshness values make the
//! response stale (§4.2.1: "caches are encouraged to consider responses that
//! have invalid freshness information to be stale"); a duplicate with the
//! same value is harmless.

use crate::headers::{HeaderView, list_items, trim};

/// The largest delta-seconds a cache must represent (RFC 9111 §1.2.2).
pub const DELTA_MAX: u32 = 1 << 31;

/// Parsed `Cache-Control` directives, request and response alike (each
/// side reads the ones it defines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// A `Cache-Control` field was present (even an empty one): `Pragma`
    /// is then ignored.
    pub present: bool,
    pub no_store: bool,
    /// `no-cache`, with or without field names (the qualified form is
    /// treated as the unqualified one: stricter, never wrong).
    pub no_cache: bool,
    /// `private`, with or without field names (a shared cache stores neither).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    pub stale_while_revalidate: Option<u32>,
    pub stale_if_error: Option<u32>,
    pub min_fresh: Option<u32>,
    /// `max-stale` (request): `Some(None)` without a value (any staleness).
    pub max_stale: Option<Option<u32>>,
}

/// A delta-seconds argument (§1.2.2): digits only; too large saturates at
/// 2^31; anything else is invalid.
fn delta(arg: Option<&[u8]>) -> Option<u32> {
    let a = arg?;
    if a.is_empty() || !a.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in a {
        v = v * 10 + u64::from(d - b'0');
        if v > u64::from(DELTA_MAX) {
            return Some(DELTA_MAX);
        }
    }
    Some(v as u32)
}

/// Strips a quoted-string's quotes and escapes into `buf`; a token is
/// returned as is.
fn unquote<'a>(raw: &'a [u8], buf: &'a mut [u8; 32]) -> &'a [u8] {
    let raw = trim(raw);
    if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        let inner = &raw[1..raw.len() - 1];
        let mut n = 0;
        let mut esc = false;
        for &b in inner {
            if !esc && b == b'\\' {
                esc = true;
                continue;
            }
            esc = false;
            if n == buf.len() {
                // Longer than any number we accept: invalid for numbers,
                // irrelevant for field-name lists (only presence matters).
                return b"\x00";
            }
            buf[n] = b;
            n += 1;
        }
        &buf[..n]
    } else {
        raw
    }
}

/// Merges a repeated numeric directive: the same value is kept, different
/// values or an invalid one give `invalid` (0 for freshness: stale).
fn merge(slot: &mut Option<u32>, seen: &mut bool, v: Option<u32>, invalid: Option<u32>) {
    let v = v.or(invalid);
    if *seen {
        if *slot != v {
            *slot = invalid;
        }
    } else {
        *seen = true;
        *slot = v;
    }
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `h`.
    pub fn parse(h: &(impl HeaderView + ?Sized)) -> Self {
        let mut cc = CacheControl::default();
        let mut seen = [false; 5];
        h.for_each_value("cache-control", &mut |line| {
            cc.present = true;
            for item in list_items(line) {
                cc.apply(item, &mut seen);
            }
        });
        cc
    }

    fn apply(&mut self, item: &[u8], seen: &mut [bool; 5]) {
        let (name, arg) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&item[..i]), Some(&item[i + 1..])),
            None => (item, None),
        };
        let mut buf = [0u8; 32];
        let arg = arg.map(|a| unquote(a, &mut buf));
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        } else if is("max-age") {
            merge(&mut self.max_age, &mut seen[0], delta(arg), Some(0));
        } else if is("s-maxage") {
            merge(&mut self.s_maxage, &mut seen[1], delta(arg), Some(0));
        } else if is("stale-while-revalidate") {
            // Invalid or conflicting: no permission to serve stale.
            merge(
                &mut self.stale_while_revalidate,
                &mut seen[2],
                delta(arg),
                None,
            );
        } else if is("stale-if-error") {
            merge(&mut self.stale_if_error, &mut seen[3], delta(arg), None);
        } else if is("min-fresh") {
            // An invalid min-fresh is ignored (a request can only ask more).
            if let Some(v) = delta(arg) {
                self.min_fresh = Some(self.min_fresh.map_or(v, |m| m.max(v)));
            }
        } else if is("max-stale") && !seen[4] {
            seen[4] = true;
            // RFC 9111 §5.2.1.2: without a value, any staleness; an
            // invalid value accepts none.
            self.max_stale = Some(arg.map(|a| delta(Some(a)).unwrap_or(0)));
        }
    }

    /// Whether a shared cache must revalidate once stale
    /// (`must-revalidate` or `proxy-revalidate`).
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate
    }
}

/// `Pragma: no-cache` on a request, which counts only without a
/// `Cache-Control` field (RFC 9111 §5.4).
pub fn pragma_no_cache(h: &(impl HeaderView + ?Sized), cc: &CacheControl) -> bool {
    if cc.present {
        return false;
    }
    let mut hit = false;
    h.for_each_value("pragma", &mut |v| {
        hit |= list_items(v).any(|t| t.eq_ignore_ascii_case(b"no-cache"));
    });
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(lines: &[&str]) -> CacheControl {
        let h: Vec<(&str, &str)> = lines.iter().map(|l| ("Cache-Control", *l)).collect();
        CacheControl::parse(h.as_slice())
    }

    #[test]
    fn basic_response_directives() {
        let c = cc(&["Public, MAX-AGE=60, s-maxage=30", "must-revalidate"]);
        assert!(c.present && c.public && c.must_revalidate);
        assert_eq!((c.max_age, c.s_maxage), (Some(60), Some(30)));
        assert!(!c.no_store && !c.no_cache && !c.private);
    }

    #[test]
    fn quoted_arguments_are_accepted() {
        let c = cc(&[r#"max-age="120", stale-if-error="3\600""#]);
        assert_eq!(c.max_age, Some(120));
        assert_eq!(c.stale_if_error, Some(3600));
    }

    #[test]
    fn field_named_no_cache_and_private_count_as_unqualified() {
        let c = cc(&[r#"no-cache="Set-Cookie, X-Foo", max-age=10"#]);
        assert!(c.no_cache);
        assert_eq!(c.max_age, Some(10), "the quoted comma did not split");
        assert!(cc(&[r#"private="Authorization""#]).private);
    }

    #[test]
    fn malformed_freshness_is_stale() {
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(cc(&["max-age"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=-5"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=1.5"]).max_age, Some(0));
        assert_eq!(cc(&["s-maxage="]).s_maxage, Some(0));
        assert_eq!(
            cc(&["stale-while-revalidate=x"]).stale_while_revalidate,
            None
        );
    }

    #[test]
    fn duplicates_same_value_kept_conflicts_stale() {
        assert_eq!(cc(&["max-age=60", "max-age=60"]).max_age, Some(60));
        assert_eq!(cc(&["max-age=60, max-age=3600"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=60", "max-age=x"]).max_age, Some(0));
        assert_eq!(
            cc(&["stale-if-error=5, stale-if-error=9"]).stale_if_error,
            None
        );
    }

    #[test]
    fn huge_delta_saturates() {
        assert_eq!(
            cc(&["max-age=99999999999999999999"]).max_age,
            Some(DELTA_MAX)
        );
        assert_eq!(cc(&["max-age=2147483648"]).max_age, Some(DELTA_MAX));
        assert_eq!(cc(&["max-age=2147483647"]).max_age, Some(DELTA_MAX - 1));
    }

    #[test]
    fn request_directives() {
        let c = cc(&["max-stale, min-fresh=5, only-if-cached, min-fresh=9"]);
        assert_eq!(c.max_stale, Some(None));
        assert_eq!(c.min_fresh, Some(9));
        assert!(c.only_if_cached);
        assert_eq!(cc(&["max-stale=30"]).max_stale, Some(Some(30)));
        assert_eq!(cc(&["max-stale=zz"]).max_stale, Some(Some(0)));
    }

    #[test]
    fn unknown_and_empty_are_ignored_but_mark_presence() {
        let c = cc(&["", "foo=bar, , immutable"]);
        assert!(c.present);
        assert_eq!(
            c,
            CacheControl {
                present: true,
                ..Default::default()
            }
        );
        assert!(!CacheControl::parse(&[("X", "max-age=1")]).present);
    }

    #[test]
    fn pragma_only_without_cache_control() {
        let h = [("Pragma", "foo, No-Cache")];
        assert!(pragma_no_cache(&h, &CacheControl::parse(&h)));
        let h = [("Pragma", "no-cache"), ("Cache-Control", "max-age=5")];
        assert!(!pragma_no_cache(&h, &CacheControl::parse(&h)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_max_age_is_bounded(s in ".{0,80}") {
            let c = cc(&[s.as_str()]);
            if let Some(v) = c.max_age { proptest::prop_assert!(v <= DELTA_MAX); }
        }

        #[test]
        fn max_age_round_trips(v in 0u32..DELTA_MAX, quoted in proptest::bool::ANY) {
            let line = if quoted { format!("public, max-age=\"{v}\"") } else { format!("max-age={v}, public") };
            proptest::prop_assert_eq!(cc(&[line.as_str()]).max_age, Some(v));
        }
    }
}
