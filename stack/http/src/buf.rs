//! A fixed-capacity byte buffer with a read and a write cursor.

pub struct ByteBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ByteBuf {
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            data: vec![0u8; cap].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Bytes written and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.data.len()
    }

    /// Writable tail, after moving unconsumed bytes to the front if needed.
    pub fn space(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.data.len());
        self.end += n;
    }

    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Keeps the first `len` unconsumed bytes, drops the rest.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Appends `bytes`; false (and nothing written) when they do not fit.
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        let space = self.space();
        if space.len() < bytes.len() {
            return false;
        }
        space[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
        true
    }
}

impl std::fmt::Write for ByteBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.extend(s.as_bytes()) {
            Ok(())
        } else {
            Err(std::fmt::Error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_when_tail_is_full() {
        let mut b = ByteBuf::with_capacity(8);
        assert!(b.extend(b"abcdefgh"));
        assert!(b.is_full());
        b.consume(6);
        assert!(b.extend(b"ijk"));
        assert_eq!(b.filled(), b"ghijk");
        assert!(!b.extend(b"lmnop"), "does not fit");
        assert_eq!(b.filled(), b"ghijk");
    }
}
