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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list of these pairs, in order.
    pub fn from_pairs<K: Into<Vec<u8>>, V: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.pairs
    }

    /// The bytes of every name and value.
    pub fn bytes(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Within [`MAX_MAP_FIELDS`] and [`MAX_MAP_BYTES`].
    pub fn within_limits(&self) -> bool {
        self.pairs.len() <= MAX_MAP_FIELDS && self.bytes() <= MAX_MAP_BYTES
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
        for (k, v) in self
            .pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            fields -= 1;
            bytes -= k.len() + v.len();
        }
        (fields + 1, bytes + name.len() + value.len())
    }

    /// The pairs, giving up the list.
    pub fn into_pairs(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.pairs
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Appends a field (a repeated name stays repeated).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.pairs.push((name.to_vec(), value.to_vec()));
    }

    /// Sets `name` to one value: the first field keeps its place and gets the
    /// value, later ones go; appended when absent (proxy-wasm's replace).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        match self
            .pairs
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.pairs[first].1 = value.to_vec();
                let mut i = 0;
                self.pairs.retain(|(k, _)| {
                    let keep = i <= first || !k.eq_ignore_ascii_case(name);
                    i += 1;
                    keep
                });
            }
            None => self.add(name, value),
        }
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub(crate) fn set_pairs(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        self.pairs = pairs;
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
