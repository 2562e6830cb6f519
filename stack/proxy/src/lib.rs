//! ferrogate's HTTP proxy on the userspace stack: the application that the
//! TCP/IP layer (`ferrogate-net`) runs. Client connections are proxied as
//! HTTP/1.1 to upstreams opened by the same stack, through the phases of
//! [`ProxyHttp`] (routing, header rules, body filters, logging), with pools
//! from `ferrogate-lb`, the codec from `ferrogate-http` and TLS from
//! `ferrogate-tls`. No knowledge of AF_XDP or DPDK: frames and time go in
//! ([`Stack::handle_frame`], [`Stack::poll`]), frames come out
//! ([`Stack::drain_tx`]).

pub mod access;
mod attempt;
pub mod cache;
pub mod canary;
mod client_io;
mod client_side;
pub mod config;
mod detached_fill;
pub mod error;
mod h2_session;
mod h3_session;
pub mod jwt;
mod l4_session;
pub mod limits;
pub(crate) mod mux_stream;
pub mod phases;
pub mod plugin_phase;
mod probe;
mod proxy;
pub mod proxy_header;
mod revalidation;
pub mod route;
pub mod route_stats;
pub mod router;
mod rule_index;
pub mod rules;
mod stack;
pub mod stats;
mod trailers;
mod udp_session;

pub use ferrogate_h2 as h2;
pub use ferrogate_h3 as h3;
pub use ferrogate_http as http;
pub use ferrogate_lb as lb;
pub use ferrogate_limits as quota;
pub use ferrogate_net as net;
pub use ferrogate_plugins as plugins;
pub use ferrogate_quic as quic;
pub use ferrogate_tls as tls;
pub use ferrogate_wire as wire;

pub use config::{StackConfig, Timeouts};
pub use error::{ProxyError, Side};
pub use http::RequestView;
pub use lb::Upstream;
pub use lb::{PoolPolicy, UpstreamRegistry};
pub use net::{Duration, Instant};
pub use phases::{ProxyHttp, RequestInfo, ResponseInfo, StandardPhases, Verdict};
pub use route::{
    DirectResponse, HeaderMatch, L4Listener, Listener, PathMatch, QueryMatch, Route, RouteAction,
    RouteJwt, RouteTable, UdpListener,
};
pub use stack::{Stack, StackError};
pub use stats::StackStats;
