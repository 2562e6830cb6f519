//! The header list the proxy hands to a plugin for one phase.

/// The most fields a header map may hold while a plugin has it: the host
/// refuses a call that would grow a map past it (or past what the map held
/// when the proxy handed it over, if more) with `BadArgument`, so a guest
/// cannot grow the proxy's memory or its per-request work (the proxy's
/// diff of a map is bounded by this too). A refusal is the guest's to
/// handle, not a failure: one request's headers never poison the instance
/// other requests' contexts live in.
pub const MAX_MAP_FIELDS: usize = 256;

/// The most bytes (names and values) a header map may hold while a plugin
/// has it; see [`MAX_MAP_FIELDS`].
pub const MAX_MAP_BYTES: usize = 64 * 1024;

/// An ordered list of header fields, as byte pairs, that a plugin may read
/// and change during a call.
///
/// The proxy converts its own header types to and from this list around a
/// plugin call. Like Envoy, the list should carry the request's pseudo-headers
/// (`:method`, `:path`, `:authority`, `:scheme`) and the response's `:status`,
/// since proxy-wasm filters read them as headers. Names compare ASCII
/// case-insensitively; the plugin sees them as stored.
///
/// The bytes of every field live in one buffer: a request's list is built,
/// cloned and dropped with two allocations, not two per field (per field
/// they were most of what a plugin cost the proxy per request). A replaced
/// or removed field leaves its bytes behind until the buffer is compacted.
#[derive(Clone, Debug, Default)]
pub struct HeaderList {
    buf: Vec<u8>,
    fields: Vec<Field>,
    /// Bytes of the live fields' names and values.
    live: usize,
}

#[derive(Clone, Copy, Debug)]
struct Field {
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

impl PartialEq for HeaderList {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.pairs().eq(other.pairs())
    }
}

impl Eq for HeaderList {}

/// The fields of a [`HeaderList`], in order, as `(name, value)`.
#[derive(Clone)]
pub struct Pairs<'a> {
    list: &'a HeaderList,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.end {
            return None;
        }
        self.next += 1;
        Some(self.list.field(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Pairs<'_> {}

impl HeaderList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list of these pairs, in order.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut h = Self::new();
        for (k, v) in pairs {
            h.add(k.as_ref(), v.as_ref());
        }
        h
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> Pairs<'_> {
        Pairs {
            list: self,
            next: 0,
            end: self.fields.len(),
        }
    }

    /// The `i`th field (panics past [`HeaderList::len`]).
    pub fn field(&self, i: usize) -> (&[u8], &[u8]) {
        let f = self.fields[i];
        (
            &self.buf[f.name_at as usize..][..f.name_len as usize],
            &self.buf[f.value_at as usize..][..f.value_len as usize],
        )
    }

    /// The bytes of every name and value.
    pub fn bytes(&self) -> usize {
        self.live
    }

    /// Within [`MAX_MAP_FIELDS`] and [`MAX_MAP_BYTES`].
    pub fn within_limits(&self) -> bool {
        self.fields.len() <= MAX_MAP_FIELDS && self.live <= MAX_MAP_BYTES
    }

    /// The fields and bytes after [`HeaderList::add`] of `name: value`.
    pub(crate) fn size_after_add(&self, name: &[u8], value: &[u8]) -> (usize, usize) {
        (self.len() + 1, self.bytes() + name.len() + value.len())
    }

    /// The fields and bytes after [`HeaderList::replace`] of `name: value`
    /// (every field of the name goes, one comes back; a kept first field's
    /// stored name has the same length as `name`).
    pub(crate) fn size_after_replace(&self, name: &[u8], value: &[u8]) -> (usize, usize) {
        let (mut fields, mut bytes) = (self.len(), self.bytes());
        for (k, v) in self.pairs().filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
            fields -= 1;
            bytes -= k.len() + v.len();
        }
        (fields + 1, bytes + name.len() + value.len())
    }

    /// The pairs, giving up the list.
    pub fn into_pairs(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.pairs()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Empties the list, keeping its buffers.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
        self.live = 0;
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Where `bytes` start once appended to the buffer.
    fn push_bytes(&mut self, bytes: &[u8]) -> u32 {
        let at = self.buf.len();
        self.buf.extend_from_slice(bytes);
        // The limits keep a map far below 4 GiB; the proxy checks them
        // before it hands a map over, and the host before it grows one.
        u32::try_from(at).expect("a header map past 4 GiB")
    }

    /// Appends a field (a repeated name stays repeated).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let name_at = self.push_bytes(name);
        let value_at = self.push_bytes(value);
        self.fields.push(Field {
            name_at,
            name_len: name.len() as u32,
            value_at,
            value_len: value.len() as u32,
        });
        self.live += name.len() + value.len();
    }

    /// Sets `name` to one value: the first field keeps its place and gets the
    /// value, later ones go; appended when absent (proxy-wasm's replace).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        match self.pairs().position(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(first) => {
                let old = self.fields[first].value_len as usize;
                let value_at = self.push_bytes(value);
                let f = &mut self.fields[first];
                f.value_at = value_at;
                f.value_len = value.len() as u32;
                self.live = self.live - old + value.len();
                self.remove_from(name, first + 1);
            }
            None => self.add(name, value),
        }
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.remove_from(name, 0);
    }

    /// Removes the fields named `name` from index `from` on.
    fn remove_from(&mut self, name: &[u8], from: usize) {
        let buf = &self.buf;
        let mut gone = 0;
        let mut i = 0;
        self.fields.retain(|f| {
            let keep = i < from
                || !buf[f.name_at as usize..][..f.name_len as usize].eq_ignore_ascii_case(name);
            if !keep {
                gone += (f.name_len + f.value_len) as usize;
            }
            i += 1;
            keep
        });
        self.live -= gone;
        self.compact_if_sparse();
    }

    /// Rewrites the buffer when most of it is left-behind bytes, so a
    /// plugin that replaces a field over and over does not grow it.
    fn compact_if_sparse(&mut self) {
        if self.buf.len() <= 2 * self.live + 1024 {
            return;
        }
        let old = std::mem::take(self);
        for (k, v) in old.pairs() {
            self.add(k, v);
        }
    }

    pub(crate) fn set_pairs(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        self.clear();
        for (k, v) in &pairs {
            self.add(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_first_place_and_drops_repeats() {
        let mut h = HeaderList::from_pairs([("a", "1"), ("X-T", "2"), ("b", "3"), ("x-t", "4")]);
        h.replace(b"x-t", b"9");
        assert_eq!(
            h,
            HeaderList::from_pairs([("a", "1"), ("X-T", "9"), ("b", "3")])
        );
        h.replace(b"new", b"v");
        assert_eq!(h.get(b"NEW"), Some(&b"v"[..]));
        h.remove(b"X-t");
        assert_eq!(h.get(b"x-t"), None);
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes(), 8);
    }

    #[test]
    fn replacing_over_and_over_does_not_grow_the_buffer() {
        let mut h = HeaderList::from_pairs([("a", "1"), ("b", "2")]);
        for i in 0..10_000 {
            h.replace(b"b", format!("{i:04}").as_bytes());
            h.add(b"c", b"x");
            h.remove(b"c");
        }
        assert_eq!(h, HeaderList::from_pairs([("a", "1"), ("b", "9999")]));
        assert_eq!(h.bytes(), 7);
        assert!(h.buf.len() <= 2 * h.live + 1024 + 16, "{}", h.buf.len());
        let pairs: Vec<_> = h.pairs().collect();
        assert_eq!(pairs, [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"9999"[..])]);
        assert_eq!(h.pairs().len(), 2);
    }

    #[test]
    fn limits_count_fields_and_bytes() {
        let mut h = HeaderList::from_pairs([("ab", "cde")]);
        assert_eq!(h.bytes(), 5);
        assert!(h.within_limits());
        for _ in 0..MAX_MAP_FIELDS {
            h.add(b"x", b"");
        }
        assert!(!h.within_limits());
        let h = HeaderList::from_pairs([("x", vec![b'a'; MAX_MAP_BYTES])]);
        assert!(!h.within_limits());
    }
}
