//! HTTP/1.1 pieces the proxy is built from: byte buffers, message framing,
//! streaming chunked decoding, and head parsing/rewriting with httparse.

pub mod buf;
pub mod chunked;
pub mod head;

pub use buf::ByteBuf;
pub use chunked::{ChunkError, ChunkedDecoder};
pub use head::{BodyFraming, HeadError, RequestHead, ResponseHead};
