//! The response cache in the proxy's phases (#21): what a request on a
//! route with `cache` does — look up, serve, wait for another request's
//! fetch, revalidate, store what comes back — on top of `ferrogate-cache`
//! (policy, keys, the shared store, locks). The connection state machines
//! (`proxy/cached.rs`, `h2_session/stream/cached.rs`) call [`lookup`] once
//! routing chose a caching route, [`on_response`] when the upstream's head
//! arrives, and [`write_stored_head`] + [`BodySlice`] to serve an object.
//!
//! | module | job |
//! |---|---|
//! | `lookup` | bypass, serve (whole, range, 304), wait, fetch, or serve stale and revalidate in the background (`crate::revalidation`) |
//! | `response` | store, refresh with a 304, stale-if-error, pass |
//! | `serve` | a stored response's head and the part of its body that goes out |
//!
//! One [`EdgeCache`] per engine, shared by its workers; each stack holds it
//! with the [`ClockAnchor`] that maps its clock to wall time (HTTP dates)
//! and to the monotonic clock of the locks.

mod lookup;
mod response;
mod serve;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrogate_cache::{
    CacheControl, CacheKey, CacheLocks, CachePolicyConfig, CacheStatus, DiskConfig, DiskError,
    DiskStats, DiskTier, FetchPermit, HeaderView, Hit, KeyConfig, KeyParts, MemoryStore, Object,
    ObjectWriter, PurgeCount, PurgeMode, StoreConfig, StoredHeaders,
};

use crate::http::Headers;
use crate::net::Instant;

pub use ferrogate_cache as core;
pub(crate) use lookup::{Lookup, RequestKey, Waited, lookup, poll_wait};
pub(crate) use response::{OnResponse, mismatch, origin_head};
pub use serve::ByteRange;
pub(crate) use serve::{BodySlice, Part, write_stored_head};

/// The engine's cache settings (`[cache]`).
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub store: StoreConfig,
    /// Response header that names what the cache did (`X-Cache: HIT`);
    /// `None` sends none.
    pub status_header: Option<String>,
    /// How long a request waits for another request's fetch of the same
    /// key before it goes upstream itself.
    pub lock_timeout: Duration,
    /// How often a waiting request (or a reader ahead of a body being
    /// stored) looks again.
    pub wait_poll: Duration,
    /// The disk tier (`[cache.disk]`), opened by [`EdgeCache::open`].
    pub disk: Option<DiskConfig>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            store: StoreConfig::default(),
            status_header: Some("x-cache".into()),
            lock_timeout: Duration::from_secs(5),
            wait_poll: Duration::from_millis(1),
            disk: None,
        }
    }
}

/// The engine's cache: one store and one set of fetch locks, shared by
/// every worker; purges act on it directly, so they are seen by every
/// worker at once.
pub struct EdgeCache {
    pub store: MemoryStore,
    pub locks: CacheLocks,
    pub settings: CacheSettings,
    /// The disk tier, if configured: its thread writes completed objects
    /// and loads them back on a memory miss (see `lookup`). Set at most
    /// once, possibly after the workers started (a binary upgrade's
    /// successor attaches it once its predecessor let go of the directory);
    /// reading it is one atomic load.
    disk: std::sync::OnceLock<DiskTier>,
}

impl std::fmt::Debug for EdgeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EdgeCache {
    /// A memory-only cache (`settings.disk` is not opened: see
    /// [`EdgeCache::open`]).
    pub fn new(settings: CacheSettings) -> Self {
        EdgeCache {
            store: MemoryStore::new(&settings.store),
            locks: CacheLocks::new(settings.store.shards),
            settings,
            disk: std::sync::OnceLock::new(),
        }
    }

    /// The cache with its disk tier when `settings.disk` names one: the
    /// directory is created and scanned here, so objects a previous run
    /// wrote are found again (the engine starts with [`EdgeCache::new`]
    /// and attaches the tier from a thread: [`EdgeCache::attach_disk`]).
    pub fn open(settings: CacheSettings) -> Result<Self, DiskError> {
        let disk_cfg = settings.disk.clone();
        let cache = Self::new(settings);
        if let Some(cfg) = disk_cfg {
            cache.attach_disk(cfg)?;
        }
        Ok(cache)
    }

    /// Opens (creates and scans) the disk tier `cfg` and serves from it
    /// from now on; a cache that has one already keeps it.
    pub fn attach_disk(&self, cfg: DiskConfig) -> Result<(), DiskError> {
        if self.disk.get().is_none() {
            let _ = self.disk.set(DiskTier::open(cfg, self.store.clone())?);
        }
        Ok(())
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.get()
    }

    /// The disk tier's counters (None: no disk tier).
    pub fn disk_stats(&self) -> Option<DiskStats> {
        self.disk.get().map(DiskTier::stats)
    }

    /// Runs one purge; returns how many objects it hit in memory and how
    /// many files of the disk tier.
    pub fn purge(&self, p: &Purge) -> Result<PurgeCount, PurgeError> {
        match &p.target {
            PurgeTarget::Tag(t) => {
                if t.is_empty() {
                    return Err(PurgeError::Empty);
                }
                Ok(self.store.purge_tag_counted(t.as_bytes(), p.mode))
            }
            PurgeTarget::Url(u) | PurgeTarget::Prefix(u) => {
                let (scheme, host, path) = split_url(u)?;
                let prefix = ferrogate_cache::key::purge_prefix(scheme, host.as_bytes(), path);
                if matches!(p.target, PurgeTarget::Prefix(_)) {
                    return Ok(self.store.purge_prefix_counted(&prefix, p.mode));
                }
                Ok(self.purge_exact(&prefix, p.mode))
            }
        }
    }

    /// Every key of exactly this URL: with or without chosen request
    /// headers in the key (`\n` follows the URL part) and every variant.
    fn purge_exact(&self, url_key: &[u8], mode: PurgeMode) -> PurgeCount {
        let (scheme, rest) = match url_key.iter().position(|&b| b == b':') {
            Some(i) if &url_key[..i] == b"https" => ("https", &url_key[i + 3..]),
            Some(i) => ("http", &url_key[i + 3..]),
            None => return PurgeCount::default(),
        };
        let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let no_fields: [(&str, &str); 0] = [];
        let parts = KeyParts {
            scheme,
            host: &rest[..slash],
            path_and_query: &rest[slash..],
            headers: &no_fields,
        };
        let cfg = KeyConfig::default();
        let key = CacheKey::new(parts, &cfg, self.store.hasher());
        // Every key of the URL (query parameters sorted as keys sort
        // them): every route's, every variant, with or without keyed fields.
        self.store.purge_key_counted(&key, mode)
    }

    pub fn stats(&self) -> ferrogate_cache::StoreStats {
        self.store.stats()
    }
}

/// What to purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeTarget {
    /// `scheme://host/path?query`, exactly (all variants).
    Url(String),
    /// Every URL starting with `scheme://host/path-prefix`.
    Prefix(String),
    /// Every object tagged by the configured tag header.
    Tag(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    pub mode: PurgeMode,
    pub target: PurgeTarget,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurgeError {
    #[error("a purge URL is scheme://host/path (http or https), got {0:?}")]
    BadUrl(String),
    #[error("an empty purge target")]
    Empty,
}

/// `http://Host:80/p?q` → ("http", "host", "/p?q"); the scheme's default
/// port is dropped (keys never hold it).
fn split_url(u: &str) -> Result<(&'static str, String, &[u8]), PurgeError> {
    let bad = || PurgeError::BadUrl(u.to_string());
    let (scheme, rest) = if let Some(r) = u.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = u.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(bad());
    };
    let slash = rest.find('/').ok_or_else(bad)?;
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = authority
        .strip_suffix(default_port)
        .unwrap_or(authority)
        .to_ascii_lowercase();
    Ok((scheme, host, path.as_bytes()))
}

/// A route's cache settings (`cache = { … }` on a route).
#[derive(Clone, Debug)]
pub struct RouteCache {
    pub policy: CachePolicyConfig,
    /// Always starts with the route's scope (see [`SCOPE_FIELDS`]).
    key: KeyConfig,
}

/// Pseudo-fields every caching route's key starts with: the route's name
/// and listener port. Two routes (which may match on headers, go to other
/// pools, sit on other listeners) never share an object. No client can
/// send them (a field name has no `:`).
pub const SCOPE_FIELDS: [&str; 2] = [":route", ":port"];

impl RouteCache {
    pub fn new(policy: CachePolicyConfig, mut key: KeyConfig) -> Self {
        key.headers
            .retain(|h| !SCOPE_FIELDS.iter().any(|s| h.as_ref() == s.as_bytes()));
        for (i, s) in SCOPE_FIELDS.iter().enumerate() {
            key.headers
                .insert(i, bytes::Bytes::from_static(s.as_bytes()));
        }
        RouteCache { policy, key }
    }

    pub fn key(&self) -> &KeyConfig {
        &self.key
    }
}

impl Default for RouteCache {
    fn default() -> Self {
        Self::new(CachePolicyConfig::default(), KeyConfig::default())
    }
}

/// A request's fields behind the route's scope pseudo-fields.
pub(crate) struct ScopedFields<'a> {
    fields: FieldView<'a>,
    route: &'a str,
    port: [u8; 5],
    port_len: usize,
}

impl<'a> ScopedFields<'a> {
    fn new(fields: FieldView<'a>, route: &'a str, port: u16) -> Self {
        // The port's digits without a heap string.
        let mut buf = [0u8; 5];
        let mut n = port;
        let mut port_len = 0;
        loop {
            buf[port_len] = b'0' + (n % 10) as u8;
            port_len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[..port_len].reverse();
        ScopedFields {
            fields,
            route,
            port: buf,
            port_len,
        }
    }
}

impl HeaderView for ScopedFields<'_> {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        f(SCOPE_FIELDS[0].as_bytes(), self.route.as_bytes());
        f(SCOPE_FIELDS[1].as_bytes(), &self.port[..self.port_len]);
        self.fields.for_each_field(f)
    }
}

/// Maps a stack's clock (µs since its start) to wall time and to the
/// monotonic clock the locks use.
#[derive(Clone, Copy, Debug)]
pub struct ClockAnchor {
    /// The monotonic instant of the stack's time zero.
    pub mono: std::time::Instant,
    /// The wall time at the stack's time zero.
    pub wall: SystemTime,
}

impl ClockAnchor {
    /// An anchor for a stack whose time zero is now.
    pub fn now() -> Self {
        ClockAnchor {
            mono: std::time::Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// An anchor for a stack whose clock reads `now` at this moment.
    pub fn at(now: Instant) -> Self {
        let here = Self::now();
        let d = Self::since_zero(now);
        ClockAnchor {
            mono: here.mono.checked_sub(d).unwrap_or(here.mono),
            wall: here.wall.checked_sub(d).unwrap_or(here.wall),
        }
    }

    fn since_zero(now: Instant) -> Duration {
        Duration::from_micros(now.total_micros().max(0) as u64)
    }

    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall + Self::since_zero(now)
    }

    pub fn mono(&self, now: Instant) -> std::time::Instant {
        self.mono + Self::since_zero(now)
    }
}

/// A stack's view of the engine's cache.
#[derive(Clone, Debug)]
pub(crate) struct CacheHandle {
    pub edge: Arc<EdgeCache>,
    pub anchor: ClockAnchor,
}

/// Request header fields as the cache reads them.
#[derive(Clone, Copy)]
pub(crate) struct FieldView<'a>(pub Headers<'a>);

impl HeaderView for FieldView<'_> {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for h in self.0.iter() {
            f(h.name.as_bytes(), h.value)
        }
    }
}

/// The parts of a request's key kept past its head (the request bytes
/// are gone by the time a response or a waited-for fetch comes back).
#[derive(Debug)]
pub(crate) struct OwnedKey {
    scheme: &'static str,
    host: Vec<u8>,
    target: Vec<u8>,
    /// The request's fields, for keyed headers and `Vary`.
    headers: StoredHeaders,
}

impl OwnedKey {
    fn parts(&self) -> KeyParts<'_> {
        KeyParts {
            scheme: self.scheme,
            host: &self.host,
            path_and_query: &self.target,
            headers: &self.headers,
        }
    }
}

/// One request's cache state from lookup to the end of its response.
pub(crate) struct CacheReq {
    pub route: Arc<RouteCache>,
    key: OwnedKey,
    directives: CacheControl,
    validate: bool,
    /// This exchange may be stored (GET without `no-store`).
    store: bool,
    /// The request holds the key's fetch lock.
    permit: Option<FetchPermit>,
    /// The stored response being revalidated, and whether it may be
    /// served if the origin fails (`stale-if-error`).
    stale: Option<(Hit, bool)>,
    /// When the request went upstream (the response's `request_time`).
    sent_at: SystemTime,
    /// What the cache did (the `X-Cache` value once known).
    pub status: CacheStatus,
    /// An unsafe method's request: its success invalidates the target.
    invalidate: bool,
    /// The store's purge epoch before the lookup (see `insert_since`).
    epoch: u64,
    /// When the request first looked: a response fetched or refreshed
    /// since then may serve it although it asks for validation.
    arrived: SystemTime,
    /// When waiting for other requests' fetches ends (one bound for all
    /// the waits of a request).
    lock_deadline: std::time::Instant,
    /// The request asked the disk tier once (it asks at most once: a key
    /// whose files do not answer it must not load again and again).
    disk_tried: bool,
    /// A 304 refreshed the stored object (not just served it once: the
    /// object may have become unstorable, been evicted or replaced).
    refreshed: bool,
}

impl std::fmt::Debug for CacheReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheReq")
            .field("key", &self.key)
            .field("status", &self.status)
            .field("permit", &self.permit.is_some())
            .field("stale", &self.stale.is_some())
            .finish()
    }
}

impl CacheReq {
    /// Conditional fields for the upstream request when revalidating.
    pub fn conditional(&self) -> Option<ferrogate_cache::revalidate::Conditional> {
        let (hit, _) = self.stale.as_ref()?;
        Some(ferrogate_cache::revalidate::conditional_request(hit.meta()))
    }

    /// Whether the origin's 304 refreshed the stored object (see
    /// `OnResponse::Serve`: it may also serve it once without).
    pub fn refreshed(&self) -> bool {
        self.refreshed
    }

    /// The request goes upstream now: its `request_time`.
    pub fn mark_sent(&mut self, wall: SystemTime) {
        self.sent_at = wall;
    }

    /// This exchange may be stored (GET, no `no-store`): the client's own
    /// validators are not forwarded (the cache needs a full response).
    pub fn may_store(&self) -> bool {
        self.store
    }

    /// The response must not be stored (e.g. it varies on a field the
    /// proxy sets itself).
    pub fn forbid_store(&mut self) {
        self.store = false;
    }

    /// The stored response, when the origin failed and it may stand in.
    pub fn take_stale_for_error(&mut self, mono: std::time::Instant) -> Option<Arc<Object>> {
        match self.stale.take() {
            Some((hit, true)) => {
                if let Some(p) = self.permit.take() {
                    // Waiters go upstream themselves (with their own stale
                    // copy to fall back on) rather than revalidate one by
                    // one against a failing origin.
                    p.uncacheable_at(mono);
                }
                self.status = CacheStatus::Stale;
                Some(hit.object)
            }
            other => {
                self.stale = other;
                None
            }
        }
    }
}

/// How long a waiting request sleeps before its `polls`-th look: the
/// configured interval, doubling up to 8 times it (thousands of waiters on
/// one slow fetch must not wake their worker every millisecond).
pub(crate) fn poll_delay(s: &CacheSettings, polls: u8) -> Duration {
    s.wait_poll * (1u32 << polls.min(3))
}

/// Pieces a stored body is handed to the store in (but its last).
const FILL_PIECE: usize = 16 * 1024;

/// An object's writer fed segment by segment from the origin's body that
/// hands the store pieces of [`FILL_PIECE`] bytes: a stored body is a few
/// large chunks (one send each on a hit), not one per received segment.
/// Readers of a body in progress see it a piece at a time.
pub(crate) struct Filler {
    writer: ObjectWriter,
    buf: bytes::BytesMut,
}

impl Filler {
    pub fn new(writer: ObjectWriter) -> Self {
        Filler {
            writer,
            buf: bytes::BytesMut::new(),
        }
    }

    pub fn push(&mut self, d: &[u8]) {
        if d.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.buf.reserve(FILL_PIECE);
        }
        self.buf.extend_from_slice(d);
        if self.buf.len() >= FILL_PIECE {
            let _ = self.writer.push(self.buf.split().freeze());
        }
    }

    /// The body is complete: the rest goes in, and the object is whole.
    pub fn finish(mut self) {
        if !self.buf.is_empty() {
            let _ = self.writer.push(self.buf.split().freeze());
        }
        self.writer.finish();
    }

    /// Whether the object should get no more of the body: it left the
    /// store and its readers lag by more than an object's size (`Full`),
    /// or none is left (`Detached`).
    pub fn stop(&self) -> bool {
        matches!(
            self.writer.status(),
            ferrogate_cache::Append::Full | ferrogate_cache::Append::Detached
        )
    }
}

/// A request's fields as they were sent (names lowercased; nothing
/// dropped: the key and the variant of a stored request must be the ones
/// its lookup computed).
pub(crate) fn copy_fields(h: &dyn HeaderView) -> StoredHeaders {
    let mut fields = Vec::new();
    h.for_each_field(&mut |n, v| {
        fields.push((
            bytes::Bytes::from(n.to_ascii_lowercase()),
            bytes::Bytes::copy_from_slice(v),
        ))
    });
    StoredHeaders { status: 0, fields }
}

/// Request fields the cache's own fetches never forward: it needs a full
/// response to store, or a 304 for its own validators.
pub(crate) fn is_client_validator(name: &str) -> bool {
    name.eq_ignore_ascii_case("if-none-match") || name.eq_ignore_ascii_case("if-modified-since")
}

/// Adds fields to an upstream request head before its blank line;
/// `host_at` (where a missing Host goes) moves with the blank line.
pub(crate) fn add_request_fields<'f>(
    out: &mut crate::http::ByteBuf,
    host_at: Option<&mut usize>,
    fields: impl Iterator<Item = (&'static str, &'f bytes::Bytes)>,
) -> bool {
    let len = out.len();
    out.truncate(len - 2);
    let mut ok = true;
    for (n, v) in fields {
        ok &= out.extend(n.as_bytes()) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
    }
    ok &= out.extend(b"\r\n");
    if let Some(at) = host_at {
        *at = out.len() - 2;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_url_drops_default_port_and_lowercases_host() {
        assert_eq!(
            split_url("http://Example.COM:80/a?b").unwrap(),
            ("http", "example.com".to_string(), &b"/a?b"[..])
        );
        assert_eq!(
            split_url("https://h:8443/").unwrap(),
            ("https", "h:8443".to_string(), &b"/"[..])
        );
        assert!(split_url("ftp://h/").is_err());
        assert!(split_url("http://h").is_err());
        assert!(split_url("http://u@h/").is_err());
    }
}
