//! proxy-wasm ABI 0.2.1 constants and the header-pair wire format.
//!
//! Values follow the spec (`abi-versions/v0.2.1`) and proxy-wasm-cpp-host.

/// `WasmResult` / `proxy_status_t`: what a host function returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    BadExpression = 5,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    ResultMismatch = 9,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

/// `proxy_map_type_t`.
pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_REQUEST_TRAILERS: u32 = 1;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_RESPONSE_TRAILERS: u32 = 3;
/// gRPC and HTTP-call maps (4..=7) exist in the ABI; this host has none.
pub const MAP_MAX: u32 = 7;

/// `proxy_buffer_type_t`.
pub const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
pub const BUFFER_HTTP_RESPONSE_BODY: u32 = 1;
pub const BUFFER_VM_CONFIGURATION: u32 = 6;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
/// Downstream/upstream data, HTTP-call and gRPC buffers, call data: absent here.
pub const BUFFER_MAX: u32 = 8;

/// `proxy_buffer_flags`: the buffer holds the end of the stream.
pub const BUFFER_FLAG_END_OF_STREAM: u32 = 1;

/// `proxy_stream_type_t` for `proxy_continue_stream`/`proxy_close_stream`.
pub const STREAM_REQUEST: u32 = 0;
pub const STREAM_RESPONSE: u32 = 1;

/// `proxy_metric_type_t`.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;

/// `proxy_log_level_t`: trace 0 … critical 5.
pub const LOG_CRITICAL: u32 = 5;

/// Header callbacks' results (`FilterHeadersStatus`; 0.2.1 calls 0/1
/// Continue/Pause): 0 Continue, 1 StopIteration, 2 ContinueAndEndStream,
/// 3 StopAllIterationAndBuffer, 4 StopAllIterationAndWatermark.
/// Body callbacks' (`FilterDataStatus`): 0 Continue, 1 StopIterationAndBuffer,
/// 2 StopIterationAndWatermark, 3 StopIterationNoBuffer.
pub const ACTION_CONTINUE: u32 = 0;
pub const ACTION_MAX_HEADERS: u32 = 4;
pub const ACTION_MAX_BODY: u32 = 3;
/// `ContinueAndEndStream` from a header callback.
pub const ACTION_CONTINUE_AND_END_STREAM: u32 = 2;

/// The context id this host gives the plugin's root context.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Size of a header map in the wire format: a u32 count, a (u32 key length,
/// u32 value length) per pair, then each key and value followed by a NUL.
pub fn pairs_size<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    4 + pairs
        .map(|(k, v)| 8 + k.len() + 1 + v.len() + 1)
        .sum::<usize>()
}

/// Serializes a header map into `out` (cleared first).
pub fn serialize_pairs<'a, I>(pairs: I, out: &mut Vec<u8>)
where
    I: ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    out.clear();
    out.reserve(pairs_size(pairs.clone()));
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

/// Parses the wire format; `None` when the bytes do not hold what the
/// lengths claim (the guest broke the ABI). An empty input is an empty map,
/// as the SDKs send for "no headers".
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    // Each pair needs at least 8 bytes of lengths and 2 NULs: bound the
    // count before allocating for it.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let klen = read_u32(bytes, 4 + i * 8)? as usize;
        let vlen = read_u32(bytes, 8 + i * 8)? as usize;
        let key = bytes.get(data..data.checked_add(klen)?)?;
        data += klen;
        if *bytes.get(data)? != 0 {
            return None;
        }
        data += 1;
        let value = bytes.get(data..data.checked_add(vlen)?)?;
        data += vlen;
        if *bytes.get(data)? != 0 {
            return None;
        }
        data += 1;
        pairs.push((key.to_vec(), value.to_vec()));
    }
    Some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn pairs_round_trip_in_the_cpp_host_layout() {
        let pairs = vec![p(":path", "/x"), p("a", "")];
        let mut out = Vec::new();
        let refs = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        serialize_pairs(refs.clone(), &mut out);
        assert_eq!(out.len(), pairs_size(refs));
        let mut want = Vec::new();
        for n in [2u32, 5, 2, 1, 0] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b":path\0/x\0a\0\0");
        assert_eq!(out, want);
        assert_eq!(deserialize_pairs(&out), Some(pairs));
    }

    #[test]
    fn broken_pairs_are_rejected() {
        let mut out = Vec::new();
        serialize_pairs([(&b"key"[..], &b"value"[..])].into_iter(), &mut out);
        assert!(deserialize_pairs(&out[..out.len() - 1]).is_none());
        let mut bad_nul = out.clone();
        bad_nul[4 + 8 + 3] = b'x';
        assert!(deserialize_pairs(&bad_nul).is_none());
        let mut huge = out.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(deserialize_pairs(&huge).is_none());
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
    }
}
