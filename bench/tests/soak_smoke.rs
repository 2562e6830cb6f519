//! The soak scenario (issue #18) for two minutes in `cargo test`: mixed
//! HTTP/1.1, HTTPS and h2c load, a denied-source flood, an apply every
//! 10 s and a flapping origin must fail no request, every apply must
//! succeed, the engine's RSS must not grow after the warm-up, and every
//! sampled series must have values. Then a short run with the pool
//! unprotected (no health checks, no retries) must count failures: the
//! soak can see them. Needs root; skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

/// RSS growth allowed after the warm-up, in %. The engine's RSS is ~37 MiB
/// in this scenario and moved by ≤ 0.5 % over a minute in our runs; 10 %
/// (~3.7 MiB in the ~95 s after the warm-up) is far above that noise, and
/// below what a leak of one 16 KiB socket-buffer pair per 4 s or ~40 bytes
/// per request (at ~900 req/s) adds.
const RSS_GROWTH_PCT: f64 = 10.0;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the soak with `args`; (success, the report's JSON). Asserts that
/// the lab is gone afterwards, whatever the outcome.
fn soak(tag: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let out = std::env::temp_dir().join(format!("ferrogate-soak-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let prefix = format!("fk{}{}-", tag, std::process::id() % 10_000);
    let st = Command::new(env!("CARGO_BIN_EXE_ferrogate-bench"))
        .arg("soak")
        .args(args)
        .args(["--prefix", &prefix, "--out"])
        .arg(&out)
        .status()
        .expect("running ferrogate-bench soak");
    let left: Vec<String> = ferrogate_testkit::netns_list()
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "the soak left namespaces behind: {left:?}");
    let json = report(&out);
    let _ = std::fs::remove_dir_all(&out);
    (st.success(), json)
}

fn report(dir: &Path) -> serde_json::Value {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("no report dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    let j = files
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap_or_else(|| panic!("no JSON report in {files:?}"));
    for ext in ["md", "svg"] {
        assert!(
            files
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == ext)),
            "no .{ext} report in {files:?}"
        );
    }
    serde_json::from_str(&std::fs::read_to_string(j).unwrap()).unwrap()
}

fn metric(j: &serde_json::Value, k: &str) -> f64 {
    j["samples"][0]["metrics"][k]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric {k} in the report"))
}

/// One test, two runs one after the other (two labs at once would share
/// the 2 cores and disturb each other).
#[test]
fn soak_smoke() {
    if !is_root() {
        eprintln!("soak_smoke: skipped: needs root (network namespaces, XDP)");
        return;
    }
    unprotected_pool_fails();
    two_minutes();
}

fn two_minutes() {
    let (ok, j) = soak("s", &["--soak-seconds", "120"]);
    let m = |k: &str| metric(&j, k);
    let error = j["samples"][0]["error"].clone();
    for kind in ["h1_keepalive", "h1_close", "https", "h2"] {
        assert!(m(&format!("{kind}_ok")) > 0.0, "{kind}: no request served");
        for f in ["non2xx", "conn_errors", "timeouts", "tool_failures"] {
            assert_eq!(m(&format!("{kind}_{f}")), 0.0, "{kind} {f}; {error}");
        }
    }
    assert_eq!(m("requests_failed"), 0.0, "{error}");
    assert_eq!(m("applies_failed"), 0.0, "{error}");
    // One apply every 10 s of 120 s (the first at 10 s, none at the end).
    assert!(m("applies_ok") >= 10.0, "applies: {}", m("applies_ok"));
    assert!(m("flaps") >= 5.0, "the origin flapped {} times", m("flaps"));
    assert_eq!(m("engine_restarts"), 0.0);
    assert!(m("deny_dropped") > 0.0, "the flood was not dropped");
    let (first, max, drift) = (m("rss_kib_first"), m("rss_kib_max"), m("rss_kib_drift_pct"));
    assert!(
        max <= first * (1.0 + RSS_GROWTH_PCT / 100.0) && drift <= RSS_GROWTH_PCT,
        "RSS grew after the warm-up: {first} KiB → max {max} KiB (drift {drift:+.1} %)"
    );
    let rows = j["timeseries"].as_array().expect("timeseries");
    assert!(rows.len() >= 20, "{} samples in 120 s", rows.len());
    for key in [
        "rss_kib",
        "sockets_open",
        "active_connections",
        "pool_idle",
        "upstream_open",
    ] {
        let have = rows.iter().filter(|r| r[key].is_number()).count();
        assert_eq!(have, rows.len(), "{key} missing from some samples");
        assert!(
            rows.iter().any(|r| r[key].as_f64().unwrap() > 0.0),
            "{key} is 0 throughout"
        );
    }
    assert!(ok, "ferrogate-bench soak failed: {error}");
}

/// The same harness with the pool unprotected: requests the down origin
/// gets fail, and the soak must count them and fail.
fn unprotected_pool_fails() {
    let (ok, j) = soak(
        "u",
        &[
            "--soak-seconds",
            "20",
            "--flap-every-secs",
            "10",
            "--unprotected",
        ],
    );
    assert!(metric(&j, "flaps") >= 1.0);
    assert!(
        metric(&j, "requests_failed") > 0.0,
        "no failed request counted with an origin down and no health checks"
    );
    assert!(!ok, "the soak passed with failed requests");
}
