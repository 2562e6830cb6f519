//! QPACK (RFC 9204) with a dynamic table capacity of 0 both ways: we
//! advertise 0 so the peer's sections may only use the static table and
//! literals, and we encode responses the same way, so neither side keeps
//! table state and no stream ever blocks on another.

pub mod decoder;
pub mod encoder;
pub mod prefix;
pub mod static_table;
pub mod streams;
#[cfg(test)]
mod tests;

pub use decoder::{DecodeError, decode_section, field_size};
pub use encoder::{encode_response, encode_trailers};
