//! Every cargo-fuzz target in `fuzz/` runs from its committed seeds for 30 s
//! (`FG_FUZZ_SECONDS` changes it) without a crash: the CI share of the
//! fuzzing; long runs are `fuzz/run.sh 3600` by hand.

use std::process::Command;

#[test]
fn every_fuzz_target_runs_from_its_seeds_without_a_crash() {
    let secs = std::env::var("FG_FUZZ_SECONDS").unwrap_or_else(|_| "30".into());
    let script = ferrogate_tests::workspace().join("fuzz/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&secs)
        .output()
        .expect("run fuzz/run.sh (cargo-fuzz from vendor-setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "fuzz/run.sh {secs}: {text}");
    // Each target ran and counted its executions.
    let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" ok")).collect();
    assert!(rows.len() >= 8, "{text}");
    for r in rows {
        let execs: u64 = r
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        assert!(execs > 1_000, "{r}");
    }
}
