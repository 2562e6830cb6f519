//! The admin API and `ferrogate ctl` against a running engine in the lab:
//! status/stats/metrics, apply without dropping keep-alive connections, an
//! invalid apply refused with located errors, rollback, diff, and the
//! last-known-good snapshot after a restart without a config.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrogate_tests::{HttpConn, Lab, VIP, lab_test, respond_config};

/// A lab config whose `/v` route answers `body` (no upstream needed).
fn config(lab: &Lab, name: &str, body: &str) -> PathBuf {
    let path = lab.state_dir().join(name);
    std::fs::write(&path, respond_config(body, "")).unwrap();
    path
}

use ferrogate_tests::{ctl_ok, status_field as field};

/// Checks the Prometheus text format: every sample is `name{labels} value`
/// with valid names, escaped label values, a float value, and a `# TYPE`
/// line for its family before it. Returns the samples.
/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_prometheus(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let typ = it.next().unwrap();
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "second TYPE for {name}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name in {line}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let b = r.as_bytes();
            let mut i = 0;
            while b[i] != b'}' {
                let eq = r[i..].find('=').unwrap_or_else(|| panic!("{line}")) + i;
                let lname = &r[i..eq];
                assert!(valid_name(lname), "bad label name in {line}");
                assert_eq!(b[eq + 1], b'"', "{line}");
                let mut value = String::new();
                i = eq + 2;
                while b[i] != b'"' {
                    if b[i] == b'\\' {
                        value.push(match b[i + 1] {
                            b'n' => '\n',
                            b'\\' => '\\',
                            b'"' => '"',
                            _ => panic!("bad escape in {line}"),
                        });
                        i += 2;
                    } else {
                        let c = r[i..].chars().next().unwrap();
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
                labels.push((lname.to_string(), value));
                i += 1;
                if b[i] == b',' {
                    i += 1;
                }
            }
            rest = &r[i + 1..];
        }
        let value = rest.trim();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no # TYPE before {line}");
        samples.push((name.to_string(), labels, v));
    }
    samples
}

/// The value of a sample without labels.
fn metric(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.is_empty())
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn wait_body(lab: &Lab, path: &str, want: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        match lab.curl(&format!("http://{VIP}{path}")) {
            Ok(b) if b == want => return Ok(t0.elapsed()),
            Ok(b) => last = b,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

#[test]
fn admin_api_answers_applies_refuses_and_rolls_back() {
    lab_test("control_admin", || {
        let lab = Lab::up(1);
        let one = config(&lab, "one.toml", "one");
        let engine = lab.start_engine_with(&one, "af_xdp", 1);
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "one");

        // The socket is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lab.admin_socket())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

        // curl drives the socket too
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--unix-socket"])
            .arg(lab.admin_socket())
            .arg("http://ferrogate/status")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\nversion 1-"),
            "{out:?}"
        );

        // status / stats / metrics
        let status = ctl_ok(&lab, &["status"]);
        let v1 = field(&status, "version");
        assert_eq!(field(&status, "backend"), "af_xdp", "{status}");
        assert_eq!(field(&status, "workers"), "1", "{status}");
        assert_eq!(field(&status, "started_from"), "file", "{status}");
        assert!(status.contains("uptime_s ") && status.contains("filter_generation "));
        // Workers publish their L7 counters periodically.
        let t0 = Instant::now();
        let mut stats = ctl_ok(&lab, &["stats"]);
        while !stats.contains("route_v_requests ") && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            stats = ctl_ok(&lab, &["stats"]);
        }
        assert!(stats.contains("snapshot_version 1"), "{stats}");
        assert!(stats.contains("route_v_requests "), "{stats}");
        let metrics = ctl_ok(&lab, &["metrics"]);
        let samples = parse_prometheus(&metrics);
        let get = |s: &[Sample], name: &str, label: (&str, &str)| {
            s.iter()
                .find(|(n, l, _)| n == name && l.iter().any(|(k, v)| k == label.0 && v == label.1))
                .map(|(_, _, v)| *v)
                .unwrap_or_else(|| panic!("no {name}{{{}={}}}", label.0, label.1))
        };
        let before = get(&samples, "ferrogate_route_requests_total", ("route", "v"));
        assert!(get(&samples, "ferrogate_snapshot_info", ("version", &v1)) == 1.0);
        assert!(
            samples
                .iter()
                .any(|(n, l, _)| n == "ferrogate_worker_rx_frames_total"
                    && l.iter().any(|(k, _)| k == "worker"))
        );
        assert!(
            samples
                .iter()
                .any(|(n, _, _)| n == "ferrogate_xdp_packets_total")
        );
        for _ in 0..3 {
            lab.curl(&format!("http://{VIP}/v")).unwrap();
        }
        let t0 = Instant::now();
        let mut moved = before;
        while moved < before + 3.0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            let after = parse_prometheus(&ctl_ok(&lab, &["metrics"]));
            moved = get(&after, "ferrogate_route_requests_total", ("route", "v"));
        }
        assert!(moved >= before + 3.0, "route counter {before} -> {moved}");

        // validate
        let two = config(&lab, "two.toml", "two");
        assert_eq!(ctl_ok(&lab, &["validate", two.to_str().unwrap()]), "ok\n");
        let bad = lab.state_dir().join("bad.toml");
        let bad_text = std::fs::read_to_string(&two).unwrap().replace(
            "status = 200, body = \"two\"",
            "status = \"two hundred\", body = \"two\"",
        );
        std::fs::write(&bad, &bad_text).unwrap();
        let bad_line = bad_text
            .lines()
            .position(|l| l.contains("two hundred"))
            .unwrap()
            + 1;
        let (code, _, err) = lab.ctl(&["validate", bad.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{}:{bad_line}:", bad.display())),
            "validate errors name file:line: {err}"
        );

        // apply of a new route while a keep-alive connection is open
        let (before_apply, after_apply) = lab.in_client(|| {
            let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
            let b = c.get("lab", "/v").unwrap();
            let out = ctl_ok(&lab, &["apply", two.to_str().unwrap()]);
            assert!(out.starts_with("applied version 2-"), "{out}");
            assert!(out.contains("all 1 workers switched within"), "{out}");
            let mut a = (0, String::new());
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                a = c
                    .get("lab", "/v")
                    .expect("the keep-alive connection survived the apply");
                if a.1 == "two" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (b, a)
        });
        assert_eq!(before_apply, (200, "one".to_string()));
        assert_eq!(
            after_apply,
            (200, "two".to_string()),
            "same connection sees the new route"
        );
        wait_body(&lab, "/v", "two").expect("new route serves");
        let status = ctl_ok(&lab, &["status"]);
        let v2 = field(&status, "version");
        assert!(v2.starts_with("2-") && v2 != v1, "{v2}");
        assert_eq!(field(&status, "workers_on_version"), "1", "{status}");
        assert_eq!(field(&status, "engine_snapshot_version"), "2", "{status}");

        // diff: running (two) vs the file on disk (--config one.toml)
        let diff = ctl_ok(&lab, &["diff"]);
        assert!(diff.contains("[listeners] changed"), "{diff}");
        assert!(diff.contains("[engine] unchanged"), "{diff}");
        assert!(
            diff.contains("- ") && diff.contains("two") && diff.contains("one"),
            "{diff}"
        );

        // an invalid apply is refused, nothing changes
        let (code, _, err) = lab.ctl(&["apply", bad.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("{}:{bad_line}:", bad.display())),
            "{err}"
        );
        assert!(
            err.contains(&format!("running version {v2} unchanged")),
            "{err}"
        );
        assert_eq!(field(&ctl_ok(&lab, &["status"]), "version"), v2);
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "two");

        // rollback restores the previous route
        let out = ctl_ok(&lab, &["rollback"]);
        assert!(out.contains(&format!("content of {v1}")), "{out}");
        wait_body(&lab, "/v", "one").expect("rollback restores the previous route");
        let status = ctl_ok(&lab, &["status"]);
        assert_eq!(
            field(&status, "content_hash"),
            v1.split_once('-').unwrap().1,
            "{status}"
        );
        let (code, _, err) = lab.ctl(&["rollback"]);
        assert_eq!(code, 1, "nothing older than v1 is kept: {err}");
        assert!(err.contains("no previous version"), "{err}");

        // /metrics counts what the engine answered: the applied version,
        // and one rollback of each outcome, the last one failed (the
        // invalid apply never reached it: `run`'s control daemon, which
        // `ctl` talks to, refused it). The daemon adds its own state.
        let m = parse_prometheus(&ctl_ok(&lab, &["metrics"]));
        let applies = |kind: &str, result: &str| {
            m.iter()
                .find(|(n, l, _)| {
                    n == "ferrogate_config_applies_total"
                        && l.contains(&("kind".into(), kind.into()))
                        && l.contains(&("result".into(), result.into()))
                })
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("no applies {kind} {result}"))
        };
        assert_eq!(applies("apply", "ok"), 1.0);
        assert_eq!(applies("apply", "failed"), 0.0);
        assert_eq!(applies("rollback", "ok"), 1.0);
        assert_eq!(applies("rollback", "failed"), 1.0);
        assert_eq!(metric(&m, "ferrogate_config_last_apply_successful"), 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        for t in [
            "ferrogate_config_last_apply_success_timestamp_seconds",
            "ferrogate_config_last_apply_failure_timestamp_seconds",
        ] {
            let v = metric(&m, t);
            assert!(v > now - 120.0 && v <= now + 1.0, "{t} {v} vs now {now}");
        }
        assert_eq!(
            metric(&m, "ferrogate_config_started_from_last_known_good"),
            0.0
        );
        assert_eq!(metric(&m, "ferrogate_snapshot_persist_errors_total"), 0.0);
        assert_eq!(metric(&m, "ferrogate_control_engine_connected"), 1.0);
        assert_eq!(metric(&m, "ferrogate_control_in_sync"), 1.0);
        assert!(metric(&m, "ferrogate_control_pushes_total") >= 1.0);

        // unknown socket: ctl fails
        let (code, _, _) = std::process::Command::new(ferrogate_tests::ferrogate_bin())
            .args(["ctl", "status", "--socket", "/nonexistent/x.sock"])
            .output()
            .map(|o| (o.status.code().unwrap_or(-1), o.stdout, o.stderr))
            .unwrap();
        assert_ne!(code, 0);
        drop(engine);
    });
}

#[test]
fn restart_with_only_the_state_dir_serves_the_last_applied_config() {
    lab_test("control_lkg", || {
        let lab = Lab::up(1);
        let one = config(&lab, "one.toml", "one");
        let mut engine = lab.start_engine_with(&one, "af_xdp", 1);
        let applied = config(&lab, "applied.toml", "applied");
        let out = ctl_ok(&lab, &["apply", applied.to_str().unwrap()]);
        let version = out
            .lines()
            .next()
            .unwrap()
            .strip_prefix("applied version ")
            .unwrap()
            .to_string();
        wait_body(&lab, "/v", "applied").expect("applied route");
        // The applied file disappears: the engine must not need it.
        std::fs::remove_file(&applied).unwrap();
        engine.kill9();

        let mut engine = lab.start_engine_args(None, "af_xdp", 1, true, &[]);
        assert!(
            engine
                .log()
                .contains("starting from the persisted last-known-good snapshot"),
            "{}",
            engine.log()
        );
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "applied");
        let status = ctl_ok(&lab, &["status"]);
        assert_eq!(field(&status, "version"), version, "{status}");
        assert_eq!(field(&status, "started_from"), "last-known-good");
        let m = parse_prometheus(&ctl_ok(&lab, &["metrics"]));
        assert_eq!(
            metric(&m, "ferrogate_config_started_from_last_known_good"),
            1.0
        );
        assert_eq!(metric(&m, "ferrogate_config_last_apply_successful"), 1.0);
        engine.stop();

        // A config that fails validation also falls back to it.
        let bad = lab.state_dir().join("bad.toml");
        std::fs::write(&bad, "vips = 3\n").unwrap();
        let engine = lab.start_engine_args(Some(&bad), "af_xdp", 1, true, &[]);
        assert!(
            engine.log().contains("the config does not validate"),
            "{}",
            engine.log()
        );
        assert_eq!(lab.curl(&format!("http://{VIP}/v")).unwrap(), "applied");
    });
}

#[test]
fn a_hundred_applies_under_keep_alive_load_fail_no_request() {
    lab_test("control_100_applies", || {
        let lab = Lab::up(2);
        let a = config(&lab, "a.toml", "a");
        let b = config(&lab, "b.toml", "b");
        let _engine = lab.start_engine_with(&a, "af_xdp", 2);
        let ns = lab.ns("client");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (served, switch_ms) = std::thread::scope(|s| {
            // A failed apply panics the body; the load threads must still stop.
            let _stop_guard = ferrogate_tests::StopOnDrop(&stop);
            let load = ferrogate_tests::load_until_stopped(s, &ns, 8, &stop, &["a", "b"]);
            std::thread::sleep(Duration::from_millis(200));
            let mut switch_ms = Vec::new();
            for i in 0..100 {
                let f = if i % 2 == 0 { &b } else { &a };
                let out = ctl_ok(&lab, &["apply", f.to_str().unwrap()]);
                let ms: f64 = out
                    .split("all 2 workers switched within ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("apply {i}: not every worker switched: {out}"));
                switch_ms.push(ms);
            }
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let served: Vec<u64> = load.into_iter().map(|h| h.join().unwrap()).collect();
            (served, switch_ms)
        });
        assert!(
            served.iter().all(|&n| n >= 1),
            "a load connection starved: {served:?}"
        );
        let status = ctl_ok(&lab, &["status"]);
        assert_eq!(field(&status, "counter"), "101", "{status}");
        assert_eq!(field(&status, "workers_on_version"), "2", "{status}");
        assert_eq!(
            field(&status, "kept_versions").split(',').count(),
            5,
            "{status}"
        );
        let mut sorted = switch_ms.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "100 applies under load: {} requests, none failed; apply -> all workers report it: p50 {:.2} ms, p99 {:.2} ms (polled every 0.5 ms)",
            served.iter().sum::<u64>(),
            sorted[49],
            sorted[98]
        );
    });
}
