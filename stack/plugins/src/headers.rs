//! The header list the proxy hands to a plugin for one phase.

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
}
