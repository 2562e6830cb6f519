//! Route lookup: the per-listener index compiled once per snapshot
//! ([`RouteIndex`]) over what the proxy sees of a request ([`RequestView`]).
//!
//! Routes are ordered and the first match wins. The index only narrows the
//! routes worth examining by host, keeping their configuration order:
//!
//! - an exact host (`api.example.com`) maps to the merged list of its exact
//!   routes, every wildcard that matches it and the host-less routes;
//! - a wildcard suffix (`*.example.com` → `example.com`) maps to its routes,
//!   those of shorter wildcards that also match (`*.com`) and the host-less
//!   routes; a request host looks up its suffixes longest first;
//! - any other host (or none) only sees the host-less routes.
//!
//! So a lookup is one hash probe (plus one per label for wildcard hosts) and
//! a scan of the candidates that can match; no allocation (hosts are
//! lower-cased into a stack buffer).

use std::collections::HashMap;

use crate::route::{Route, host_matches};

/// Longest host name the index looks up (DNS names are at most 253 bytes);
/// longer hosts only see host-less routes.
const MAX_HOST: usize = 255;

/// Candidate routes by host, each list in configuration order (indices into
/// the listener's routes).
#[derive(Debug, Clone, Default)]
pub struct RouteIndex {
    exact: HashMap<Box<str>, Box<[u32]>>,
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    any_host: Box<[u32]>,
}

impl RouteIndex {
    pub fn build(routes: &[Route]) -> Self {
        let any_host: Vec<u32> = (0..routes.len() as u32)
            .filter(|&i| routes[i as usize].host.is_none())
            .collect();
        let mut exact_hosts: Vec<String> = Vec::new();
        let mut suffixes: Vec<String> = Vec::new();
        for r in routes {
            if let Some(h) = &r.host {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(s) => suffixes.push(s.to_string()),
                    None => exact_hosts.push(h),
                }
            }
        }
        exact_hosts.sort();
        exact_hosts.dedup();
        suffixes.sort();
        suffixes.dedup();
        // Every route whose host pattern matches `host` (only wildcard
        // patterns when `wildcards_only`), plus host-less ones.
        let list_for = |host: &str, wildcards_only: bool| -> Box<[u32]> {
            (0..routes.len() as u32)
                .filter(|&i| match routes[i as usize].host.as_deref() {
                    None => true,
                    Some(p) => (!wildcards_only || p.starts_with("*.")) && host_matches(p, host),
                })
                .collect()
        };
        let exact = exact_hosts
            .iter()
            .map(|h| (h.as_str().into(), list_for(h, false)))
            .collect();
        // A host under suffix S (`x.S`) matches exactly the wildcards whose
        // suffix is S or a parent domain of S; exact hosts are left out (a
        // host that is one of them found its list in `exact`).
        let wildcard = suffixes
            .iter()
            .map(|s| (s.as_str().into(), list_for(&format!("x.{s}"), true)))
            .collect();
        Self {
            exact,
            wildcard,
            any_host: any_host.into(),
        }
    }

    /// The routes that can match `host`, in configuration order.
    pub fn candidates(&self, host: Option<&str>) -> &[u32] {
        let Some(host) = host else {
            return &self.any_host;
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.len() > MAX_HOST || (self.exact.is_empty() && self.wildcard.is_empty()) {
            return &self.any_host;
        }
        let mut buf = [0u8; MAX_HOST];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // Lower-casing ASCII bytes keeps UTF-8 valid.
        let Ok(host) = std::str::from_utf8(lower) else {
            return &self.any_host;
        };
        if let Some(list) = self.exact.get(host) {
            return list;
        }
        if !self.wildcard.is_empty() {
            // Suffixes after each dot, longest first; the first label must
            // not be empty (`*.a.com` does not match `.a.com`).
            for (i, b) in host.bytes().enumerate().skip(1) {
                if b == b'.'
                    && let Some(list) = self.wildcard.get(&host[i + 1..])
                {
                    return list;
                }
            }
        }
        &self.any_host
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::http::{Header, Headers, RequestView};
    use crate::route::{DirectResponse, HeaderMatch, Listener, PathMatch, QueryMatch, RouteAction};

    fn route(name: &str) -> Route {
        Route::new(
            name,
            RouteAction::Respond(Arc::new(DirectResponse {
                status: 200,
                content_type: "text/plain".into(),
                body: Vec::new(),
                location: None,
                retry_after: None,
                www_authenticate: None,
            })),
        )
    }

    fn host(name: &str, h: &str) -> Route {
        Route {
            host: Some(h.into()),
            ..route(name)
        }
    }

    fn get<'a>(
        l: &'a Listener,
        method: &str,
        host: Option<&str>,
        target: &str,
        headers: &[Header<'_>],
    ) -> Option<&'a str> {
        let headers = Headers::from_list(headers);
        l.route_request(&RequestView::new(method, host, target, headers))
            .map(|r| r.name.as_str())
    }

    #[test]
    fn exact_host_is_case_insensitive_and_ignores_a_trailing_dot() {
        let l = Listener::new(80, vec![host("a", "Api.Example.com"), route("any")]);
        assert_eq!(get(&l, "GET", Some("api.example.COM"), "/", &[]), Some("a"));
        assert_eq!(
            get(&l, "GET", Some("api.example.com."), "/", &[]),
            Some("a")
        );
        assert_eq!(get(&l, "GET", Some("other.com"), "/", &[]), Some("any"));
        assert_eq!(get(&l, "GET", None, "/", &[]), Some("any"));
    }

    #[test]
    fn wildcard_matches_subdomains_only_and_longest_suffix_keeps_order() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    path: PathMatch::Prefix("/com-only".into()),
                    ..host("com", "*.com")
                },
                host("deep", "*.b.example.com"),
                host("ex", "*.example.com"),
                route("any"),
            ],
        );
        assert_eq!(
            get(&l, "GET", Some("x.b.example.com"), "/", &[]),
            Some("deep")
        );
        assert_eq!(
            get(&l, "GET", Some("x.b.example.com"), "/com-only", &[]),
            Some("com"),
            "an earlier, shorter wildcard still wins by order"
        );
        assert_eq!(get(&l, "GET", Some("a.example.com"), "/", &[]), Some("ex"));
        assert_eq!(
            get(&l, "GET", Some("A.B.EXAMPLE.COM"), "/", &[]),
            Some("deep")
        );
        assert_eq!(get(&l, "GET", Some("example.com"), "/", &[]), Some("any"));
        assert_eq!(get(&l, "GET", Some(".example.com"), "/", &[]), Some("any"));
        assert_eq!(get(&l, "GET", Some("b.example.com"), "/", &[]), Some("ex"));
        assert_eq!(get(&l, "GET", Some("foo.net"), "/", &[]), Some("any"));
    }

    #[test]
    fn exact_host_candidates_include_earlier_wildcards_and_hostless_routes() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    path: PathMatch::Exact("/first".into()),
                    ..route("hostless-first")
                },
                host("wild", "*.example.com"),
                host("exact", "api.example.com"),
            ],
        );
        assert_eq!(
            get(&l, "GET", Some("api.example.com"), "/first", &[]),
            Some("hostless-first")
        );
        assert_eq!(
            get(&l, "GET", Some("api.example.com"), "/x", &[]),
            Some("wild")
        );
        let idx = RouteIndex::build(l.routes());
        assert_eq!(idx.candidates(Some("api.example.com")), &[0, 1, 2]);
        assert_eq!(idx.candidates(Some("zzz.example.com")), &[0, 1]);
        assert_eq!(idx.candidates(Some("elsewhere")), &[0]);
    }

    #[test]
    fn path_exact_prefix_and_regex_match_the_path_without_query() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    path: PathMatch::Exact("/exact".into()),
                    ..route("exact")
                },
                Route {
                    path: PathMatch::regex(r"/users/[0-9]+").unwrap(),
                    ..route("regex")
                },
                Route {
                    path: PathMatch::Prefix("/static/".into()),
                    ..route("prefix")
                },
            ],
        );
        assert_eq!(get(&l, "GET", None, "/exact", &[]), Some("exact"));
        assert_eq!(get(&l, "GET", None, "/exact?x=1", &[]), Some("exact"));
        assert_eq!(get(&l, "GET", None, "/exactly", &[]), None);
        assert_eq!(get(&l, "GET", None, "/users/42", &[]), Some("regex"));
        assert_eq!(get(&l, "GET", None, "/users/42?a=b", &[]), Some("regex"));
        assert_eq!(
            get(&l, "GET", None, "/users/42/x", &[]),
            None,
            "regex is anchored"
        );
        assert_eq!(
            get(&l, "GET", None, "/v/users/42", &[]),
            None,
            "regex is anchored"
        );
        assert_eq!(get(&l, "GET", None, "/static/a.css", &[]), Some("prefix"));
    }

    #[test]
    fn methods_restrict_a_route_case_sensitively() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    methods: vec!["POST".into(), "PUT".into()],
                    ..route("write")
                },
                route("read"),
            ],
        );
        assert_eq!(get(&l, "POST", None, "/", &[]), Some("write"));
        assert_eq!(get(&l, "PUT", None, "/", &[]), Some("write"));
        assert_eq!(get(&l, "GET", None, "/", &[]), Some("read"));
        assert_eq!(get(&l, "post", None, "/", &[]), Some("read"));
    }

    #[test]
    fn header_matches_by_presence_or_exact_value_and_any_repeat() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    headers: vec![HeaderMatch {
                        name: "X-Env".into(),
                        value: Some("canary".into()),
                    }],
                    ..route("canary")
                },
                Route {
                    headers: vec![HeaderMatch {
                        name: "x-debug".into(),
                        value: None,
                    }],
                    ..route("debug")
                },
                route("rest"),
            ],
        );
        let h = |n: &'static str, v: &'static [u8]| Header { name: n, value: v };
        assert_eq!(
            get(&l, "GET", None, "/", &[h("x-env", b" canary ")]),
            Some("canary")
        );
        assert_eq!(
            get(&l, "GET", None, "/", &[h("X-Env", b"Canary")]),
            Some("rest")
        );
        assert_eq!(
            get(
                &l,
                "GET",
                None,
                "/",
                &[h("X-Env", b"prod"), h("X-Env", b"canary")]
            ),
            Some("canary")
        );
        assert_eq!(
            get(&l, "GET", None, "/", &[h("X-Debug", b"")]),
            Some("debug")
        );
        assert_eq!(get(&l, "GET", None, "/", &[]), Some("rest"));
    }

    #[test]
    fn query_parameters_match_by_presence_or_value_all_required() {
        let l = Listener::new(
            80,
            vec![
                Route {
                    query: vec![
                        QueryMatch {
                            name: "v".into(),
                            value: Some("2".into()),
                        },
                        QueryMatch {
                            name: "beta".into(),
                            value: None,
                        },
                    ],
                    ..route("v2beta")
                },
                Route {
                    query: vec![QueryMatch {
                        name: "v".into(),
                        value: Some("2".into()),
                    }],
                    ..route("v2")
                },
                route("rest"),
            ],
        );
        assert_eq!(get(&l, "GET", None, "/a?v=2", &[]), Some("v2"));
        assert_eq!(get(&l, "GET", None, "/a?x=1&v=2&beta", &[]), Some("v2beta"));
        assert_eq!(get(&l, "GET", None, "/a?beta=&v=2", &[]), Some("v2beta"));
        assert_eq!(get(&l, "GET", None, "/a?v=20", &[]), Some("rest"));
        assert_eq!(get(&l, "GET", None, "/a?vv=2", &[]), Some("rest"));
        assert_eq!(get(&l, "GET", None, "/a", &[]), Some("rest"));
    }

    #[test]
    fn index_agrees_with_a_linear_scan_over_many_requests() {
        let routes = vec![
            host("a", "a.example.com"),
            Route {
                methods: vec!["POST".into()],
                ..host("w", "*.example.com")
            },
            Route {
                path: PathMatch::Prefix("/api".into()),
                ..route("api")
            },
            host("b", "b.example.com"),
            host("c", "*.c.example.com"),
            Route {
                path: PathMatch::Exact("/x".into()),
                ..route("x")
            },
            host("org", "*.org"),
            host("xorg", "x.org"),
            host("x-ex", "x.example.com"),
        ];
        let l = Listener::new(80, routes.clone());
        let hosts = [
            None,
            Some("a.example.com"),
            Some("b.example.com"),
            Some("q.c.example.com"),
            Some("c.example.com"),
            Some("example.com"),
            Some("x.org"),
            Some("y.org"),
            Some("x.example.com"),
            Some("y.example.com"),
            Some("org"),
            Some("A.EXAMPLE.COM"),
        ];
        for h in hosts {
            for m in ["GET", "POST"] {
                for p in ["/", "/api/1", "/x", "/y"] {
                    let req = RequestView::new(m, h, p, Headers::EMPTY);
                    let linear = routes.iter().find(|r| r.matches(&req)).map(|r| &r.name);
                    let indexed = l.route_request(&req).map(|r| &r.name);
                    assert_eq!(indexed, linear, "{m} {h:?} {p}");
                }
            }
        }
    }

    #[test]
    fn overlong_or_absent_hosts_see_only_hostless_routes() {
        let long = "a".repeat(300) + ".example.com";
        let l = Listener::new(80, vec![host("w", "*.example.com"), route("any")]);
        assert_eq!(get(&l, "GET", Some(&long), "/", &[]), Some("any"));
        let l = Listener::new(80, vec![host("only", "x.com")]);
        assert_eq!(get(&l, "GET", None, "/", &[]), None);
    }

    #[test]
    fn cookie_and_header_accessors_find_values() {
        let headers = [
            Header {
                name: "Cookie",
                value: b"a=1; sid=abc ; z=",
            },
            Header {
                name: "X-User",
                value: b" u7 ",
            },
        ];
        let r = RequestView::new("GET", None, "/", Headers::from_list(&headers));
        assert_eq!(r.cookie("sid"), Some(&b"abc"[..]));
        assert_eq!(r.cookie("z"), Some(&b""[..]));
        assert_eq!(r.cookie("nope"), None);
        assert_eq!(r.header("x-user"), Some(&b"u7"[..]));
    }
}
