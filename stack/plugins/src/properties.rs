//! The property bag behind `proxy_get_property`.

use std::borrow::Cow;

/// Properties of one request, filled by the proxy and read by the plugin with
/// `proxy_get_property`. Keys are the proxy-wasm (Envoy attribute) paths with
/// `.` between segments: a guest path `request\0path\0` reads `request.path`.
///
/// The proxy fills what it knows at each phase (see the crate docs for the
/// names); values are raw bytes as Envoy encodes them: strings as UTF-8,
/// integers (`source.port`, `response.code`) as 8-byte little-endian, which
/// [`Properties::set_u64`] writes. A plugin's `proxy_set_property` writes into
/// the same bag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// The proxy's keys are literals (no allocation per request); a
    /// guest's `proxy_set_property` brings its own.
    entries: Vec<(Cow<'static, str>, Vec<u8>)>,
}

impl Properties {
    /// An empty bag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` (replacing an earlier value).
    pub fn set(
        &mut self,
        key: impl Into<Cow<'static, str>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => {
                if self.entries.is_empty() {
                    // What the proxy sets for a request, at once.
                    self.entries.reserve(12);
                }
                self.entries.push((key, value))
            }
        }
        self
    }

    /// Sets `key` to an integer, encoded as Envoy does (8 bytes, little-endian).
    pub fn set_u64(&mut self, key: impl Into<Cow<'static, str>>, value: u64) -> &mut Self {
        self.set(key, value.to_le_bytes().to_vec())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The value at a guest path (segments separated by NUL, an optional
    /// trailing NUL), without building a key string.
    pub(crate) fn get_path(&self, path: &[u8]) -> Option<&[u8]> {
        let path = path.strip_suffix(&[0]).unwrap_or(path);
        self.entries
            .iter()
            .find(|(k, _)| path_matches(k.as_bytes(), path))
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn set_path(&mut self, path: &[u8], value: &[u8]) {
        let path = path.strip_suffix(&[0]).unwrap_or(path);
        let key: String = path
            .iter()
            .map(|&b| if b == 0 { '.' } else { b as char })
            .collect();
        self.set(key, value.to_vec());
    }
}

/// `key` uses `.` where the guest path has NUL.
fn path_matches(key: &[u8], path: &[u8]) -> bool {
    key.len() == path.len()
        && key
            .iter()
            .zip(path)
            .all(|(&k, &p)| k == p || (k == b'.' && p == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_map_to_dotted_keys() {
        let mut p = Properties::new();
        p.set("request.path", "/a").set_u64("source.port", 443);
        assert_eq!(p.get_path(b"request\0path\0"), Some(&b"/a"[..]));
        assert_eq!(p.get_path(b"request\0path"), Some(&b"/a"[..]));
        assert_eq!(p.get_path(b"request.path"), Some(&b"/a"[..]));
        assert_eq!(p.get_path(b"request\0pat"), None);
        assert_eq!(p.get("source.port"), Some(&443u64.to_le_bytes()[..]));
        p.set_path(b"my\0key\0", b"v");
        assert_eq!(p.get("my.key"), Some(&b"v"[..]));
    }
}
