//! ferrogate's userspace TCP/IP for one worker: a smoltcp interface that
//! owns the service addresses (ARP, ICMP, TCP, UDP), O(1) demultiplexing of
//! frames to sockets, a timer wheel, local port ranges and neighbour
//! priming, under a stream API ([`Streams`], [`Stream`]) that applications
//! ([`App`]) use without seeing smoltcp. No knowledge of AF_XDP, DPDK or
//! HTTP: frames and time go in, frames come out.

mod config;
mod datagram;
mod device;
mod neighbors;
mod net;
mod ports;
mod sockets;
mod stream;
mod timer;

pub use config::NetConfig;
pub use datagram::{Datagram, IP_MTU, SendDrop, UdpNetStats, max_payload};
pub use device::{DeviceStats, FrameQueue};
pub use net::{App, Net, NetError, NetStats};
pub use ports::PortAllocator;
pub use smoltcp::time::{Duration, Instant};
pub use stream::{NO_OWNER, Owner, Stream, StreamId, StreamState, Streams};
