//! A route's canary in the lab (issue #20): half the requests go to a
//! canary pool whose endpoint refuses connections (every canary request
//! is a 5xx); the safety brake compares the arms over 1 s windows, trips,
//! logs and counts once, and from then on every request goes to the
//! baseline (100 % success) until the next apply, which gives the canary
//! its share again.

use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, lab_test};

fn config(lab: &Lab, percent: u32) -> String {
    let access = lab.state_dir().join("canary-access.log");
    format!(
        r#"vips = ["10.77.0.10/24"]

# Read only to explain a failure.
[access_log]
path = "{}"

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

# Nothing listens there: every request to it fails (502/503).
[[upstreams]]
name = "broken-canary"
endpoints = ["10.77.0.3:8099"]

[[listeners]]
port = 80

[[listeners.routes]]
name = "app"
path_prefix = "/app/"
upstream = "origin"
canary = {{ pool = "broken-canary", percent = {percent}, brake = {{ max_5xx_delta = 0.2, window_s = 1, min_requests = 5 }} }}

[[listeners.routes]]
name = "rest"
upstream = "origin"
"#,
        access.display()
    )
}

/// Statuses of `n` requests on one keep-alive connection.
fn burst(lab: &Lab, n: usize) -> Vec<u16> {
    let url = format!("http://{VIP}/app/x");
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "'%{http_code}\\n'"];
    // `-o` per URL: one applies to one transfer only, and a later body on
    // stdout ("Bad Gateway", no newline) would run into its status line.
    for _ in 0..n {
        argv.extend(["-o", "/dev/null", url.as_str()]);
    }
    // Every transfer's status, also when one of them failed (curl then
    // exits non-zero, and its "000" line says which).
    let (_, out) = lab.client_sh(&argv.join(" "));
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_failing_canary_trips_its_brake_and_the_next_apply_resets_it() {
    lab_test("canary", || {
        let lab = Lab::up(1);
        let path = lab.state_dir().join("canary.toml");
        std::fs::write(&path, config(&lab, 50)).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);

        // Load until the brake trips (a window is 1 s; both arms need 5).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failed = 0;
        let mut seen = Vec::new();
        loop {
            let statuses = burst(&lab, 20);
            // A transfer without a status (000: the connection ended
            // before a response) failed the client as much as a 5xx.
            failed += statuses.iter().filter(|&&s| s >= 500 || s == 0).count();
            seen.extend(statuses);
            if engine.stats().get("stack_canary_brake_trips").copied() == Some(1) {
                break;
            }
            assert!(Instant::now() < deadline, "the brake never tripped");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            failed > 0,
            "the canary took requests before the brake: {seen:?}\nstats: {:?}\naccess log:\n{}\nengine log:\n{}",
            engine.stats(),
            std::fs::read_to_string(lab.state_dir().join("canary-access.log")).unwrap_or_default(),
            engine.log()
        );
        // Off until the next apply: every request goes to the baseline.
        let after = burst(&lab, 60);
        assert_eq!(after.len(), 60, "{after:?}");
        assert!(after.iter().all(|&s| s == 200), "{after:?}");
        let st = engine.stats();
        assert_eq!(st.get("stack_canary_brake_trips"), Some(&1));
        assert!(st["stack_canary_requests"] > 0);
        assert!(
            engine.log().contains("canary brake tripped"),
            "the trip is logged"
        );

        // The next apply (the file changed, SIGHUP) brings the canary back.
        std::fs::write(&path, config(&lab, 40)).unwrap();
        engine.sighup();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !burst(&lab, 20).iter().any(|&s| s >= 500) {
            assert!(
                Instant::now() < deadline,
                "the canary never got requests again"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(engine);
    });
}
