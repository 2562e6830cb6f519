//! ferrogate's QUIC endpoint (RFC 9000) for one worker, sans-IO:
//! quinn-proto underneath, HTTP/3 (`ferrogate-h3`) on its streams. The
//! worker feeds it datagrams (`handle_datagram`), sends what
//! `poll_transmit` gives, sleeps until `poll_timeout` and calls
//! `handle_timeout`, takes request events from `poll_event` and answers
//! through `send_response_head` / `send_data` / `finish`. Connection ids
//! carry the worker index (`owner_of`) so a packet that landed on another
//! worker's queue can be handed to its owner.

pub mod cid;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
mod conn;
pub mod endpoint;
pub mod event;

pub use cid::{
    CID_LEN, WorkerCidGenerator, generation_of, generation_of_datagram, owner_of, owner_of_datagram,
};
pub use config::{ALPN_H3, ConfigError, QuicConfig};
pub use endpoint::{EndpointStats, QuicEndpoint, SendError};
pub use event::{CloseReason, ConnId, Event, StreamHandle};
pub use quinn_proto::{self, ConnectionHandle, EcnCodepoint, Transmit};
