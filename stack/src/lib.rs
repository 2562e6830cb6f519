//! ferrogate's userspace network stack: everything above the frame. A smoltcp
//! interface owns the service addresses (ARP, ICMP, TCP); connections are
//! proxied as HTTP/1.1 to upstreams opened by the same stack. No knowledge of
//! AF_XDP or DPDK: frames and time go in, frames come out.

pub mod config;
pub mod device;
pub mod error;
mod flow;
pub mod frame;
pub mod http;
pub mod ports;
mod proxy;
pub mod route;
mod sockets;
mod stack;
pub mod stats;
mod timer;

pub use config::{StackConfig, Timeouts};
pub use error::{ProxyError, Side};
pub use route::{DirectResponse, Listener, Route, RouteAction, RouteTable, Upstream};
pub use smoltcp::time::{Duration, Instant};
pub use stack::{Stack, StackError};
pub use stats::StackStats;
