//! HPACK (RFC 7541) for the connection: a decoder with the limits a server
//! advertises, and the response encoder. The codec itself is `loona-hpack`;
//! this module maps its failures to HTTP/2 errors and applies the caps.

use std::borrow::Cow;

use crate::error::{ErrorCode, FrameError};
use crate::fields::{Field, check_name, is_connection_specific};

/// SETTINGS_HEADER_TABLE_SIZE's initial value (§6.5.2); both ends start here.
pub const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// What we advertise as SETTINGS_MAX_HEADER_LIST_SIZE unless configured:
/// enough for browsers' cookies, small enough to bound a stream's memory.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: usize = 16 * 1024;

/// Why a header block was not turned into a field list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The block did not decode (a connection COMPRESSION_ERROR), or another
    /// HTTP/2 error.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The decoded list exceeds SETTINGS_MAX_HEADER_LIST_SIZE. The whole
    /// block was still decoded, so the HPACK state is intact and only this
    /// stream is refused: the connection answers `431` and ends the stream
    /// (RFC 9113 §10.5.1; a response says why, where RST_STREAM would not).
    #[error("header list of {size} octets exceeds the {limit}-octet limit (stream {stream})")]
    ListTooLarge {
        stream: u32,
        size: usize,
        limit: usize,
    },
}

/// The connection's HPACK decoder (one per connection: the dynamic table is
/// shared by every stream's blocks, in the order they arrive).
pub struct HeaderDecoder {
    inner: loona_hpack::Decoder<'static>,
    max_list_size: usize,
}

impl HeaderDecoder {
    /// `max_table_size` is our SETTINGS_HEADER_TABLE_SIZE: a size update
    /// above it is a COMPRESSION_ERROR. The table starts at 4096 octets as
    /// RFC 7541 §4.2 says, until the client's size update brings it down.
    /// `max_list_size` is our SETTINGS_MAX_HEADER_LIST_SIZE.
    pub fn new(max_table_size: usize, max_list_size: usize) -> Self {
        let mut inner = loona_hpack::Decoder::new();
        inner.set_max_allowed_table_size(max_table_size);
        Self {
            inner,
            max_list_size,
        }
    }

    pub fn max_list_size(&self) -> usize {
        self.max_list_size
    }

    /// Decodes one complete header block (HEADERS plus its CONTINUATIONs,
    /// concatenated) of `stream`. An over-size list keeps decoding without
    /// storing, because the dynamic table must see every field (§4.3).
    pub fn decode(&mut self, stream: u32, block: &[u8]) -> Result<Vec<Field>, HeaderError> {
        let limit = self.max_list_size;
        let mut fields = Vec::new();
        let mut size = 0usize;
        self.inner
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                size = size.saturating_add(Field::list_size(&name, &value));
                if size <= limit {
                    fields.push(Field::new(name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|_| {
                // §4.3: an undecodable block leaves the table out of step with
                // the client's, so nothing after it can be trusted.
                FrameError::connection(ErrorCode::CompressionError, "HPACK decoding failed")
            })?;
        if size > limit {
            return Err(HeaderError::ListTooLarge {
                stream,
                size,
                limit,
            });
        }
        Ok(fields)
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_HEADER_TABLE_SIZE, DEFAULT_MAX_HEADER_LIST_SIZE)
    }
}

/// The connection's HPACK encoder for response (and trailer) blocks.
pub struct ResponseEncoder {
    inner: loona_hpack::Encoder<'static>,
    /// A table size change the client has not yet been told of; RFC 7541
    /// §4.2 wants it at the start of the next block.
    pending_update: Option<usize>,
}

impl ResponseEncoder {
    pub fn new() -> Self {
        Self {
            inner: loona_hpack::Encoder::new(),
            pending_update: None,
        }
    }

    /// Applies the client's SETTINGS_HEADER_TABLE_SIZE. We never grow past
    /// the 4096-octet default: a larger table would cost memory per
    /// connection for little gain on responses.
    pub fn set_peer_table_size(&mut self, size: u32) {
        let size = (size as usize).min(DEFAULT_HEADER_TABLE_SIZE);
        self.inner.set_max_table_size(size);
        self.pending_update = Some(size);
    }

    /// Appends the block for `:status` and `headers` to `out`, ready for
    /// `emit::headers`. Names are lowercased (§8.2.1); connection-specific
    /// fields, the fields a `Connection` header names, and pseudo-header
    /// look-alikes are dropped (§8.2.2) so an HTTP/1 origin's hop headers
    /// cannot make the response malformed.
    pub fn encode(&mut self, status: u16, headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
        debug_assert!((100..=999).contains(&status));
        if let Some(size) = self.pending_update.take() {
            // 001xxxxx: dynamic table size update (RFC 7541 §6.3).
            write(loona_hpack::encoder::encode_integer_into(
                size, 5, 0x20, out,
            ));
        }
        let status = status.to_string();
        write(
            self.inner
                .encode_header_into((b":status", status.as_bytes()), out),
        );
        self.encode_regular(headers, out);
    }

    /// Appends a trailer block (no pseudo-header fields, §8.1) for `headers`,
    /// with the same filtering as [`ResponseEncoder::encode`].
    pub fn encode_trailers(&mut self, headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
        if let Some(size) = self.pending_update.take() {
            write(loona_hpack::encoder::encode_integer_into(
                size, 5, 0x20, out,
            ));
        }
        self.encode_regular(headers, out);
    }

    /// The regular fields of a block: lowercased, hop fields dropped.
    fn encode_regular(&mut self, headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
        let nominated: Vec<&[u8]> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .collect();
        for &(name, value) in headers {
            let dropped = is_connection_specific(name)
                || name.eq_ignore_ascii_case(b"te")
                || nominated.iter().any(|t| t.eq_ignore_ascii_case(name));
            if dropped || name.first() == Some(&b':') {
                continue;
            }
            let name = name.to_ascii_lowercase();
            debug_assert!(check_name(&name).is_ok());
            write(self.inner.encode_header_into((&name, value), out));
        }
    }
}

impl Default for ResponseEncoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Writing into a `Vec` cannot fail; the encoder's API is `io::Write`.
fn write(r: std::io::Result<()>) {
    r.expect("writing to a Vec never fails");
}
