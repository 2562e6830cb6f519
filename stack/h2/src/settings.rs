//! SETTINGS parameters (RFC 9113 §6.5.2) and the checks on their values.

use crate::error::{ErrorCode, FrameError};

/// A SETTINGS parameter identifier; unknown ones must be ignored (§6.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettingId {
    HeaderTableSize,
    EnablePush,
    MaxConcurrentStreams,
    InitialWindowSize,
    MaxFrameSize,
    MaxHeaderListSize,
    /// RFC 8441 (extended CONNECT, e.g. WebSockets over HTTP/2).
    EnableConnectProtocol,
    /// RFC 9218 §2.1.
    NoRfc7540Priorities,
    Unknown(u16),
}

impl From<u16> for SettingId {
    fn from(id: u16) -> Self {
        match id {
            0x1 => Self::HeaderTableSize,
            0x2 => Self::EnablePush,
            0x3 => Self::MaxConcurrentStreams,
            0x4 => Self::InitialWindowSize,
            0x5 => Self::MaxFrameSize,
            0x6 => Self::MaxHeaderListSize,
            0x8 => Self::EnableConnectProtocol,
            0x9 => Self::NoRfc7540Priorities,
            other => Self::Unknown(other),
        }
    }
}

impl From<SettingId> for u16 {
    fn from(id: SettingId) -> Self {
        match id {
            SettingId::HeaderTableSize => 0x1,
            SettingId::EnablePush => 0x2,
            SettingId::MaxConcurrentStreams => 0x3,
            SettingId::InitialWindowSize => 0x4,
            SettingId::MaxFrameSize => 0x5,
            SettingId::MaxHeaderListSize => 0x6,
            SettingId::EnableConnectProtocol => 0x8,
            SettingId::NoRfc7540Priorities => 0x9,
            SettingId::Unknown(other) => other,
        }
    }
}

/// Octets per parameter: 16-bit id, 32-bit value.
pub const SETTING_LEN: usize = 6;
/// SETTINGS_MAX_FRAME_SIZE's initial value and floor.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// One parameter as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub id: SettingId,
    pub value: u32,
}

impl Setting {
    /// Checks the value ranges §6.5.2 sets (and RFC 8441/9218 for their bools).
    pub fn validate(&self) -> Result<(), FrameError> {
        use ErrorCode::{FlowControlError, ProtocolError};
        match self.id {
            SettingId::EnablePush if self.value > 1 => Err(FrameError::connection(
                ProtocolError,
                "SETTINGS_ENABLE_PUSH not 0 or 1",
            )),
            SettingId::InitialWindowSize if self.value > MAX_WINDOW_SIZE => {
                Err(FrameError::connection(
                    FlowControlError,
                    "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
                ))
            }
            SettingId::MaxFrameSize
                if !(DEFAULT_MAX_FRAME_SIZE..=crate::header::MAX_LENGTH).contains(&self.value) =>
            {
                Err(FrameError::connection(
                    ProtocolError,
                    "SETTINGS_MAX_FRAME_SIZE outside 16384..=16777215",
                ))
            }
            SettingId::EnableConnectProtocol | SettingId::NoRfc7540Priorities if self.value > 1 => {
                Err(FrameError::connection(
                    ProtocolError,
                    "boolean setting not 0 or 1",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The parameters of a received SETTINGS frame, in order. Built only over a
/// payload whose length and values were checked, so iteration cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsIter<'a> {
    payload: &'a [u8],
}

impl<'a> SettingsIter<'a> {
    /// Checks a payload (length multiple of 6, every value in range).
    pub(crate) fn new(payload: &'a [u8]) -> Result<Self, FrameError> {
        if !payload.len().is_multiple_of(SETTING_LEN) {
            return Err(FrameError::connection(
                ErrorCode::FrameSizeError,
                "SETTINGS length not a multiple of 6",
            ));
        }
        let iter = Self { payload };
        for setting in iter.clone() {
            setting.validate()?;
        }
        Ok(iter)
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

impl Iterator for SettingsIter<'_> {
    type Item = Setting;

    fn next(&mut self) -> Option<Setting> {
        let (one, rest) = self.payload.split_first_chunk::<SETTING_LEN>()?;
        self.payload = rest;
        Some(Setting {
            id: u16::from_be_bytes([one[0], one[1]]).into(),
            value: u32::from_be_bytes([one[2], one[3], one[4], one[5]]),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.payload.len() / SETTING_LEN;
        (n, Some(n))
    }
}

impl ExactSizeIterator for SettingsIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_ids_round_trip() {
        for id in 0..=u16::MAX {
            assert_eq!(u16::from(SettingId::from(id)), id);
        }
    }

    #[test]
    fn settings_iter_yields_unknown_ids_for_the_caller_to_ignore() {
        let payload = [0, 0x3, 0, 0, 0, 100, 0xab, 0xcd, 0, 0, 0, 1];
        let got: Vec<_> = SettingsIter::new(&payload).unwrap().collect();
        assert_eq!(
            got,
            [
                Setting {
                    id: SettingId::MaxConcurrentStreams,
                    value: 100
                },
                Setting {
                    id: SettingId::Unknown(0xabcd),
                    value: 1
                },
            ]
        );
    }

    #[test]
    fn settings_bool_extensions_must_be_0_or_1() {
        for id in [
            SettingId::EnableConnectProtocol,
            SettingId::NoRfc7540Priorities,
        ] {
            assert!(Setting { id, value: 1 }.validate().is_ok());
            let err = Setting { id, value: 2 }.validate().unwrap_err();
            assert_eq!(err.code, ErrorCode::ProtocolError);
            assert!(err.is_connection_error());
        }
    }
}
