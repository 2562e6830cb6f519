//! The engine's response cache: one store shared by every worker's stack,
//! built from the config at start, purged and counted by the engine, kept
//! across reloads (no root, in-memory ports).

use std::sync::Arc;
use std::time::SystemTime;

use ferrogate_engine::{Engine, EngineConfig, mem_port};
use ferrogate_proxy::cache::core::{
    CacheKey, CacheMeta, CachePolicyConfig, KeyConfig, KeyParts, PurgeMode,
};
use ferrogate_proxy::cache::{Purge, PurgeError, PurgeTarget};
use ferrogate_proxy::{RouteTable, Upstream};

fn config() -> EngineConfig {
    let origin: std::net::SocketAddr = "10.0.0.3:8080".parse().unwrap();
    let routes = RouteTable::proxy_all(1, 80, Upstream::simple("origin", 0, &[origin]));
    let mut cfg = EngineConfig::new(
        "mem0",
        vec![("10.0.0.10".parse().unwrap(), 24)],
        Arc::new(routes),
    );
    cfg.cache.store.max_bytes = 1 << 20;
    cfg.cache.store.shards = 4;
    cfg.cache.store.max_object_bytes = 64 << 10;
    cfg.cache_key_seed = Some(7);
    cfg
}

/// Stores a complete 10-byte object for http://a.example`path`, tagged.
fn put(engine: &Engine, path: &str, tag: &str) {
    let store = &engine.cache().store;
    let none: [(&str, &str); 0] = [];
    let cfg = KeyConfig::default();
    let key = CacheKey::new(
        KeyParts {
            scheme: "http",
            host: b"a.example",
            path_and_query: path.as_bytes(),
            headers: &none,
        },
        &cfg,
        store.hasher(),
    );
    let t = SystemTime::now();
    let meta = CacheMeta::new(
        200,
        &[("cache-control", "max-age=60"), ("surrogate-key", tag)],
        t,
        t,
        &CachePolicyConfig::default(),
    );
    let mut w = store.insert(&key, &none, meta, Some(10)).unwrap();
    w.append(vec![b'x'; 10].into());
    w.finish();
}

#[test]
fn every_worker_shares_the_engine_cache_which_counts_purges_and_outlives_reloads() {
    let cfg = config();
    let ports: Vec<_> = (0..2).map(|_| mem_port(64).0).collect();
    let mut engine = Engine::start_on_memory(cfg.clone(), ports).unwrap();
    // The engine's handle and one per worker's stack.
    assert_eq!(Arc::strong_count(engine.cache()), 3);
    let s = &engine.cache().settings;
    assert_eq!((s.store.max_bytes, s.store.key_seed), (1 << 20, 7));

    put(&engine, "/a", "t1");
    put(&engine, "/b", "t1");
    put(&engine, "/c", "t2");
    let st = engine.stats();
    assert_eq!((st.cache.objects, st.cache.inserted), (3, 3));
    assert!(st.render().contains("cache_store_objects 3\n"));

    let purge = |mode, target| Purge { mode, target };
    assert_eq!(
        engine
            .purge(&purge(PurgeMode::Hard, PurgeTarget::Tag("t1".into())))
            .map(|n| n.memory),
        Ok(2)
    );
    assert_eq!(
        engine
            .purge(&purge(
                PurgeMode::Light,
                PurgeTarget::Url("http://a.example/c".into())
            ))
            .map(|n| n.memory),
        Ok(1)
    );
    assert_eq!(
        engine.purge(&purge(
            PurgeMode::Hard,
            PurgeTarget::Url("a.example/c".into())
        )),
        Err(PurgeError::BadUrl("a.example/c".into()))
    );
    let st = engine.stats();
    assert_eq!(
        st.cache.objects, 1,
        "a light purge keeps the object (stale)"
    );
    let text = st.render();
    assert!(text.contains("cache_store_purged 3\n"), "{text}");
    assert!(text.contains("cache_store_bytes_evicted 0\n"), "{text}");

    // A reload with the same [cache] changes nothing; another size is
    // reported as needing a restart and the store (with its object) stays.
    let r = engine.reload(&cfg).unwrap();
    assert!(!r.ignored.contains(&"cache"), "{:?}", r.ignored);
    let mut bigger = cfg.clone();
    bigger.cache.store.max_bytes = 2 << 20;
    let r = engine.reload(&bigger).unwrap();
    assert!(r.ignored.contains(&"cache"), "{:?}", r.ignored);
    assert_eq!(engine.cache().settings.store.max_bytes, 1 << 20);
    assert_eq!(engine.stats().cache.objects, 1);
    engine.shutdown().unwrap();
}

#[test]
fn without_a_configured_seed_each_start_draws_its_own() {
    let mut cfg = config();
    cfg.cache_key_seed = None;
    let seed = || {
        let e = Engine::start_on_memory(cfg.clone(), vec![mem_port(64).0]).unwrap();
        let s = e.cache().settings.store.key_seed;
        e.shutdown().unwrap();
        s
    };
    let (a, b) = (seed(), seed());
    assert_ne!(a, b);
}
