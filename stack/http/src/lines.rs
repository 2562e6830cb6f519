//! Header lines a proxy phase adds to a head being written: bounded by the
//! head buffer, and checked so that no phase can split a head or change its
//! framing (a value with CR, LF or NUL, a name that is not a token, or one
//! of the fields that frame the message or the connection) — the line is
//! left out and counted instead.

use std::fmt::Write as _;

use crate::ByteBuf;

pub struct HeaderLines<'a> {
    out: &'a mut ByteBuf,
    /// Every line fit the buffer.
    fits: bool,
    refused: u32,
}

/// Fields only the codec writes: a phase adding one could frame the
/// message twice (smuggling, desync) or address another host.
pub const CODEC_OWNED: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "host",
];

/// Appends one header value; cannot touch what was written before it.
pub struct ValueWriter<'b> {
    out: &'b mut ByteBuf,
}

impl ValueWriter<'_> {
    /// False when the head buffer is full.
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        self.out.extend(bytes)
    }
}

impl std::fmt::Write for ValueWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.out.extend(s.as_bytes()) {
            Ok(())
        } else {
            Err(std::fmt::Error)
        }
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<'a> HeaderLines<'a> {
    pub fn new(out: &'a mut ByteBuf) -> Self {
        Self {
            out,
            fits: true,
            refused: 0,
        }
    }

    /// Adds `name: value`. False when it was left out (bad bytes, no room).
    pub fn add(&mut self, name: &str, value: &[u8]) -> bool {
        self.add_with(name, |out| out.extend(value))
    }

    /// Adds `name: value` with a formatted value.
    pub fn add_display(&mut self, name: &str, value: impl std::fmt::Display) -> bool {
        self.add_with(name, |out| write!(out, "{value}").is_ok())
    }

    /// Adds `name: ` + whatever `write` appends; the value is checked after
    /// it is written and the line taken back when it is bad or did not fit.
    pub fn add_with(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut ValueWriter<'_>) -> bool,
    ) -> bool {
        let mark = self.out.len();
        if !is_token(name) || CODEC_OWNED.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            self.refused += 1;
            return false;
        }
        let ok = self.out.extend(name.as_bytes())
            && self.out.extend(b": ")
            && {
                let value_at = self.out.len();
                let wrote = write(&mut ValueWriter { out: self.out });
                let bad = self.out.filled()[value_at..]
                    .iter()
                    .any(|&b| matches!(b, b'\r' | b'\n' | 0));
                if bad {
                    self.refused += 1;
                    self.out.truncate(mark);
                    return false;
                }
                wrote
            }
            && self.out.extend(b"\r\n");
        if !ok {
            self.fits = false;
            self.out.truncate(mark);
        }
        ok
    }

    /// Every line fit the buffer (a head that lost a line to lack of room
    /// must not be sent).
    pub fn fits(&self) -> bool {
        self.fits
    }

    /// Lines left out for bad bytes.
    pub fn refused(&self) -> u32 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_or_name_that_would_split_the_head_is_left_out_and_counted() {
        let mut buf = ByteBuf::with_capacity(256);
        let mut l = HeaderLines::new(&mut buf);
        assert!(l.add("X-Ok", b"1"));
        assert!(!l.add("X-Bad", b"a\r\nInjected: yes"));
        assert!(!l.add("Bad Name", b"v"));
        assert!(!l.add("Content-Length", b"0") && !l.add("transfer-encoding", b"chunked"));
        assert!(!l.add("Host", b"elsewhere") && !l.add("Connection", b"close"));
        assert!(!l.add_with("X-Late", |o| o.extend(b"x\n")));
        assert!(l.add_display("X-Num", 42));
        assert_eq!((l.fits(), l.refused()), (true, 7));
        assert_eq!(buf.filled(), b"X-Ok: 1\r\nX-Num: 42\r\n");
    }

    #[test]
    fn a_line_that_does_not_fit_is_taken_back_and_reported() {
        let mut buf = ByteBuf::with_capacity(16);
        let mut l = HeaderLines::new(&mut buf);
        assert!(l.add("A", b"1"));
        assert!(!l.add("Long", b"0123456789"));
        assert!(!l.fits());
        assert_eq!(buf.filled(), b"A: 1\r\n");
    }
}
