//! A pool as a snapshot carries it: endpoints, weights, policy, and what is
//! compiled once per snapshot (the Maglev table, the TLS client config).

use std::net::SocketAddr;
use std::sync::Arc;

use ferrogate_tls::UpstreamTls;

use crate::{Endpoint, Maglev, PoolPolicy};

/// A pool of endpoints and its policy (balancer, health checks, breaker,
/// retries, timeouts). Immutable; see the crate docs for its state.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Position in the snapshot's list of pools (`RouteTable::upstreams`), resolved at compile time: the
    /// O(1) key of the pool's runtime state in an `UpstreamRegistry` synced
    /// with the same snapshot.
    pub index: usize,
    pub endpoints: Vec<SocketAddr>,
    /// Weight of `endpoints[i]` (>= 1).
    pub weights: Vec<u32>,
    pub policy: PoolPolicy,
    /// Lookup table of the consistent-hash balancer, built once per snapshot
    /// when the policy asks for it.
    pub maglev: Option<Maglev>,
    /// TLS to the endpoints (`tls = true`), compiled once per snapshot.
    pub tls: Option<Arc<UpstreamTls>>,
    /// `Host` sent for requests that arrive without one (HTTP/1.0); None:
    /// the endpoint's authority, as nginx's `$proxy_host`.
    pub host: Option<Box<str>>,
    /// PROXY protocol header sent first on each new connection to an
    /// endpoint (TCP listeners only: HTTP reuses a connection for many
    /// clients, a header names one).
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Which PROXY protocol header (HAProxy's proxy-protocol.txt) a pool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl Upstream {
    /// A pool at `index` of its snapshot. Builds the Maglev table when the
    /// policy hashes.
    pub fn new(
        name: impl Into<String>,
        index: usize,
        endpoints: &[Endpoint],
        policy: PoolPolicy,
    ) -> Self {
        let maglev = policy
            .balancer
            .is_hash()
            .then(|| Maglev::new(endpoints, crate::MAGLEV_TABLE_SIZE));
        Self {
            name: name.into(),
            index,
            endpoints: endpoints.iter().map(|e| e.addr).collect(),
            weights: endpoints.iter().map(|e| e.weight.max(1)).collect(),
            policy,
            maglev,
            tls: None,
            host: None,
            proxy_protocol: None,
        }
    }

    /// The same pool, sending `host` to requests without a Host header.
    pub fn with_host(mut self, host: impl Into<Box<str>>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Writes the `Host` value for a request to `endpoint` that came
    /// without one: the pool's `host`, else the endpoint's authority (the
    /// port left out when it is the scheme's default).
    pub fn write_host(
        &self,
        endpoint: SocketAddr,
        out: &mut impl std::fmt::Write,
    ) -> std::fmt::Result {
        if let Some(h) = &self.host {
            return out.write_str(h);
        }
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        match (endpoint, endpoint.port() == default_port) {
            (SocketAddr::V4(a), true) => write!(out, "{}", a.ip()),
            (SocketAddr::V6(a), true) => write!(out, "[{}]", a.ip()),
            (a, false) => write!(out, "{a}"),
        }
    }

    /// The same pool, speaking TLS to its endpoints.
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Round-robin over `endpoints` of weight 1 with the default policy.
    pub fn simple(name: impl Into<String>, index: usize, endpoints: &[SocketAddr]) -> Self {
        let eps: Vec<Endpoint> = endpoints.iter().map(|&a| Endpoint::new(a)).collect();
        Self::new(name, index, &eps, PoolPolicy::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_for(pool: &Upstream, ep: &str) -> String {
        let mut s = String::new();
        pool.write_host(ep.parse().unwrap(), &mut s).unwrap();
        s
    }

    #[test]
    fn host_for_a_request_without_one_leaves_out_the_default_port() {
        let eps: [SocketAddr; 1] = ["10.0.0.3:80".parse().unwrap()];
        let pool = Upstream::simple("p", 0, &eps);
        assert_eq!(host_for(&pool, "10.0.0.3:80"), "10.0.0.3");
        assert_eq!(host_for(&pool, "10.0.0.3:8080"), "10.0.0.3:8080");
        assert_eq!(host_for(&pool, "[fd77::3]:80"), "[fd77::3]");
        assert_eq!(host_for(&pool, "[fd77::3]:443"), "[fd77::3]:443");
        let named = Upstream::simple("p", 0, &eps).with_host("api.example");
        assert_eq!(host_for(&named, "10.0.0.3:8080"), "api.example");
    }
}
