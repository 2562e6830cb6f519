//! ferrogate's HTTP cache core (issue #21): the RFC 9111 rules of a shared
//! cache, cache keys, a memory tier shared by an engine's workers with
//! streaming inserts, request coalescing and purge. Sans-IO: callers pass
//! wall-clock times (`SystemTime`, for HTTP dates and ages) and deadlines
//! (`Instant`); nothing here reads a clock, sleeps, or does I/O — except
//! the optional [`disk`] tier, whose own thread does all its file I/O
//! (workers only enqueue to it and read its index).
//!
//! # What it owns
//!
//! | module | job |
//! |---|---|
//! | [`directives`] | `Cache-Control` / `Pragma` parsing (quoted arguments, duplicates, malformed values) |
//! | [`policy`] | what may be looked up / stored ([`CachePolicyConfig`] carries a route's overrides) |
//! | [`meta`] | a stored response's metadata: freshness lifetime (s-maxage > max-age > Expires − Date > heuristic), corrected initial age |
//! | [`freshness`] | fresh / stale-while-revalidate / revalidate (with stale-if-error) for one request |
//! | [`revalidate`] | conditional request fields; merging a 304 into the stored headers |
//! | [`key`] | primary key (scheme, host, path, normalized query, chosen headers) and Vary variant, keyed 128-bit hashes |
//! | [`store`] | [`MemoryStore`]: sharded, byte budget, S3-FIFO, streaming objects, purge by key / prefix / tag |
//! | [`disk`] | [`DiskTier`]: the optional disk tier, a directory with a byte budget that survives a restart; its own thread does all file I/O |
//! | [`lock`] | [`CacheLocks`]: one upstream fetch per key, waiters, take-over, deadlines |
//! | [`stats`] | per-request outcomes ([`CacheStatus`], the `X-Cache` value) and per-worker counters |
//!
//! # Locking and sharing
//!
//! One [`MemoryStore`] and one [`CacheLocks`] per engine, cloned into each
//! worker (`Send + Sync`, an `Arc` inside). Both are sharded by the primary
//! key's hash; each shard is a `Mutex` held for a few map operations — a
//! hit locks one shard once, allocates nothing (the key is hashed and
//! compared in pieces) and clones an `Arc<Object>`. No lock is held across
//! I/O: bodies are read through [`BodyReader`], lock-free once complete.
//! Purges change the shared maps directly, so they are immediate for every
//! worker. Request counters are per worker ([`CacheCounters`], summed on
//! read); store counters (evictions, bytes) are atomics in the store.
//!
//! # What the proxy calls (per request, in the proxy's phases)
//!
//! 1. [`policy::request_decision`] → bypass, or look up with the request's
//!    directives.
//! 2. [`key::CacheKey::new`] with the route's [`KeyConfig`] and
//!    [`MemoryStore::hasher`]; [`MemoryStore::lookup`] with the request
//!    headers (the Vary variant is chosen inside).
//! 3. On a hit, [`freshness::decide`] (or the coarser
//!    [`freshness::evaluate`]; `light_purged` from the object):
//!    `Fresh` → serve (HEAD: headers only) with `Age:`
//!    [`CacheMeta::age_header`]; `ServeStaleWhileRevalidate` → serve, and
//!    start one background revalidation if [`CacheLocks::acquire`] gives a
//!    permit; `Stale` (the client's `max-stale`) → serve, marked stale;
//!    `Revalidate` → acquire the lock, send the request with
//!    [`revalidate::conditional_request`]'s fields; a 304 →
//!    [`revalidate::merge_not_modified`] + [`MemoryStore::refresh_outcome`]
//!    (`Evicted`: serve the merged response, it is no longer stored); a 5xx
//!    or connection error with `stale_if_error` → serve the stored one;
//!    `RevalidateOrServeStale` (light purge) → acquire the lock: a permit
//!    revalidates as `Revalidate`, a wait ticket serves the stored one stale
//!    at once; `GatewayTimeout` (`only-if-cached`) → 504. On a miss,
//!    [`freshness::on_miss`] says fetch or 504.
//! 4. On a miss, if [`RequestDecision::takes_lock`] and not
//!    [`CacheLocks::hit_for_pass`] (else straight upstream, no lock),
//!    [`CacheLocks::acquire_at`]: a waiter polls its
//!    [`lock::WaitTicket`] from the worker's timer pass and looks up again
//!    on `Ready`; the fetcher first looks up again (another fetcher may
//!    have stored the object and released the lock between the miss and
//!    `acquire`: on a hit, `stored()` and serve it), reads
//!    [`MemoryStore::purge_epoch`], then checks
//!    [`policy::response_storable`], builds [`CacheMeta::new`], calls
//!    [`MemoryStore::insert_since`] with that epoch (a purge that ran
//!    meanwhile refuses it) then [`lock::FetchPermit::stored`] (or
//!    `uncacheable_at`: hit-for-pass), creates its own client's reader and
//!    feeds [`ObjectWriter::append`] with each body chunk (stop on
//!    [`Append::Detached`], pause on [`Append::Full`]).
//! 5. [`CacheCounters::record`] with the outcome; the admin API calls
//!    `purge_*`.
//!
//! With a [`DiskTier`] (opened once at engine start with the engine's
//! store; workers get a [`DiskHandle`]): completed objects are written and
//! purges reach the disk without further calls. An engine that serves
//! before the tier attaches calls
//! [`MemoryStore::journal_purges_until_attached`] with its directory first,
//! so that the purges made meanwhile survive a stop before the attach. On a memory miss whose
//! key and request [`DiskHandle::contains_variant`], acquire the key's
//! lock; with a permit, [`DiskHandle::load`] it (a full queue hands it
//! back: fetch with it), then acquire again and wait on the ticket like
//! any waiter (`Ready`: look up again; `TakeOver`: the load failed, fetch
//! with the new permit; `Fetch`: the load already ended, look up again
//! first like any fetcher). A request tries the disk once: a miss after its
//! load goes the usual miss way (else a key whose files do not answer it
//! would load forever).

pub mod directives;
pub mod disk;
pub mod freshness;
pub mod headers;
pub mod key;
pub mod lock;
pub mod meta;
pub mod policy;
pub mod revalidate;
pub mod stats;
pub mod store;

pub use directives::CacheControl;
pub use disk::{DiskConfig, DiskError, DiskHandle, DiskStats, DiskTier};
pub use freshness::{Decision, MissVerdict, Verdict, decide, evaluate, on_miss};
pub use headers::{HeaderView, StoredHeaders};
pub use key::{CacheKey, KeyConfig, KeyHasher, KeyParts};
pub use lock::{Acquired, CacheLocks, FetchPermit, LockConfig, Wait, WaitTicket};
pub use meta::CacheMeta;
pub use policy::{CachePolicyConfig, NotStorable, RequestDecision};
pub use stats::{CacheCounters, CacheStatus};
pub use store::{
    Append, BodyReader, Hit, InsertError, MemoryStore, Object, ObjectWriter, PurgeCount, PurgeMode,
    Read, StoreConfig, StoreStats,
};
