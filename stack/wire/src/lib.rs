//! Views over received frames, read before smoltcp sees them. One parse per
//! frame ([`classify`]) serves both the engine, which steers a frame to the
//! worker owning its flow, and the stack's demultiplexer, which hands it to
//! the one socket it belongs to; [`rx_check`] drops, with a reason, what
//! smoltcp would drop silently, so every received frame is accounted.
//!
//! The XDP program (C) and its Rust twin for backends without XDP keep their
//! own parse, which must match the kernel program bit for bit.

mod arp;
mod classify;
mod rx_check;

pub use arp::arp_request_to_learning_reply;
pub use classify::{FlowKey, FrameClass, TcpMeta, UdpMeta, classify};
pub use rx_check::{RxDrop, rx_check, tcp_checksums_ok};
