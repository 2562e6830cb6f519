//! SETTINGS (RFC 9114 §7.2.4, RFC 9204 §5, RFC 9220, RFC 9297): the
//! parameter iterator, the rules on what a peer may send, and ours.

use crate::error::{ErrorCode, H3Error};
use crate::varint;

/// A setting identifier; unknown ones (grease among them) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettingId {
    QpackMaxTableCapacity,
    MaxFieldSectionSize,
    QpackBlockedStreams,
    /// RFC 9220: extended CONNECT.
    EnableConnectProtocol,
    /// RFC 9297: HTTP datagrams.
    H3Datagram,
    /// 0x00, 0x02-0x05: HTTP/2 settings with no HTTP/3 meaning (§7.2.4.1).
    ReservedHttp2(u8),
    Unknown(u64),
}

impl From<u64> for SettingId {
    fn from(id: u64) -> Self {
        match id {
            0x01 => Self::QpackMaxTableCapacity,
            0x06 => Self::MaxFieldSectionSize,
            0x07 => Self::QpackBlockedStreams,
            0x08 => Self::EnableConnectProtocol,
            0x33 => Self::H3Datagram,
            0x00 | 0x02..=0x05 => Self::ReservedHttp2(id as u8),
            other => Self::Unknown(other),
        }
    }
}

impl From<SettingId> for u64 {
    fn from(id: SettingId) -> Self {
        match id {
            SettingId::QpackMaxTableCapacity => 0x01,
            SettingId::MaxFieldSectionSize => 0x06,
            SettingId::QpackBlockedStreams => 0x07,
            SettingId::EnableConnectProtocol => 0x08,
            SettingId::H3Datagram => 0x33,
            SettingId::ReservedHttp2(id) => u64::from(id),
            SettingId::Unknown(id) => id,
        }
    }
}

/// The parameters of a SETTINGS payload, checked to be whole varint pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsIter<'a> {
    rest: &'a [u8],
}

impl<'a> SettingsIter<'a> {
    /// A payload that ends inside a pair is an H3_FRAME_ERROR (§7.1).
    pub(crate) fn new(payload: &'a [u8]) -> Result<Self, H3Error> {
        let mut rest = payload;
        while !rest.is_empty() {
            let pair = varint::decode(rest)
                .and_then(|(_, a)| varint::decode(&rest[a..]).map(|(_, b)| a + b));
            let n = pair.ok_or(H3Error::connection(
                ErrorCode::FrameError,
                "SETTINGS payload ends inside a parameter",
            ))?;
            rest = &rest[n..];
        }
        Ok(Self { rest: payload })
    }
}

impl Iterator for SettingsIter<'_> {
    type Item = (SettingId, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let (id, a) = varint::decode(self.rest)?;
        let (value, b) = varint::decode(&self.rest[a..])?;
        self.rest = &self.rest[a + b..];
        Some((id.into(), value))
    }
}

/// What the peer's SETTINGS told us; absent parameters keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerSettings {
    /// The peer's QPACK table; we never use it (our encoder is static-only).
    pub qpack_max_table_capacity: u64,
    /// Unlimited unless sent (§4.2.2).
    pub max_field_section_size: Option<u64>,
    pub qpack_blocked_streams: u64,
    pub enable_connect_protocol: bool,
    pub h3_datagram: bool,
}

fn settings_error(reason: &'static str) -> H3Error {
    H3Error::connection(ErrorCode::SettingsError, reason)
}

/// Most parameters a SETTINGS frame may carry; the duplicate check sorts
/// them, so their number is bounded before that.
pub const MAX_PARAMETERS: usize = 128;

impl PeerSettings {
    /// Applies a peer's SETTINGS frame with the rules of §7.2.4: an
    /// identifier at most once, no HTTP/2-only identifiers, and the boolean
    /// extensions 0 or 1 — each an H3_SETTINGS_ERROR.
    pub fn from_frame(params: SettingsIter<'_>) -> Result<Self, H3Error> {
        let mut ids = Vec::new();
        let mut s = Self::default();
        for (id, value) in params {
            if ids.len() == MAX_PARAMETERS {
                return Err(H3Error::connection(
                    ErrorCode::ExcessiveLoad,
                    "SETTINGS with too many parameters",
                ));
            }
            ids.push(u64::from(id));
            let flag = |reason| match value {
                0 | 1 => Ok(value == 1),
                _ => Err(settings_error(reason)),
            };
            match id {
                SettingId::QpackMaxTableCapacity => s.qpack_max_table_capacity = value,
                SettingId::MaxFieldSectionSize => s.max_field_section_size = Some(value),
                SettingId::QpackBlockedStreams => s.qpack_blocked_streams = value,
                SettingId::EnableConnectProtocol => {
                    s.enable_connect_protocol =
                        flag("SETTINGS_ENABLE_CONNECT_PROTOCOL not 0 or 1")?;
                }
                SettingId::H3Datagram => s.h3_datagram = flag("SETTINGS_H3_DATAGRAM not 0 or 1")?,
                SettingId::ReservedHttp2(_) => {
                    return Err(settings_error("HTTP/2 setting in HTTP/3 SETTINGS"));
                }
                SettingId::Unknown(_) => {}
            }
        }
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(settings_error("setting identifier sent twice"));
        }
        Ok(s)
    }
}

/// What this server advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSettings {
    pub max_field_section_size: u64,
}

impl LocalSettings {
    /// Appends our SETTINGS frame. QPACK_MAX_TABLE_CAPACITY and
    /// QPACK_BLOCKED_STREAMS are 0, their defaults; sent anyway so a peer
    /// reading the frame sees we keep no dynamic table (RFC 9204 §3.2.3).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let params = [
            (SettingId::QpackMaxTableCapacity, 0),
            (SettingId::QpackBlockedStreams, 0),
            (SettingId::MaxFieldSectionSize, self.max_field_section_size),
        ];
        let len: usize = params
            .iter()
            .map(|&(id, v)| varint::len(id.into()) + varint::len(v))
            .sum();
        varint::encode(0x04, out);
        varint::encode(len as u64, out);
        for (id, v) in params {
            varint::encode(id.into(), out);
            varint::encode(v, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(params: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(id, v) in params {
            varint::encode(id, &mut out);
            varint::encode(v, &mut out);
        }
        out
    }

    fn apply(params: &[(u64, u64)]) -> Result<PeerSettings, H3Error> {
        let p = payload(params);
        PeerSettings::from_frame(SettingsIter::new(&p)?)
    }

    #[test]
    fn settings_are_read_and_unknown_ids_ignored() {
        let s = apply(&[(0x06, 8192), (0x21, 7), (0x01, 4096), (0x33, 1), (0x08, 1)]).unwrap();
        assert_eq!(s.max_field_section_size, Some(8192));
        assert_eq!(s.qpack_max_table_capacity, 4096);
        assert!(s.h3_datagram && s.enable_connect_protocol);
        assert_eq!(apply(&[]).unwrap(), PeerSettings::default());
    }

    #[test]
    fn duplicate_setting_is_a_settings_error() {
        for dup in [0x06, 0x21] {
            let err = apply(&[(dup, 1), (0x01, 0), (dup, 1)]).unwrap_err();
            assert_eq!(err.code, ErrorCode::SettingsError, "{dup:#x}");
        }
    }

    #[test]
    fn http2_settings_are_settings_errors() {
        for id in [0x00, 0x02, 0x03, 0x04, 0x05] {
            let err = apply(&[(id, 0)]).unwrap_err();
            assert_eq!(err.code, ErrorCode::SettingsError, "{id:#x}");
        }
    }

    #[test]
    fn boolean_settings_other_than_0_or_1_are_settings_errors() {
        assert_eq!(
            apply(&[(0x08, 2)]).unwrap_err().code,
            ErrorCode::SettingsError
        );
        assert_eq!(
            apply(&[(0x33, 2)]).unwrap_err().code,
            ErrorCode::SettingsError
        );
    }

    #[test]
    fn settings_payload_ending_inside_a_parameter_is_a_frame_error() {
        let mut p = payload(&[(0x06, 100)]);
        p.push(0x01);
        assert_eq!(
            SettingsIter::new(&p).unwrap_err().code,
            ErrorCode::FrameError
        );
        let p = [0x06, 0x40];
        assert_eq!(
            SettingsIter::new(&p).unwrap_err().code,
            ErrorCode::FrameError
        );
    }

    #[test]
    fn too_many_parameters_are_refused_before_sorting() {
        let params: Vec<(u64, u64)> = (0..=MAX_PARAMETERS as u64)
            .map(|i| (0x100 + i, 0))
            .collect();
        assert_eq!(apply(&params).unwrap_err().code, ErrorCode::ExcessiveLoad);
    }

    #[test]
    fn our_settings_frame_parses_back() {
        let mut out = Vec::new();
        LocalSettings {
            max_field_section_size: 16384,
        }
        .emit(&mut out);
        let (frame, used) = crate::frame::parse(&out, 1024).unwrap().unwrap();
        assert_eq!(used, out.len());
        let crate::frame::Frame::Settings(it) = frame else {
            panic!("not SETTINGS: {frame:?}")
        };
        let s = PeerSettings::from_frame(it).unwrap();
        assert_eq!(s.max_field_section_size, Some(16384));
        assert_eq!(s.qpack_max_table_capacity, 0);
    }
}
