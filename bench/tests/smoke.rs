//! CI smoke: `ferrogate-bench all --smoke` (1 round, 1 s per measurement,
//! 2,000 idle connections for `idle`, 500 keys for `cache`, `l4`'s TCP and
//! UDP variants)
//! so the harness cannot rot. No assertion on speed; the bench itself fails
//! when a contender returns errors or nothing. Needs root (namespaces, XDP,
//! iptables); skipped with a message otherwise.

use std::process::Command;

#[test]
fn all_scenarios_smoke() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("all_scenarios_smoke: skipped: needs root (network namespaces, XDP, iptables)");
        return;
    }
    let out = std::env::temp_dir().join(format!("ferrogate-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let prefix = format!("fs{}-", std::process::id() % 100_000);
    let st = Command::new(env!("CARGO_BIN_EXE_ferrogate-bench"))
        .args(["all", "--smoke", "--prefix", &prefix, "--out"])
        .arg(&out)
        .status()
        .expect("running ferrogate-bench");
    let left: Vec<String> = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .filter(|l| l.starts_with(&prefix))
    .map(String::from)
    .collect();
    assert!(
        left.is_empty(),
        "the bench left namespaces behind: {left:?}"
    );
    assert!(st.success(), "ferrogate-bench all --smoke failed: {st}");
    let expect: [(&str, &[&str]); 11] = [
        ("http", &["direct", "ferrogate", "nginx", "haproxy"]),
        ("http-latency", &["direct", "ferrogate", "nginx", "haproxy"]),
        ("conn", &["direct", "ferrogate", "nginx", "haproxy"]),
        (
            "flood",
            &["ferrogate-xdp", "iptables-raw", "nft-netdev-ingress"],
        ),
        (
            "goodput-under-flood",
            &["ferrogate", "nginx+iptables", "nginx+nft"],
        ),
        // 2,000 idle connections in smoke mode.
        ("idle", &["ferrogate", "nginx"]),
        ("https", &["ferrogate", "nginx", "haproxy"]),
        (
            "tls-handshake",
            &["ferrogate", "nginx", "haproxy", "crypto floor"],
        ),
        ("h2", &["ferrogate", "nginx", "haproxy"]),
        // 500 keys in smoke mode; every contender at a hit ratio ≥ 0.95;
        // the offload rows (cold cache of 10 % of the keys).
        (
            "cache",
            &[
                "ferrogate",
                "nginx",
                "haproxy",
                "hit ratio",
                "offload tiny",
                "offload 16k",
            ],
        ),
        ("l4", &["direct", "ferrogate", "nginx", "haproxy"]),
    ];
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (scenario, contenders) in expect {
        for ext in ["json", "md"] {
            let f = files
                .iter()
                .find(|f| {
                    f.ends_with(&format!(".{ext}"))
                        && f.strip_prefix(scenario)
                            .and_then(|r| r.strip_prefix('-'))
                            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .unwrap_or_else(|| panic!("no {scenario} .{ext} report in {files:?}"));
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            for c in contenders {
                // A contender is either measured or reported unavailable
                // (ferrogate's deny rule before the filter tier exists).
                assert!(text.contains(c), "{f} does not mention {c}");
            }
        }
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("{scenario}-")) && f.ends_with(".svg")),
            "no {scenario} plot"
        );
    }
    l4_tables(&out, &files);
    let _ = std::fs::remove_dir_all(&out);
}

/// `l4`: a table per variant; UDP has nginx, no HAProxy (no UDP proxying),
/// and ferrogate either measured or "not measured" (before UDP listeners).
fn l4_tables(out: &std::path::Path, files: &[String]) {
    let md = files
        .iter()
        .find(|f| f.starts_with("l4-") && f.ends_with(".md"))
        .expect("an l4 report");
    let text = std::fs::read_to_string(out.join(md)).unwrap();
    for v in ["tcp-up", "tcp-down", "tcp-conn", "tcp-conn-tw", "udp"] {
        assert!(text.contains(&format!("## {v}\n")), "{md}: no {v} table");
    }
    let udp = text
        .split("## udp\n")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .unwrap();
    assert!(udp.contains("| nginx |"), "{md}: no nginx udp row");
    assert!(!udp.contains("| haproxy |"), "{md}: a HAProxy udp row");
    assert!(
        udp.contains("| ferrogate |") || text.contains("**ferrogate (udp)**: NOT MEASURED"),
        "{md}: ferrogate neither measured nor reported missing for udp"
    );
}

#[test]
fn scale_scenario_smoke() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("scale_scenario_smoke: skipped: needs root (network namespaces, XDP)");
        return;
    }
    let out = std::env::temp_dir().join(format!("ferrogate-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let prefix = format!("fz{}-", std::process::id() % 100_000);
    let st = Command::new(env!("CARGO_BIN_EXE_ferrogate-bench"))
        .args(["scale", "--smoke", "--prefix", &prefix, "--out"])
        .arg(&out)
        .status()
        .expect("running ferrogate-bench scale");
    assert!(st.success(), "ferrogate-bench scale --smoke failed: {st}");
    let md = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .expect("a markdown report");
    let text = std::fs::read_to_string(md).unwrap();
    for who in [
        "ferrogate 1 worker",
        "ferrogate 2 workers",
        "ferrogate busy",
        "ferrogate adaptive",
        "ferrogate interrupt",
    ] {
        assert!(text.contains(who), "{who} missing from the report");
    }
    let _ = std::fs::remove_dir_all(&out);
}
