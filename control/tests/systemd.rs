//! `packaging/systemd/ferrogate.service` and `packaging/logrotate/ferrogate`:
//! what the unit must say (notify with a watchdog, restart on failure,
//! reload by SIGHUP, the capabilities instead of full root), and
//! `systemd-analyze verify` on it where systemd is installed (its
//! ExecStart pointed at the binary this build made). The notify protocol
//! itself is tested end to end in `tests/tests/systemd_e2e.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unit() -> String {
    std::fs::read_to_string(repo().join("packaging/systemd/ferrogate.service"))
        .expect("packaging/systemd/ferrogate.service")
}

/// The values of `key=` in the unit (comments and sections skipped).
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn one(unit: &str, key: &str) -> String {
    let v = values(unit, key);
    assert_eq!(v.len(), 1, "{key}= must appear once: {v:?}");
    v[0].clone()
}

#[test]
fn the_unit_is_notify_with_a_watchdog_restarts_reloads_and_bounds_capabilities() {
    let u = unit();
    assert_eq!(one(&u, "Type"), "notify");
    assert_eq!(one(&u, "NotifyAccess"), "main");
    assert_eq!(one(&u, "Restart"), "on-failure");
    assert_eq!(one(&u, "ExecReload"), "/bin/kill -HUP $MAINPID");
    let wd: u64 = one(&u, "WatchdogSec")
        .parse()
        .expect("WatchdogSec in seconds");
    assert!((5..=300).contains(&wd), "WatchdogSec={wd}");
    let start = one(&u, "ExecStart");
    assert!(start.starts_with("/usr/bin/ferrogate run "), "{start}");
    for arg in ["--config ", "--state-dir ", "--admin-socket "] {
        assert!(start.contains(arg), "ExecStart lacks {arg}: {start}");
    }
    let bound = one(&u, "CapabilityBoundingSet");
    let bound: Vec<&str> = bound.split_whitespace().collect();
    for cap in [
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
        "CAP_IPC_LOCK",
    ] {
        assert!(bound.contains(&cap), "{cap} missing from {bound:?}");
    }
    assert!(!bound.iter().any(|c| c.starts_with('~')), "a deny list");
    assert_eq!(
        one(&u, "AmbientCapabilities").split_whitespace().count(),
        bound.len()
    );
    assert_eq!(one(&u, "NoNewPrivileges"), "yes");
    assert_eq!(one(&u, "LimitMEMLOCK"), "infinity");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed on this machine");
        return;
    }
    // The unit as installed, but running the binary this build made
    // (verify checks that ExecStart's program exists and is executable).
    let dir = std::env::temp_dir().join(format!("fg-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let verify = |text: &str| {
        let path = dir.join("ferrogate.service");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            // The man page is installed by the package, not by the build.
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // verify exits 0 on a mere warning (an unknown Type=, …): any line
        // naming the unit is a failure here.
        let about_unit: Vec<&str> = err.lines().filter(|l| l.contains("ferrogate")).collect();
        (out.status.success() && about_unit.is_empty(), err)
    };
    let text = unit().replace("/usr/bin/ferrogate", env!("CARGO_BIN_EXE_ferrogate"));
    let (ok, err) = verify(&text);
    assert!(ok, "systemd-analyze verify:\n{err}");
    // The check can fail: a misspelt setting is reported.
    let (ok, err) = verify(&text.replace("Type=notify", "Type=notifyy"));
    assert!(!ok, "a bad Type= passed verify: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logrotate_rotates_the_access_logs_without_copytruncate() {
    let path = repo().join("packaging/logrotate/ferrogate");
    let text = std::fs::read_to_string(&path).expect("packaging/logrotate/ferrogate");
    assert!(text.contains("/var/log/ferrogate/"), "{text}");
    // The writer reopens a moved file: copying and truncating would lose
    // lines written between the two.
    let directives: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(!directives.contains(&"copytruncate"), "{text}");
    assert!(directives.contains(&"missingok"), "{text}");
    match Command::new("logrotate").arg("-d").arg(&path).output() {
        Err(_) => println!("logrotate -d skipped: logrotate is not installed"),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "logrotate -d {}:\n{err}",
                path.display()
            );
            assert!(!err.contains("error:"), "{err}");
        }
    }
}
