//! ferrogate's HTTP/3 layer (RFC 9114), sans-IO, for a QUIC endpoint to
//! drive with stream bytes: varints and frames with the checks a frame
//! allows alone, unidirectional stream types, SETTINGS rules, QPACK (RFC
//! 9204) with a dynamic table capacity of 0 both ways (static table,
//! literals, Huffman), and [`H3Conn`], the server side of one connection.
//! The request rules are HTTP/2's (RFC 9114 §4.3 and RFC 9113 §8.3 agree),
//! shared with `ferrogate-h2`, with their failures mapped to
//! H3_MESSAGE_ERROR.

pub mod conn;
pub mod error;
pub mod frame;
pub mod qpack;
pub mod settings;
pub mod stream;
pub mod varint;

pub use conn::{Config, ConnStats, Event, H3Conn, SendError, SendStream};
pub use error::{ErrorCode, H3Error, Scope};
pub use ferrogate_h2::{Field, Request};
pub use frame::{Frame, FrameHeader, FrameType};
pub use settings::{PeerSettings, SettingId};
pub use stream::UniStreamType;
