//! Fault injection on the lab's links (the impairment stage of `ferrogate
//! lab`: an AF_PACKET relay with loss, delay and jitter, reordering,
//! duplication and corruption): on the client side and on the origin side,
//! under keep-alive and new-connection load, over HTTP/1.1, TLS and h2,
//! every request must succeed with the body the origin served (sha256),
//! the relay must show the impairments happened, and the corrupted
//! segments that reached ferrogate must be counted as checksum drops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferrogate_testkit::Ca;
use ferrogate_tests::{Engine, Lab, VIP, keep_alive_load, lab_test};

/// Every impairment at once, at rates that keep a run short.
const IMPAIR: &str = "loss=2%,delay=3ms,jitter=2ms,reorder=2%,dup=1%,corrupt=1%";

/// Port 80 (HTTP/1.1 and h2c) and 443 (TLS, h2 by ALPN) through a pooled
/// upstream; port 8080 through an upstream that opens a connection per
/// request (new-connection load on the origin side).
fn write_config(lab: &Lab) -> PathBuf {
    let dir = lab.state_dir();
    let ca = Ca::new("fg impair test CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ca.leaf(Some("cert-a"), &["a.example"]).write(&dir, "a");
    let path = dir.join("impair.toml");
    std::fs::write(
        &path,
        r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[upstreams]]
name = "pooled"
endpoints = ["10.77.0.3:8080"]

[[upstreams]]
name = "fresh"
endpoints = ["10.77.0.3:8080"]
keepalive = 0

[[listeners]]
port = 80
http2 = true
[[listeners.routes]]
name = "health"
path_prefix = "/ferrogate/health"
respond = { status = 200, body = "ferrogate ok\n" }
[[listeners.routes]]
upstream = "pooled"

[[listeners]]
port = 443
http2 = true
[listeners.tls]
certificates = [{ cert = "a.crt", key = "a.key", names = ["a.example"] }]
[[listeners.routes]]
upstream = "pooled"

[[listeners]]
port = 8080
[[listeners.routes]]
upstream = "fresh"
"#,
    )
    .unwrap();
    path
}

/// The sha256 of the file the origin serves as `/files/<name>`.
fn origin_sha(lab: &Lab, name: &str) -> String {
    let f = lab.state_dir().join("www").join(name);
    let out = std::process::Command::new("sha256sum")
        .arg(&f)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Runs one `curl` in the client namespace fetching `urls` (on one kept
/// connection) into files, and returns each body's sha256.
fn fetch(lab: &Lab, dir: &Path, tag: &str, curl_opts: &str, urls: &[String]) -> Vec<String> {
    let mut cmd = format!("curl -sS --fail -m 60 {curl_opts}");
    let files: Vec<String> = (0..urls.len())
        .map(|i| format!("{}/{tag}-{i}.body", dir.display()))
        .collect();
    for (u, f) in urls.iter().zip(&files) {
        cmd.push_str(&format!(" -o {f} {u}"));
    }
    let (ok, out) = lab.client_sh(&format!("{cmd} && sha256sum {}", files.join(" ")));
    assert!(ok, "{tag}: {cmd}: {out}");
    let sums: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    assert_eq!(sums.len(), urls.len(), "{tag}: {out}");
    sums
}

/// HTTP/1.1 keep-alive and new connections, TLS (new handshakes and a
/// kept connection), h2c and h2 over TLS, all downloading the origin's
/// random 1 MiB file; small keep-alive requests; h2load streams.
fn load(lab: &Lab, engine: &Engine, new_conn_port: u16) {
    let want = origin_sha(lab, "1m");
    let dir = lab.state_dir();
    let d = dir.display();
    let n = 3;
    let urls =
        |base: &str| -> Vec<String> { (0..n).map(|i| format!("{base}/files/1m?r={i}")).collect() };
    let tls = format!("--cacert {d}/ca.pem --resolve a.example:443:{VIP}");
    let mut runs: Vec<(&str, Vec<String>)> = vec![];
    // One curl, several URLs: one connection kept alive.
    runs.push((
        "http1-keepalive",
        fetch(
            lab,
            &dir,
            "ka",
            "--http1.1",
            &urls(&format!("http://{VIP}")),
        ),
    ));
    // A curl per URL: a new connection each (to ferrogate, and with the
    // `fresh` upstream on port 8080 to the origin too).
    let mut fresh = vec![];
    for (i, u) in urls(&format!("http://{VIP}:{new_conn_port}"))
        .into_iter()
        .enumerate()
    {
        fresh.extend(fetch(lab, &dir, &format!("new{i}"), "--http1.1", &[u]));
    }
    runs.push(("http1-new-connections", fresh));
    runs.push((
        "tls-keepalive",
        fetch(
            lab,
            &dir,
            "tlska",
            &format!("--http1.1 {tls}"),
            &urls("https://a.example"),
        ),
    ));
    let mut hs = vec![];
    for (i, u) in urls("https://a.example").into_iter().enumerate() {
        hs.extend(fetch(
            lab,
            &dir,
            &format!("tlsnew{i}"),
            &format!("--http1.1 {tls}"),
            &[u],
        ));
    }
    runs.push(("tls-new-handshakes", hs));
    // h2c: a curl per URL. curl 7.88 (Debian 12) cannot reuse an h2c
    // prior-knowledge connection ("Error in the HTTP2 framing layer" on
    // the second URL, curl/curl#10634, fixed in 8.0); kept h2 connections
    // are covered by TLS below and by h2load.
    let mut h2c = vec![];
    for (i, u) in urls(&format!("http://{VIP}")).into_iter().enumerate() {
        h2c.extend(fetch(
            lab,
            &dir,
            &format!("h2c{i}"),
            "--http2-prior-knowledge",
            &[u],
        ));
    }
    runs.push(("h2c", h2c));
    runs.push((
        "h2-tls",
        fetch(
            lab,
            &dir,
            "h2tls",
            &format!("--http2 {tls}"),
            &urls("https://a.example"),
        ),
    ));
    for (what, sums) in &runs {
        for (i, s) in sums.iter().enumerate() {
            assert_eq!(
                s, &want,
                "{what} #{i}: body differs from what the origin served"
            );
        }
    }
    // Many small requests on kept connections.
    let (ok, errors) = keep_alive_load(lab, 4, 50);
    assert!(
        errors.is_empty(),
        "failed requests: {errors:?}\n{}",
        engine.log()
    );
    assert_eq!(ok, 200);
    // h2 streams on few connections, h2c and over TLS.
    for (what, cmd) in [
        (
            "h2c",
            format!("h2load -n 200 -c 2 -m 8 http://{VIP}/h2load"),
        ),
        (
            "h2 tls",
            format!("h2load -n 200 -c 2 -m 8 --connect-to={VIP}:443 https://a.example/h2load"),
        ),
    ] {
        let (ok, out) = lab.client_sh(&cmd);
        assert!(
            ok && out.contains("200 succeeded, 0 failed, 0 errored"),
            "{what}: {out}"
        );
    }
}

fn assert_impaired(stats: &HashMap<String, u64>, side: &str) {
    for dir in ["tx", "rx"] {
        for what in ["lost", "reordered", "duplicated", "corrupted", "frames_out"] {
            let k = format!("{dir}_{what}");
            assert!(
                stats.get(&k).copied().unwrap_or(0) > 0,
                "{side} relay: no {k}: {stats:?}"
            );
        }
    }
    for k in ["tx_oversize", "rx_oversize"] {
        // Offloads are off: the relay only sees MTU-sized frames.
        assert_eq!(stats.get(k), Some(&0), "{side} relay: {stats:?}");
    }
}

/// TCP segments with a bad checksum a namespace's kernel dropped.
fn kernel_csum_errors(lab: &Lab, role: &str) -> u64 {
    let out = lab
        .exec(role, &["nstat", "-az", "TcpInCsumErrors"])
        .unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with("TcpInCsumErrors"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn client_side_impairment_loses_no_request_and_corrupts_no_body() {
    lab_test("impair-client", || {
        let lab = Lab::up_impaired(1, &[&format!("client:{IMPAIR}")]);
        let cfg = write_config(&lab);
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let before = engine.stats();
        load(&lab, &engine, 80);
        let relay = lab.impair_stats_fresh("client");
        assert_impaired(&relay, "client");
        let after = engine.stats();
        let grew =
            |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        // What the relay corrupted towards the edge, ferrogate dropped and
        // counted (a flip in an IP header may count as another drop).
        assert!(grew("stack_rx_drop_checksum") > 0, "{after:?}\n{relay:?}");
        // What it corrupted towards the client, the client's kernel did.
        assert!(kernel_csum_errors(&lab, "client") > 0, "{relay:?}");
        assert!(engine.is_running());
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    });
}

#[test]
fn origin_side_impairment_set_at_run_time_loses_no_request() {
    lab_test("impair-origin", || {
        let lab = Lab::up(1);
        let cfg = write_config(&lab);
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        // Inserted into the running lab (the origin's port leaves the
        // bridge for a relay) while the engine serves.
        lab.impair("origin", IMPAIR, false);
        let before = engine.stats();
        load(&lab, &engine, 8080);
        let relay = lab.impair_stats_fresh("origin");
        assert_impaired(&relay, "origin");
        let after = engine.stats();
        let grew =
            |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        assert!(grew("stack_rx_drop_checksum") > 0, "{after:?}\n{relay:?}");
        assert!(kernel_csum_errors(&lab, "origin") > 0, "{relay:?}");
        // Cleared at run time: nothing is lost any more.
        lab.impair("origin", "", true);
        let lost = |s: &HashMap<String, u64>| s["tx_lost"] + s["rx_lost"];
        let was = lost(&lab.impair_stats_fresh("origin"));
        let (ok, errors) = keep_alive_load(&lab, 2, 50);
        assert!(errors.is_empty() && ok == 100, "{errors:?}");
        assert_eq!(lost(&lab.impair_stats_fresh("origin")), was);
        assert!(engine.is_running());
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    });
}

#[test]
fn a_bad_spec_is_refused_and_a_crashed_relay_is_replaced_and_cleaned_up() {
    lab_test("impair-crash", || {
        // Refused before anything is built, naming the bad key and value.
        for (spec, says) in [
            ("client:los=1%", "unknown impairment key \"los\""),
            ("client:loss=120%", "loss=\"120%\""),
            ("edge:loss=1%", "side \"edge\""),
        ] {
            let out = std::process::Command::new(ferrogate_tests::ferrogate_bin())
                .args(["lab", "up", "--prefix", "fgbadspec-", "--impair", spec])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(says), "{spec}: {err}");
        }
        assert!(
            !ferrogate_tests::netns_list()
                .iter()
                .any(|n| n.starts_with("fgbadspec-"))
        );
        let lab = Lab::up_impaired(1, &["both:loss=1%"]);
        let (ok, out) = lab.client_sh("curl -sS -m 10 --retry 3 http://10.77.0.3:8080/files/16k -o /dev/null -w '%{http_code}'");
        assert!(ok && out == "200", "{out}");
        // SIGKILL the client's relay: the client is cut off until `lab
        // impair` puts a new one in.
        let pidf = lab.state_dir().join("impair-client.pid");
        let pid: i32 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) on the relay of our own lab.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        ferrogate_tests::wait_gone(&[pid]);
        lab.impair("client", "loss=0", true);
        assert!(lab.impair_stats("client").contains_key("tx_frames_in"));
        let (ok, out) = lab.client_sh("curl -sS -m 10 --retry 3 http://10.77.0.3:8080/files/16k -o /dev/null -w '%{http_code}'");
        assert!(ok && out == "200", "{out}");
        // Kill the new one too: `lab down` (on drop) must still remove
        // every namespace, interface and process (Lab's drop asserts the
        // namespaces are gone).
        let pid: i32 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        ferrogate_tests::wait_gone(&[pid]);
        let origin_relay: i32 = std::fs::read_to_string(lab.state_dir().join("impair-origin.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(lab);
        ferrogate_tests::wait_gone(&[origin_relay]);
        assert!(!std::path::Path::new(&format!("/proc/{origin_relay}")).exists());
    });
}
