//! Zero-downtime binary upgrade (issue #24) in the lab: SIGUSR2 to
//! `ferrogate run` starts a successor engine that takes the NIC queues over
//! while the old one finishes its connections through it. Ten upgrades in a
//! row under wrk keep-alive load and new-connection load: no failed
//! request, no reset connection, and the XDP counters run on.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, children_of, lab_test};

const ORIGIN: &str = "10.77.0.3:8095";
const UPGRADES: usize = 10;

/// The lab config: `queues` workers, one origin; with `cache`, a cached
/// route with a disk tier in front of the catch-all one.
fn config(queues: u32, cache: bool) -> String {
    let (cache_tables, cache_route) = if cache {
        (
            "\n[cache]\nmax_bytes = 67108864\nstatus_header = \"x-cache\"\n\n[cache.disk]\ndir = \"cache-disk\"\nmax_bytes = 67108864\n",
            "\n[[listeners.routes]]\npath_prefix = \"/cache/\"\nupstream = \"origin\"\ncache = true\n",
        )
    } else {
        ("", "")
    };
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = {queues}
polling = "adaptive"

[timeouts]
drain_ms = 15000
{cache_tables}
[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80
{cache_route}
[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
"#
    )
}

/// A wrk run, killed if the test ends before [`finish`] (a failed assert).
struct Wrk(Option<Child>);

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// wrk in the client namespace until SIGINT (it then prints its summary).
fn wrk(lab: &Lab, connections: &str, extra: &[&str], path: &str) -> Wrk {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "wrk", "-t1", "-c"])
        .arg(connections)
        .args(["-d300s", "--timeout", "10s"])
        .args(extra)
        .arg(format!("http://{VIP}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wrk");
    Wrk(Some(child))
}

/// Stops wrk (SIGINT: it reports what it did) and returns its output.
fn finish(mut w: Wrk) -> String {
    let mut w = w.0.take().expect("running");
    // SAFETY: kill(2) on our own child (`ip netns exec` execs wrk in place).
    unsafe { libc::kill(w.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = w.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = w.kill();
    let out = w.wait_with_output().expect("wrk output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wrk_requests(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The client namespace's TCP counters (`Tcp:` of /proc/net/snmp).
fn client_tcp(lab: &Lab) -> HashMap<String, u64> {
    let snmp = lab
        .exec("client", &["cat", "/proc/net/snmp"])
        .expect("read /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The supervisor's engine processes.
fn engines(supervisor: i32) -> Vec<i32> {
    children_of(supervisor)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).nth(1) == Some(b"engine".as_slice()))
        })
        .collect()
}

fn wait_log(engine: &ferrogate_tests::Engine, what: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.log().matches(what).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {what:?} (×{count}) in the log:\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serves(lab: &Lab) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if lab.curl(&format!("http://{VIP}/slow/1")).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn xdp_counters(s: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.starts_with("xdp_") && k.ends_with("_packets"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    v.sort();
    v
}

#[test]
fn ten_binary_upgrades_under_keep_alive_and_new_connection_load_fail_and_reset_nothing() {
    lab_test("upgrade", || {
        let lab = Lab::up(2);
        let _origin = lab.start_origin("upgrade", ORIGIN);
        let path = lab.state_dir().join("upgrade.toml");
        std::fs::write(&path, config(2, false)).unwrap();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 2);
        let resets_before = client_tcp(&lab);

        let keep_alive = wrk(&lab, "8", &[], "/slow/2");
        let new_conns = wrk(&lab, "2", &["-H", "Connection: close"], "/slow/1");
        std::thread::sleep(Duration::from_secs(1));

        // A successor that fails its start-up checks (here: the snapshot
        // it starts from does not validate) leaves the running engine
        // serving, untouched.
        let snapshot = lab.engine_state_dir().join("last-good.toml");
        let good = std::fs::read(&snapshot).expect("the persisted snapshot");
        std::fs::write(&snapshot, b"# ferrogate-snapshot version=9-x\nvips = 1\n").unwrap();
        // SAFETY: kill(2) on the supervisor this test started.
        unsafe { libc::kill(engine.supervisor_pid(), libc::SIGUSR2) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.log().contains("binary upgrade failed") {
            assert!(
                Instant::now() < deadline,
                "no failed upgrade:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(&snapshot, good).unwrap();
        let log = engine.log();
        assert!(
            log.contains(
                "the successor exited before the hand-over; the running engine keeps serving"
            ),
            "{log}"
        );
        assert!(!log.contains("binary upgrade complete"), "{log}");
        assert!(
            lab.curl(&format!("http://{VIP}/slow/1")).is_ok(),
            "the old engine serves"
        );

        let mut xdp_before = xdp_counters(&engine.stats());
        let mut relayed = Vec::new();
        let mut took = Vec::new();
        for i in 1..=UPGRADES {
            let t0 = Instant::now();
            // SAFETY: kill(2) on the supervisor this test started.
            unsafe { libc::kill(engine.supervisor_pid(), libc::SIGUSR2) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while engine.log().matches("binary upgrade complete").count() < i {
                assert!(
                    Instant::now() < deadline,
                    "upgrade {i} did not complete; log:\n{}",
                    engine.log()
                );
                assert!(
                    engine.log().matches("binary upgrade failed").count() == 1,
                    "upgrade {i} failed; log:\n{}",
                    engine.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            took.push(t0.elapsed());
            let stats = engine.stats();
            relayed.push(stats.get("upgrade_relayed_out").copied().unwrap_or(0));
            let xdp_after = xdp_counters(&stats);
            assert_eq!(
                xdp_before.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                xdp_after.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                "the same XDP counters after upgrade {i}"
            );
            for ((k, before), (_, after)) in xdp_before.iter().zip(&xdp_after) {
                assert!(
                    after >= before,
                    "XDP counter {k} went back across upgrade {i}: {before} -> {after}"
                );
            }
            xdp_before = xdp_after;
        }
        // Load on the last engine too.
        std::thread::sleep(Duration::from_millis(500));
        let resets_after = client_tcp(&lab);
        let (ka, nc) = (finish(keep_alive), finish(new_conns));
        let log = engine.log();

        for (what, out) in [("keep-alive", &ka), ("new-connection", &nc)] {
            assert!(
                wrk_requests(out) > 0,
                "{what} wrk did not run:\n{out}\n{log}"
            );
            assert!(
                !out.contains("Non-2xx") && !out.contains("Socket errors"),
                "{what} wrk saw failures across the upgrades:\n{out}"
            );
        }
        let resets = resets_after.get("EstabResets").copied().unwrap_or(0)
            - resets_before.get("EstabResets").copied().unwrap_or(0);
        assert_eq!(resets, 0, "client connections reset across the upgrades");
        assert!(
            relayed.iter().all(|&n| n > 0),
            "each successor relayed its predecessor's flows: {relayed:?}"
        );
        let redirected = xdp_before
            .iter()
            .find(|(k, _)| k.contains("redirect"))
            .map_or(0, |(_, v)| *v);
        assert!(redirected > 0, "XDP counters: {xdp_before:?}");
        assert!(engine.is_running(), "the supervisor runs on:\n{log}");

        // The old engine dies (SIGKILL) while a connection of its is still
        // open through the relay: the successor closes the relay and serves.
        let sup = engine.supervisor_pid();
        // A request that keeps the old engine draining (it is lost with it).
        let slow_request = || {
            let ns = lab.ns("client");
            let slow = std::thread::spawn(move || {
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "curl",
                        "-s",
                        "-m",
                        "8",
                        "-o",
                        "/dev/null",
                    ])
                    .arg(format!("http://{VIP}/slow/6000"))
                    .status()
            });
            std::thread::sleep(Duration::from_millis(500));
            slow
        };
        let slow = slow_request();
        let old = engines(sup);
        assert_eq!(old.len(), 1, "one engine before the upgrade");
        let old = old[0];
        // SAFETY: kill(2) on the supervisor this test started.
        unsafe { libc::kill(sup, libc::SIGUSR2) };
        wait_log(&engine, "the NIC queues are ours", UPGRADES + 1);
        // SAFETY: kill(2) on an engine process our supervisor started.
        unsafe { libc::kill(old, libc::SIGKILL) };
        wait_log(&engine, "the predecessor has ended; its relay is closed", 1);
        wait_log(&engine, "binary upgrade complete", UPGRADES + 1);
        assert!(serves(&lab), "the successor serves:\n{}", engine.log());
        let _ = slow.join();

        // The successor dies after the hand-over: the old engine notices and
        // ends, and the supervisor starts a fresh engine.
        let slow = slow_request();
        let old = engines(sup);
        // SAFETY: as above.
        unsafe { libc::kill(sup, libc::SIGUSR2) };
        wait_log(&engine, "the NIC queues are ours", UPGRADES + 2);
        let new = engines(sup)
            .into_iter()
            .find(|p| !old.contains(p))
            .expect("the successor");
        // SAFETY: kill(2) on an engine process our supervisor started.
        unsafe { libc::kill(new, libc::SIGKILL) };
        // The old engine ends with ORPHANED_EXIT: only that exit makes the
        // supervisor start a fresh one.
        wait_log(&engine, "binary upgrade failed: the successor exited", 1);
        wait_log(
            &engine,
            "handed over to a failed successor exited; starting a new one",
            1,
        );
        assert!(serves(&lab), "a fresh engine serves:\n{}", engine.log());
        assert!(engine.is_running(), "{}", engine.log());
        let _ = slow.join();
        eprintln!(
            "{UPGRADES} upgrades under load: keep-alive {} + new-connection {} requests, none failed, 0 resets; relayed per upgrade {relayed:?}; SIGUSR2 → old engine gone: {took:?}",
            wrk_requests(&ka),
            wrk_requests(&nc)
        );
        engine.stop();
        assert!(lab.edge_xdp_gone(), "XDP left behind after the stop");
    });
}

/// The successor attaches the disk cache tier once its predecessor, which
/// held the directory, is gone: what the old engine stored is a hit.
#[test]
fn an_upgrade_keeps_the_disk_cache_tier() {
    lab_test("upgrade-cache", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("upgrade-cache", ORIGIN);
        let path = lab.state_dir().join("upgrade-cache.toml");
        let cfg = config(1, true);
        std::fs::write(&path, cfg).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        engine.wait_disk_tier();
        let curl = |args: &[&str]| {
            let mut argv = vec!["curl", "-sS", "-m", "10", "-D", "-"];
            argv.extend_from_slice(args);
            lab.exec("client", &argv).expect("curl")
        };
        let ok = curl(&[
            "-X",
            "POST",
            &format!("http://{VIP}/control/cache?cc=max-age%3D3600"),
        ]);
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let first = curl(&[&format!("http://{VIP}/cache/u/1")]);
        assert!(
            first.to_ascii_lowercase().contains("x-cache: miss"),
            "{first}"
        );
        let st = engine.stats_until(|s| s.get("cache_disk_written") == Some(&1));
        assert_eq!(st.get("cache_disk_written"), Some(&1), "{st:?}");

        // SAFETY: kill(2) on the supervisor this test started.
        unsafe { libc::kill(engine.supervisor_pid(), libc::SIGUSR2) };
        wait_log(&engine, "binary upgrade complete", 1);
        wait_log(&engine, "the response cache's disk tier is attached", 2);
        let again = curl(&[&format!("http://{VIP}/cache/u/1")]);
        assert!(
            again.to_ascii_lowercase().contains("x-cache: hit"),
            "{again}"
        );
        let count = curl(&[&format!("http://{VIP}/control/count/cache/u/1")]);
        assert!(
            count.trim_end().ends_with("\r\n\r\n1"),
            "origin asked once: {count}"
        );
    });
}

/// SIGTERM while the old engine of an upgrade still answers a request
/// through its successor: both engines drain at once, the successor last
/// (the old engine's frames go through its queues), so the request is
/// answered whole and the stop takes one drain, not a cut.
#[test]
fn a_stop_mid_upgrade_lets_the_old_engines_request_finish() {
    lab_test("upgrade-stop", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("upgrade-stop", ORIGIN);
        let path = lab.state_dir().join("upgrade-stop.toml");
        std::fs::write(&path, config(1, false)).unwrap();
        let mut engine = lab.start_engine_with(&path, "af_xdp", 1);
        let ns = lab.ns("client");
        // 6 s at the origin: it is still in flight on the old engine when
        // the stop comes (checked below), well inside the 15 s drain.
        let slow = std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-sS", "-m", "20"])
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{VIP}/slow/6000"))
                .output()
                .expect("curl")
        });
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on the supervisor this test started.
        unsafe { libc::kill(engine.supervisor_pid(), libc::SIGUSR2) };
        wait_log(&engine, "the NIC queues are ours", 1);
        engine.sigterm();
        // Otherwise the test would pass without a request on the old engine.
        assert!(
            !slow.is_finished(),
            "the request ended before the hand-over:\n{}",
            engine.log()
        );
        let out = slow.join().expect("curl thread");
        let exit = engine.wait_exit(Duration::from_secs(45));
        let log = engine.log();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "the old engine's request was cut by the stop: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            exit.is_some_and(|st| st.success()),
            "ferrogate run: {exit:?}\n{log}"
        );
        assert!(!log.contains("did not stop in time"), "{log}");
        assert!(!log.contains("drain timed out"), "{log}");
        assert!(lab.edge_xdp_gone(), "XDP left behind after the stop");
    });
}
