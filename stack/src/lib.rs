//! ferrogate's userspace network stack: everything above the frame. A smoltcp
//! interface owns the service addresses (ARP, ICMP, TCP); connections are
//! proxied as HTTP/1.1 to upstreams opened by the same stack. No knowledge of
//! AF_XDP or DPDK: frames and time go in, frames come out.

pub mod access;
mod client_io;
pub mod config;
pub mod error;
mod probe;
mod proxy;
pub mod route;
pub mod router;
mod stack;
pub mod stats;
mod tls_pipe;
pub mod upstream;
mod upstream_io;

pub use ferrogate_http as http;
pub use ferrogate_net as net;
pub use ferrogate_tls as tls;
pub use ferrogate_wire as wire;

pub use config::{StackConfig, Timeouts};
pub use error::{ProxyError, Side};
pub use net::{Duration, Instant};
pub use route::{
    DirectResponse, HeaderMatch, Listener, PathMatch, QueryMatch, Route, RouteAction, RouteTable,
    Upstream,
};
pub use router::RequestView;
pub use stack::{Stack, StackError};
pub use stats::StackStats;
pub use upstream::{PoolPolicy, UpstreamRegistry};
