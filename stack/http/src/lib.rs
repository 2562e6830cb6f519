//! ferrogate's HTTP/1.1 codec, sans-IO: byte buffers, message framing,
//! streaming chunked decoding, and head parsing/rewriting. httparse is used
//! inside only; callers see [`Request`], [`Headers`], [`Header`] and
//! [`RequestView`], which do
//! not depend on the HTTP version or the parser.

pub mod buf;
pub mod chunked;
pub mod head;
mod lines;
mod view;

pub use buf::ByteBuf;
pub use chunked::{ChunkError, ChunkedDecoder, TrailerField};
pub use head::{
    BodyFraming, HeadError, Header, HeaderSlots, Headers, Request, RequestHead, ResponseHead,
    ResponseView,
};
pub use lines::{CODEC_OWNED, HeaderLines, ValueWriter};
pub use view::RequestView;
