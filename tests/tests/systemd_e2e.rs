//! `ferrogate run` under systemd's notify protocol (issue #25), with the
//! test as the service manager: `NOTIFY_SOCKET` names a datagram socket
//! the test binds, `WATCHDOG_USEC` asks for keep-alives. `READY=1` must
//! come once the engine serves (not before), `WATCHDOG=1` repeatedly at
//! about half the interval, and `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, ferrogate_bin, lab_test, respond_config};

fn recv(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ferrogate_run_notifies_ready_once_serving_then_watchdog_and_stopping() {
    lab_test("systemd_notify", || {
        let lab = Lab::up(1);
        let dir = lab.state_dir();
        let config = dir.join("notify.toml");
        std::fs::write(&config, respond_config("notified", "")).unwrap();
        let notify = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&notify).unwrap();
        let log = dir.join("notify-run.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(ferrogate_bin())
            .args(["run", "--config"])
            .arg(&config)
            .args(["--netns", &lab.ns("edge"), "--queues", "1"])
            .args(["--backend", "af_xdp", "--admin-socket"])
            .arg(dir.join("notify-admin.sock"))
            .arg("--state-dir")
            .arg(dir.join("notify-state"))
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "1000000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let t0 = Instant::now();
        let mut ready_at = None;
        let mut watchdogs = Vec::new();
        // Until READY=1 and three keep-alives after it (60 s at most).
        while t0.elapsed() < Duration::from_secs(60) && (ready_at.is_none() || watchdogs.len() < 3)
        {
            let Some(msg) = recv(&sock, Duration::from_millis(500)) else {
                continue;
            };
            if msg.lines().any(|l| l == "READY=1") {
                assert!(ready_at.is_none(), "READY=1 twice");
                // It is sent once the engine answers, which it does from
                // the loop that runs once it serves.
                assert!(
                    read_log().contains("ferrogate engine serving"),
                    "READY=1 before the engine served; log:\n{}",
                    read_log()
                );
                let body = lab.curl(&format!("http://{VIP}/v")).unwrap_or_default();
                assert_eq!(body, "notified", "the VIP answers once READY=1 is sent");
                ready_at = Some(Instant::now());
            }
            if msg.lines().any(|l| l == "WATCHDOG=1") && ready_at.is_some() {
                watchdogs.push(Instant::now());
            }
        }
        let ready = ready_at.unwrap_or_else(|| panic!("no READY=1; log:\n{}", read_log()));
        assert!(
            watchdogs.len() >= 3,
            "{} keep-alives after READY; log:\n{}",
            watchdogs.len(),
            read_log()
        );
        // Half of the 1 s watchdog: three keep-alives within ~1.5 s of
        // READY (generous: a loaded machine).
        let span = watchdogs[2].duration_since(ready);
        assert!(
            span < Duration::from_secs(4),
            "keep-alives too slow: {span:?}"
        );
        for w in watchdogs.windows(2) {
            let gap = w[1].duration_since(w[0]);
            assert!(
                gap >= Duration::from_millis(300),
                "keep-alives too often: {gap:?}"
            );
        }
        // SIGTERM: STOPPING=1, then a clean exit.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stopping = false;
        while Instant::now() < deadline && !stopping {
            if let Some(m) = recv(&sock, Duration::from_millis(500)) {
                stopping = m.lines().any(|l| l == "STOPPING=1");
            }
        }
        let status = child.wait().unwrap();
        assert!(stopping, "no STOPPING=1; log:\n{}", read_log());
        assert!(status.success(), "{status}; log:\n{}", read_log());
        let _ = std::fs::remove_file(&notify);
    });
}
