//! The proxy's phases: where a request's handling can be changed without
//! editing the connection state machine (proxy.rs), in the style of
//! Pingora's `ProxyHttp`, but synchronous and sans-IO: every phase is a
//! plain call made from the worker's loop, with borrowed views of the
//! request, and must not block or allocate per request.
//!
//! Order for a proxied request: [`ProxyHttp::request_filter`] →
//! [`ProxyHttp::upstream_peer`] → [`ProxyHttp::upstream_request_filter`]
//! (with [`ProxyHttp::strip_request_header`]) → [`ProxyHttp::request_body_filter`]
//! for each body piece sent → [`ProxyHttp::response_filter`] →
//! [`ProxyHttp::response_body_filter`] for each piece → [`ProxyHttp::logging`].
//! Around the first two, the proxy's own request policy (`proxy::choose_route`):
//! the bearer token and the listener's L7 rules before `request_filter`
//! (the token of the route the default lookup finds, when a route has its
//! own `jwt`; that lookup is refused with 400 when the normalized path
//! routes elsewhere, and the default `upstream_peer` reuses it), the chosen
//! route's token and the listener's rules again with its claims (if the
//! phases routed to a route of another provider), its rules and the rate
//! limits after `upstream_peer`.
//! A request the proxy answers itself (no route, a refused pick, an upstream
//! failure) goes through [`ProxyHttp::error_response_filter`] instead of the
//! response phases; [`ProxyHttp::logging`] sees every response.
//!
//! The default of each phase is what ferrogate has always done, written
//! as public functions ([`forwarding_headers`], [`echo_request_id`],
//! [`error_headers`], …) so that an implementation can add to a default
//! instead of copying it. [`StandardPhases`] uses every default.
//!
//! The request head lives in the connection's receive buffer only until the
//! upstream head is written; a phase that needs something of the request
//! at response time copies it into its per-request `Ctx` (Pingora's CTX).

use std::net::IpAddr;
use std::sync::Arc;

use crate::access::AccessRecord;
use crate::error::ProxyError;
use crate::http::{HeaderLines, RequestView, ResponseView};
use crate::net::Instant;
use crate::route::{DirectResponse, Listener, Route};
use crate::tls::{ClientIdentity, IdentityHeaders};

/// A request as the request phases see it (borrowed from its parsed head).
pub struct RequestInfo<'a> {
    /// Method, host, path, query, fields, client certificate CN.
    pub view: RequestView<'a>,
    /// The request target as sent (`/path?query`).
    pub target: &'a str,
    pub http10: bool,
    pub client_ip: IpAddr,
    pub listener_port: u16,
    /// The client connection is TLS.
    pub https: bool,
    /// mTLS listeners: the headers that carry the verified identity
    /// upstream, and the identity (None without a client certificate).
    pub identity: Option<(&'a IdentityHeaders, Option<&'a ClientIdentity>)>,
    /// The client's `X-Request-Id`, or the one the worker made for it.
    pub request_id: &'a [u8],
    /// `request_id` came from the client (it goes upstream untouched).
    pub client_sent_request_id: bool,
    pub now: Instant,
    /// The default lookup's result (the listener it was made on, route
    /// index), when the proxy already made it before the phases (a
    /// listener whose token or rules depend on the route): the default
    /// `upstream_peer` reuses it instead of routing twice. The listener by
    /// address, not port: phases handed another snapshot's listener of the
    /// same port look up again. Never dereferenced.
    pub(crate) looked_up: Option<(*const Listener, Option<usize>)>,
}

impl RequestInfo<'_> {
    /// The route the default lookup picks on `listener`
    /// ([`Listener::route_request`]), looked up once per request.
    pub fn default_route<'t>(&self, listener: &'t Listener) -> Option<&'t Route> {
        match self.looked_up {
            Some((l, i)) if std::ptr::eq(l, listener) => i.and_then(|i| listener.routes().get(i)),
            _ => listener.route_request(&self.view),
        }
    }
}

/// What the response phases know of the request they answer.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInfo<'a> {
    pub request_id: &'a [u8],
    pub now: Instant,
}

/// What `request_filter` decides.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Go on: route and proxy.
    Continue,
    /// Answer with this response (e.g. a deny page, a redirect); the
    /// request is not routed. Keep-alive stays when the request had no body.
    Respond(Arc<DirectResponse>),
    /// Answer with the error's status and close (`X-Ferrogate-Error` etc.
    /// through `error_response_filter`).
    Fail(ProxyError),
}

/// The phases of an HTTP proxy. Every method has a default; see the module
/// docs for the order.
pub trait ProxyHttp {
    /// Per-request state the phases share; a fresh `default()` for every
    /// request (made when the connection starts waiting for it, so an error
    /// before its head parses sees a fresh one too).
    type Ctx: Default;

    /// First look at a request, before routing. Default: go on.
    fn request_filter(&self, _req: &RequestInfo<'_>, _ctx: &mut Self::Ctx) -> Verdict {
        Verdict::Continue
    }

    /// Where the request goes: a route of the listener (proxy to its pool,
    /// or its direct response). None: 404. Default: the listener's first
    /// matching route ([`Listener::route_request`]).
    fn upstream_peer<'t>(
        &self,
        listener: &'t Listener,
        req: &RequestInfo<'_>,
        _ctx: &mut Self::Ctx,
    ) -> Option<&'t Route> {
        req.default_route(listener)
    }

    /// Whether a client-sent field is left out of the upstream request
    /// (hop-by-hop fields and `Expect` always are). Default:
    /// [`strips_proxy_owned_header`].
    fn strip_request_header(&self, req: &RequestInfo<'_>, name: &str) -> bool {
        strips_proxy_owned_header(req, name)
    }

    /// Lines added to the upstream request head. Default:
    /// [`forwarding_headers`] (X-Forwarded-For/-Proto, Via, the verified
    /// client identity, X-Request-Id).
    fn upstream_request_filter(
        &self,
        req: &RequestInfo<'_>,
        _ctx: &mut Self::Ctx,
        lines: &mut HeaderLines<'_>,
    ) {
        forwarding_headers(req, lines);
    }

    /// Sees each piece of the request body as it goes upstream, in order,
    /// as on the wire (chunked framing included). `end` is true exactly once,
    /// when the whole body went up (a request without a body gets one empty
    /// call with `end`); a request that ends otherwise (an early response,
    /// a client abort, an error) gets no `end` — `logging` still sees it.
    /// Retries never repeat a piece (a request whose body started is not
    /// retried). An error stops the request: the client gets its status,
    /// the upstream a reset. Default: pass.
    fn request_body_filter(
        &self,
        _chunk: &[u8],
        _end: bool,
        _ctx: &mut Self::Ctx,
    ) -> Result<(), ProxyError> {
        Ok(())
    }

    /// Lines added to the response head going to the client (hop-by-hop
    /// fields are already gone). Default: [`echo_request_id`].
    fn response_filter(
        &self,
        resp: &ResponseView<'_>,
        info: &ResponseInfo<'_>,
        _ctx: &mut Self::Ctx,
        lines: &mut HeaderLines<'_>,
    ) {
        echo_request_id(resp, info, lines);
    }

    /// Sees each piece of the response body as it goes to the client, as on
    /// the wire (chunked framing included); `end` once the body is complete
    /// (not when the upstream cut it short). Default: nothing.
    fn response_body_filter(&self, _chunk: &[u8], _end: bool, _ctx: &mut Self::Ctx) {}

    /// Lines added to a response the proxy makes for an error. Default:
    /// [`error_headers`].
    fn error_response_filter(
        &self,
        err: &ProxyError,
        info: &ResponseInfo<'_>,
        lines: &mut HeaderLines<'_>,
    ) {
        error_headers(err, info, lines);
    }

    /// Once per response head sent (proxied or local), after the access
    /// record is filled (and queued, when the access log is on). Default:
    /// nothing.
    fn logging(&self, _record: &AccessRecord, _ctx: &mut Self::Ctx) {}
}

/// Every phase at its default: ferrogate's behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardPhases;

impl ProxyHttp for StandardPhases {
    type Ctx = ();
}

/// Client copies of what the proxy itself tells the upstream: the
/// forwarding fields and, on mTLS listeners, the identity fields.
pub fn strips_proxy_owned_header(req: &RequestInfo<'_>, name: &str) -> bool {
    name.eq_ignore_ascii_case("x-forwarded-for")
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || req
            .identity
            .is_some_and(|(headers, _)| headers.is_identity_header(name))
}

/// `X-Forwarded-For` (the client's list, then the client address),
/// `X-Forwarded-Proto`, `Via`, the verified client identity and, when the
/// worker made it, `X-Request-Id`.
pub fn forwarding_headers(req: &RequestInfo<'_>, lines: &mut HeaderLines<'_>) {
    use std::fmt::Write as _;
    lines.add_with("X-Forwarded-For", |out| {
        let mut ok = true;
        for h in req.view.headers.iter() {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                ok &= out.extend(h.value.trim_ascii()) && out.extend(b", ");
            }
        }
        ok && write!(out, "{}", req.client_ip).is_ok()
    });
    lines.add(
        "X-Forwarded-Proto",
        if req.https { b"https" } else { b"http" },
    );
    lines.add("Via", b"1.1 ferrogate");
    if let Some((headers, Some(id))) = req.identity {
        if let (Some(h), Some(cn)) = (&headers.common_name, &id.common_name) {
            lines.add(h, cn.as_bytes());
        }
        if let Some(h) = &headers.sans
            && !id.sans.is_empty()
        {
            lines.add_with(h, |out| {
                id.sans
                    .iter()
                    .enumerate()
                    .all(|(i, san)| (i == 0 || out.extend(b", ")) && out.extend(san.as_bytes()))
            });
        }
    }
    if !req.client_sent_request_id && !req.request_id.is_empty() {
        lines.add("X-Request-Id", req.request_id);
    }
}

/// `X-Request-Id` on the response, unless the upstream set its own.
pub fn echo_request_id(
    resp: &ResponseView<'_>,
    info: &ResponseInfo<'_>,
    lines: &mut HeaderLines<'_>,
) {
    if !info.request_id.is_empty() && !resp.headers.contains("x-request-id") {
        lines.add("X-Request-Id", info.request_id);
    }
}

/// `X-Request-Id`, and why a 503 came from the proxy (`X-Ferrogate-Error:
/// breaker-open` / `no-healthy-endpoint`).
pub fn error_headers(err: &ProxyError, info: &ResponseInfo<'_>, lines: &mut HeaderLines<'_>) {
    if !info.request_id.is_empty() {
        lines.add("X-Request-Id", info.request_id);
    }
    match err {
        ProxyError::BreakerOpen => {
            lines.add("X-Ferrogate-Error", b"breaker-open");
        }
        ProxyError::NoHealthyEndpoint => {
            lines.add("X-Ferrogate-Error", b"no-healthy-endpoint");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ByteBuf, Header, Headers};

    fn info<'a>(
        headers: Headers<'a>,
        identity: Option<(&'a IdentityHeaders, Option<&'a ClientIdentity>)>,
    ) -> RequestInfo<'a> {
        RequestInfo {
            view: RequestView::new("GET", Some("a"), "/x", headers),
            target: "/x",
            http10: false,
            client_ip: "10.0.0.2".parse().unwrap(),
            listener_port: 80,
            https: identity.is_some(),
            identity,
            request_id: b"w1-7",
            client_sent_request_id: false,
            now: Instant::from_millis(0),
            looked_up: None,
        }
    }

    /// The default `upstream_peer` reuses the lookup `choose_route` made
    /// before the phases (one lookup per request), for that listener only.
    #[test]
    fn the_default_upstream_peer_reuses_the_proxys_lookup() {
        use crate::route::{DirectResponse, RouteAction};
        let answer = Arc::new(DirectResponse {
            status: 200,
            content_type: "text/plain".into(),
            body: Vec::new(),
            location: None,
            retry_after: None,
            www_authenticate: None,
        });
        let route = |n: &str| Route::new(n, RouteAction::Respond(answer.clone()));
        let l = Listener::new(80, vec![route("first"), route("second")]);
        let mut req = info(Headers::EMPTY, None);
        let name = |req: &RequestInfo<'_>| {
            StandardPhases
                .upstream_peer(&l, req, &mut ())
                .map(|r| r.name.clone())
        };
        assert_eq!(name(&req).as_deref(), Some("first"));
        req.looked_up = Some((&raw const l, Some(1)));
        assert_eq!(name(&req).as_deref(), Some("second"));
        req.looked_up = Some((&raw const l, None));
        assert_eq!(name(&req), None);
        // Same port, another listener (another snapshot's).
        let other = Listener::new(80, vec![route("first"), route("second")]);
        req.looked_up = Some((&raw const other, Some(1)));
        assert_eq!(name(&req).as_deref(), Some("first"), "another listener's");
    }

    fn lines_of(f: impl FnOnce(&mut HeaderLines<'_>)) -> String {
        let mut buf = ByteBuf::with_capacity(1024);
        f(&mut HeaderLines::new(&mut buf));
        String::from_utf8(buf.filled().to_vec()).unwrap()
    }

    #[test]
    fn forwarding_appends_the_client_to_every_forwarded_for_and_marks_the_request() {
        let h = [
            Header {
                name: "X-Forwarded-For",
                value: b"1.2.3.4",
            },
            Header {
                name: "x-forwarded-for",
                value: b" 5.6.7.8 ",
            },
        ];
        let req = info(Headers::from_list(&h), None);
        let s = lines_of(|l| forwarding_headers(&req, l));
        assert_eq!(
            s,
            "X-Forwarded-For: 1.2.3.4, 5.6.7.8, 10.0.0.2\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ferrogate\r\nX-Request-Id: w1-7\r\n"
        );
        assert!(strips_proxy_owned_header(&req, "X-Forwarded-Proto"));
        assert!(!strips_proxy_owned_header(&req, "x-client-cn"));
    }

    #[test]
    fn tls_forwarding_replaces_proto_and_identity_headers() {
        let headers = IdentityHeaders {
            common_name: Some("X-Client-CN".into()),
            sans: Some("X-Client-SAN".into()),
        };
        let id = ClientIdentity {
            common_name: Some("alice".into()),
            sans: vec!["DNS:a.example".into(), "URI:spiffe://x".into()],
        };
        let mut req = info(Headers::EMPTY, Some((&headers, Some(&id))));
        req.client_sent_request_id = true;
        assert!(strips_proxy_owned_header(&req, "x-client-cn"));
        let s = lines_of(|l| forwarding_headers(&req, l));
        assert!(s.contains("X-Forwarded-Proto: https\r\n"), "{s}");
        assert!(s.contains("X-Client-CN: alice\r\n"), "{s}");
        assert!(
            s.contains("X-Client-SAN: DNS:a.example, URI:spiffe://x\r\n"),
            "{s}"
        );
        assert!(
            !s.contains("X-Request-Id"),
            "the client's id goes up as it was: {s}"
        );
    }

    #[test]
    fn responses_echo_the_request_id_unless_the_upstream_set_one() {
        let info = ResponseInfo {
            request_id: b"w1-7",
            now: Instant::from_millis(0),
        };
        let plain = ResponseView {
            status: 200,
            headers: Headers::EMPTY,
        };
        assert_eq!(
            lines_of(|l| echo_request_id(&plain, &info, l)),
            "X-Request-Id: w1-7\r\n"
        );
        let h = [Header {
            name: "X-Request-Id",
            value: b"up",
        }];
        let own = ResponseView {
            status: 200,
            headers: Headers::from_list(&h),
        };
        assert_eq!(lines_of(|l| echo_request_id(&own, &info, l)), "");
        let s = lines_of(|l| error_headers(&ProxyError::BreakerOpen, &info, l));
        assert_eq!(
            s,
            "X-Request-Id: w1-7\r\nX-Ferrogate-Error: breaker-open\r\n"
        );
    }
}
