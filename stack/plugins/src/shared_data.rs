//! Key-value data shared by the instances of one plugin
//! (`proxy_get_shared_data` / `proxy_set_shared_data`).

use std::collections::HashMap;
use std::sync::Mutex;

/// The shared store of one plugin. Plugins call it, not the per-packet path,
/// so a mutex is fine. Keep the `Arc` across reloads to keep the data (as
/// Envoy keeps it per VM id).
#[derive(Debug, Default)]
pub struct SharedData {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

/// A set lost a compare-and-swap race.
#[derive(Debug, PartialEq, Eq)]
pub struct CasMismatch;

impl SharedData {
    /// The value of `key` and its CAS token.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.map.get(key).cloned()
    }

    /// Sets `key`; with `cas != 0` only if the stored token is `cas`
    /// (proxy-wasm-cpp-host's rule: an absent key always takes the value).
    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Tokens skip 0, which means "no check".
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let token = inner.next_cas;
        match inner.map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(CasMismatch);
                }
                *entry = (value.to_vec(), token);
            }
            None => {
                inner.map.insert(key.to_vec(), (value.to_vec(), token));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_guards_updates() {
        let d = SharedData::default();
        assert!(d.get(b"k").is_none());
        d.set(b"k", b"1", 0).unwrap();
        let (v, cas) = d.get(b"k").unwrap();
        assert_eq!(v, b"1");
        d.set(b"k", b"2", cas).unwrap();
        assert_eq!(d.set(b"k", b"3", cas), Err(CasMismatch));
        assert_eq!(d.get(b"k").unwrap().0, b"2");
    }
}
