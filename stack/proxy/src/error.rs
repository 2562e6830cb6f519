//! One error type for a proxied exchange: which side failed, and whether the
//! request may be retried. Status codes and retries are decided from it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(crate::http::HeadError),
    #[error("invalid chunked request body: {0}")]
    BadRequestBody(crate::http::ChunkError),
    #[error("client sent no complete request head in time")]
    ClientHeaderTimeout,
    #[error("no route for the request")]
    NoRoute,
    #[error("request body larger than the configured limit")]
    BodyTooLarge,
    #[error("upstream connect failed")]
    UpstreamConnectFailed,
    #[error("upstream connect timed out")]
    UpstreamConnectTimeout,
    /// The TLS handshake with the upstream failed (certificate not
    /// verified, name mismatch, protocol error).
    #[error("upstream TLS handshake failed")]
    UpstreamTls,
    #[error("upstream closed before a response")]
    UpstreamClosedEarly,
    #[error("upstream response timed out")]
    UpstreamTimeout,
    #[error("invalid upstream response: {0}")]
    BadResponse(crate::http::HeadError),
    #[error("invalid chunked response body: {0}")]
    BadResponseBody(crate::http::ChunkError),
    #[error("no local port left for an upstream connection")]
    NoLocalPort,
    #[error("connection limit reached")]
    Overloaded,
    /// The pool's circuit breaker refuses requests (503; the response says
    /// so in a header).
    #[error("upstream circuit breaker open")]
    BreakerOpen,
    /// Every endpoint of the pool is unhealthy and the pool does not fail
    /// open (503).
    #[error("no healthy upstream endpoint")]
    NoHealthyEndpoint,
    /// `Cache-Control: only-if-cached` and nothing usable stored (504,
    /// RFC 9111 §5.2.1.7).
    #[error("only-if-cached and not in the cache")]
    NotCached,
    /// A proxy-wasm plugin's call failed (trap, fuel, memory, ABI) and the
    /// plugin is not `fail_open` (500).
    #[error("a plugin failed")]
    PluginFailed,
}

impl ProxyError {
    pub fn side(&self) -> Side {
        use ProxyError::*;
        match self {
            BadRequest(_) | BadRequestBody(_) | ClientHeaderTimeout | NoRoute | BodyTooLarge
            | NotCached => Side::Client,
            UpstreamConnectFailed
            | UpstreamConnectTimeout
            | UpstreamTls
            | UpstreamClosedEarly
            | UpstreamTimeout
            | BadResponse(_)
            | BadResponseBody(_)
            | BreakerOpen
            | NoHealthyEndpoint => Side::Upstream,
            NoLocalPort | Overloaded | PluginFailed => Side::Internal,
        }
    }

    /// Whether an idempotent request may go to a (new) upstream connection
    /// again: only when the upstream cannot have acted on it.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnectFailed
                | ProxyError::UpstreamConnectTimeout
                | ProxyError::UpstreamTls
                | ProxyError::UpstreamClosedEarly
        )
    }

    /// A short stable name (access logs, metrics labels).
    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            BadRequest(_) => "bad_request",
            BadRequestBody(_) => "bad_request_body",
            ClientHeaderTimeout => "client_header_timeout",
            NoRoute => "no_route",
            BodyTooLarge => "body_too_large",
            UpstreamConnectFailed => "upstream_connect_failed",
            UpstreamConnectTimeout => "upstream_connect_timeout",
            UpstreamTls => "upstream_tls",
            UpstreamClosedEarly => "upstream_closed_early",
            UpstreamTimeout => "upstream_timeout",
            BadResponse(_) => "bad_response",
            BadResponseBody(_) => "bad_response_body",
            NoLocalPort => "no_local_port",
            Overloaded => "overloaded",
            BreakerOpen => "breaker_open",
            NoHealthyEndpoint => "no_healthy_endpoint",
            NotCached => "not_cached",
            PluginFailed => "plugin_failed",
        }
    }

    /// The status the client receives, if a response can still be sent.
    pub fn status(&self) -> u16 {
        use ProxyError::*;
        match self {
            BadRequest(e) => e.status(),
            BadRequestBody(_) => 400,
            ClientHeaderTimeout => 408,
            NoRoute => 404,
            BodyTooLarge => 413,
            UpstreamConnectFailed
            | UpstreamTls
            | UpstreamClosedEarly
            | BadResponse(_)
            | BadResponseBody(_) => 502,
            UpstreamConnectTimeout | UpstreamTimeout | NotCached => 504,
            NoLocalPort | Overloaded | BreakerOpen | NoHealthyEndpoint => 503,
            PluginFailed => 500,
        }
    }
}

impl From<crate::lb::PickError> for ProxyError {
    fn from(e: crate::lb::PickError) -> Self {
        match e {
            crate::lb::PickError::BreakerOpen => ProxyError::BreakerOpen,
            crate::lb::PickError::NoHealthyEndpoint => ProxyError::NoHealthyEndpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_side_follow_the_failure() {
        assert_eq!(ProxyError::UpstreamConnectTimeout.status(), 504);
        assert_eq!(ProxyError::UpstreamConnectTimeout.side(), Side::Upstream);
        assert!(ProxyError::UpstreamClosedEarly.retry_safe());
        assert!(!ProxyError::UpstreamTimeout.retry_safe());
        assert!(ProxyError::UpstreamConnectFailed.retry_safe());
        assert!(!ProxyError::BadResponse(crate::http::HeadError::TooLarge).retry_safe());
        assert_eq!(ProxyError::ClientHeaderTimeout.status(), 408);
        assert_eq!(ProxyError::ClientHeaderTimeout.side(), Side::Client);
    }

    #[test]
    fn breaker_open_and_no_healthy_endpoint_are_upstream_503s_never_retried() {
        for e in [ProxyError::BreakerOpen, ProxyError::NoHealthyEndpoint] {
            assert_eq!(e.status(), 503);
            assert_eq!(e.side(), Side::Upstream);
            assert!(!e.retry_safe());
        }
        use crate::lb::PickError;
        assert_eq!(
            ProxyError::from(PickError::BreakerOpen),
            ProxyError::BreakerOpen
        );
        assert_eq!(ProxyError::from(PickError::NoHealthyEndpoint).status(), 503);
    }
}
