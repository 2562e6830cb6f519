//! Field-section decoding (RFC 9204 §4.5) for a decoder whose dynamic
//! table capacity is 0: every field comes from the static table or a
//! literal, so decoding keeps no state and a section is never blocked.

use ferrogate_h2::Field;

use super::prefix::{PrimitiveError, decode_int, decode_str};
use super::static_table::STATIC_TABLE;

/// Why a field section was not turned into a field list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// QPACK_DECOMPRESSION_FAILED, a connection error (RFC 9204 §2.2.3).
    #[error("QPACK decompression failed: {0}")]
    Failed(&'static str),
    /// The decoded list is past our SETTINGS_MAX_FIELD_SECTION_SIZE. No
    /// table state depends on the rest, so only the request is refused.
    #[error("field section past {limit} octets")]
    TooLarge { limit: u64 },
}

fn failed(e: PrimitiveError) -> DecodeError {
    DecodeError::Failed(match e {
        PrimitiveError::Truncated => "field section ends inside a field line",
        PrimitiveError::Invalid(reason) => reason,
    })
}

fn static_entry(index: u64) -> Result<(&'static [u8], &'static [u8]), DecodeError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i).copied())
        .ok_or(DecodeError::Failed("static table index out of range"))
}

const DYNAMIC: DecodeError =
    DecodeError::Failed("reference to the dynamic table, whose capacity is 0");

/// The size a field counts toward SETTINGS_MAX_FIELD_SECTION_SIZE (RFC
/// 9114 §4.2.2): name and value octets plus 32.
pub fn field_size(name: &[u8], value: &[u8]) -> u64 {
    name.len() as u64 + value.len() as u64 + 32
}

/// Decodes one encoded field section (a HEADERS frame's payload).
pub fn decode_section(mut buf: &[u8], max_size: u64) -> Result<Vec<Field>, DecodeError> {
    // §4.5.1: Required Insert Count (8-bit prefix), then sign and Delta
    // Base (7-bit prefix). With MaxEntries 0 an encoded insert count other
    // than 0 is an error (§4.5.1.1), and so the base is unused.
    let (ric, n) = decode_int(buf, 8).map_err(failed)?;
    if ric != 0 {
        return Err(DYNAMIC);
    }
    let (_, m) = decode_int(&buf[n..], 7).map_err(failed)?;
    buf = &buf[n + m..];

    let mut fields = Vec::new();
    let mut size = 0u64;
    while let Some(&first) = buf.first() {
        let (name, value, used): (std::borrow::Cow<[u8]>, std::borrow::Cow<[u8]>, usize) =
            if first & 0x80 != 0 {
                // 1Txxxxxx: indexed field line.
                if first & 0x40 == 0 {
                    return Err(DYNAMIC);
                }
                let (index, n) = decode_int(buf, 6).map_err(failed)?;
                let (name, value) = static_entry(index)?;
                (name.into(), value.into(), n)
            } else if first & 0x40 != 0 {
                // 01NTxxxx: literal with a name reference.
                if first & 0x10 == 0 {
                    return Err(DYNAMIC);
                }
                let (index, n) = decode_int(buf, 4).map_err(failed)?;
                let (name, _) = static_entry(index)?;
                let (value, m) = decode_str(&buf[n..], 7).map_err(failed)?;
                (name.into(), value, n + m)
            } else if first & 0x20 != 0 {
                // 001NHxxx: literal with a literal name.
                let (name, n) = decode_str(buf, 3).map_err(failed)?;
                let (value, m) = decode_str(&buf[n..], 7).map_err(failed)?;
                (name, value, n + m)
            } else {
                // 0001xxxx and 0000xxxx: post-base index and name reference.
                return Err(DYNAMIC);
            };
        size = size.saturating_add(field_size(&name, &value));
        if size > max_size {
            return Err(DecodeError::TooLarge { limit: max_size });
        }
        fields.push(Field::new(name.into_owned(), value.into_owned()));
        buf = &buf[used..];
    }
    Ok(fields)
}
