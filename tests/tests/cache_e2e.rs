//! The response cache in the lab with curl and h2load (issue #21): a
//! controllable origin (`fg-test-origin`'s `/cache/...`), hits and misses
//! with `X-Cache` and `Age`, HEAD from GET, 1,000 concurrent requests for
//! one cold key → one upstream request, revalidation with a 304,
//! stale-if-error with the origin failing, Vary, purge by URL, prefix and
//! tag (hard and light) through `ferrogate ctl purge`, counters and the
//! access log.

use std::time::Duration;

use ferrogate_tests::{Lab, VIP, ctl_ok, lab_test};

const ORIGIN: &str = "10.77.0.3:8092";

fn config() -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[access_log]
path = "access.log"

[cache]
max_bytes = 67108864
max_object_bytes = 4194304
tag_header = "surrogate-key"
status_header = "x-cache"
lock_timeout_ms = 10000

[[upstreams]]
name = "cache-origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80
http2 = true

[[listeners.routes]]
name = "cached"
path_prefix = "/cache/"
upstream = "cache-origin"
cache = true

[[listeners.routes]]
name = "control"
path_prefix = "/"
upstream = "cache-origin"
"#
    )
}

/// A curl from the client namespace: (status, lowercased head, body).
fn get(lab: &Lab, args: &[&str]) -> (u16, String, String) {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-D", "-"];
    argv.extend_from_slice(args);
    let out = lab.exec("client", &argv).expect("curl");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.trim() == name).then(|| v.trim().to_string())
    })
}

fn url(p: &str) -> String {
    format!("http://{VIP}{p}")
}

/// Sets the origin's `/cache/` behaviour (through the uncached route).
fn origin_set(lab: &Lab, query: &str) {
    let (s, _, body) = get(
        lab,
        &["-X", "POST", &url(&format!("/control/cache?{query}"))],
    );
    assert_eq!(s, 200, "{body}");
}

/// How many requests the origin got for `path`.
fn origin_count(lab: &Lab, path: &str) -> u64 {
    let (s, _, body) = get(lab, &[&url(&format!("/control/count{path}"))]);
    assert_eq!(s, 200, "{body}");
    body.trim().parse().unwrap()
}

#[test]
fn cache_serves_hits_coalesces_revalidates_and_purges() {
    lab_test("cache", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("cache", ORIGIN);
        let path = lab.state_dir().join("cache.toml");
        std::fs::write(&path, config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);

        // MISS, then HIT (HTTP/1.1 and h2c), Age, the origin asked once.
        let (s, h1, b1) = get(&lab, &[&url("/cache/a")]);
        assert_eq!(s, 200, "{h1}{b1}");
        assert_eq!(field(&h1, "x-cache").as_deref(), Some("miss"), "{h1}");
        let (s, h2, b2) = get(&lab, &[&url("/cache/a")]);
        assert_eq!((s, b2.as_str()), (200, b1.as_str()));
        assert_eq!(field(&h2, "x-cache").as_deref(), Some("hit"), "{h2}");
        assert!(field(&h2, "age").is_some(), "{h2}");
        let (s, h3, b3) = get(&lab, &["--http2-prior-knowledge", &url("/cache/a")]);
        assert_eq!((s, b3.as_str()), (200, b1.as_str()));
        assert_eq!(field(&h3, "x-cache").as_deref(), Some("hit"), "{h3}");
        // HEAD from the stored GET.
        let (s, h4, b4) = get(&lab, &["-I", &url("/cache/a")]);
        // `-I` prints the head a second time: no body either way.
        assert_eq!((s, b4.trim()), (200, ""));
        assert_eq!(field(&h4, "x-cache").as_deref(), Some("hit"), "{h4}");
        assert_eq!(
            field(&h4, "content-length"),
            Some(b1.len().to_string()),
            "{h4}"
        );
        assert_eq!(origin_count(&lab, "/cache/a"), 1);

        // One range of a stored response: 206 from the store.
        let (s, h, b) = get(&lab, &["-r", "1-4", &url("/cache/a")]);
        assert_eq!((s, b.as_str()), (206, &b1[1..5]), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        assert_eq!(
            field(&h, "content-range"),
            Some(format!("bytes 1-4/{}", b1.len())),
            "{h}"
        );
        assert_eq!(origin_count(&lab, "/cache/a"), 1);

        // 1,000 concurrent requests for one cold key, the origin slow to
        // answer the first: exactly one upstream request.
        origin_set(&lab, "delay=1500");
        let (ok, out) = lab.client_sh(&format!(
            "h2load --h1 -n 1000 -c 1000 -t 1 -T 20 {} 2>&1",
            url("/cache/hot")
        ));
        assert!(ok, "{out}");
        assert!(out.contains("1000 succeeded"), "{out}");
        assert!(out.contains("1000 2xx"), "{out}");
        origin_set(&lab, "delay=0");
        assert_eq!(origin_count(&lab, "/cache/hot"), 1, "{out}");

        // Stale after max-age: revalidated with the ETag, a 304 refreshes.
        origin_set(&lab, "cc=max-age%3D1");
        let (_, h, body) = get(&lab, &[&url("/cache/r")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"));
        std::thread::sleep(Duration::from_millis(2500));
        let (s, h, b) = get(&lab, &[&url("/cache/r")]);
        assert_eq!((s, b.as_str()), (200, body.as_str()), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("revalidated"), "{h}");
        assert_eq!(origin_count(&lab, "/cache/r"), 2);

        // stale-if-error: the origin fails, the stored response stands in.
        origin_set(&lab, "cc=max-age%3D1%2C%20stale-if-error%3D600");
        let (_, _, body) = get(&lab, &[&url("/cache/e")]);
        std::thread::sleep(Duration::from_millis(2500));
        origin_set(&lab, "fail=1");
        let (s, h, b) = get(&lab, &[&url("/cache/e")]);
        assert_eq!((s, b.as_str()), (200, body.as_str()), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("stale"), "{h}");
        origin_set(&lab, "fail=0&cc=max-age%3D600");

        // Vary: a variant per Accept-Language.
        for lang in ["en", "de", "en", "de"] {
            let (_, _, b) = get(
                &lab,
                &[
                    "-H",
                    &format!("Accept-Language: {lang}"),
                    &url("/cache/vary"),
                ],
            );
            assert!(b.trim_end().ends_with(lang), "{b}");
        }
        assert_eq!(origin_count(&lab, "/cache/vary"), 2);

        // Purge through the operator API: by URL (hard), by prefix, by tag,
        // and light (served again only after a revalidation).
        for p in ["/cache/p/1", "/cache/p/2", "/cache/t"] {
            get(&lab, &[&url(p)]);
        }
        let out = ctl_ok(&lab, &["purge", "--url", &url("/cache/p/1"), "--hard"]);
        assert!(out.contains('1'), "{out}");
        let (_, h, _) = get(&lab, &[&url("/cache/p/1")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
        let (_, h, _) = get(&lab, &[&url("/cache/p/2")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        ctl_ok(&lab, &["purge", "--prefix", &url("/cache/p/"), "--hard"]);
        let (_, h, _) = get(&lab, &[&url("/cache/p/2")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
        // Surrogate-Key: the path's segments ("cache t").
        ctl_ok(&lab, &["purge", "--tag", "t", "--hard"]);
        let (_, h, _) = get(&lab, &[&url("/cache/t")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
        let before = origin_count(&lab, "/cache/t");
        ctl_ok(&lab, &["purge", "--url", &url("/cache/t")]);
        let (s, h, _) = get(&lab, &[&url("/cache/t")]);
        assert_eq!(s, 200);
        // Revalidated with the origin (its 304 keeps the body).
        assert_eq!(field(&h, "x-cache").as_deref(), Some("revalidated"), "{h}");
        assert_eq!(origin_count(&lab, "/cache/t"), before + 1);
        // A malformed purge is refused, naming the problem.
        let (code, out, err) = lab.ctl(&["purge", "--url", "ftp://x/"]);
        assert_ne!(code, 0, "{out}{err}");

        // Counters and the access log.
        let stats = engine.stats_until(|s| s.get("stack_cache_hits").is_some_and(|&n| n >= 999));
        assert!(stats["stack_cache_hits"] >= 999, "{stats:?}");
        assert!(
            stats.get("stack_cache_misses").is_some_and(|&n| n >= 8),
            "{stats:?}"
        );
        // max-age passed once, the light purge once.
        assert_eq!(stats.get("stack_cache_revalidated"), Some(&2), "{stats:?}");
        assert_eq!(stats.get("cache_store_purged"), Some(&5), "{stats:?}");
        assert_eq!(stats.get("stack_cache_stale"), Some(&1), "{stats:?}");
        let log = lab.state_dir().join("access.log");
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"cache\":\"HIT\"") && text.contains("\"cache\":\"STALE\"") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(text.contains("\"cache\":\"MISS\""), "{text}");
        assert!(text.contains("\"cache\":\"STALE\""), "{text}");
    });
}

/// `[cache.disk]`: what one engine stored is served by the next after a
/// crash (SIGKILL) without asking the origin; a hard purge reaches the
/// files, so a restart does not bring a purged object back.
#[test]
fn cache_disk_tier_survives_a_crash_and_honours_purges() {
    lab_test("cache-disk", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("cache", ORIGIN);
        let path = lab.state_dir().join("cache-disk.toml");
        let disk = "\n[cache.disk]\ndir = \"cache-disk\"\nmax_bytes = 67108864\n";
        // `[cache.disk]` after the whole file: a sub-table of `[cache]` may
        // come anywhere after it.
        std::fs::write(&path, format!("{}{disk}", config())).unwrap();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        // Fresh across three engine starts, however slow the machine.
        origin_set(&lab, "cc=max-age%3D3600");
        let mut bodies = Vec::new();
        for p in ["/cache/d/1", "/cache/d/2"] {
            let (s, h, b) = get(&lab, &[&url(p)]);
            assert_eq!(s, 200, "{h}{b}");
            assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
            bodies.push(b);
        }
        let st = engine.stats_until(|s| s.get("cache_disk_written") == Some(&2));
        assert_eq!(st.get("cache_disk_written"), Some(&2), "{st:?}");
        let files = || {
            std::fs::read_dir(lab.state_dir().join("cache-disk"))
                .unwrap()
                .filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|e| e == "fgc")
                })
                .count()
        };
        assert_eq!(files(), 2);

        // A crash: the next engine finds both files.
        engine.kill9();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        let (s, h, b) = get(&lab, &[&url("/cache/d/1")]);
        assert_eq!((s, b.as_str()), (200, bodies[0].as_str()), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        // h2 reads the same disk copy.
        let (s, h, b) = get(&lab, &["--http2-prior-knowledge", &url("/cache/d/2")]);
        assert_eq!((s, b.as_str()), (200, bodies[1].as_str()), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        assert_eq!(origin_count(&lab, "/cache/d/1"), 1);
        assert_eq!(origin_count(&lab, "/cache/d/2"), 1);
        let st = engine.stats_until(|s| s.get("cache_disk_loaded") == Some(&2));
        assert_eq!(st.get("cache_disk_loaded"), Some(&2), "{st:?}");
        assert_eq!(st.get("cache_disk_files"), Some(&2), "{st:?}");

        // A hard purge deletes the file; after a clean stop and a start
        // the purged URL is a miss, the other still a hit.
        ctl_ok(&lab, &["purge", "--url", &url("/cache/d/1"), "--hard"]);
        let st = engine.stats_until(|s| s.get("cache_disk_purged") == Some(&1));
        assert_eq!(st.get("cache_disk_purged"), Some(&1), "{st:?}");
        engine.stop();
        assert_eq!(
            files(),
            1,
            "the purged file is deleted by the time the engine stops"
        );
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        let (_, h, _) = get(&lab, &[&url("/cache/d/1")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
        let (_, h, _) = get(&lab, &[&url("/cache/d/2")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        assert_eq!(origin_count(&lab, "/cache/d/1"), 2);
        assert_eq!(origin_count(&lab, "/cache/d/2"), 1);
    });
}

/// A purge made while the disk tier is not attached (here: its directory
/// is locked by another holder, so the tier cannot open) survives a crash
/// before the attach: the next engine does not serve the purged file.
#[test]
fn a_purge_before_the_disk_tier_attaches_survives_a_crash() {
    lab_test("cache-disk-pending", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("cache", ORIGIN);
        let path = lab.state_dir().join("cache-disk.toml");
        let disk = "\n[cache.disk]\ndir = \"cache-disk\"\nmax_bytes = 67108864\n";
        std::fs::write(&path, format!("{}{disk}", config())).unwrap();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        origin_set(&lab, "cc=max-age%3D3600");
        for p in ["/cache/q/1", "/cache/q/2"] {
            let (s, h, _) = get(&lab, &[&url(p)]);
            assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{s} {h}");
        }
        let st = engine.stats_until(|s| s.get("cache_disk_written") == Some(&2));
        assert_eq!(st.get("cache_disk_written"), Some(&2), "{st:?}");
        engine.stop();
        // Another holder of the directory: the next engine serves from
        // memory only, its tier never attaching.
        let lock = std::fs::File::open(lab.state_dir().join("cache-disk/lock")).unwrap();
        lock.lock().unwrap();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !engine.log().contains("disk tier did not open") {
            assert!(std::time::Instant::now() < deadline, "{}", engine.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        ctl_ok(&lab, &["purge", "--url", &url("/cache/q/1"), "--hard"]);
        engine.kill9();
        drop(lock);
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        let (_, h, _) = get(&lab, &[&url("/cache/q/1")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "purged: {h}");
        let (_, h, _) = get(&lab, &[&url("/cache/q/2")]);
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        assert_eq!(origin_count(&lab, "/cache/q/1"), 2);
        assert_eq!(origin_count(&lab, "/cache/q/2"), 1);
        assert!(
            !lab.state_dir().join("cache-disk/purges.pending").exists(),
            "applied and removed"
        );
        // The operator sees it: one purge applied from the file, none lost.
        let st = engine.stats_until(|s| s.contains_key("cache_disk_pending_applied"));
        assert_eq!(
            (
                st.get("cache_disk_pending_applied"),
                st.get("cache_disk_pending_unreadable")
            ),
            (Some(&1), Some(&0)),
            "{st:?}"
        );
    });
}

/// A reload that adds `[cache.disk]` to a running cache attaches the tier
/// (no restart): what is stored from then on is written to the directory.
/// Any other change of `[cache]` still needs a restart, and says so.
#[test]
fn a_reload_that_adds_the_disk_tier_attaches_it() {
    lab_test("cache-disk-reload", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("cache", ORIGIN);
        let path = lab.state_dir().join("cache-mem.toml");
        std::fs::write(&path, config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        origin_set(&lab, "cc=max-age%3D3600");
        let with_disk = lab.state_dir().join("cache-disk.toml");
        let disk = "\n[cache.disk]\ndir = \"cache-disk\"\nmax_bytes = 67108864\n";
        std::fs::write(&with_disk, format!("{}{disk}", config())).unwrap();
        let out = ctl_ok(&lab, &["apply", with_disk.to_str().unwrap()]);
        assert!(!out.contains("needs a restart"), "{out}");
        let st = engine.stats_until(|s| s.contains_key("cache_disk_files"));
        assert!(
            st.contains_key("cache_disk_files"),
            "the tier attached: {st:?}"
        );
        let (s, h, b) = get(&lab, &[&url("/cache/r/1")]);
        assert_eq!(s, 200, "{h}{b}");
        let st = engine.stats_until(|s| s.get("cache_disk_written") == Some(&1));
        assert_eq!(st.get("cache_disk_written"), Some(&1), "{st:?}");
        // A new store size is not a reload's to make.
        let bigger = lab.state_dir().join("cache-bigger.toml");
        let text = config().replacen("max_bytes = 67108864", "max_bytes = 134217728", 1);
        std::fs::write(&bigger, format!("{text}{disk}")).unwrap();
        let out = ctl_ok(&lab, &["apply", bigger.to_str().unwrap()]);
        assert!(out.contains("cache changed; needs a restart"), "{out}");
    });
}

/// `stale-while-revalidate` (RFC 5861): once stale, a request is answered
/// `stale` at once although the origin takes 2 s to answer, over HTTP/1.1
/// and h2; one conditional request revalidates in the background (its
/// 304 refreshes the object), after which the object is a `hit` again.
#[test]
fn stale_while_revalidate_answers_at_once_and_revalidates_in_the_background() {
    lab_test("cache-swr", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("cache", ORIGIN);
        let path = lab.state_dir().join("cache-swr.toml");
        std::fs::write(&path, config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        origin_set(&lab, "cc=max-age%3D1%2C%20stale-while-revalidate%3D60");
        let (s, h, body) = get(&lab, &[&url("/cache/swr")]);
        assert_eq!(s, 200, "{h}{body}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("miss"), "{h}");
        std::thread::sleep(Duration::from_millis(2500));
        // The origin is slow now, and keeps the object fresh once asked.
        origin_set(&lab, "delay=2000&cc=max-age%3D600");
        for h2 in [false, true] {
            let started = std::time::Instant::now();
            let mut args = vec![];
            if h2 {
                args.push("--http2-prior-knowledge");
            }
            let u = url("/cache/swr");
            args.push(&u);
            let (s, h, b) = get(&lab, &args);
            let took = started.elapsed();
            assert_eq!((s, b.as_str()), (200, body.as_str()), "{h}");
            assert_eq!(field(&h, "x-cache").as_deref(), Some("stale"), "{h}");
            assert!(
                took < Duration::from_millis(1500),
                "h2 {h2}: {took:?}: waited for the origin"
            );
        }
        // The background revalidation's 304 arrives after the delay.
        let stats = engine.stats_until(|s| s.get("stack_cache_background_refreshed") == Some(&1));
        assert_eq!(
            stats.get("stack_cache_background_refreshed"),
            Some(&1),
            "{stats:?}"
        );
        assert_eq!(
            stats.get("stack_cache_background_revalidations"),
            Some(&1),
            "{stats:?}"
        );
        origin_set(&lab, "delay=0");
        let (s, h, b) = get(&lab, &[&url("/cache/swr")]);
        assert_eq!((s, b.as_str()), (200, body.as_str()), "{h}");
        assert_eq!(field(&h, "x-cache").as_deref(), Some("hit"), "{h}");
        assert_eq!(
            field(&h, "cache-control").as_deref(),
            Some("max-age=600"),
            "{h}"
        );
        // The miss and one conditional request.
        assert_eq!(origin_count(&lab, "/cache/swr"), 2);
        let log = lab.state_dir().join("access.log");
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("\"cache\":\"STALE\"").count() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(text.matches("\"cache\":\"STALE\"").count(), 2, "{text}");
    });
}
