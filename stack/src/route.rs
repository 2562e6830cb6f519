//! Routing snapshot: listeners, their ordered routes, and upstream pools. Built
//! off the data path (by the control plane), immutable, shared with `Arc`.

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub version: u64,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub port: u16,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Exact host (case-insensitive) or `*.suffix`; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub action: RouteAction,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy(Arc<Upstream>),
    Respond(Arc<DirectResponse>),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl RouteTable {
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }
}

impl Listener {
    /// First route that matches, in configuration order.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path))
    }
}

impl Route {
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(h)) => host_matches(pattern, h),
        };
        host_ok && path.starts_with(self.path_prefix.as_str())
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(name: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            action: RouteAction::Respond(Arc::new(DirectResponse {
                status: 200,
                content_type: "text/plain".into(),
                body: name.as_bytes().to_vec(),
            })),
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let l = Listener {
            port: 80,
            routes: vec![
                respond("api", Some("api.example.com"), "/v1/"),
                respond("wild", Some("*.example.com"), "/"),
                respond("any", None, "/"),
            ],
        };
        assert_eq!(
            l.route(Some("API.example.com"), "/v1/x").unwrap().name,
            "api"
        );
        assert_eq!(
            l.route(Some("api.example.com"), "/v2").unwrap().name,
            "wild"
        );
        assert_eq!(l.route(Some("example.com"), "/").unwrap().name, "any");
        assert_eq!(l.route(Some("xexample.com"), "/").unwrap().name, "any");
        assert_eq!(l.route(None, "/").unwrap().name, "any");
    }
}
