use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;

use super::*;
use crate::headers::HeaderView;
use crate::key::{CacheKey, KeyConfig, KeyParts, purge_prefix};
use crate::lock::{Acquired, CacheLocks, Wait};
use crate::meta::CacheMeta;
use crate::policy::CachePolicyConfig;
use crate::store::{Hit, InsertError, PurgeMode, StoreConfig};

const NONE: [(&str, &str); 0] = [];

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("fg-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store(seed: u128) -> MemoryStore {
    MemoryStore::new(&StoreConfig {
        max_bytes: 16 << 20,
        shards: 4,
        max_object_bytes: 4 << 20,
        tag_header: Some("Surrogate-Key".into()),
        key_seed: seed,
    })
}

fn cfg(dir: &Path, max_bytes: u64) -> DiskConfig {
    DiskConfig {
        max_object_bytes: max_bytes,
        ..DiskConfig::new(dir, max_bytes)
    }
}

fn key_cfg() -> KeyConfig {
    KeyConfig::default()
}

fn parts<'a>(path: &'a str) -> KeyParts<'a> {
    KeyParts {
        scheme: "https",
        host: b"example.com",
        path_and_query: path.as_bytes(),
        headers: &NONE,
    }
}

fn meta(h: &[(&str, &str)]) -> CacheMeta {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    CacheMeta::new(200, h, t, t, &CachePolicyConfig::default())
}

fn hash(s: &MemoryStore, path: &str) -> u128 {
    let c = key_cfg();
    CacheKey::new(parts(path), &c, s.hasher()).hash
}

/// Stores a complete object (the store offers it to an attached tier).
fn put(s: &MemoryStore, path: &str, h: &[(&str, &str)], body: &[u8], req: &dyn HeaderView) {
    let c = key_cfg();
    let k = CacheKey::new(parts(path), &c, s.hasher());
    let mut w = s
        .insert_since(&k, req, meta(h), Some(body.len()), s.purge_epoch())
        .unwrap();
    // Several chunks, to check they come back as one body.
    for piece in body.chunks(7000) {
        w.append(Bytes::copy_from_slice(piece));
    }
    w.finish();
}

fn get(s: &MemoryStore, path: &str, req: &dyn HeaderView) -> Option<Hit> {
    let c = key_cfg();
    s.lookup(&CacheKey::new(parts(path), &c, s.hasher()), req)
}

fn body_of(hit: &Hit) -> Vec<u8> {
    let mut r = hit.object.reader();
    let mut out = Vec::new();
    loop {
        match r.poll() {
            crate::store::Read::Chunk(b) => out.extend_from_slice(&b),
            crate::store::Read::End => return out,
            other => panic!("{other:?}"),
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(ext)
        })
        .count()
}

/// Loads `path` through the lock as the proxy would; true if a waiter
/// then finds it in the store.
fn load_via_lock(tier: &DiskTier, s: &MemoryStore, path: &str) -> bool {
    load_for(tier, s, path, &NONE)
}

fn load_for(tier: &DiskTier, s: &MemoryStore, path: &str, req: &dyn HeaderView) -> bool {
    let locks = CacheLocks::new(4);
    let h = hash(s, path);
    let far = Instant::now() + Duration::from_secs(10);
    let Acquired::Fetch(permit) = locks.acquire(h, far) else {
        panic!("no one else holds it");
    };
    tier.load(h, permit).expect("queued");
    let mut ticket = match locks.acquire(h, far) {
        Acquired::Wait(t) => t,
        // The load ended already: look up again, as any fetcher does first.
        Acquired::Fetch(p) => {
            let hit = get(s, path, req).is_some();
            if hit {
                p.stored();
            }
            return hit;
        }
    };
    let mut outcome = Wait::Pending;
    wait_for("the load", || {
        outcome = ticket.poll(Instant::now());
        !matches!(outcome, Wait::Pending)
    });
    match outcome {
        Wait::Ready => get(s, path, req).is_some(),
        // Dropped permit: this waiter would fetch.
        Wait::TakeOver(_) => false,
        other => panic!("{other:?}"),
    }
}

#[test]
fn objects_survive_a_restart_and_load_with_the_same_body_and_meta() {
    let dir = TempDir::new("restart");
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let h = [
        ("Cache-Control", "max-age=600, stale-if-error=30"),
        ("Vary", "Accept-Encoding"),
        ("Surrogate-Key", "t1 t2"),
        ("ETag", "\"v1\""),
    ];
    let gz = [("Accept-Encoding", "gzip")];
    let br = [("Accept-Encoding", "br")];
    let (want_meta, want_variant) = {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/a", &h, &body, &gz);
        put(&s, "/a", &h, b"brotli", &br);
        put(&s, "/empty", &[("Cache-Control", "max-age=60")], b"", &NONE);
        wait_for("3 writes", || tier.stats().written == 3);
        let st = tier.stats();
        assert_eq!(st.files, 3);
        assert_eq!(st.bytes, dir_bytes(&dir.0));
        let hit = get(&s, "/a", &gz).unwrap();
        (hit.meta().clone(), hit.object.variant.clone())
    };
    assert_eq!(files(&dir.0, ".tmp"), 0);
    // Restart: a new store with another key seed (keys are rehashed).
    let s = store(2);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    assert_eq!(tier.stats().files, 3);
    assert_eq!(tier.stats().corrupt_deleted, 0);
    assert!(get(&s, "/a", &gz).is_none(), "nothing in memory yet");
    assert!(tier.contains(hash(&s, "/a")));
    assert!(!tier.contains(hash(&s, "/b")));
    assert!(tier.contains_variant(hash(&s, "/a"), &gz));
    assert!(tier.contains_variant(hash(&s, "/a"), &[("accept-encoding", " br ")]));
    assert!(!tier.contains_variant(hash(&s, "/a"), &NONE));
    assert!(!tier.contains_variant(hash(&s, "/a"), &[("Accept-Encoding", "zstd")]));
    assert!(
        tier.contains_variant(hash(&s, "/empty"), &gz),
        "no Vary: any request"
    );
    assert!(load_for(&tier, &s, "/a", &gz));
    let hit = get(&s, "/a", &gz).unwrap();
    assert_eq!(body_of(&hit), body);
    assert_eq!(hit.meta(), &want_meta);
    assert_eq!(hit.object.variant, want_variant);
    assert!(!hit.object.light_purged());
    assert_eq!(body_of(&get(&s, "/a", &br).unwrap()), b"brotli");
    assert!(
        get(&s, "/a", &NONE).is_none(),
        "an unseen variant is a miss"
    );
    assert!(load_via_lock(&tier, &s, "/empty"));
    assert_eq!(body_of(&get(&s, "/empty", &NONE).unwrap()), b"");
    assert_eq!(tier.stats().loaded, 3);
    // Tags were rebuilt: a tag purge reaches the loaded objects.
    assert_eq!(s.purge_tag(b"t2", PurgeMode::Hard), 2);
    // Loaded objects are not written again.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tier.stats().written, 0);
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn the_budget_evicts_the_oldest_files_at_write_and_at_open() {
    let dir = TempDir::new("budget");
    let body = vec![b'x'; 10_000];
    let h = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 35_000), s.clone()).unwrap();
        for i in 0..5 {
            put(&s, &format!("/o{i}"), &h, &body, &NONE);
            // One at a time, so write order is insertion order.
            wait_for("the write", || tier.stats().written == i + 1);
        }
        let st = tier.stats();
        assert_eq!((st.files, st.evicted), (3, 2));
        assert!(st.bytes <= 35_000);
        assert_eq!(st.bytes, dir_bytes(&dir.0));
        assert!(!tier.contains(hash(&s, "/o0")) && !tier.contains(hash(&s, "/o1")));
        assert!(tier.contains(hash(&s, "/o4")));
        // Too large for the tier: not written.
        put(&s, "/big", &h, &vec![b'y'; 40_000], &NONE);
        wait_for("the drop", || tier.stats().write_dropped == 1);
    }
    // A smaller budget at the next start drops the oldest.
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 25_000), s.clone()).unwrap();
    assert_eq!((tier.stats().files, tier.stats().evicted), (2, 1));
    assert!(!tier.contains(hash(&s, "/o2")));
    assert!(tier.contains(hash(&s, "/o3")) && tier.contains(hash(&s, "/o4")));
    assert_eq!(files(&dir.0, ".fgc"), 2);
}

#[test]
fn corrupt_partial_and_temp_files_are_deleted_at_open_and_at_load() {
    let dir = TempDir::new("corrupt");
    let h = [("Cache-Control", "max-age=60")];
    let paths = |tier: &DiskTier| {
        let ix = tier.handle.shared.read();
        let mut v: Vec<PathBuf> = ["/a", "/b", "/c"]
            .iter()
            .map(|p| {
                let v = ix.variants(hash(&store(1), p));
                worker::file_path(&dir.0, v[0].seq)
            })
            .collect();
        v.sort();
        v
    };
    let p = {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        for p in ["/a", "/b", "/c"] {
            put(&s, p, &h, &[b'z'; 3000], &NONE);
        }
        wait_for("3 writes", || tier.stats().written == 3);
        paths(&tier)
    };
    // /a: truncated (a torn write); a garbage file; a leftover temp file;
    // a file that is not ours (left alone).
    let f = std::fs::OpenOptions::new().write(true).open(&p[0]).unwrap();
    f.set_len(100).unwrap();
    std::fs::write(dir.0.join("00000000000000ff.fgc"), b"garbage").unwrap();
    std::fs::write(dir.0.join("0000000000000100.tmp"), b"half").unwrap();
    std::fs::write(dir.0.join("README"), b"mine").unwrap();
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let st = tier.stats();
    assert_eq!((st.files, st.corrupt_deleted), (2, 2));
    assert!(!p[0].exists());
    assert!(!dir.0.join("00000000000000ff.fgc").exists());
    assert_eq!(files(&dir.0, ".tmp"), 0);
    assert!(dir.0.join("README").exists());
    // A body byte flipped after the scan: the load's CRC check catches it.
    let mut bytes = std::fs::read(&p[1]).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&p[1], bytes).unwrap();
    assert!(!load_via_lock(&tier, &s, "/b"), "a bad file is a miss");
    assert!(!p[1].exists());
    assert!(!tier.contains(hash(&s, "/b")));
    let st = tier.stats();
    assert_eq!((st.corrupt_deleted, st.load_failed), (3, 1));
    assert!(load_via_lock(&tier, &s, "/c"));
    // New files do not reuse the names of deleted ones.
    put(&s, "/d", &h, b"d", &NONE);
    wait_for("the write", || tier.stats().written == 1);
    assert!(tier.contains(hash(&s, "/d")));
    assert!(dir.0.join("0000000000000101.fgc").exists());
}

#[test]
fn purges_delete_files_and_a_restart_does_not_bring_them_back() {
    let dir = TempDir::new("purge");
    let tagged = [("Cache-Control", "max-age=60"), ("Surrogate-Key", "news")];
    let plain = [("Cache-Control", "max-age=60")];
    let c = key_cfg();
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/p?x=1", &plain, b"1", &NONE);
        put(&s, "/img/a", &plain, b"2", &NONE);
        put(&s, "/img/b", &plain, b"3", &NONE);
        put(&s, "/imgs", &plain, b"4", &NONE);
        put(&s, "/t1", &tagged, b"5", &NONE);
        put(&s, "/t2", &tagged, b"6", &NONE);
        put(&s, "/light", &plain, b"7", &NONE);
        put(&s, "/inval", &plain, b"8", &NONE);
        put(&s, "/keep", &plain, b"9", &NONE);
        wait_for("9 writes", || tier.stats().written == 9);
        let k = CacheKey::new(parts("/p?x=1"), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Hard);
        s.purge_prefix(
            &purge_prefix("https", b"example.com", b"/img"),
            PurgeMode::Hard,
        );
        s.purge_tag(b"news", PurgeMode::Hard);
        // Light purges and invalidations drop disk copies too.
        let k = CacheKey::new(parts("/light"), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Light);
        let k = CacheKey::new(parts("/inval"), &c, s.hasher());
        assert_eq!(s.invalidate(&k), 1);
        // An invalidation (from a worker) is the thread's to apply.
        wait_for("the invalidation", || tier.stats().invalidated == 1);
        let st = tier.stats();
        assert_eq!((st.files, st.purged, st.invalidated), (2, 6, 1));
        for p in ["/p?x=1", "/img/a", "/t1", "/light", "/inval"] {
            assert!(!tier.contains(hash(&s, p)), "{p}");
        }
        assert!(tier.contains(hash(&s, "/imgs")));
        // Memory still has the light-purged object, marked.
        assert!(get(&s, "/light", &NONE).unwrap().object.light_purged());
        wait_for("the deletes", || files(&dir.0, ".fgc") == 2);
    }
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    assert_eq!(tier.stats().files, 2);
    assert!(tier.contains(hash(&s, "/imgs")) && tier.contains(hash(&s, "/keep")));
}

/// The engine serves (and is purged) while its disk tier is still being
/// scanned: purges the store ran before the tier attached apply to the
/// files found, which neither load nor come back at the next open.
#[test]
fn purges_before_the_tier_attaches_reach_its_files() {
    let dir = TempDir::new("purge-before");
    let tagged = [("Cache-Control", "max-age=60"), ("Surrogate-Key", "news")];
    let plain = [("Cache-Control", "max-age=60")];
    let c = key_cfg();
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        for p in ["/u", "/img/a", "/t", "/keep"] {
            let h: &[(&str, &str)] = if p == "/t" { &tagged } else { &plain };
            put(&s, p, h, p.as_bytes(), &NONE);
        }
        wait_for("4 writes", || tier.stats().written == 4);
    }
    // The store holds its tier (and the directory lock) while it lives.
    {
        let s = store(1);
        let k = CacheKey::new(parts("/u"), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Light);
        s.purge_prefix(
            &purge_prefix("https", b"example.com", b"/img"),
            PurgeMode::Hard,
        );
        s.purge_tag(b"news", PurgeMode::Hard);
        {
            let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
            let st = tier.stats();
            assert_eq!((st.files, st.purged), (1, 3), "{st:?}");
            for p in ["/u", "/img/a", "/t"] {
                assert!(!tier.contains(hash(&s, p)), "{p}");
                assert!(!load_via_lock(&tier, &s, p), "{p} loaded after its purge");
            }
            assert!(load_via_lock(&tier, &s, "/keep"));
            wait_for("the deletes", || files(&dir.0, ".fgc") == 1);
        }
    }
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), store(1)).unwrap();
    assert_eq!(tier.stats().files, 1);
}

/// An unsafe method's success (or an origin that showed a copy invalid)
/// while the tier was being scanned: its disk copy is not served after.
#[test]
fn invalidations_before_the_tier_attaches_reach_its_files() {
    let dir = TempDir::new("inval-before");
    let plain = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/a", &plain, b"a", &NONE);
        put(&s, "/b", &plain, b"b", &NONE);
        wait_for("2 writes", || tier.stats().written == 2);
    }
    let s = store(1);
    let c = key_cfg();
    let k = CacheKey::new(parts("/a"), &c, s.hasher());
    assert_eq!(s.invalidate(&k), 0, "nothing in memory");
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    assert!(!tier.contains(hash(&s, "/a")));
    assert!(
        !load_via_lock(&tier, &s, "/a"),
        "loaded after its invalidation"
    );
    assert!(load_via_lock(&tier, &s, "/b"));
}

/// More purges before the tier attaches than the store remembers: which
/// reached which file is unknown, so none of them is served.
#[test]
fn purges_past_the_log_before_the_tier_attaches_drop_every_file() {
    let dir = TempDir::new("purge-overflow");
    let plain = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/a", &plain, b"a", &NONE);
        put(&s, "/b", &plain, b"b", &NONE);
        wait_for("2 writes", || tier.stats().written == 2);
    }
    let s = store(1);
    let c = key_cfg();
    for i in 0..1100 {
        let path = format!("/other/{i}");
        let k = CacheKey::new(parts(&path), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Hard);
    }
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    assert_eq!(tier.stats().files, 0);
    assert!(!load_via_lock(&tier, &s, "/a"));
}

/// Writes `/u`, `/img/a`, `/t` (tagged `news`) and `/keep` to a tier in
/// `dir`, then closes it.
fn four_files(dir: &Path) {
    let tagged = [("Cache-Control", "max-age=60"), ("Surrogate-Key", "news")];
    let plain = [("Cache-Control", "max-age=60")];
    let s = store(1);
    let tier = DiskTier::open(cfg(dir, 1 << 20), s.clone()).unwrap();
    for p in ["/u", "/img/a", "/t", "/keep"] {
        let h: &[(&str, &str)] = if p == "/t" { &tagged } else { &plain };
        put(&s, p, h, p.as_bytes(), &NONE);
    }
    wait_for("4 writes", || tier.stats().written == 4);
}

fn pending_path(dir: &Path) -> PathBuf {
    dir.join(pending::PENDING_FILE)
}

/// The engine is purged while its tier is scanned, then stops or crashes
/// before the attach: the next start (another key seed) does not serve
/// what those purges reached.
#[test]
fn purges_before_the_attach_survive_a_crash_before_it() {
    let dir = TempDir::new("pending-crash");
    four_files(&dir.0);
    let c = key_cfg();
    {
        let s = store(1);
        // Made before the store was told the directory: written when told.
        let k = CacheKey::new(parts("/u"), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Light);
        s.journal_purges_until_attached(&dir.0).unwrap();
        s.purge_prefix(
            &purge_prefix("https", b"example.com", b"/img"),
            PurgeMode::Hard,
        );
        s.purge_tag(b"news", PurgeMode::Hard);
        assert!(pending_path(&dir.0).exists());
        // The crash: the store goes without a tier ever attaching.
    }
    {
        let s = store(2);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        let st = tier.stats();
        assert_eq!(
            (
                st.files,
                st.purged,
                st.pending_applied,
                st.pending_unreadable
            ),
            (1, 3, 3, 0),
            "{st:?}"
        );
        for p in ["/u", "/img/a", "/t"] {
            assert!(!tier.contains(hash(&s, p)), "{p}");
            assert!(!load_via_lock(&tier, &s, p), "{p} loaded after its purge");
        }
        assert!(load_via_lock(&tier, &s, "/keep"));
        assert!(!pending_path(&dir.0).exists(), "applied, then removed");
        // Attached: purges reach the tier, not the file.
        s.purge_key(
            &CacheKey::new(parts("/nothing"), &c, s.hasher()),
            PurgeMode::Hard,
        );
        assert!(!pending_path(&dir.0).exists());
    }
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), store(3)).unwrap();
    assert_eq!(tier.stats().files, 1);
    assert_eq!(tier.stats().pending_applied, 0);
}

/// The tier attaches in the run that was purged: the file is applied
/// with the store's own memory of those purges, and removed.
#[test]
fn an_attach_in_the_same_run_applies_and_removes_the_pending_file() {
    let dir = TempDir::new("pending-same-run");
    four_files(&dir.0);
    let s = store(1);
    s.journal_purges_until_attached(&dir.0).unwrap();
    assert!(!pending_path(&dir.0).exists(), "nothing purged yet");
    s.purge_tag(b"news", PurgeMode::Hard);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let st = tier.stats();
    assert_eq!((st.files, st.pending_applied), (3, 1), "{st:?}");
    assert!(!pending_path(&dir.0).exists());
    assert!(!load_via_lock(&tier, &s, "/t"));
    assert!(load_via_lock(&tier, &s, "/u"));
}

/// A crash while a purge was being written leaves a torn last record:
/// the next open ignores it (that purge had not returned), counts it, and
/// applies the whole records before it; a writer first cuts it off.
#[test]
fn a_torn_last_pending_record_is_ignored_and_counted() {
    let dir = TempDir::new("pending-torn");
    four_files(&dir.0);
    let c = key_cfg();
    let tear = |dir: &Path| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pending_path(dir))
            .unwrap();
        // A length, a checksum and part of a payload.
        std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2, 3, 4, 0, 1, 9]).unwrap();
    };
    {
        let s = store(1);
        s.journal_purges_until_attached(&dir.0).unwrap();
        s.purge_key(&CacheKey::new(parts("/u"), &c, s.hasher()), PurgeMode::Hard);
    }
    tear(&dir.0);
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        let st = tier.stats();
        assert_eq!(
            (st.files, st.pending_applied, st.pending_unreadable),
            (3, 1, 1),
            "{st:?}"
        );
        assert!(!load_via_lock(&tier, &s, "/u"));
        assert!(load_via_lock(&tier, &s, "/img/a"));
    }
    // A torn record, then a purge by a later run: it is not lost behind it.
    {
        let s = store(1);
        s.journal_purges_until_attached(&dir.0).unwrap();
        s.purge_tag(b"news", PurgeMode::Hard);
    }
    tear(&dir.0);
    {
        let s = store(1);
        s.journal_purges_until_attached(&dir.0).unwrap();
        s.purge_prefix(
            &purge_prefix("https", b"example.com", b"/img"),
            PurgeMode::Hard,
        );
    }
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let st = tier.stats();
    assert_eq!(
        (st.files, st.pending_applied, st.pending_unreadable),
        (1, 2, 0),
        "{st:?}"
    );
    assert!(load_via_lock(&tier, &s, "/keep"));
}

/// A pending file unreadable beyond a torn last record (another format,
/// a bad record before the end): its purges are unknown, so no file the
/// scan found is served.
#[test]
fn an_unreadable_pending_file_drops_every_file() {
    opens_without_any_file("pending-bad", |p| {
        std::fs::write(p, b"FGPURGE9 something newer").unwrap();
    });
}

#[test]
fn a_pending_file_bigger_than_any_of_ours_is_not_read_and_drops_every_file() {
    // Sparse: 1 TiB, which an open that read it whole could not allocate.
    opens_without_any_file("pending-huge", |p| {
        std::fs::File::create(p).unwrap().set_len(1 << 40).unwrap();
    });
}

/// Four stored files and a pending file `write` makes: the open counts it
/// unreadable, serves none of the files and removes it.
fn opens_without_any_file(name: &str, write: impl FnOnce(&Path)) {
    let dir = TempDir::new(name);
    four_files(&dir.0);
    write(&pending_path(&dir.0));
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let st = tier.stats();
    assert_eq!((st.files, st.pending_unreadable), (0, 1), "{st:?}");
    assert!(!load_via_lock(&tier, &s, "/keep"));
    assert!(!pending_path(&dir.0).exists());
}

/// A crash after a purge returned and before the thread deleted its
/// files: the directory as it was at that moment (copied while the thread
/// is held in a write) opens without the purged objects.
#[test]
fn a_crash_before_the_purged_files_are_deleted_does_not_bring_them_back() {
    let dir = TempDir::new("crashpurge");
    let crashed = TempDir::new("crashpurge-copy");
    let h = [("Cache-Control", "max-age=60")];
    let c = key_cfg();
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        // Files 1, 2, 3: the purged ones are the newest, so only the
        // journal keeps the next run from numbering new files 2 and 3.
        put(&s, "/kept", &h, b"3", &NONE);
        wait_for("1 write", || tier.stats().written == 1);
        put(&s, "/gone", &h, b"1", &NONE);
        wait_for("2 writes", || tier.stats().written == 2);
        put(&s, "/gone/too", &h, b"2", &NONE);
        wait_for("3 writes", || tier.stats().written == 3);
        assert!(dir.0.join("0000000000000003.fgc").exists());
        // Hold the thread inside its next write: it deletes nothing meanwhile.
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
            if stage == "write" {
                let _ = entered_tx.send(());
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
        }));
        put(&s, "/later", &h, b"4", &NONE);
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let k = CacheKey::new(parts("/gone"), &c, s.hasher());
        s.purge_key(&k, PurgeMode::Hard);
        s.purge_prefix(
            &purge_prefix("https", b"example.com", b"/gone/"),
            PurgeMode::Light,
        );
        assert_eq!(tier.stats().purged, 2);
        assert_eq!(
            files(&dir.0, ".fgc"),
            3,
            "the thread is held: nothing deleted yet"
        );
        // The crash: what is on disk now is all the next run gets.
        std::fs::create_dir_all(&crashed.0).unwrap();
        for e in std::fs::read_dir(&dir.0).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.ends_with(".fgc") || name == journal::JOURNAL_FILE {
                std::fs::copy(e.path(), crashed.0.join(&name)).unwrap();
            }
        }
        drop(release);
        // Running on, the thread deletes the files and empties the journal.
        wait_for("the deletes", || files(&dir.0, ".fgc") == 2);
        wait_for("the journal emptied", || {
            std::fs::metadata(dir.0.join(journal::JOURNAL_FILE))
                .unwrap()
                .len()
                == 0
        });
    }
    let s = store(2);
    let tier = DiskTier::open(cfg(&crashed.0, 1 << 20), s.clone()).unwrap();
    assert_eq!(tier.stats().files, 1, "only /kept survives the crash");
    assert!(tier.contains(hash(&s, "/kept")));
    assert!(!tier.contains(hash(&s, "/gone")) && !tier.contains(hash(&s, "/gone/too")));
    assert_eq!(files(&crashed.0, ".fgc"), 1);
    assert_eq!(
        std::fs::metadata(crashed.0.join(journal::JOURNAL_FILE))
            .unwrap()
            .len(),
        0,
        "replayed and emptied"
    );
    // New files are numbered past every file the journal named.
    put(&s, "/new", &h, b"5", &NONE);
    wait_for("the write", || tier.stats().written == 1);
    assert!(tier.contains(hash(&s, "/new")) && tier.contains(hash(&s, "/kept")));
    assert!(crashed.0.join("0000000000000004.fgc").exists());
}

#[test]
fn a_journal_replay_keeps_naming_the_files_it_could_not_delete() {
    let dir = TempDir::new("journal");
    std::fs::create_dir_all(&dir.0).unwrap();
    {
        let r = journal::Journal::replay(&dir.0, true, |_| true).unwrap();
        let mut j = r.journal;
        assert_eq!((r.max_seq, r.pending.len()), (0, 0));
        j.append(&[5, 9, 7]).unwrap();
        assert_eq!(j.records(), 3);
    }
    // A torn record (a crash mid-append) is ignored.
    let path = dir.0.join(journal::JOURNAL_FILE);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &[1, 2, 3]).unwrap();
    drop(f);
    let r = journal::Journal::replay(&dir.0, false, |seq| seq != 9).unwrap();
    assert_eq!((r.max_seq, r.pending.clone()), (9, vec![9]));
    assert_eq!(r.journal.records(), 1);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8);
    drop(r);
    let r = journal::Journal::replay(&dir.0, false, |_| true).unwrap();
    assert_eq!((r.max_seq, r.pending.len()), (9, 0));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

/// A purge that lands while the thread has read a file but not yet
/// inserted it: the object must not come back into memory.
#[test]
fn a_load_racing_a_purge_does_not_resurrect() {
    let dir = TempDir::new("loadrace");
    let h = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/r", &h, b"old", &NONE);
        wait_for("the write", || tier.stats().written == 1);
    }
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let purger = s.clone();
    *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
        if stage == "read" {
            let c = key_cfg();
            let k = CacheKey::new(parts("/r"), &c, purger.hasher());
            purger.purge_key(&k, PurgeMode::Hard);
        }
    }));
    assert!(!load_via_lock(&tier, &s, "/r"));
    assert!(get(&s, "/r", &NONE).is_none(), "resurrected");
    let st = tier.stats();
    assert_eq!((st.loaded, st.load_failed, st.files), (0, 1, 0));
    wait_for("the delete", || files(&dir.0, ".fgc") == 0);
    // The store's side: a loaded object older than a purge is refused.
    let since = s.purge_epoch();
    s.purge_prefix(b"https://example.com/", PurgeMode::Hard);
    assert_eq!(
        s.insert_loaded(b"https://example.com/q", b"", meta(&h), Bytes::new(), since),
        Err(InsertError::Purged)
    );
}

/// A purge between the file's rename and its entry in the index: the file
/// must go, or a restart would serve it.
#[test]
fn a_write_racing_a_purge_is_not_kept() {
    let dir = TempDir::new("writerace");
    let h = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        let purger = s.clone();
        *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
            if stage == "written" {
                purger.purge_prefix(b"https://example.com/w", PurgeMode::Hard);
            }
        }));
        put(&s, "/w", &h, b"w", &NONE);
        wait_for("the drop", || tier.stats().write_dropped == 1);
        assert!(!tier.contains(hash(&s, "/w")));
        assert_eq!(tier.stats().written, 0);
    }
    assert_eq!(files(&dir.0, ".fgc"), 0);
}

#[test]
fn a_full_queue_drops_offers_and_hands_back_load_permits() {
    let dir = TempDir::new("full");
    let h = [("Cache-Control", "max-age=60")];
    let s = store(1);
    let tier = DiskTier::open(
        DiskConfig {
            queue: 1,
            load_queue: 1,
            ..cfg(&dir.0, 1 << 20)
        },
        s.clone(),
    )
    .unwrap();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let mut first = true;
    *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
        if stage == "write" && std::mem::take(&mut first) {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
    }));
    put(&s, "/1", &h, b"1", &NONE);
    entered.recv().unwrap();
    // The thread is busy with /1: /2 fills the queue, /3 and /4 are dropped.
    put(&s, "/2", &h, b"2", &NONE);
    put(&s, "/3", &h, b"3", &NONE);
    put(&s, "/4", &h, b"4", &NONE);
    assert_eq!(tier.stats().write_dropped, 2);
    // Loads have a queue of their own: one fits while writes are full,
    // the next is handed back.
    let locks = CacheLocks::new(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let Acquired::Fetch(p) = locks.acquire(hash(&s, "/0"), deadline) else {
        panic!()
    };
    tier.load(hash(&s, "/0"), p)
        .expect("the load queue has room");
    let k = hash(&s, "/1");
    let Acquired::Fetch(p) = locks.acquire(k, deadline) else {
        panic!()
    };
    let p = tier.load(k, p).expect_err("the load queue is full");
    p.stored();
    assert_eq!(tier.stats().load_failed, 1);
    release.send(()).unwrap();
    wait_for("2 writes", || tier.stats().written == 2);
    assert!(tier.contains(hash(&s, "/2")) && !tier.contains(hash(&s, "/3")));
}

#[test]
fn a_clean_shutdown_leaves_no_temp_files_and_every_file_parses() {
    let dir = TempDir::new("shutdown");
    let h = [("Cache-Control", "max-age=60")];
    let s = store(1);
    let started = Instant::now();
    {
        let tier = DiskTier::open(cfg(&dir.0, 8 << 20), s.clone()).unwrap();
        for i in 0..50 {
            put(&s, &format!("/s{i}"), &h, &[b's'; 20_000], &NONE);
        }
        wait_for("a write", || tier.stats().written > 0);
        // Dropped with writes still queued.
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(files(&dir.0, ".tmp"), 0);
    let written = files(&dir.0, ".fgc");
    assert!(written > 0);
    // The first store keeps its stopped tier (it still deletes purged
    // files in place), so it keeps the directory: another tier is refused,
    // and a second tier on the same store too (before it touches the
    // directory).
    assert!(
        matches!(
            DiskTier::open(cfg(&dir.0, 8 << 20), store(1)),
            Err(DiskError::Busy { .. })
        ),
        "the directory is still the first store's"
    );
    assert!(matches!(
        DiskTier::open(cfg(&dir.0, 8 << 20), s.clone()),
        Err(DiskError::AlreadyAttached)
    ));
    assert_eq!(files(&dir.0, ".fgc"), written);
    // The first file written (the queue is FIFO).
    s.purge_prefix(b"https://example.com/s0", PurgeMode::Hard);
    assert_eq!(files(&dir.0, ".fgc"), written - 1, "deleted in place");
    drop(s);
    let tier = DiskTier::open(cfg(&dir.0, 8 << 20), store(1)).unwrap();
    let st = tier.stats();
    assert_eq!(st.corrupt_deleted, 0);
    assert_eq!(st.files as usize, written - 1);
}

#[test]
fn a_refresh_rewrites_the_disk_copy_with_the_merged_headers() {
    let dir = TempDir::new("refresh");
    let h = [("Cache-Control", "max-age=60"), ("ETag", "\"1\"")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/f", &h, b"body", &NONE);
        wait_for("the write", || tier.stats().written == 1);
        let hit = get(&s, "/f", &NONE).unwrap();
        let merged = meta(&[
            ("Cache-Control", "max-age=999"),
            ("ETag", "\"1\""),
            ("X-New", "y"),
        ]);
        assert!(s.refresh(&hit, merged));
        wait_for("the rewrite", || tier.stats().written == 2);
        assert_eq!(tier.stats().files, 1, "the old file was replaced");
    }
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    assert!(load_via_lock(&tier, &s, "/f"));
    let hit = get(&s, "/f", &NONE).unwrap();
    assert_eq!(hit.meta().freshness_lifetime, 999);
    assert_eq!(hit.meta().headers.get("x-new").unwrap(), "y");
    assert_eq!(body_of(&hit), b"body");
}

#[test]
fn insert_loaded_keeps_what_memory_holds_and_marks_light_purges() {
    let s = store(1);
    let h = [("Cache-Control", "max-age=60")];
    let key = b"https://example.com/m";
    let e = s.purge_epoch();
    assert_eq!(
        s.insert_loaded(key, b"", meta(&h), Bytes::from_static(b"disk"), e),
        Ok(true)
    );
    assert_eq!(body_of(&get(&s, "/m", &NONE).unwrap()), b"disk");
    // Present already: kept, not replaced.
    assert_eq!(
        s.insert_loaded(key, b"", meta(&h), Bytes::from_static(b"other"), e),
        Ok(false)
    );
    assert_eq!(body_of(&get(&s, "/m", &NONE).unwrap()), b"disk");
    // Memory has the key under another Vary list: the disk's older
    // variants do not push it out.
    let vary = [("Cache-Control", "max-age=60"), ("Vary", "Accept")];
    put(&s, "/v", &h, b"mem", &NONE);
    assert_eq!(
        s.insert_loaded(
            b"https://example.com/v",
            b"accept:x\n",
            meta(&vary),
            Bytes::new(),
            e
        ),
        Ok(false)
    );
    assert_eq!(body_of(&get(&s, "/v", &NONE).unwrap()), b"mem");
    // A light purge since: stored, marked stale.
    let e = s.purge_epoch();
    s.purge_prefix(b"https://example.com/l", PurgeMode::Light);
    s.insert_loaded(b"https://example.com/l", b"", meta(&h), Bytes::new(), e)
        .unwrap();
    assert!(get(&s, "/l", &NONE).unwrap().object.light_purged());
    // Bigger than the store keeps.
    assert_eq!(
        s.insert_loaded(
            b"https://example.com/big",
            b"",
            meta(&h),
            Bytes::from(vec![0; 5 << 20]),
            s.purge_epoch()
        ),
        Err(InsertError::TooLarge)
    );
    // A body loaded whole is served in the proxy's 16 KiB pieces.
    let body: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    s.insert_loaded(
        b"https://example.com/p",
        b"",
        meta(&h),
        Bytes::from(body.clone()),
        s.purge_epoch(),
    )
    .unwrap();
    let hit = get(&s, "/p", &NONE).unwrap();
    let mut r = hit.object.reader();
    let mut sizes = Vec::new();
    while let crate::store::Read::Chunk(c) = r.poll() {
        sizes.push(c.len());
    }
    assert_eq!(sizes, [16_384, 16_384, 7_232]);
    assert_eq!(body_of(&hit), body);
}

/// Workers never wait on the index: while it is held for writing (by the
/// thread or a purge), `contains` answers "no" at once.
#[test]
fn contains_does_not_wait_for_the_index_lock() {
    let dir = TempDir::new("nowait");
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    put(&s, "/c", &[("Cache-Control", "max-age=60")], b"c", &NONE);
    wait_for("the write", || tier.stats().written == 1);
    let k = hash(&s, "/c");
    assert!(tier.contains(k) && tier.contains_variant(k, &NONE));
    let held = tier.handle.shared.write();
    assert!(!tier.contains(k) && !tier.contains_variant(k, &NONE));
    drop(held);
    assert!(tier.contains(k));
}

/// an invalidation (unsafe method) landing while a completed
/// object's write is queued/in progress must not leave a fresh disk copy.
#[test]
fn an_invalidation_racing_a_write_keeps_it_off_the_disk() {
    let dir = TempDir::new("rev-invwrite");
    let h = [("Cache-Control", "max-age=60")];
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let inv = s.clone();
    *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
        if stage == "write" {
            let c = key_cfg();
            let k = CacheKey::new(parts("/i"), &c, inv.hasher());
            inv.invalidate(&k);
        }
    }));
    put(&s, "/i", &h, b"old", &NONE);
    wait_for("the write", || {
        let st = tier.stats();
        st.written + st.write_dropped == 1
    });
    assert!(
        get(&s, "/i", &NONE).unwrap().object.light_purged(),
        "memory copy is stale"
    );
    assert!(
        !tier.contains(hash(&s, "/i")),
        "an invalidated object was written to disk as fresh"
    );
}

/// a load racing an invalidation inserts the pre-invalidation copy as fresh.
#[test]
fn an_invalidation_racing_a_load_leaves_the_loaded_copy_stale() {
    let dir = TempDir::new("rev-invload");
    let h = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
        put(&s, "/j", &h, b"old", &NONE);
        wait_for("the write", || tier.stats().written == 1);
    }
    let s = store(1);
    let tier = DiskTier::open(cfg(&dir.0, 1 << 20), s.clone()).unwrap();
    let inv = s.clone();
    *tier.handle.shared.hook.lock().unwrap() = Some(Box::new(move |stage| {
        if stage == "read" {
            let c = key_cfg();
            let k = CacheKey::new(parts("/j"), &c, inv.hasher());
            inv.invalidate(&k);
        }
    }));
    let _ = load_via_lock(&tier, &s, "/j");
    let hit = get(&s, "/j", &NONE).expect("loaded");
    assert!(
        hit.object.light_purged(),
        "loaded as fresh after the invalidation"
    );
    wait_for("the file's removal", || !tier.contains(hash(&s, "/j")));
    assert_eq!(tier.stats().invalidated, 1);
}

/// a file the memory store refuses (TooLarge) stays indexed and is
/// read again by every load.
#[test]
fn a_file_memory_refuses_is_forgotten_after_one_load() {
    let dir = TempDir::new("rev-toolarge");
    let h = [("Cache-Control", "max-age=60")];
    {
        let s = store(1);
        let tier = DiskTier::open(cfg(&dir.0, 8 << 20), s.clone()).unwrap();
        put(&s, "/big", &h, &vec![7u8; 2 << 20], &NONE);
        wait_for("the write", || tier.stats().written == 1);
    }
    // The next run has a smaller memory object limit.
    let s = MemoryStore::new(&StoreConfig {
        max_bytes: 16 << 20,
        shards: 4,
        max_object_bytes: 1 << 20,
        tag_header: Some("Surrogate-Key".into()),
        key_seed: 1,
    });
    let tier = DiskTier::open(cfg(&dir.0, 8 << 20), s.clone()).unwrap();
    assert!(!load_via_lock(&tier, &s, "/big"));
    assert!(
        !tier.contains(hash(&s, "/big")),
        "still indexed after a load memory refused"
    );
    assert_eq!(files(&dir.0, ".fgc"), 0);
}
