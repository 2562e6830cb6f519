//! `ferrogate-bench loss --smoke` (issue #19): one impaired cell (1 % loss
//! each way, 10 ms RTT), 3 downloads of 64 KiB and of 1 MiB and 3 uploads
//! of 1 MiB through ferrogate and through nginx, ~25 s. Every transfer
//! must complete with status 200 and the whole body, through both
//! contenders; the reports must exist and hold the cells, with ferrogate's
//! TCP counters per cell (and its retransmissions in the lossy download
//! cell); the lab must be gone afterwards. Not part of `all --smoke`: the
//! scenario needs its own lab with the impairment relay on the client
//! link. Needs root; skipped with a message otherwise.

use std::path::PathBuf;
use std::process::Command;

const VARIANTS: [(&str, f64, bool); 3] = [
    ("download loss 1% rtt 10ms 64k", 65536.0, false),
    ("download loss 1% rtt 10ms 1m", 1048576.0, false),
    ("upload loss 1% rtt 10ms 1m", 1048576.0, true),
];

#[test]
fn loss_scenario_smoke() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("loss_scenario_smoke: skipped: needs root (network namespaces, XDP)");
        return;
    }
    let out = std::env::temp_dir().join(format!("ferrogate-bench-loss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let prefix = format!("fy{}-", std::process::id() % 100_000);
    let st = Command::new(env!("CARGO_BIN_EXE_ferrogate-bench"))
        .args(["loss", "--smoke", "--prefix", &prefix, "--out"])
        .arg(&out)
        .status()
        .expect("running ferrogate-bench loss");
    let left: Vec<String> = ferrogate_testkit::netns_list()
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert!(
        left.is_empty(),
        "the bench left namespaces behind: {left:?}"
    );
    assert!(st.success(), "ferrogate-bench loss --smoke failed: {st}");

    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("no report dir {}: {e}", out.display()))
        .map(|e| e.unwrap().path())
        .collect();
    let find = |ext: &str| {
        files
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap_or_else(|| panic!("no .{ext} report in {files:?}"))
    };
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(find("json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(find("md")).unwrap();
    find("svg");

    // Per variant and contender: 3 transfers, 3 complete, none failed.
    for (v, _, _) in VARIANTS {
        assert!(
            md.contains(&format!("## {v}\n")),
            "no {v} table in the report"
        );
        for who in ["ferrogate", "nginx"] {
            let s = j["samples"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["variant"] == v && s["contender"] == who)
                .unwrap_or_else(|| panic!("no sample {v} {who}"));
            assert!(s["error"].is_null(), "{v} {who}: {}", s["error"]);
            let m = |k: &str| s["metrics"][k].as_f64().unwrap_or(-1.0);
            assert_eq!(
                (m("attempts"), m("ok"), m("failures")),
                (3.0, 3.0, 0.0),
                "{v} {who}"
            );
            assert!(m("goodput_mbps") > 0.0 && m("p99_s") > 0.0, "{v} {who}");
        }
    }
    // Every single transfer: status 200, the whole body, both contenders
    // (contender 0 = ferrogate, 1 = nginx), as many of each as asked.
    let rows = j["timeseries"].as_array().expect("timeseries");
    for (v, bytes, upload) in VARIANTS {
        for who in [0.0, 1.0] {
            let mine: Vec<&serde_json::Value> = rows
                .iter()
                .filter(|r| {
                    r["bytes_expected"] == bytes
                        && r["upload"] == if upload { 1.0 } else { 0.0 }
                        && r["contender"] == who
                })
                .collect();
            assert_eq!(mine.len(), 3, "{v} contender {who}: transfers");
            for r in mine {
                assert_eq!(r["http_code"], 200.0, "{v} {who}: {r}");
                assert_eq!(r["bytes"], bytes, "{v} {who}: {r}");
                assert_eq!(r["curl_exit"], 0.0, "{v} {who}: {r}");
                assert_eq!(r["ok"], 1.0, "{v} {who}: {r}");
                assert_eq!(r["loss_pct"], 1.0);
                assert_eq!(r["rtt_ms"], 10.0);
            }
        }
    }
    // The impairment was there: the relay dropped frames in the cell.
    assert!(
        md.contains("| download | 1% | 10 | 64k |") && md.contains("| upload | 1% | 10 | 1m |"),
        "the All cells table misses a cell"
    );
    let lost: u64 = md
        .lines()
        .filter(|l| l.starts_with("- download loss 1% rtt 10ms"))
        .filter_map(|l| {
            l.split("(rx): ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        lost > 0,
        "the relay lost no frame towards the client at 1 %"
    );

    // ferrogate's own TCP counters were read per cell (a `timeseries` row
    // marked `cell_counters`, and the cell's line in the report). The
    // download cell sends ~2,300 data frames from ferrogate to the client
    // (3 x 64 KiB + 3 x 1 MiB), 1 % of them dropped: every lost one is
    // resent by fast retransmit or after an RTO (P(no loss) ≈ e^-23), so
    // ferrogate's loss recovery must show.
    for upload in [0.0, 1.0] {
        let cell = rows
            .iter()
            .find(|r| r["cell_counters"] == 1.0 && r["upload"] == upload)
            .unwrap_or_else(|| panic!("no cell_counters row (upload {upload}) in timeseries"));
        for k in [
            "fg_tcp_fast_retransmits",
            "fg_tcp_retransmit_timeouts",
            "fg_tcp_tx_buffers_grown",
            "fg_tcp_rx_buffers_grown",
            "fg_tcp_buffer_growth_refused",
            "fg_tcp_buffer_grown_bytes",
        ] {
            assert!(cell[k].is_f64(), "{k} not read in the cell: {cell}");
        }
        assert_eq!(cell["fg_transfers"], if upload == 1.0 { 3.0 } else { 6.0 });
        if upload == 0.0 {
            let resent = cell["fg_tcp_fast_retransmits"].as_f64().unwrap()
                + cell["fg_tcp_retransmit_timeouts"].as_f64().unwrap();
            assert!(
                resent > 0.0,
                "ferrogate retransmitted nothing in a cell with loss: {cell}"
            );
        }
    }
    let line = md
        .lines()
        .find(|l| l.starts_with("- download loss 1% rtt 10ms"))
        .expect("the download cell's counter line");
    assert!(
        line.contains("ferrogate TCP (6 transfers): fast retransmits ")
            && !line.contains("not read"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
