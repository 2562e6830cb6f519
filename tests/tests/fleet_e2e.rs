//! Fleet mode against real etcd (Debian's etcd-server, started by each test
//! on free loopback ports): `ferrogate ctl publish` signs and writes a
//! bundle, `ferrogate control --etcd …` verifies and applies it to an
//! engine in the lab; bad bundles are refused while the engine keeps its
//! version; racing publishers; etcd killed and back; a compaction while a
//! daemon was cut off; a 3-member cluster losing one member.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrogate_tests::etcd::{Etcd, temp_dir};
use ferrogate_tests::{Engine, Lab, VIP, ferrogate_bin, lab_test, respond_config, status_field};

const CLUSTER: &str = "edge";

fn ferrogate(args: &[&str]) -> Output {
    Command::new(ferrogate_bin())
        .args(args)
        .output()
        .expect("spawn ferrogate")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A publisher's workspace: keys and the configuration to publish.
struct Publisher {
    dir: PathBuf,
}

impl Publisher {
    fn new() -> Publisher {
        let dir = temp_dir("fleet-pub");
        let p = Publisher { dir };
        p.keygen("ops.key");
        p
    }

    fn keygen(&self, name: &str) -> PathBuf {
        let k = self.dir.join(name);
        let o = ferrogate(&["ctl", "keygen", k.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        k
    }

    /// Writes a config whose `/v` answers `body`; it names a prefix list
    /// (a file the bundle must carry) in a subdirectory.
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(d.join("lists")).unwrap();
        std::fs::write(d.join("lists/deny.txt"), "# test nets\n192.0.2.0/24\n").unwrap();
        let extra = "\n[[filter.cidr]]\nid = \"testnet\"\naction = \"deny\"\ncidr_files = [\"lists/deny.txt\"]\n";
        let cfg = d.join("edge.toml");
        std::fs::write(&cfg, respond_config(body, extra)).unwrap();
        cfg
    }

    fn publish_with(&self, etcd: &str, cfg: &Path, key: &str, extra: &[&str]) -> Output {
        let key = self.dir.join(key);
        let mut args = vec![
            "ctl",
            "publish",
            cfg.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--etcd",
            etcd,
            "--cluster",
            CLUSTER,
        ];
        args.extend_from_slice(extra);
        ferrogate(&args)
    }

    /// Publishes a config answering `body`, signed with ops.key; returns
    /// the revision it was written at.
    fn publish(&self, etcd: &str, body: &str) -> i64 {
        let cfg = self.write(body, body);
        let o = self.publish_with(etcd, &cfg, "ops.key", &["--version", body]);
        assert!(o.status.success(), "{}", text(&o));
        published_revision(&o)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn published_revision(o: &Output) -> i64 {
    let out = String::from_utf8_lossy(&o.stdout);
    out.split(" at revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

/// `ferrogate control` in fleet mode, pushing to the lab's engine; killed
/// on drop.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    /// The directory is the daemon's own (removed on drop).
    owns_dir: bool,
}

/// Removes a directory on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Daemon {
    fn start(lab: &Lab, publisher: &Publisher, etcd: &str, host: &str) -> Daemon {
        let mut d = Daemon::start_in(lab, publisher, etcd, host, temp_dir("fleet-daemon"));
        d.owns_dir = true;
        d
    }

    /// A daemon whose files (state dir included) are in `dir`.
    fn start_in(lab: &Lab, publisher: &Publisher, etcd: &str, host: &str, dir: PathBuf) -> Daemon {
        std::fs::copy(publisher.dir.join("ops.key.pub"), dir.join("ops.pub")).unwrap();
        std::fs::write(
            dir.join("bootstrap.toml"),
            format!(
                "cluster = \"{CLUSTER}\"\nhost = \"{host}\"\ntrusted_keys = [\"ops.pub\"]\nstatus_ttl_s = 3\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("control.log")).unwrap();
        let child = Command::new(ferrogate_bin())
            .args(["control", "--etcd", etcd, "--bootstrap"])
            .arg(dir.join("bootstrap.toml"))
            .arg("--engine-socket")
            .arg(lab.admin_socket())
            .arg("--socket")
            .arg(dir.join("control.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--watch-ms", "100"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            dir,
            owns_dir: false,
        };
        d.wait_status("the daemon's API", |_| true);
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    /// A clean stop (SIGTERM), waited for.
    fn terminate(&mut self) {
        let mut c = self.child.take().expect("running");
        let t = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(t.success());
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                panic!("the daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctl status` through the daemon (engine lines after its own).
    fn status(&self) -> String {
        let o = ferrogate(&[
            "ctl",
            "status",
            "--socket",
            self.dir.join("control.sock").to_str().unwrap(),
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn wait_status(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < Duration::from_secs(20) {
            let s = self.status();
            if s.contains("fleet_cluster ") && pred(&s) {
                return s;
            }
            last = s;
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon status never showed {what}; last:\n{last}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- control daemon log ---\n{}", self.log());
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_body(lab: &Lab, want: &str) -> Duration {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        match lab.curl(&format!("http://{VIP}/v")) {
            Ok(b) if b == want => return t0.elapsed(),
            Ok(b) => last = b,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("/v never answered {want:?}; last {last:?}");
}

/// The lab and its engine, started from a local config answering "zero"
/// (no control daemon: the fleet daemon is started by the test).
fn lab_and_engine() -> (Lab, Engine) {
    let lab = Lab::up(1);
    let zero = lab.state_dir().join("zero.toml");
    std::fs::write(&zero, respond_config("zero", "")).unwrap();
    let engine = lab.start_engine_args(Some(&zero), "af_xdp", 1, true, &["--no-control"]);
    (lab, engine)
}

/// Polls `ctl fleet status` until `pred(exit code, output)` (20 s at most).
fn wait_fleet(eps: &str, what: &str, pred: impl Fn(Option<i32>, &str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let o = ferrogate(&[
            "ctl",
            "fleet",
            "status",
            "--etcd",
            eps,
            "--cluster",
            CLUSTER,
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if pred(o.status.code(), &out) {
            return out;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "fleet status never showed {what}: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field(s: &str, k: &str) -> String {
    status_field(s, k)
}

#[test]
fn published_bundles_apply_and_bad_ones_are_refused_while_the_engine_keeps_serving() {
    lab_test("fleet_publish", || {
        let etcd = Etcd::start(1);
        let eps = etcd.endpoints();
        let publisher = Publisher::new();
        let (lab, _engine) = lab_and_engine();
        let daemon = Daemon::start(&lab, &publisher, &eps, "h1");
        daemon.wait_status("etcd connected", |s| s.contains("fleet_etcd_connected yes"));

        // A signed bundle: applied, with the file it names unpacked beside it.
        let rev = publisher.publish(&eps, "one");
        let took = wait_body(&lab, "one");
        let signed_one = etcd.get(&format!("/ferrogate/{CLUSTER}/bundle"));
        eprintln!(
            "publish -> engine serving: {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        let s = daemon.wait_status("in sync", |s| s.contains("fleet_in_sync yes"));
        assert_eq!(field(&s, "fleet_revision"), rev.to_string(), "{s}");
        assert_eq!(field(&s, "fleet_version"), "one", "{s}");
        let toml = PathBuf::from(field(&s, "control_config"));
        assert!(toml.starts_with(daemon.dir.join("state/fleet")), "{s}");
        assert_eq!(
            std::fs::read_to_string(toml.parent().unwrap().join("lists/deny.txt")).unwrap(),
            "# test nets\n192.0.2.0/24\n"
        );
        // The engine runs the unpacked file.
        assert_eq!(field(&s, "source"), toml.display().to_string(), "{s}");
        let out = wait_fleet(&eps, "h1 live and in sync", |code, out| {
            code == Some(0)
                && out
                    .lines()
                    .any(|l| l.starts_with("h1 ") && l.contains(" live ") && l.contains(" yes "))
        });
        assert!(out.contains(&format!("revision {rev}\n")), "{out}");

        // Operators' applies would be undone by the next bundle: refused.
        let cfg = publisher.write("local", "local");
        let o = ferrogate(&[
            "ctl",
            "apply",
            cfg.to_str().unwrap(),
            "--socket",
            daemon.dir.join("control.sock").to_str().unwrap(),
        ]);
        assert!(
            !o.status.success() && text(&o).contains("ctl publish"),
            "{}",
            text(&o)
        );

        let refused = |n: u64, why: &str| {
            let s =
                daemon.wait_status(why, |s| s.contains(&format!("fleet_bundles_refused {n}\n")));
            assert!(field(&s, "fleet_last_refusal").contains(why), "{s}");
            assert_eq!(field(&s, "fleet_in_sync"), "no", "{s}");
            assert_eq!(field(&s, "fleet_version"), "one", "{s}");
            assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "one");
        };
        // Signed with a key the hosts do not trust.
        publisher.keygen("rogue.key");
        let cfg = publisher.write("rogue", "rogue");
        let o = publisher.publish_with(&eps, &cfg, "rogue.key", &[]);
        assert!(o.status.success(), "{}", text(&o));
        refused(1, "untrusted key");
        // Written without a signature.
        let unsigned = serde_json::json!({
            "format": "ferrogate-bundle/1",
            "payload": "{\"config\":\"...\"}",
        });
        etcd.put(
            &format!("/ferrogate/{CLUSTER}/bundle"),
            unsigned.to_string().as_bytes(),
        );
        refused(2, "unsigned");
        // A good bundle altered in etcd.
        publisher.publish(&eps, "two");
        wait_body(&lab, "two");
        let good = etcd.get(&format!("/ferrogate/{CLUSTER}/bundle"));
        let good = String::from_utf8(good).unwrap();
        let bad = good
            .trim_end()
            .replace("body = \\\\\\\"two\\\\\\\"", "body = \\\\\\\"evil\\\\\\\"");
        assert_ne!(
            bad,
            good.trim_end(),
            "the test must change the signed payload:\n{good}"
        );
        etcd.put(&format!("/ferrogate/{CLUSTER}/bundle"), bad.as_bytes());
        let s = daemon.wait_status("the tampered bundle refused", |s| {
            s.contains("fleet_bundles_refused 3\n")
        });
        assert!(
            field(&s, "fleet_last_refusal").contains("bad signature"),
            "{s}"
        );
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "two");
        wait_fleet(&eps, "h1 behind", |code, _| code == Some(1));

        // The next good bundle applies.
        publisher.publish(&eps, "three");
        wait_body(&lab, "three");
        let s = daemon.wait_status("in sync again", |s| s.contains("fleet_in_sync yes"));
        assert_eq!(field(&s, "fleet_bundles_applied"), "3", "{s}");

        // An older bundle, validly signed, written back: a replay.
        etcd.put(
            &format!("/ferrogate/{CLUSTER}/bundle"),
            String::from_utf8(signed_one).unwrap().trim_end().as_bytes(),
        );
        let s = daemon.wait_status("the replay refused", |s| {
            s.contains("fleet_bundles_refused 4\n")
        });
        assert!(field(&s, "fleet_last_refusal").contains("not newer"), "{s}");
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "three");
        let log = daemon.log();
        assert_eq!(log.matches("fleet bundle refused").count(), 4, "{log}");
    });
}

#[test]
fn two_publishers_racing_on_one_revision_one_wins_the_other_is_told() {
    let etcd = Etcd::start(1);
    let eps = etcd.endpoints();
    let p = Publisher::new();
    let base = p.publish(&eps, "base");
    let (a, b) = (p.write("a", "a"), p.write("b", "b"));
    let expect = base.to_string();
    let spawn = |cfg: &Path| {
        Command::new(ferrogate_bin())
            .args(["ctl", "publish", cfg.to_str().unwrap(), "--key"])
            .arg(p.dir.join("ops.key"))
            .args([
                "--etcd",
                &eps,
                "--cluster",
                CLUSTER,
                "--expect-revision",
                &expect,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    let codes = [oa.status.code(), ob.status.code()];
    assert!(
        codes == [Some(0), Some(3)] || codes == [Some(3), Some(0)],
        "one wins, one conflicts:\n{}\n{}",
        text(&oa),
        text(&ob)
    );
    let (won, lost) = if codes[0] == Some(0) {
        (&oa, &ob)
    } else {
        (&ob, &oa)
    };
    let rev = published_revision(won);
    assert!(
        text(lost).contains(&format!(
            "changed since revision {base} (now revision {rev})"
        )),
        "{}",
        text(lost)
    );
    // What etcd holds is the winner's.
    let held = String::from_utf8(etcd.get(&format!("/ferrogate/{CLUSTER}/bundle"))).unwrap();
    let winner = if codes[0] == Some(0) { "a" } else { "b" };
    assert!(
        held.contains(&format!("body = \\\\\\\"{winner}\\\\\\\"")),
        "{held}"
    );
    // "No bundle yet" is a revision too.
    let o = p.publish_with(&eps, &a, "ops.key", &["--expect-revision", "0"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // The loser publishes again over what it now sees.
    let o = p.publish_with(&eps, &b, "ops.key", &[]);
    assert!(o.status.success(), "{}", text(&o));

    // Invalid configurations are refused before etcd, like `check`.
    let before = etcd.revision();
    let bad = p.dir.join("bad.toml");
    std::fs::write(&bad, respond_config("x", "\n[engine.nonsense]\n")).unwrap();
    let o = p.publish_with(&eps, &bad, "ops.key", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("bad.toml:"),
        "located errors: {}",
        text(&o)
    );
    let outside = p.dir.join("sub/outside.toml");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(p.dir.join("deny.txt"), "192.0.2.0/24\n").unwrap();
    std::fs::write(
        &outside,
        respond_config(
            "x",
            "\n[[filter.cidr]]\nid = \"t\"\naction = \"deny\"\ncidr_files = [\"../deny.txt\"]\n",
        ),
    )
    .unwrap();
    let o = p.publish_with(&eps, &outside, "ops.key", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("outside its directory"), "{}", text(&o));
    assert_eq!(etcd.revision(), before, "nothing was written");

    // Someone with write access to etcd puts an unsigned envelope claiming
    // the last serial there: the next publish does not number after it
    // (it would leave hosts refusing every later bundle as a replay).
    etcd.put(
        &format!("/ferrogate/{CLUSTER}/bundle"),
        br#"{"format":"ferrogate-bundle/1","payload":"{\"serial\":18446744073709551615}"}"#,
    );
    let o = p.publish_with(&eps, &a, "ops.key", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let serial: u64 = text(&o)
        .split("(serial ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a serial in {}", text(&o)));
    assert!(
        serial < u64::MAX / 2,
        "serial {serial} taken from a forged bundle"
    );
}

/// A TCP relay in front of etcd that the test can cut: the daemon loses
/// etcd while etcd itself goes on (and compacts).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, o) = (cut.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if c.load(Ordering::Relaxed) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut o = o.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(up.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            cut,
            stop,
            open,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn etcd_outages_and_a_compaction_behind_a_cut_off_daemon_lose_nothing() {
    lab_test("fleet_outage", || {
        let mut etcd = Etcd::start(1);
        let eps = etcd.endpoints();
        let relay = Relay::start(etcd.members[0].client_port);
        let publisher = Publisher::new();
        let (lab, _engine) = lab_and_engine();
        let state = TempDir(temp_dir("fleet-state"));
        let daemon = Daemon::start_in(&lab, &publisher, &relay.url(), "h1", state.0.clone());
        publisher.publish(&eps, "one");
        wait_body(&lab, "one");

        // etcd dies: the engine serves on, the daemon says so.
        etcd.members[0].kill();
        let s = daemon.wait_status("the outage", |s| s.contains("fleet_etcd_connected no"));
        assert_ne!(field(&s, "fleet_etcd_error"), "none", "{s}");
        for _ in 0..5 {
            assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "one");
        }
        assert_eq!(field(&s, "engine_connected"), "yes", "{s}");
        // Back: the daemon reconnects (bounded backoff) and follows again.
        etcd.restart(0);
        daemon.wait_status("etcd back", |s| s.contains("fleet_etcd_connected yes"));
        publisher.publish(&eps, "two");
        wait_body(&lab, "two");

        // Cut off, the daemon misses two bundles and the history of both.
        relay.cut();
        daemon.wait_status("the cut", |s| s.contains("fleet_etcd_connected no"));
        publisher.publish(&eps, "three");
        let four = publisher.publish(&eps, "four");
        etcd.ctl_ok(&["compact", &etcd.revision().to_string(), "--physical"]);
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "two");
        relay.restore();
        wait_body(&lab, "four");
        let s = daemon.wait_status("the reload", |s| s.contains("fleet_in_sync yes"));
        assert_eq!(field(&s, "fleet_revision"), four.to_string(), "{s}");
        assert_eq!(
            field(&s, "fleet_compactions"),
            "1",
            "the watch fell behind: {s}"
        );
        assert_eq!(
            field(&s, "fleet_bundles_applied"),
            "3",
            "one, two, then straight to four: {s}"
        );
        assert!(
            daemon.log().contains("fell behind a compaction"),
            "{}",
            daemon.log()
        );

        // A restarted daemon adopts what the engine runs: no new version.
        let counter = field(&s, "counter");
        drop(daemon);
        let daemon = Daemon::start_in(&lab, &publisher, &relay.url(), "h1", state.0.clone());
        let s = daemon.wait_status("in sync after a restart", |s| {
            s.contains("fleet_in_sync yes")
        });
        assert_eq!(field(&s, "counter"), counter, "pushed again: {s}");
        assert_eq!(field(&s, "fleet_bundles_applied"), "0", "{s}");
        assert_eq!(field(&s, "fleet_revision"), four.to_string(), "{s}");
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "four");
    });
}

#[test]
fn a_three_member_cluster_that_loses_a_member_still_delivers() {
    lab_test("fleet_three", || {
        let mut etcd = Etcd::start(3);
        let eps = etcd.endpoints();
        let publisher = Publisher::new();
        let (lab, _engine) = lab_and_engine();
        let daemon = Daemon::start(&lab, &publisher, &eps, "h1");
        publisher.publish(&eps, "one");
        wait_body(&lab, "one");
        // The first member (the one the daemon talks to first) goes.
        etcd.members[0].kill();
        // If it led, the others elect a leader first (about a second).
        etcd.wait_healthy();
        // Port 1: nothing listens there (a released free port could be
        // taken by another test's etcd meanwhile).
        let publish_eps = format!("http://127.0.0.1:1,{eps}");
        publisher.publish(&publish_eps, "two");
        let took = wait_body(&lab, "two");
        eprintln!(
            "publish -> engine with a member down: {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        let s = daemon.wait_status("in sync", |s| s.contains("fleet_in_sync yes"));
        assert_eq!(field(&s, "fleet_version"), "two", "{s}");
        wait_fleet(&eps, "h1 in sync", |code, _| code == Some(0));
        // A host that stops reporting is named silent once its lease ends.
        drop(daemon);
        wait_fleet(&eps, "h1 silent", |code, out| {
            code == Some(1)
                && out
                    .lines()
                    .any(|l| l.starts_with("h1 ") && l.contains("SILENT"))
        });
    });
}

/// Hosts as several labs on this machine (3; `FG_FLEET_HOSTS=N` for the
/// README's figures): one publish reaches every engine.
#[test]
fn several_hosts_follow_one_publish() {
    lab_test("fleet_hosts", || {
        let n: usize = std::env::var("FG_FLEET_HOSTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let etcd = Etcd::start(1);
        let eps = etcd.endpoints();
        let publisher = Publisher::new();
        // Each host: its own lab (namespaces), engine and daemon; the
        // engine stops before its lab goes.
        let hosts: Vec<(Engine, Lab)> = (0..n)
            .map(|_| {
                let (lab, engine) = lab_and_engine();
                (engine, lab)
            })
            .collect();
        let daemons: Vec<Daemon> = hosts
            .iter()
            .enumerate()
            .map(|(i, (_, lab))| Daemon::start(lab, &publisher, &eps, &format!("h{i}")))
            .collect();
        for d in &daemons {
            d.wait_status("etcd", |s| s.contains("fleet_etcd_connected yes"));
        }
        for body in ["one", "two"] {
            let t0 = Instant::now();
            publisher.publish(&eps, body);
            let mut each = Vec::new();
            for (_, lab) in &hosts {
                wait_body(lab, body);
                each.push(t0.elapsed().as_millis());
            }
            eprintln!("publish {body} -> {n} engines serving it: {each:?} ms (polled in turn)");
        }
        let out = wait_fleet(&eps, "every host in sync", |code, _| code == Some(0));
        for i in 0..n {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("h{i} ")) && l.contains(" live ")),
                "{out}"
            );
        }
        // Without any rollout each host still reports its engine's health
        // (sampled every 5 s; reported once two samples make a window).
        let all = wait_hosts(&etcd, n, "a health summary on every host", |all| {
            all.iter().all(|s| s["health"]["window_s"].is_u64())
        });
        assert!(all.iter().all(|s| s["rollout"].is_null()), "{all:#?}");
        // A daemon stopped cleanly revokes its status lease: its host is
        // silent at once, not a TTL (3 s) later.
        let mut daemons = daemons;
        daemons[0].terminate();
        let o = ferrogate(&[
            "ctl",
            "fleet",
            "status",
            "--etcd",
            &eps,
            "--cluster",
            CLUSTER,
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            out.lines()
                .any(|l| l.starts_with("h0 ") && l.contains("SILENT")),
            "h0 still live after a clean stop:\n{out}\n{}",
            daemons[0].log()
        );
        // A live host cannot be forgotten; the stopped one can, and
        // `fleet status` stops naming it (exit 0: the rest are in sync).
        let forget = |host: &str| {
            ferrogate(&[
                "ctl",
                "fleet",
                "forget",
                "--etcd",
                &eps,
                "--cluster",
                CLUSTER,
                host,
            ])
        };
        if n > 1 {
            let o = forget("h1");
            assert_eq!(o.status.code(), Some(1), "{}", text(&o));
            assert!(text(&o).contains("is live"), "{}", text(&o));
        }
        let o = forget("h0");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = forget("h0");
        assert!(text(&o).contains("not a member"), "{}", text(&o));
        // (With one host there are none left: exit 1.)
        wait_fleet(&eps, "h0 forgotten", |code, out| {
            !out.lines().any(|l| l.starts_with("h0 ")) && (n == 1 || code == Some(0))
        });
        drop(daemons);
    });
}

/// A host's status as it wrote it to etcd (null: none).
fn host_status(etcd: &Etcd, host: &str) -> serde_json::Value {
    let v = etcd.get(&format!("/ferrogate/{CLUSTER}/hosts/{host}"));
    serde_json::from_slice(String::from_utf8_lossy(&v).trim().as_bytes()).unwrap_or_default()
}

/// Polls the hosts' statuses in etcd until `pred` holds (60 s at most: a
/// rollout waits for bakes).
fn wait_hosts(
    etcd: &Etcd,
    n: usize,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let all: Vec<serde_json::Value> = (0..n)
            .map(|i| host_status(etcd, &format!("h{i}")))
            .collect();
        if pred(&all) {
            return all;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the hosts' statuses never showed {what}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rollout_state(s: &serde_json::Value) -> &str {
    s["rollout"]["state"].as_str().unwrap_or("")
}

/// Three hosts (labs, engines, daemons) following one etcd.
fn three_hosts(etcd: &Etcd, publisher: &Publisher) -> (Vec<(Engine, Lab)>, Vec<Daemon>) {
    let eps = etcd.endpoints();
    let hosts: Vec<(Engine, Lab)> = (0..3)
        .map(|_| {
            let (lab, engine) = lab_and_engine();
            (engine, lab)
        })
        .collect();
    let daemons: Vec<Daemon> = hosts
        .iter()
        .enumerate()
        .map(|(i, (_, lab))| Daemon::start(lab, publisher, &eps, &format!("h{i}")))
        .collect();
    for d in &daemons {
        d.wait_status("etcd", |s| s.contains("fleet_etcd_connected yes"));
    }
    (hosts, daemons)
}

/// Sets its flag when dropped (also while unwinding).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// GETs `/v` on the lab's VIP (a few hundred a second at most) until
/// `stop`; counts what came back by (status, body), 0 for a failure.
fn load_counts<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    lab: &'s Lab,
    stop: &'s AtomicBool,
) -> std::thread::ScopedJoinHandle<'s, std::collections::BTreeMap<(u16, String), u64>> {
    s.spawn(move || {
        ferrogate_tests::enter_netns(&lab.ns("client")).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                conn = ferrogate_tests::HttpConn::connect(&format!("{VIP}:80")).ok();
            }
            let got = match conn.as_mut().map(|c| c.get("lab", "/v")) {
                Some(Ok((status, body))) => (status, body),
                _ => {
                    conn = None;
                    (0, String::new())
                }
            };
            *seen.entry(got).or_insert(0u64) += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// A plan `1,100%`: the canary (wave 0) applies first; the others only
/// once it passed its gate; all in sync at the end.
#[test]
fn a_healthy_rollout_reaches_the_canary_first_then_the_others() {
    lab_test("fleet_rollout_ok", || {
        let etcd = Etcd::start(1);
        let eps = etcd.endpoints();
        let publisher = Publisher::new();
        let (hosts, _daemons) = three_hosts(&etcd, &publisher);
        publisher.publish(&eps, "one");
        for (_, lab) in &hosts {
            wait_body(lab, "one");
        }
        let cfg = publisher.write("two", "two");
        // A plan no host could follow is refused before etcd, like an
        // invalid config.
        // The bundle key, not the store's revision: the hosts' statuses
        // may change meanwhile.
        let bundle_key = format!("/ferrogate/{CLUSTER}/bundle");
        let before = etcd.get(&bundle_key);
        assert!(!before.is_empty());
        for bad in [
            &["--rollout", "1,0%"][..],
            &["--rollout", "1", "--gate-max-p99-ratio", "0.5"],
        ] {
            let o = publisher.publish_with(&eps, &cfg, "ops.key", bad);
            assert_eq!(o.status.code(), Some(1), "{}", text(&o));
            assert!(text(&o).contains("rollout plan"), "{}", text(&o));
        }
        assert!(etcd.get(&bundle_key) == before, "nothing was written");
        // Traffic on every host throughout: a bake that answers much less
        // than the window before it fails its gate ("traffic dropped").
        let stop = AtomicBool::new(false);
        let all = std::thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            let loads: Vec<_> = hosts
                .iter()
                .map(|(_, lab)| load_counts(s, lab, &stop))
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            let o = publisher.publish_with(
                &eps,
                &cfg,
                "ops.key",
                &[
                    "--version",
                    "two",
                    "--rollout",
                    "1,100%",
                    "--bake-s",
                    "3",
                    // Latency buckets of a loaded lab are noise.
                    "--gate-max-p99-ratio",
                    "50",
                ],
            );
            assert!(o.status.success(), "{}", text(&o));
            assert!(text(&o).contains("rollout plan 1,100%"), "{}", text(&o));
            for (_, lab) in &hosts {
                wait_body(lab, "two");
            }
            let all = wait_hosts(&etcd, 3, "every host passed", |all| {
                all.iter()
                    .all(|s| matches!(rollout_state(s), "passed" | "complete"))
            });
            stop.store(true, Ordering::Relaxed);
            for l in loads {
                l.join().unwrap();
            }
            all
        });
        for s in &all {
            let gate = s["rollout"]["gate"].as_str().unwrap_or("");
            assert!(gate.starts_with("passed: error ratio"), "judged: {s:#}");
        }
        let canary: Vec<&serde_json::Value> = all
            .iter()
            .filter(|s| s["rollout"]["wave"].as_u64() == Some(0))
            .collect();
        assert_eq!(canary.len(), 1, "one canary: {all:#?}");
        let passed = canary[0]["rollout"]["passed_unix_ms"].as_u64().unwrap();
        for s in all
            .iter()
            .filter(|s| s["rollout"]["wave"].as_u64() == Some(1))
        {
            let applied = s["rollout"]["applied_unix_ms"].as_u64().unwrap();
            assert!(
                applied >= passed,
                "{} applied before the canary passed: {all:#?}",
                s["host"]
            );
        }
        // The health summary is in each host's status.
        for s in &all {
            assert!(s["health"]["window_s"].is_u64(), "{s:#}");
        }
        let out = wait_fleet(&eps, "the rollout complete", |code, out| {
            code == Some(0) && out.contains(": complete\n")
        });
        assert!(out.contains("rollout serial "), "{out}");
        eprintln!("{out}");
    });
}

/// The canary's new config sends `/v` to an upstream that refuses: its
/// gate fails under load, the rollout stops, the canary goes back to the
/// old config and the other hosts never apply the bundle.
#[test]
fn a_canary_that_fails_its_gate_stops_the_rollout_and_is_rolled_back() {
    lab_test("fleet_rollout_fail", || {
        let etcd = Etcd::start(1);
        let eps = etcd.endpoints();
        let publisher = Publisher::new();
        let (hosts, daemons) = three_hosts(&etcd, &publisher);
        publisher.publish(&eps, "one");
        for (_, lab) in &hosts {
            wait_body(lab, "one");
        }
        // Port 9 of the origin namespace: nothing listens, connects are
        // refused, the engine answers 502.
        let dir = publisher.dir.join("broken");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("edge.toml");
        let text_cfg = respond_config(
            "broken",
            "\n[[upstreams]]\nname = \"dead\"\nendpoints = [\"10.77.0.3:9\"]\n",
        );
        let broken = text_cfg.replace(
            "respond = { status = 200, body = \"broken\" }",
            "upstream = \"dead\"",
        );
        assert_ne!(broken, text_cfg);
        std::fs::write(&cfg, broken).unwrap();

        let stop = AtomicBool::new(false);
        let (counts, canary_host) = std::thread::scope(|s| {
            // The load stops also when an assertion below fails (the scope
            // would wait for it forever).
            let _stop = StopOnDrop(&stop);
            let loads: Vec<_> = hosts
                .iter()
                .map(|(_, lab)| load_counts(s, lab, &stop))
                .collect();
            // A baseline on the old bundle first.
            std::thread::sleep(Duration::from_secs(3));
            let o = publisher.publish_with(
                &eps,
                &cfg,
                "ops.key",
                &[
                    "--version",
                    "broken",
                    "--rollout",
                    "1,100%",
                    "--bake-s",
                    "3",
                    "--gate-min-requests",
                    "5",
                ],
            );
            assert!(o.status.success(), "{}", text(&o));
            let all = wait_hosts(&etcd, 3, "the canary rolled back", |all| {
                all.iter().any(|s| rollout_state(s) == "rolled_back")
            });
            let canary = all
                .iter()
                .position(|s| rollout_state(s) == "rolled_back")
                .unwrap();
            // Its engine serves the old config again.
            wait_body(&hosts[canary].1, "one");
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            let counts: Vec<_> = loads.into_iter().map(|h| h.join().unwrap()).collect();
            (counts, canary)
        });
        let all = wait_hosts(&etcd, 3, "the others stopped", |all| {
            all.iter()
                .enumerate()
                .all(|(i, s)| i == canary_host || rollout_state(s) == "stopped")
        });
        let c = &all[canary_host];
        let gate = c["rollout"]["gate"].as_str().unwrap_or("");
        assert!(gate.starts_with("failed: error ratio"), "{c:#}");
        assert_eq!(c["rollout"]["wave"].as_u64(), Some(0), "{c:#}");
        assert_eq!(c["version"].as_str(), Some("one"), "{c:#}");
        // The canary served the broken config for a while (the gate had
        // something to judge), then the old one again.
        let bad: u64 = counts[canary_host]
            .iter()
            .filter(|((st, _), _)| *st >= 500)
            .map(|(_, n)| n)
            .sum();
        assert!(bad > 0, "no 5xx on the canary: {:?}", counts[canary_host]);
        for (i, s) in all.iter().enumerate() {
            if i == canary_host {
                continue;
            }
            assert!(s["rollout"]["applied_unix_ms"].is_null(), "{s:#}");
            assert_eq!(s["version"].as_str(), Some("one"), "{s:#}");
            // Nothing but the old body on the hosts that never applied it.
            assert!(
                counts[i]
                    .keys()
                    .all(|(st, body)| *st == 0 || (*st == 200 && body == "one")),
                "host h{i} served something else: {:?}",
                counts[i]
            );
            assert_eq!(hosts[i].1.curl(&format!("http://{VIP}/v")).unwrap(), "one");
        }
        let out = wait_fleet(&eps, "the stopped rollout", |code, out| {
            code == Some(1) && out.contains("STOPPED by ")
        });
        eprintln!("{out}");
        assert!(out.contains("error ratio"), "{out}");
        assert!(
            out.contains(&format!("h{canary_host} ")) && out.contains("rolled_back"),
            "{out}"
        );

        // A restarted canary daemon reads the stop again: it stays on the
        // old bundle.
        let mut daemons = daemons;
        daemons[canary_host].terminate();
        daemons[canary_host].owns_dir = false;
        let dir = daemons[canary_host].dir.clone();
        let mut again = Daemon::start_in(
            &hosts[canary_host].1,
            &publisher,
            &eps,
            &format!("h{canary_host}"),
            dir,
        );
        again.owns_dir = true;
        daemons[canary_host] = again;
        let st = daemons[canary_host].wait_status("the stopped rollout after a restart", |s| {
            s.contains("fleet_rollout_state stopped\n")
        });
        assert_eq!(field(&st, "fleet_version"), "one", "{st}");
        assert_eq!(
            hosts[canary_host]
                .1
                .curl(&format!("http://{VIP}/v"))
                .unwrap(),
            "one"
        );

        // A new publish supersedes the stopped rollout.
        publisher.publish(&eps, "three");
        for (_, lab) in &hosts {
            wait_body(lab, "three");
        }
        wait_fleet(&eps, "all in sync", |code, _| code == Some(0));
    });
}
