use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::key::{KeyConfig, KeyParts, purge_prefix};
use crate::lock::{Acquired, CacheLocks, Wait};
use crate::policy::CachePolicyConfig;

/// Counts this thread's allocations, to check that a hit allocates nothing.
struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

const NONE: [(&str, &str); 0] = [];

fn cfg() -> KeyConfig {
    KeyConfig::default()
}

fn parts<'a>(path: &'a str, h: &'a dyn HeaderView) -> KeyParts<'a> {
    KeyParts {
        scheme: "https",
        host: b"example.com",
        path_and_query: path.as_bytes(),
        headers: h,
    }
}

fn meta(h: &[(&str, &str)]) -> CacheMeta {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    CacheMeta::new(200, h, t, t, &CachePolicyConfig::default())
}

fn small_store(max_bytes: usize, shards: usize) -> MemoryStore {
    MemoryStore::new(&StoreConfig {
        max_bytes,
        shards,
        max_object_bytes: max_bytes,
        tag_header: Some("Surrogate-Key".into()),
        key_seed: 1,
    })
}

/// Stores a complete object of `n` body bytes under `path`.
fn put(s: &MemoryStore, path: &str, h: &[(&str, &str)], n: usize) {
    let c = cfg();
    let k = CacheKey::new(parts(path, &NONE), &c, s.hasher());
    let mut w = s.insert(&k, &NONE, meta(h), Some(n)).unwrap();
    w.append(Bytes::from(vec![b'x'; n]));
    w.finish();
}

fn get(s: &MemoryStore, path: &str, req: &dyn HeaderView) -> Option<Hit> {
    let c = cfg();
    let k = CacheKey::new(parts(path, &NONE), &c, s.hasher());
    s.lookup(&k, req)
}

/// Reads to the end, waiting for the writer (bounded).
fn drain(r: &mut BodyReader) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..10_000_000 {
        match r.poll() {
            Read::Chunk(c) => v.extend_from_slice(&c),
            Read::Pending => std::thread::yield_now(),
            Read::End => return v,
            Read::Aborted => panic!("aborted"),
        }
    }
    panic!("the writer never finished");
}

fn read_all(r: &mut BodyReader) -> (Vec<u8>, Read) {
    let mut v = Vec::new();
    loop {
        match r.poll() {
            Read::Chunk(c) => v.extend_from_slice(&c),
            other => return (v, other),
        }
    }
}

#[test]
fn store_is_send_and_sync() {
    fn ok<T: Send + Sync + Clone>() {}
    ok::<MemoryStore>();
    ok::<CacheLocks>();
    fn send<T: Send>() {}
    send::<ObjectWriter>();
    send::<BodyReader>();
    send::<Hit>();
}

#[test]
fn streaming_insert_readers_see_chunks_before_completion() {
    let s = small_store(1 << 20, 4);
    let c = cfg();
    let k = CacheKey::new(parts("/big", &NONE), &c, s.hasher());
    let mut w = s
        .insert(&k, &NONE, meta(&[("Cache-Control", "max-age=60")]), None)
        .unwrap();
    let hit = get(&s, "/big", &NONE).expect("visible while in progress");
    assert!(!hit.object.is_complete());
    let mut r = hit.object.reader();
    assert_eq!(r.poll(), Read::Pending);
    assert!(!r.ready());
    w.append(Bytes::from_static(b"hello "));
    assert!(r.ready());
    assert_eq!(r.poll(), Read::Chunk(Bytes::from_static(b"hello ")));
    assert_eq!(r.poll(), Read::Pending);
    w.append(Bytes::from_static(b"world"));
    w.finish();
    assert_eq!(read_all(&mut r), (b"world".to_vec(), Read::End));
    // A reader that starts after completion reads the frozen list.
    let hit = get(&s, "/big", &NONE).unwrap();
    assert!(hit.object.is_complete());
    assert_eq!(hit.object.body_len(), 11);
    assert_eq!(
        read_all(&mut hit.object.reader()),
        (b"hello world".to_vec(), Read::End)
    );
}

#[test]
fn abandoned_writer_aborts_readers_and_leaves_the_store() {
    let s = small_store(1 << 20, 4);
    let c = cfg();
    let k = CacheKey::new(parts("/a", &NONE), &c, s.hasher());
    let mut w = s
        .insert(&k, &NONE, meta(&[("Cache-Control", "max-age=60")]), None)
        .unwrap();
    w.append(Bytes::from_static(b"part"));
    let mut r = get(&s, "/a", &NONE).unwrap().object.reader();
    drop(w);
    assert_eq!(read_all(&mut r), (b"part".to_vec(), Read::Aborted));
    assert!(get(&s, "/a", &NONE).is_none());
    assert_eq!(s.stats().objects, 0);
    assert_eq!(s.stats().bytes, 0);
}

#[test]
fn hit_does_not_allocate() {
    let s = small_store(1 << 20, 4);
    let c = cfg();
    let req = [("Accept-Encoding", "gzip")];
    let k = CacheKey::new(parts("/x?b=2&a=1", &req), &c, s.hasher());
    let v = [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")];
    let mut w = s.insert(&k, &req, meta(&v), None).unwrap();
    w.append(Bytes::from(vec![7u8; 100]));
    w.finish();
    let p = parts("/x?a=1&b=2", &req);
    // Warm up: thread-locals, and the first clone of a chunk made from a
    // `Vec` (bytes promotes it to a shared buffer once per chunk).
    let k = CacheKey::new(p, &c, s.hasher());
    assert!(matches!(
        s.lookup(&k, &req).unwrap().object.reader().poll(),
        Read::Chunk(_)
    ));
    let before = allocs();
    let k = CacheKey::new(p, &c, s.hasher());
    let hit = s.lookup(&k, &req).expect("hit");
    let mut r = hit.object.reader();
    let chunk = r.poll();
    let after = allocs();
    assert!(matches!(chunk, Read::Chunk(_)));
    assert_eq!(after - before, 0, "a hit allocated");
}

#[test]
fn vary_selects_variants_and_a_new_vary_list_drops_old_ones() {
    let s = small_store(1 << 20, 4);
    let c = cfg();
    let gz = [("Accept-Encoding", "gzip")];
    let br = [("Accept-Encoding", "br")];
    let v = [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")];
    for (req, body) in [(&gz, "G"), (&br, "B")] {
        let k = CacheKey::new(parts("/v", &NONE), &c, s.hasher());
        let mut w = s.insert(&k, req, meta(&v), None).unwrap();
        w.append(Bytes::from(body));
        w.finish();
    }
    let body = |h: &dyn HeaderView| get(&s, "/v", h).map(|h| read_all(&mut h.object.reader()).0);
    assert_eq!(body(&gz), Some(b"G".to_vec()));
    assert_eq!(body(&[("accept-encoding", " gzip ")]), Some(b"G".to_vec()));
    assert_eq!(body(&br), Some(b"B".to_vec()));
    assert_eq!(body(&NONE), None);
    assert_eq!(s.stats().objects, 2);
    // The origin now varies on something else: the old variants go.
    let k = CacheKey::new(parts("/v", &NONE), &c, s.hasher());
    s.insert(
        &k,
        &gz,
        meta(&[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")]),
        None,
    )
    .unwrap()
    .finish();
    assert_eq!(s.stats().objects, 1);
    assert!(
        body(&br).is_some(),
        "no Accept-Language either way: the new object"
    );
    assert_eq!(body(&br), Some(Vec::new()));
}

#[test]
fn hash_collision_is_a_miss_not_a_wrong_answer() {
    let s = small_store(1 << 20, 4);
    put(&s, "/one", &[("Cache-Control", "max-age=60")], 3);
    let c = cfg();
    let one = CacheKey::new(parts("/one", &NONE), &c, s.hasher());
    let forged = CacheKey {
        hash: one.hash,
        ..CacheKey::new(parts("/two", &NONE), &c, s.hasher())
    };
    assert!(s.lookup(&one, &NONE).is_some());
    assert!(s.lookup(&forged, &NONE).is_none());
    assert_eq!(s.purge_key(&forged, PurgeMode::Hard), 0);
    // Storing under the colliding hash replaces the other key.
    s.insert(
        &forged,
        &NONE,
        meta(&[("Cache-Control", "max-age=60")]),
        None,
    )
    .unwrap()
    .finish();
    assert!(s.lookup(&one, &NONE).is_none());
    assert!(s.lookup(&forged, &NONE).is_some());
    assert_eq!(s.stats().objects, 1);
}

#[test]
fn purge_light_and_hard_by_key_prefix_and_tag() {
    let s = small_store(1 << 20, 8);
    let cc = ("Cache-Control", "max-age=60");
    put(
        &s,
        "/img/a.png",
        &[cc, ("Surrogate-Key", "img  product-1")],
        10,
    );
    put(
        &s,
        "/img/b.png?x=1",
        &[cc, ("Surrogate-Key", "img,product-2")],
        10,
    );
    put(&s, "/imgs", &[cc], 10);
    put(
        &s,
        "/css/site.css",
        &[cc, ("Surrogate-Key", "product-1")],
        10,
    );
    let c = cfg();

    // Light by key: still served, marked stale.
    let k = CacheKey::new(parts("/css/site.css", &NONE), &c, s.hasher());
    assert_eq!(s.purge_key(&k, PurgeMode::Light), 1);
    assert!(
        get(&s, "/css/site.css", &NONE)
            .unwrap()
            .object
            .light_purged()
    );
    assert!(!get(&s, "/imgs", &NONE).unwrap().object.light_purged());

    // Light by tag marks both tagged objects.
    assert_eq!(s.purge_tag(b"product-1", PurgeMode::Light), 2);
    assert!(get(&s, "/img/a.png", &NONE).unwrap().object.light_purged());
    assert!(
        !get(&s, "/img/b.png?x=1", &NONE)
            .unwrap()
            .object
            .light_purged()
    );

    // Hard by prefix "/img/" leaves "/imgs".
    assert_eq!(
        s.purge_prefix(
            &purge_prefix("https", b"EXAMPLE.com", b"/img/"),
            PurgeMode::Hard
        ),
        2
    );
    assert!(get(&s, "/img/a.png", &NONE).is_none());
    assert!(get(&s, "/img/b.png?x=1", &NONE).is_none());
    assert!(get(&s, "/imgs", &NONE).is_some());
    assert_eq!(
        s.purge_tag(b"img", PurgeMode::Hard),
        0,
        "the tag index forgot removed objects"
    );

    // Hard by tag and by key.
    assert_eq!(s.purge_tag(b"product-1", PurgeMode::Hard), 1);
    assert!(get(&s, "/css/site.css", &NONE).is_none());
    let k = CacheKey::new(parts("/imgs", &NONE), &c, s.hasher());
    assert_eq!(s.purge_key(&k, PurgeMode::Hard), 1);
    assert_eq!(s.stats().objects, 0);
    assert_eq!(s.stats().bytes, 0);
    assert_eq!(s.stats().purged, 1 + 2 + 2 + 1 + 1);
}

#[test]
fn refresh_keeps_body_and_clears_light_purge() {
    let s = small_store(1 << 20, 4);
    put(
        &s,
        "/r",
        &[("Cache-Control", "max-age=1"), ("ETag", "\"1\"")],
        5,
    );
    let c = cfg();
    let k = CacheKey::new(parts("/r", &NONE), &c, s.hasher());
    s.purge_key(&k, PurgeMode::Light);
    let hit = get(&s, "/r", &NONE).unwrap();
    assert!(hit.object.light_purged());
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    let merged = crate::revalidate::merge_not_modified(
        hit.meta(),
        &[("Cache-Control", "max-age=300"), ("ETag", "\"1\"")],
        t,
        t,
        &CachePolicyConfig::default(),
    )
    .unwrap();
    assert!(s.refresh(&hit, merged));
    let again = get(&s, "/r", &NONE).unwrap();
    assert!(!again.object.light_purged());
    assert_eq!(again.meta().freshness_lifetime, 300);
    assert_eq!(read_all(&mut again.object.reader()).0, b"xxxxx");
    assert!(
        !s.refresh(&hit, again.meta().clone()),
        "a stale hit cannot overwrite a newer object"
    );
    assert!(s.remove(&again));
    assert!(get(&s, "/r", &NONE).is_none());
}

#[test]
fn byte_budget_holds_and_evictions_are_counted() {
    let budget = 64 * 1024;
    let s = small_store(budget, 1);
    for i in 0..200 {
        put(
            &s,
            &format!("/o/{i}"),
            &[("Cache-Control", "max-age=60")],
            1000,
        );
        assert!(s.stats().bytes as usize <= budget, "over budget after {i}");
    }
    let st = s.stats();
    assert!(st.evicted > 100, "{st:?}");
    assert_eq!(st.inserted, 200);
    assert_eq!(st.objects, 200 - st.evicted);
    assert_eq!(st.bytes_inserted - st.bytes_evicted, st.bytes);
    let (small, main) = lock(&s.inner.shards[0]).queue_bytes();
    assert_eq!((small + main) as u64, st.bytes);
}

#[test]
fn too_large_objects_are_refused_or_detached() {
    let s = MemoryStore::new(&StoreConfig {
        max_bytes: 1 << 20,
        shards: 1,
        max_object_bytes: 4096,
        tag_header: None,
        key_seed: 0,
    });
    let c = cfg();
    let k = CacheKey::new(parts("/huge", &NONE), &c, s.hasher());
    assert_eq!(
        s.insert(
            &k,
            &NONE,
            meta(&[("Cache-Control", "max-age=60")]),
            Some(10_000)
        )
        .err(),
        Some(InsertError::TooLarge)
    );
    let mut w = s
        .insert(&k, &NONE, meta(&[("Cache-Control", "max-age=60")]), None)
        .unwrap();
    let mut r = get(&s, "/huge", &NONE).unwrap().object.reader();
    for _ in 0..10 {
        w.append(Bytes::from(vec![0u8; 1000]));
    }
    w.finish();
    assert!(
        get(&s, "/huge", &NONE).is_none(),
        "left the store when it outgrew the limit"
    );
    assert_eq!(s.stats().bytes, 0);
    let (body, end) = read_all(&mut r);
    assert_eq!(
        (body.len(), end),
        (10_000, Read::End),
        "its reader still got everything"
    );
}

/// A hot set read repeatedly survives a scan of one-time objects many
/// times the budget (S3-FIFO: the scan passes through the small FIFO).
#[test]
fn scan_does_not_evict_the_hot_set() {
    let budget = 200 * 1024;
    let s = small_store(budget, 1);
    let hot: Vec<String> = (0..60).map(|i| format!("/hot/{i}")).collect();
    for p in &hot {
        put(&s, p, &[("Cache-Control", "max-age=60")], 1000);
        get(&s, p, &NONE).unwrap();
    }
    let mut hot_misses = 0;
    for i in 0..5000 {
        put(
            &s,
            &format!("/scan/{i}"),
            &[("Cache-Control", "max-age=60")],
            1000,
        );
        if i % 50 == 0 {
            for p in &hot {
                if get(&s, p, &NONE).is_none() {
                    hot_misses += 1;
                    put(&s, p, &[("Cache-Control", "max-age=60")], 1000);
                }
            }
        }
    }
    assert_eq!(hot_misses, 0, "the scan evicted hot objects");
    assert!(s.stats().evicted > 4000);
    assert!(s.stats().bytes as usize <= budget);
}

/// The whole miss path across threads: 1,000 requests for one cold key,
/// one fetcher, everyone else streams the object it stores.
#[test]
fn coalesced_miss_streams_to_waiters() {
    let s = small_store(1 << 20, 4);
    let locks = CacheLocks::new(4);
    let c = cfg();
    let fetches = std::sync::atomic::AtomicUsize::new(0);
    let far = Instant::now() + Duration::from_secs(600);
    let bodies: Vec<Vec<u8>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (s, locks, c, fetches) = (&s, &locks, &c, &fetches);
                sc.spawn(move || {
                    let mut out = Vec::new();
                    for _ in 0..125 {
                        let k = CacheKey::new(parts("/cold", &NONE), c, s.hasher());
                        if let Some(h) = s.lookup(&k, &NONE) {
                            out.push(h.object.reader());
                            continue;
                        }
                        match locks.acquire(k.hash, far) {
                            Acquired::Fetch(p) => {
                                // The protocol: look up again once holding
                                // the lock (a fetcher may have stored it and
                                // released the lock since our miss).
                                if let Some(h) = s.lookup(&k, &NONE) {
                                    p.stored();
                                    out.push(h.object.reader());
                                    continue;
                                }
                                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let mut w = s
                                    .insert(
                                        &k,
                                        &NONE,
                                        meta(&[("Cache-Control", "max-age=60")]),
                                        None,
                                    )
                                    .unwrap();
                                p.stored();
                                out.push(w.object().reader());
                                for i in 0..10u8 {
                                    w.append(Bytes::from(vec![i; 100]));
                                    std::thread::yield_now();
                                }
                                w.finish();
                            }
                            Acquired::Wait(mut t) => loop {
                                match t.poll(Instant::now()) {
                                    Wait::Pending => std::thread::yield_now(),
                                    Wait::Ready => {
                                        out.push(
                                            s.lookup(&k, &NONE).expect("stored").object.reader(),
                                        );
                                        break;
                                    }
                                    other => panic!("{other:?}"),
                                }
                            },
                        }
                    }
                    out.into_iter()
                        .map(|mut r| drain(&mut r))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(bodies.len(), 1000);
    let want: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 100]).collect();
    assert!(bodies.iter().all(|b| *b == want));
    assert!(locks.is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16),
    Stream(u8, u8),
    Get(u8),
    Purge(u8, bool),
    PurgeTag(u8, bool),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<u8>(), 0u16..3000).prop_map(|(k, n)| Op::Put(k % 64, n)),
        (any::<u8>(), 0u8..6).prop_map(|(k, n)| Op::Stream(k % 64, n)),
        any::<u8>().prop_map(|k| Op::Get(k % 64)),
        (any::<u8>(), any::<bool>()).prop_map(|(k, h)| Op::Purge(k % 64, h)),
        (any::<u8>(), any::<bool>()).prop_map(|(k, h)| Op::PurgeTag(k % 4, h)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Random inserts (complete, streamed, abandoned), hits and purges keep
    /// the accounting exact: bytes within budget, the counter equal to the
    /// queues' sum, objects equal to what lookups can find.
    #[test]
    fn accounting_stays_exact(ops in proptest::collection::vec(op(), 1..200)) {
        let budget = 40_000;
        let s = small_store(budget, 1);
        let c = cfg();
        for o in ops {
            match o {
                Op::Put(k, n) => {
                    let tag = format!("t{}", k % 4);
                    put(&s, &format!("/k/{k}"), &[("Cache-Control", "max-age=60"), ("Surrogate-Key", &tag)], usize::from(n));
                }
                Op::Stream(k, n) => {
                    let path = format!("/k/{k}");
                    let key = CacheKey::new(parts(&path, &NONE), &c, s.hasher());
                    if let Ok(mut w) = s.insert(&key, &NONE, meta(&[("Cache-Control", "max-age=60")]), None) {
                        for _ in 0..n {
                            w.append(Bytes::from(vec![1u8; 900]));
                        }
                        if n % 2 == 0 { w.finish() }
                    }
                }
                Op::Get(k) => { get(&s, &format!("/k/{k}"), &NONE); }
                Op::Purge(k, hard) => {
                    let path = format!("/k/{k}");
                    let key = CacheKey::new(parts(&path, &NONE), &c, s.hasher());
                    s.purge_key(&key, if hard { PurgeMode::Hard } else { PurgeMode::Light });
                }
                Op::PurgeTag(t, hard) => {
                    s.purge_tag(format!("t{t}").as_bytes(), if hard { PurgeMode::Hard } else { PurgeMode::Light });
                }
            }
            let st = s.stats();
            proptest::prop_assert!(st.bytes as usize <= budget);
            let (small, main) = lock(&s.inner.shards[0]).queue_bytes();
            proptest::prop_assert_eq!((small + main) as u64, st.bytes);
            let found = (0..64).filter(|k| get(&s, &format!("/k/{k}"), &NONE).is_some()).count();
            proptest::prop_assert_eq!(found as u64, st.objects);
        }
    }
}

/// A body that ends shorter than its declared length (upstream closed
/// early) is aborted, not kept as complete.
#[test]
fn a_body_shorter_than_declared_is_aborted_and_leaves_the_store() {
    let s = small_store(1 << 20, 1);
    let c = cfg();
    let k = CacheKey::new(parts("/short", &NONE), &c, s.hasher());
    let mut w = s
        .insert(
            &k,
            &NONE,
            meta(&[("Cache-Control", "max-age=60")]),
            Some(1_000),
        )
        .unwrap();
    let mut r = w.object().reader();
    w.append(Bytes::from(vec![7u8; 500]));
    w.finish();
    let (got, end) = read_all(&mut r);
    assert_eq!((got.len(), end), (500, Read::Aborted));
    assert!(s.lookup(&k, &NONE).is_none(), "a truncated body was kept");
    // The declared length met: kept.
    let mut w = s
        .insert(
            &k,
            &NONE,
            meta(&[("Cache-Control", "max-age=60")]),
            Some(500),
        )
        .unwrap();
    w.append(Bytes::from(vec![7u8; 500]));
    w.finish();
    let mut r = s.lookup(&k, &NONE).expect("stored").object.reader();
    assert_eq!(drain(&mut r).len(), 500);
}

/// A reader racing the writer's `finish` never sees `End` before the last
/// chunk (`finish` moves the chunks to the lock-free frozen copy).
#[test]
fn readers_racing_finish_read_every_chunk() {
    for round in 0..300 {
        let body = std::sync::Arc::new(super::object::Body::new());
        let reader_body = std::sync::Arc::clone(&body);
        let n = 1 + round % 7;
        std::thread::scope(|sc| {
            let r = sc.spawn(move || {
                let mut r = BodyReader::for_test(reader_body);
                drain(&mut r).len()
            });
            for _ in 0..n {
                body.append(Bytes::from_static(b"0123456789"), usize::MAX);
            }
            body.finish();
            assert_eq!(r.join().unwrap(), 10 * n, "round {round}");
        });
    }
}

fn store_max_object(max_object_bytes: usize) -> MemoryStore {
    MemoryStore::new(&StoreConfig {
        max_bytes: 1 << 20,
        shards: 1,
        max_object_bytes,
        tag_header: None,
        key_seed: 0,
    })
}

fn writer(s: &MemoryStore, path: &str) -> ObjectWriter {
    let c = cfg();
    let k = CacheKey::new(parts(path, &NONE), &c, s.hasher());
    s.insert(&k, &NONE, meta(&[("Cache-Control", "max-age=60")]), None)
        .unwrap()
}

/// Review #1: a writer whose object outgrew the store and has no reader
/// stops buffering (and says so) instead of growing without bound.
#[test]
fn too_large_writer_without_readers_stops_buffering() {
    let s = store_max_object(4096);
    let mut w = writer(&s, "/huge");
    let mut last = Append::Stored;
    for _ in 0..1000 {
        last = w.push(Bytes::from(vec![0u8; 1000]));
        assert!(w.buffered() <= 4096 + 1000, "{}", w.buffered());
    }
    assert_eq!(last, Append::Detached);
    assert_eq!(w.status(), Append::Detached);
    assert!(w.is_detached());
    assert_eq!(w.object().reader().poll(), Read::Aborted);
}

/// Review #1: an object purged (or evicted) while streaming, with no
/// reader, stops buffering within one accounting batch.
#[test]
fn purged_writer_without_readers_stops_buffering() {
    let s = small_store(1 << 20, 1);
    let mut w = writer(&s, "/p");
    let c = cfg();
    let k = CacheKey::new(parts("/p", &NONE), &c, s.hasher());
    assert_eq!(s.purge_key(&k, PurgeMode::Hard), 1);
    let mut last = Append::Stored;
    for _ in 0..1000 {
        last = w.push(Bytes::from(vec![0u8; 1000]));
        assert!(w.buffered() <= GROW_BATCH + 1000);
    }
    assert_eq!(last, Append::Detached);
}

/// Review #1: a detached body keeps only what some reader has not read;
/// a reader lagging by more than the object size makes the writer pause.
#[test]
fn detached_body_releases_chunks_every_reader_read() {
    let s = store_max_object(4096);
    let mut w = writer(&s, "/stream");
    let mut r = w.object().reader();
    let mut got = 0;
    for _ in 0..1000 {
        assert_ne!(w.push(Bytes::from(vec![1u8; 1000])), Append::Detached);
        while let Read::Chunk(c) = r.poll() {
            got += c.len();
        }
        assert!(w.buffered() <= 4096, "{}", w.buffered());
    }
    assert!(w.is_detached());
    // A reader starting now cannot get the released start: truncated.
    assert_eq!(w.object().reader().poll(), Read::Aborted);
    let mut w2 = writer(&s, "/slow");
    let _lagging = w2.object().reader();
    let mut last = Append::Stored;
    for _ in 0..10 {
        last = w2.push(Bytes::from(vec![1u8; 1000]));
    }
    assert_eq!(last, Append::Full);
    w.finish();
    assert_eq!(read_all(&mut r), (Vec::new(), Read::End));
    assert_eq!(got, 1_000_000);
}

/// Review #9: a small slice of a big buffer is copied (it must not pin the
/// buffer), and each chunk's overhead is counted.
#[test]
fn small_slices_are_copied_and_chunks_cost_overhead() {
    let s = small_store(1 << 20, 1);
    let mut w = writer(&s, "/slices");
    let big = Bytes::from(vec![5u8; 1 << 20]);
    let range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
    w.append(big.slice(10..110));
    for _ in 0..99 {
        w.append(Bytes::from_static(b"x"));
    }
    w.finish();
    let hit = get(&s, "/slices", &NONE).unwrap();
    let Read::Chunk(c) = hit.object.reader().poll() else {
        panic!()
    };
    assert!(
        !range.contains(&(c.as_ptr() as usize)),
        "the stored chunk shares the 1 MiB buffer"
    );
    assert!(
        s.stats().bytes as usize >= 100 * CHUNK_OVERHEAD + 199,
        "{:?}",
        s.stats()
    );
}

fn stored_hit(s: &MemoryStore, path: &str, h: &[(&str, &str)]) -> Hit {
    put(s, path, h, 5);
    get(s, path, &NONE).unwrap()
}

fn merged(hit: &Hit, not_modified: &[(&str, &str)]) -> CacheMeta {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    crate::revalidate::merge_not_modified(
        hit.meta(),
        not_modified,
        t,
        t,
        &CachePolicyConfig::default(),
    )
    .unwrap()
}

/// Review #2: a 304 carrying no-store, private or Vary: * evicts the
/// stored object instead of freshening it.
#[test]
fn a_304_forbidding_storage_evicts() {
    let s = small_store(1 << 20, 2);
    let base = [("Cache-Control", "max-age=1"), ("ETag", "\"1\"")];
    for extra in [
        ("Cache-Control", "no-store"),
        ("Cache-Control", "private, max-age=60"),
        ("Vary", "*"),
    ] {
        let hit = stored_hit(&s, "/n", &base);
        let m = merged(&hit, &[("ETag", "\"1\""), extra]);
        assert_eq!(s.refresh_outcome(&hit, m), Refresh::Evicted, "{extra:?}");
        assert!(get(&s, "/n", &NONE).is_none(), "{extra:?}");
        assert_eq!(s.stats().objects, 0);
        let hit = stored_hit(&s, "/n", &base);
        assert!(!s.refresh(&hit, merged(&hit, &[("ETag", "\"1\""), extra])));
        assert!(get(&s, "/n", &NONE).is_none(), "{extra:?} via refresh");
    }
    let hit = stored_hit(&s, "/n", &base);
    let m = merged(&hit, &[("ETag", "\"1\""), ("Cache-Control", "max-age=9")]);
    assert_eq!(s.refresh_outcome(&hit, m.clone()), Refresh::Refreshed);
    assert_eq!(s.refresh_outcome(&hit, m), Refresh::Gone);
}

/// Review #10: a refresh takes weight, tags and Vary from the merged
/// headers.
#[test]
fn refresh_updates_weight_tags_and_vary() {
    let s = small_store(1 << 20, 1);
    let hit = stored_hit(
        &s,
        "/w",
        &[
            ("Cache-Control", "max-age=1"),
            ("ETag", "\"1\""),
            ("Surrogate-Key", "old"),
        ],
    );
    let before = s.stats().bytes;
    let big = "v".repeat(5000);
    let m = merged(
        &hit,
        &[("ETag", "\"1\""), ("X-Big", &big), ("Surrogate-Key", "new")],
    );
    assert!(s.refresh(&hit, m));
    let after = s.stats().bytes;
    assert!(after >= before + 5000, "{before} -> {after}");
    let (small, main) = lock(&s.inner.shards[0]).queue_bytes();
    assert_eq!((small + main) as u64, after);
    assert_eq!(s.purge_tag(b"old", PurgeMode::Hard), 0, "old tag kept");
    assert_eq!(s.purge_tag(b"new", PurgeMode::Hard), 1, "new tag missing");
    assert_eq!(s.stats().bytes, 0);
    // A different Vary list: the variant can no longer be found correctly.
    let hit = stored_hit(
        &s,
        "/w",
        &[("Cache-Control", "max-age=1"), ("ETag", "\"1\"")],
    );
    let m = merged(&hit, &[("ETag", "\"1\""), ("Vary", "Accept")]);
    assert_eq!(s.refresh_outcome(&hit, m), Refresh::Evicted);
}

/// Review #12: the tag index is bounded per object and counted.
#[test]
fn tags_are_capped_and_counted() {
    let s = small_store(1 << 20, 1);
    let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let long = "x".repeat(MAX_TAG_LEN + 1);
    let tags = format!("{} {long}", many.join(" "));
    let plain = {
        put(&s, "/plain", &[("Cache-Control", "max-age=60")], 0);
        s.stats().bytes
    };
    put(
        &s,
        "/tagged",
        &[("Cache-Control", "max-age=60"), ("Surrogate-Key", &tags)],
        0,
    );
    let tagged = s.stats().bytes - plain;
    assert!(
        tagged as usize >= plain as usize + tags.len() + MAX_TAGS * 64,
        "{plain} {tagged}"
    );
    assert_eq!(s.purge_tag(long.as_bytes(), PurgeMode::Light), 0);
    assert_eq!(
        s.purge_tag(format!("t{}", MAX_TAGS - 1).as_bytes(), PurgeMode::Light),
        1
    );
    assert_eq!(
        s.purge_tag(format!("t{MAX_TAGS}").as_bytes(), PurgeMode::Light),
        0
    );
    assert_eq!(lock(&s.inner.shards[0]).tags_len(), MAX_TAGS);
}

/// Review #6: a variant is compared by its request-header bytes, not only
/// by its hash (a forged variant-hash collision is a miss).
#[test]
fn variant_hash_collision_is_a_miss() {
    let s = small_store(1 << 20, 1);
    let c = cfg();
    let gz = [("Accept-Encoding", "gzip")];
    let br = [("Accept-Encoding", "br")];
    let v = [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")];
    let k = CacheKey::new(parts("/vc", &NONE), &c, s.hasher());
    s.insert(&k, &gz, meta(&v), None).unwrap().finish();
    let vary = [Bytes::from_static(b"accept-encoding")];
    let from = (k.hash, variant_hash(&vary, &gz, s.hasher()));
    let to = (k.hash, variant_hash(&vary, &br, s.hasher()));
    lock(&s.inner.shards[0]).rekey(from, to);
    assert!(s.lookup(&k, &br).is_none(), "served gzip's variant to br");
}

/// Review #7: a prefix purge matches on a segment boundary.
#[test]
fn prefix_purge_matches_whole_segments() {
    let s = small_store(1 << 20, 4);
    let cc = [("Cache-Control", "max-age=60")];
    for p in ["/img", "/img/a", "/img?x=1", "/imgs", "/img-old/a"] {
        put(&s, p, &cc, 1);
    }
    let pre = purge_prefix("https", b"example.com:443", b"/img");
    assert_eq!(s.purge_prefix(&pre, PurgeMode::Hard), 3);
    assert!(get(&s, "/imgs", &NONE).is_some());
    assert!(get(&s, "/img-old/a", &NONE).is_some());
    let host_only = purge_prefix("https", b"example.com", b"");
    assert_eq!(s.purge_prefix(&host_only, PurgeMode::Hard), 2);
    assert_eq!(s.stats().objects, 0);
}

/// Review #7: an exact purge by URL reaches every key of that URL, also
/// those made with request headers, and nothing else.
#[test]
fn exact_purge_reaches_header_keyed_keys() {
    let s = small_store(1 << 20, 8);
    let plain = cfg();
    let by_device = KeyConfig {
        headers: vec![Bytes::from_static(b"x-device")],
        ..Default::default()
    };
    let meta60 = || meta(&[("Cache-Control", "max-age=60")]);
    for (path, c, dev) in [
        ("/p", &by_device, "mobile"),
        ("/p", &by_device, "desktop"),
        ("/p", &plain, ""),
        ("/p?x=1", &by_device, "mobile"),
        ("/p2", &plain, ""),
    ] {
        let h = [("X-Device", dev)];
        let k = CacheKey::new(parts(path, &h), c, s.hasher());
        s.insert(&k, &NONE, meta60(), None).unwrap().finish();
    }
    assert_eq!(s.stats().objects, 5);
    let k = CacheKey::new(parts("/p", &NONE), &plain, s.hasher());
    assert_eq!(s.purge_key(&k, PurgeMode::Hard), 3);
    assert_eq!(s.stats().objects, 2);
}

/// Review #13: purges work in batches per lock hold and still reach
/// every matching key.
#[test]
fn purges_in_batches_reach_everything() {
    let s = small_store(4 << 20, 1);
    let cc = ("Cache-Control", "max-age=60");
    for i in 0..(3 * PURGE_BATCH + 5) {
        put(&s, &format!("/b/{i}"), &[cc, ("Surrogate-Key", "all")], 1);
    }
    put(&s, "/c", &[cc, ("Surrogate-Key", "all")], 1);
    let n = 3 * PURGE_BATCH + 5;
    let pre = purge_prefix("https", b"example.com", b"/b/");
    assert_eq!(s.purge_prefix(&pre, PurgeMode::Light), n);
    assert_eq!(s.purge_tag(b"all", PurgeMode::Light), n + 1);
    assert_eq!(s.purge_prefix(&pre, PurgeMode::Hard), n);
    assert_eq!(s.stats().objects, 1);
}

/// Review #8: a response fetched before a purge is not stored after it.
#[test]
fn a_fetch_started_before_a_purge_does_not_store_after_it() {
    let s = small_store(1 << 20, 4);
    let c = cfg();
    let m = || meta(&[("Cache-Control", "max-age=60"), ("Surrogate-Key", "t1")]);
    let k = CacheKey::new(parts("/race", &NONE), &c, s.hasher());
    let other = CacheKey::new(parts("/other", &NONE), &c, s.hasher());
    let epoch = s.purge_epoch();
    assert!(
        s.insert_since(&k, &NONE, m(), None, epoch).is_ok(),
        "no purge"
    );
    s.purge_key(&k, PurgeMode::Hard);
    assert_eq!(
        s.insert_since(&k, &NONE, m(), None, epoch).err(),
        Some(InsertError::Purged)
    );
    let plain = meta(&[("Cache-Control", "max-age=60")]);
    assert!(
        s.insert_since(&other, &NONE, plain.clone(), None, epoch)
            .is_ok()
    );
    let epoch = s.purge_epoch();
    s.purge_tag(b"t1", PurgeMode::Hard);
    assert_eq!(
        s.insert_since(&other, &NONE, m(), None, epoch).err(),
        Some(InsertError::Purged),
        "tagged like the purge"
    );
    assert!(
        s.insert_since(&other, &NONE, plain.clone(), None, epoch)
            .is_ok()
    );
    let epoch = s.purge_epoch();
    s.purge_prefix(
        &purge_prefix("https", b"example.com", b"/ra"),
        PurgeMode::Hard,
    );
    assert!(
        s.insert_since(&k, &NONE, plain.clone(), None, epoch)
            .is_ok(),
        "/ra is not /race's segment"
    );
    s.purge_prefix(
        &purge_prefix("https", b"example.com", b"/race"),
        PurgeMode::Light,
    );
    s.insert_since(&k, &NONE, plain.clone(), None, epoch)
        .unwrap()
        .finish();
    assert!(
        s.lookup(&k, &NONE).unwrap().object.light_purged(),
        "light: stored, marked"
    );
    let epoch = s.purge_epoch();
    s.insert_since(&k, &NONE, plain, None, epoch)
        .unwrap()
        .finish();
    assert!(!s.lookup(&k, &NONE).unwrap().object.light_purged());
}

/// Review #14: a response stale at once with no validator is not stored.
#[test]
fn useless_responses_are_not_stored() {
    let s = small_store(1 << 20, 1);
    let c = cfg();
    let k = CacheKey::new(parts("/u", &NONE), &c, s.hasher());
    for h in [
        &[][..],
        &[("Cache-Control", "max-age=0")],
        &[("Cache-Control", "no-cache, max-age=60")],
    ] {
        assert_eq!(
            s.insert(&k, &NONE, meta(h), None).err(),
            Some(InsertError::NotWorthStoring),
            "{h:?}"
        );
    }
    assert!(
        s.insert(
            &k,
            &NONE,
            meta(&[("Cache-Control", "max-age=0"), ("ETag", "\"1\"")]),
            None
        )
        .is_ok()
    );
    assert!(
        s.insert(
            &k,
            &NONE,
            meta(&[
                ("Cache-Control", "no-cache"),
                ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            None
        )
        .is_ok()
    );
}

#[test]
fn invalidate_marks_one_key_stale_without_a_purge_log_entry() {
    let s = small_store(1 << 20, 4);
    let h = [("cache-control", "max-age=60"), ("etag", "\"a\"")];
    put(&s, "/a", &h, 10);
    put(&s, "/b", &h, 10);
    let epoch = s.purge_epoch();
    let c = cfg();
    let k = CacheKey::new(parts("/a", &NONE), &c, s.hasher());
    assert_eq!(s.invalidate(&k), 1);
    assert!(get(&s, "/a", &NONE).unwrap().object.light_purged());
    assert!(!get(&s, "/b", &NONE).unwrap().object.light_purged());
    // Not a purge: a fetch that started before may still store.
    assert_eq!(s.purge_epoch(), epoch);
    let kb = CacheKey::new(parts("/c", &NONE), &c, s.hasher());
    assert!(s.insert_since(&kb, &NONE, meta(&h), Some(0), epoch).is_ok());
    let none = CacheKey::new(parts("/none", &NONE), &c, s.hasher());
    assert_eq!(s.invalidate(&none), 0);
}
