//! The peer's unidirectional streams (RFC 9114 §6.2): the control stream
//! (SETTINGS first, then GOAWAY, MAX_PUSH_ID, CANCEL_PUSH), the QPACK
//! encoder and decoder streams, and the ones whose data is discarded.

use super::H3Conn;
use super::reader::{FrameReader, Mode, Read};
use crate::error::{ErrorCode, H3Error};
use crate::frame::{self, Frame, FrameType};
use crate::qpack::streams::{MAX_INSTRUCTION, read_decoder_stream, read_encoder_stream};
use crate::settings::PeerSettings;
use crate::stream::{UniStreamType, is_client_uni};
use crate::varint;

#[derive(Debug)]
pub(super) enum UniStream {
    /// The stream type varint is not all here yet.
    Typing {
        head: [u8; varint::MAX_LEN],
        len: usize,
    },
    Control(FrameReader),
    /// An instruction stream, with the start of an incomplete instruction.
    Encoder(Vec<u8>),
    Decoder(Vec<u8>),
    Ignored,
}

impl UniStream {
    /// Closing one of these is a connection error (§6.2.1, RFC 9204 §4.2).
    pub fn is_critical(&self) -> bool {
        matches!(self, Self::Control(_) | Self::Encoder(_) | Self::Decoder(_))
    }
}

fn creation_error(reason: &'static str) -> H3Error {
    H3Error::connection(ErrorCode::StreamCreationError, reason)
}

fn unexpected(reason: &'static str) -> H3Error {
    H3Error::connection(ErrorCode::FrameUnexpected, reason)
}

impl H3Conn {
    pub(super) fn recv_uni(&mut self, id: u64, mut data: &[u8], fin: bool) -> Result<(), H3Error> {
        if !is_client_uni(id) {
            return Err(creation_error("not a client unidirectional stream"));
        }
        if !self.uni.contains_key(&id) {
            if self.uni.len() >= self.config.max_uni_streams {
                return Err(H3Error::connection(
                    ErrorCode::ExcessiveLoad,
                    "too many unidirectional streams",
                ));
            }
            self.uni.insert(
                id,
                UniStream::Typing {
                    head: [0; varint::MAX_LEN],
                    len: 0,
                },
            );
        }
        let stream = self.uni.get_mut(&id).expect("inserted above");
        if let UniStream::Typing { head, len } = stream {
            let take = (varint::MAX_LEN - *len).min(data.len());
            head[*len..*len + take].copy_from_slice(&data[..take]);
            let old = *len;
            *len += take;
            let Some((kind, n)) = varint::decode(&head[..*len]) else {
                // A stream that ends before its type is dropped (§6.2).
                if fin {
                    self.uni.remove(&id);
                }
                return Ok(());
            };
            data = &data[n - old..];
            let kind = UniStreamType::from(kind);
            let next = match kind {
                UniStreamType::Control => UniStream::Control(FrameReader::default()),
                UniStreamType::QpackEncoder => UniStream::Encoder(Vec::new()),
                UniStreamType::QpackDecoder => UniStream::Decoder(Vec::new()),
                UniStreamType::Push => return Err(creation_error("push stream from a client")),
                UniStreamType::Unknown(_) => UniStream::Ignored,
            };
            if next.is_critical() {
                if self.opened.contains(&kind) {
                    return Err(creation_error("second control or QPACK stream"));
                }
                self.opened.push(kind);
            }
            self.uni.insert(id, next);
        }
        match self.uni.get_mut(&id).expect("typed above") {
            UniStream::Typing { .. } | UniStream::Ignored => {}
            UniStream::Control(_) => self.recv_control(id, data)?,
            UniStream::Encoder(buf) => instructions(
                buf,
                data,
                read_encoder_stream,
                ErrorCode::QpackEncoderStreamError,
            )?,
            UniStream::Decoder(buf) => instructions(
                buf,
                data,
                read_decoder_stream,
                ErrorCode::QpackDecoderStreamError,
            )?,
        }
        if fin {
            if self.uni.get(&id).is_some_and(UniStream::is_critical) {
                return Err(H3Error::connection(
                    ErrorCode::ClosedCriticalStream,
                    "control or QPACK stream closed",
                ));
            }
            // Nothing follows a FIN: an ignored stream stops counting.
            self.uni.remove(&id);
        }
        Ok(())
    }

    fn recv_control(&mut self, id: u64, mut data: &[u8]) -> Result<(), H3Error> {
        let max = self.config.max_control_frame_size;
        loop {
            let Some(UniStream::Control(reader)) = self.uni.get_mut(&id) else {
                unreachable!("recv_control on a control stream")
            };
            let (read, used) = reader.read(data);
            let rest = &data[used..];
            match read {
                Read::NeedMore => return Ok(()),
                Read::Header(h) => {
                    if self.peer_settings.is_none() && h.kind != FrameType::Settings {
                        return Err(H3Error::connection(
                            ErrorCode::MissingSettings,
                            "control stream does not start with SETTINGS",
                        ));
                    }
                    match h.kind {
                        FrameType::Settings if self.peer_settings.is_some() => {
                            return Err(unexpected("second SETTINGS"));
                        }
                        FrameType::Settings
                        | FrameType::GoAway
                        | FrameType::MaxPushId
                        | FrameType::CancelPush => {
                            if h.length > max {
                                return Err(H3Error::connection(
                                    ErrorCode::ExcessiveLoad,
                                    "control frame past the limit",
                                ));
                            }
                            reader.begin(Mode::Collect);
                        }
                        FrameType::Unknown(_) => {
                            self.stats.frames_skipped += 1;
                            reader.begin(Mode::Stream);
                        }
                        _ => {
                            return Err(unexpected(
                                "request or HTTP/2 frame on the control stream",
                            ));
                        }
                    }
                }
                Read::Chunk(_) => {}
                Read::Frame { kind, payload } => match frame::decode(kind, payload)? {
                    Frame::Settings(params) => {
                        self.peer_settings = Some(PeerSettings::from_frame(params)?);
                    }
                    Frame::GoAway(push_id) => {
                        // §5.2: a peer's GOAWAY ids never increase.
                        if self.peer_goaway.is_some_and(|prev| push_id > prev) {
                            return Err(H3Error::connection(
                                ErrorCode::IdError,
                                "GOAWAY id increased",
                            ));
                        }
                        self.peer_goaway = Some(push_id);
                    }
                    Frame::MaxPushId(push_id) => {
                        if self.peer_max_push_id.is_some_and(|prev| push_id < prev) {
                            return Err(H3Error::connection(
                                ErrorCode::IdError,
                                "MAX_PUSH_ID decreased",
                            ));
                        }
                        self.peer_max_push_id = Some(push_id);
                    }
                    // §7.2.3: we never promised a push, so no id is valid.
                    Frame::CancelPush(_) => {
                        return Err(H3Error::connection(
                            ErrorCode::IdError,
                            "CANCEL_PUSH for a push never promised",
                        ));
                    }
                    _ => unreachable!("only control frames are collected"),
                },
            }
            data = rest;
        }
    }
}

/// Appends `data` to an instruction stream's buffer and consumes the
/// complete instructions; an incomplete one may not grow past the bound.
fn instructions(
    buf: &mut Vec<u8>,
    data: &[u8],
    read: fn(&[u8]) -> Result<usize, H3Error>,
    code: ErrorCode,
) -> Result<(), H3Error> {
    buf.extend_from_slice(data);
    let used = read(buf)?;
    buf.drain(..used);
    if buf.len() > MAX_INSTRUCTION {
        return Err(H3Error::connection(
            code,
            "instruction past the length bound",
        ));
    }
    Ok(())
}
