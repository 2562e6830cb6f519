//! Fault injection in the lab (#18): origins that misbehave in every way an
//! HTTP/1.1 origin can, the engine SIGKILLed under load, a full disk under
//! the access log and the state directory, and abuse of the TCP admin API.
//! Each case checks what the client gets, that the failure is counted, and
//! that serving goes on.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrogate_tests::{
    EDGE_HOST_IP, Engine, HttpConn, Lab, StopOnDrop, VIP, enter_netns, lab_test, raw_exchange,
    respond_config,
};

/// A config whose routes all go to the fault origin on 10.77.0.3:9002, with
/// short timeouts; ejection and the breaker are out of reach (the faults
/// are one endpoint's, and the next normal request must reach it).
fn origin_config(lab: &Lab) -> PathBuf {
    let path = lab.state_dir().join("faults.toml");
    let text = r#"vips = ["10.77.0.10/24", "fd77::10/64"]
[engine]
interface = "eth0"
queues = 1

[timeouts]
client_header_ms = 2000
upstream_connect_ms = 1000
upstream_response_ms = 1500

[[upstreams]]
name = "f"
endpoints = ["10.77.0.3:9002"]
passive = { consecutive_failures = 1000 }
breaker = { min_requests = 1000 }

[[listeners]]
port = 80
[[listeners.routes]]
upstream = "f"
"#;
    std::fs::write(&path, text).unwrap();
    path
}

/// A response as the client saw it: the status (0 for none), the head's
/// Content-Length, the body bytes that came, whether the peer closed.
#[derive(Debug)]
struct Seen {
    status: u16,
    length: Option<usize>,
    body: Vec<u8>,
    closed: bool,
    took: Duration,
}

fn seen(raw: &[u8], closed: bool, took: Duration) -> Seen {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Seen {
            status: 0,
            length: None,
            body: raw.to_vec(),
            closed,
            took,
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Seen {
        status,
        length,
        body: raw[end + 4..].to_vec(),
        closed,
        took,
    }
}

/// One request on a fresh connection from the client namespace (the
/// caller is in it); reads until the peer closes or 8 s pass.
fn fault_request(path: &str) -> Seen {
    let t0 = Instant::now();
    // `Connection: close`: a complete response ends with a FIN too, so the
    // read never waits out its budget.
    let req = format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    let (raw, closed) =
        raw_exchange(&format!("{VIP}:80"), req.as_bytes(), Duration::from_secs(8)).unwrap();
    seen(&raw, closed, t0.elapsed())
}

/// Whether the client was told the truth about a failure after the head
/// was forwarded: the connection ends and the body is short of its length,
/// or (the reset overtook the head in the send buffer) it ends with no
/// response at all. Never a complete-looking response, never a hang.
fn cut_short(s: &Seen) -> bool {
    let short = s.status == 200 && s.length.is_some_and(|n| s.body.len() < n);
    let nothing = s.status == 0 && s.body.is_empty();
    s.closed && (short || nothing)
}

/// Counters from `ctl stats` (the engine's, summed over workers).
fn ctl_stats(lab: &Lab) -> HashMap<String, u64> {
    let (code, out, err) = lab.ctl(&["stats"]);
    assert_eq!(code, 0, "{out}{err}");
    ferrogate_tests::parse_stats(&out)
}

#[test]
fn misbehaving_origins_get_the_right_answer_are_counted_and_the_worker_goes_on() {
    lab_test("faults_origin", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("f", "10.77.0.3:9002");
        let cfg = origin_config(&lab);
        let mut engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let errors = |e: &Engine| e.stats()["stack_upstream_errors"];
        // (path, what the client must see)
        type Check = fn(&Seen) -> bool;
        let cases: [(&str, &str, Check); 8] = [
            ("/fault/garbage", "502", |s| s.status == 502),
            ("/fault/huge-head", "502", |s| s.status == 502),
            ("/slow/6000", "504 (stall before the head)", |s| {
                s.status == 504
            }),
            ("/fault/reset-mid-body", "cut short", cut_short),
            ("/fault/half-close", "cut short", cut_short),
            ("/fault/short-body", "cut short", cut_short),
            ("/fault/stall-mid-body", "cut short", cut_short),
            ("/fault/trickle", "the whole trickled body", |s| {
                s.status == 200 && s.body == b"trickled-20-bytes-ok"
            }),
        ];
        let mut report = Vec::new();
        for (path, want, check) in cases {
            let before = errors(&engine);
            let s = lab.in_client(|| fault_request(path));
            assert!(
                check(&s),
                "{path}: want {want}, got status {} length {:?} body {} bytes closed {} after {:?}",
                s.status,
                s.length,
                s.body.len(),
                s.closed,
                s.took
            );
            let counted = if path.ends_with("trickle") {
                // Success: nothing to count.
                0
            } else {
                let after = engine.stats_until(|st| st["stack_upstream_errors"] > before)["stack_upstream_errors"];
                assert!(after > before, "{path}: not counted in upstream_errors");
                after - before
            };
            // The worker serves the next normal request at once.
            let next = lab.curl(&format!("http://{VIP}/next")).unwrap_or_else(|e| {
                panic!(
                    "{path}: the next normal request failed: {e}\n{}",
                    engine.log()
                )
            });
            assert!(next.contains("path=/next"), "{path}: {next}");
            report.push(format!(
                "{path}: status {} body {}/{:?} closed {} in {:.2} s, upstream_errors +{counted}",
                s.status,
                s.body.len(),
                s.length,
                s.closed,
                s.took.as_secs_f64()
            ));
        }
        // More bytes than the Content-Length: the extra ones (a whole
        // response) must not become the next response on this client
        // connection, nor on any other.
        let before = engine.stats()["stack_upstream_errors"];
        let (first, second, third) = lab.in_client(|| {
            let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
            let a = c.get("lab", "/fault/long-body").unwrap();
            let b = c.get("lab", "/after-long").unwrap();
            let mut c2 = HttpConn::connect(&format!("{VIP}:80")).unwrap();
            let d = c2.get("lab", "/other").unwrap();
            (a, b, d)
        });
        assert_eq!(first, (200, "short".to_string()));
        assert!(
            second.0 == 200 && second.1.contains("path=/after-long"),
            "{second:?}"
        );
        assert!(third.1.contains("path=/other"), "{third:?}");
        let after =
            engine.stats_until(|st| st["stack_upstream_errors"] > before)["stack_upstream_errors"];
        assert!(after > before, "the out-of-step origin was not counted");
        report.push("/fault/long-body: 200 \"short\", next request on the connection and on another one intact".into());
        assert!(engine.is_running(), "{}", engine.log());
        eprintln!("misbehaving origins:\n  {}", report.join("\n  "));
    });
}

/// A tmpfs mounted for the test; unmounted on drop (also on a panic), before
/// the lab's state directory it lives in is removed.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = [0u8; 4096];
        for _ in 0..10_000 {
            if f.write_all(&block).and_then(|_| f.flush()).is_err() {
                return;
            }
        }
        panic!("{} never filled up", self.0.display());
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process of ours still holds a file): detach it now,
            // the kernel frees it when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

use ferrogate_tests::{ctl_ok, status_field as field};

/// Polls `ctl stats` until `done` holds (10 s at most); returns the last.
fn stats_until(lab: &Lab, done: impl Fn(&HashMap<String, u64>) -> bool) -> HashMap<String, u64> {
    let t0 = Instant::now();
    let mut s = ctl_stats(lab);
    while !done(&s) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        s = ctl_stats(lab);
    }
    s
}

fn write_config(lab: &Lab, name: &str, body: &str, extra: &str) -> PathBuf {
    let path = lab.state_dir().join(name);
    std::fs::write(&path, respond_config(body, extra)).unwrap();
    path
}

/// A request outcome under the restart: when, and whether it was right.
#[derive(Default)]
struct Tally {
    ok: u64,
    wrong: Vec<String>,
    /// Seconds since the kill of each failed request.
    failed_at: Vec<f64>,
    ok_after_last_failure: u64,
}

impl Tally {
    fn ok(&mut self) {
        self.ok += 1;
        self.ok_after_last_failure += 1;
    }
    fn failed(&mut self, kill: &Mutex<Option<Instant>>) {
        let at = kill
            .lock()
            .unwrap()
            .map(|k| k.elapsed().as_secs_f64())
            .unwrap_or(-1.0);
        self.failed_at.push(at);
        self.ok_after_last_failure = 0;
    }
}

use std::sync::Mutex;

/// One GET on `conn` (reconnecting first when it is None): Ok(body) or the
/// error. A failed connection is dropped.
fn get_on(conn: &mut Option<HttpConn>, addr: &str, path: &str) -> Result<(u16, String), String> {
    if conn.is_none() {
        *conn = Some(HttpConn::connect(addr).map_err(|e| e.to_string())?);
    }
    let r = conn.as_mut().unwrap().get("lab", path);
    r.map_err(|e| {
        *conn = None;
        e.to_string()
    })
}

/// Whether `last_good` holds snapshot `version` within 10 s.
fn persisted_within_10_s(last_good: &Path, version: &str) -> bool {
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(last_good).is_ok_and(|t| t.contains(version)) {
            return true;
        }
        if t0.elapsed() >= Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn full_disk_then_sigkilled_engine_the_data_path_serves_errors_are_counted_and_logged_once() {
    lab_test("faults_process", || {
        let lab = Lab::up(1);
        let logs = Tmpfs::mount(&lab.state_dir().join("logs"), "256k");
        let state = Tmpfs::mount(&lab.engine_state_dir(), "256k");
        let access = logs.0.join("access.log");
        let extra = format!("[access_log]\npath = \"{}\"\n", access.display());
        let a = write_config(&lab, "a.toml", "a", &extra);
        let b = write_config(&lab, "b.toml", "b", &extra);
        let c = write_config(&lab, "c.toml", "c", &extra);
        let engine = lab.start_engine_with(&a, "af_xdp", 1);
        let started = Instant::now();
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "a");

        // --- Disk full under the access log and the state directory.
        logs.fill();
        state.fill();
        let ns = lab.ns("client");
        let stop = AtomicBool::new(false);
        let mut unpersisted = String::new();
        let served: u64 = std::thread::scope(|s| {
            let _guard = StopOnDrop(&stop);
            // Any failed request panics its thread (and the test).
            let load = ferrogate_tests::load_until_stopped(s, &ns, 4, &stop, &["a", "b", "c"]);
            for f in [&b, &c, &b] {
                let out = ctl_ok(&lab, &["apply", f.to_str().unwrap()]);
                assert!(out.contains("applied version"), "{out}");
                unpersisted = out
                    .lines()
                    .next()
                    .unwrap_or("")
                    .replace("applied version ", "");
                std::thread::sleep(Duration::from_millis(500));
            }
            stop.store(true, Ordering::Relaxed);
            load.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let full = stats_until(&lab, |s| {
            s.get("access_log_write_errors").copied().unwrap_or(0) > 0
                && s.get("snapshot_persist_errors").copied().unwrap_or(0) > 0
        });
        assert!(full["access_log_write_errors"] > 0, "{full:?}");
        assert!(full["snapshot_persist_errors"] > 0, "{full:?}");
        let log = engine.log();
        let count = |needle: &str| log.matches(needle).count();
        let access_lines = count("the access log; counting lost lines");
        let persist_lines = count("could not persist the last-known-good snapshot");
        let hash_lines = count("cannot record the applied file hash");
        assert_eq!(access_lines, 1, "access-log errors logged once:\n{log}");
        assert_eq!(persist_lines, 1, "persist errors logged once:\n{log}");
        assert!(hash_lines <= 1, "file-hash errors logged once:\n{log}");
        eprintln!(
            "disk full: {served} requests served, none failed; access_log_write_errors {}, snapshot_persist_errors {} (3 applies); logged {access_lines}/{persist_lines}/{hash_lines} times",
            full["access_log_write_errors"], full["snapshot_persist_errors"]
        );

        // --- Space comes back: both resume; the snapshot that could not
        // be written is retried without another apply.
        logs.free();
        state.free();
        let last_good = state.0.join("last-good.toml");
        assert!(
            persisted_within_10_s(&last_good, &unpersisted),
            "{unpersisted} (applied while the disk was full) not persisted once space came back"
        );
        let written = full["access_log_written"];
        for _ in 0..5 {
            assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "b");
        }
        let back = stats_until(&lab, |s| s["access_log_written"] >= written + 5);
        assert!(back["access_log_written"] >= written + 5, "{back:?}");
        let text = std::fs::read_to_string(&access).unwrap();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a broken access-log line ({e}): {l:?}"));
            assert!(v["status"].is_u64(), "{l}");
        }
        let out = ctl_ok(&lab, &["apply", c.to_str().unwrap()]);
        let applied = out
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("applied version "))
            .unwrap()
            .to_string();
        assert!(
            persisted_within_10_s(&last_good, &applied),
            "{applied} not persisted after the space came back"
        );
        let log = engine.log();
        assert!(log.contains("the access log is written again"), "{log}");
        assert!(log.contains("is persisted again"), "{log}");

        // --- SIGKILL the engine (not the supervisor) under load. It runs
        // `c` (applied), the file says `a`: the restart must serve `c`.
        // The supervisor does not restart an engine that dies within 10 s
        // of its first start (a config error): wait that out.
        let grace = Duration::from_secs(11);
        std::thread::sleep(grace.saturating_sub(started.elapsed()));
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "c");
        let victim = engine.pid();
        let kill_at: Mutex<Option<Instant>> = Mutex::new(None);
        let restarted_at: Mutex<Option<Instant>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let host_requests = AtomicU64::new(0);
        // Successes so far of each client: the load goes on until both
        // have been served by the restarted engine.
        let (keep_ok, fresh_ok) = (AtomicU64::new(0), AtomicU64::new(0));
        let (keep, fresh, host_failures) = std::thread::scope(|s| {
            let _guard = StopOnDrop(&stop);
            let (stop, kill_at, ns) = (&stop, &kill_at, &ns);
            let (keep_ok, fresh_ok) = (&keep_ok, &fresh_ok);
            let keep = s.spawn(move || {
                enter_netns(ns).unwrap();
                let mut t = Tally::default();
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    match get_on(&mut conn, &format!("{VIP}:80"), "/v") {
                        Ok((200, b)) if b == "c" => {
                            t.ok();
                            keep_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => t.wrong.push(format!("{r:?}")),
                        Err(_) => {
                            t.failed(kill_at);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                t
            });
            let fresh = s.spawn(move || {
                enter_netns(ns).unwrap();
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = None;
                    match get_on(&mut conn, &format!("{VIP}:80"), "/v") {
                        Ok((200, b)) if b == "c" => {
                            t.ok();
                            fresh_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => t.wrong.push(format!("{r:?}")),
                        Err(_) => {
                            t.failed(kill_at);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                t
            });
            let host_requests = &host_requests;
            let host = s.spawn(move || {
                enter_netns(ns).unwrap();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = None;
                    match get_on(&mut conn, &format!("{EDGE_HOST_IP}:80"), "/host") {
                        Ok((200, b)) if b.trim() == "edge host kernel" => {}
                        r => failures.push(format!("{r:?}")),
                    }
                    host_requests.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                failures
            });
            std::thread::sleep(Duration::from_secs(1));
            *kill_at.lock().unwrap() = Some(Instant::now());
            // SAFETY: kill(2) on the engine process our supervisor started.
            assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
            // The supervisor restarts it; wait for the new one to serve.
            let t0 = Instant::now();
            while engine.log().matches("ferrogate engine serving").count() < 2
                && t0.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            *restarted_at.lock().unwrap() = Some(Instant::now());
            // Load goes on after the restart until both clients were
            // served again (a client whose SYN met the dead engine waits
            // out its retransmission first; bounded), then a little more.
            let (k0, f0) = (
                keep_ok.load(Ordering::Relaxed),
                fresh_ok.load(Ordering::Relaxed),
            );
            let t0 = Instant::now();
            while (keep_ok.load(Ordering::Relaxed) < k0 + 3
                || fresh_ok.load(Ordering::Relaxed) < f0 + 3)
                && t0.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            (
                keep.join().unwrap(),
                fresh.join().unwrap(),
                host.join().unwrap(),
            )
        });
        let log = engine.log();
        assert!(
            log.contains("engine died; restarting it from its last-known-good snapshot"),
            "the restart is not reported:\n{log}"
        );
        assert_eq!(
            log.matches("ferrogate engine serving").count(),
            2,
            "the engine was not restarted:\n{log}"
        );
        assert!(
            log.contains("starting from the persisted last-known-good snapshot"),
            "{log}"
        );
        assert_ne!(engine.pid(), victim);
        assert!(
            host_failures.is_empty(),
            "host traffic failed while the engine restarted ({} requests): {host_failures:?}",
            host_requests.load(Ordering::Relaxed)
        );
        for (name, t) in [("keep-alive", &keep), ("new-connection", &fresh)] {
            assert!(t.wrong.is_empty(), "{name}: wrong answers {:?}", t.wrong);
            assert!(
                t.ok_after_last_failure > 0,
                "{name}: no request succeeded after the restart"
            );
            assert!(
                t.failed_at.iter().all(|&at| at >= 0.0),
                "{name}: failures before the kill: {:?}",
                t.failed_at
            );
        }
        let restart_s = restarted_at
            .lock()
            .unwrap()
            .zip(*kill_at.lock().unwrap())
            .map(|(r, k)| (r - k).as_secs_f64())
            .unwrap_or(-1.0);
        let window = |t: &Tally| {
            t.failed_at
                .iter()
                .copied()
                .fold(None, |w: Option<(f64, f64)>, x| {
                    Some(w.map_or((x, x), |(a, b)| (a.min(x), b.max(x))))
                })
        };
        eprintln!(
            "engine SIGKILL: new engine serving {restart_s:.2} s after the kill; keep-alive {} ok / {} failed (window {:?} s after the kill), new-connection {} ok / {} failed (window {:?}), host {} requests, 0 failed",
            keep.ok,
            keep.failed_at.len(),
            window(&keep),
            fresh.ok,
            fresh.failed_at.len(),
            window(&fresh),
            host_requests.load(Ordering::Relaxed)
        );
        let status = ctl_ok(&lab, &["status"]);
        assert_eq!(field(&status, "version"), applied, "{status}");
        assert_eq!(
            field(&status, "started_from"),
            "last-known-good",
            "{status}"
        );
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "c");
        drop(engine);
        drop(state);
        drop(logs);
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One admin request on a fresh TCP connection: (status, body). Reads
/// until the daemon closes (it answers one request per connection).
fn admin(addr: &str, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[test]
fn admin_api_abuse_is_bounded_refused_and_counted() {
    lab_test("faults_admin", || {
        let lab = Lab::up(1);
        let cfg = write_config(&lab, "adm.toml", "adm", "");
        let token = "abuse-test-token-0123456789abcdef";
        let token_file = lab.state_dir().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let engine = lab.start_engine_args(
            Some(&cfg),
            "af_xdp",
            1,
            true,
            &[
                "--admin-tcp",
                &addr,
                "--admin-token-file",
                token_file.to_str().unwrap(),
            ],
        );
        let status_req =
            format!("GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        let (code, body) = admin(&addr, &status_req);
        assert_eq!(code, 200, "{body}");

        // An oversized body: refused from its Content-Length, at once.
        let t0 = Instant::now();
        let (code, body) = admin(
            &addr,
            &format!(
                "POST /apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 17000000\r\n\r\n"
            ),
        );
        let oversized_s = t0.elapsed().as_secs_f64();
        assert_eq!(code, 413, "{body}");

        // A client sending its head a byte a second is cut (the whole
        // request has a deadline), while other clients are served.
        let stop = AtomicBool::new(false);
        let (cut_after, served_meanwhile) = std::thread::scope(|s| {
            let _guard = StopOnDrop(&stop);
            let slow = s.spawn(|| {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                let t0 = Instant::now();
                for b in head {
                    if c.write_all(&[*b]).is_err() {
                        return (Some(t0.elapsed()), String::new());
                    }
                    let mut buf = [0u8; 256];
                    match c.read(&mut buf) {
                        Ok(n) => {
                            return (
                                Some(t0.elapsed()),
                                String::from_utf8_lossy(&buf[..n]).into_owned(),
                            );
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) => return (Some(t0.elapsed()), e.to_string()),
                    }
                }
                (None, "sent the whole head a byte a second".into())
            });
            let mut served = 0;
            std::thread::sleep(Duration::from_secs(1));
            while !slow.is_finished() && served < 100 {
                let (code, body) = admin(&addr, &status_req);
                assert_eq!(code, 200, "served while a client trickles: {body}");
                served += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            let (cut, answer) = slow.join().unwrap();
            let cut = cut.unwrap_or_else(|| panic!("the slow client was never cut: {answer}"));
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{answer}"
            );
            (cut, served)
        });

        // More idle connections than the daemon serves at once: a real
        // client waits (boundedly) and is served; the data path does not
        // notice; every idle one is closed by the daemon.
        let idle: Vec<TcpStream> = (0..24)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "adm");
        let t0 = Instant::now();
        let (code, body) = admin(&addr, &status_req);
        let waited = t0.elapsed().as_secs_f64();
        assert_eq!(code, 200, "behind idle connections: {body}");
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "adm");
        for mut c in idle {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = Vec::new();
            let r = c.read_to_end(&mut buf);
            assert!(
                r.is_ok() || buf.is_empty(),
                "an idle connection was not closed: {r:?}"
            );
        }

        // Wrong or missing tokens at a high rate: all 401, counted, and
        // the log does not get a line each.
        let before: u64 = field(&admin(&addr, &status_req).1, "admin_auth_failures")
            .parse()
            .unwrap();
        let t0 = Instant::now();
        for i in 0..2000 {
            let req = if i % 2 == 0 {
                "GET /status HTTP/1.1\r\nHost: x\r\n\r\n".to_string()
            } else {
                format!(
                    "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-{i}\r\n\r\n"
                )
            };
            let (code, body) = admin(&addr, &req);
            assert_eq!(code, 401, "request {i}: {body}");
        }
        let flood_s = t0.elapsed().as_secs_f64();
        let (code, body) = admin(&addr, &status_req);
        assert_eq!(code, 200, "the right token right after: {body}");
        let after: u64 = field(&body, "admin_auth_failures").parse().unwrap();
        assert_eq!(after - before, 2000, "{body}");
        let log = engine.log();
        let lines = log.matches("refused for their bearer token").count();
        assert!(
            (1..=1 + (flood_s / 10.0).ceil() as usize).contains(&lines),
            "{lines} log lines for 2000 refused requests in {flood_s:.1} s"
        );
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "adm");
        eprintln!(
            "admin abuse: 413 for a 17 MB Content-Length in {oversized_s:.3} s; a 1 byte/s client cut after {:.1} s while {served_meanwhile} other requests were served; behind 24 idle connections a request waited {waited:.1} s; 2000 bad tokens in {flood_s:.1} s: all 401, admin_auth_failures +{}, {lines} log line(s)",
            cut_after.as_secs_f64(),
            after - before
        );
    });
}
