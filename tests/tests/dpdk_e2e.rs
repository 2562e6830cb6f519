//! The DPDK backend in the lab: the real `ferrogate` binary (built with the
//! `dpdk` feature, the default) runs `backend = "dpdk"` on a `net_af_packet`
//! (or `net_af_xdp`) vdev over the edge veth inside the lab's edge
//! namespace, without hugepages (and once on 2 MB hugepages). The same cases as `lab_e2e.rs` (keep-alive load over two
//! queues with hand-off, clean exit) and `filter_e2e.rs` (CIDR deny on IPv4
//! and IPv6, a per-source rate rule) — the filter tier runs in the workers
//! here — plus the start-up errors (missing hugepages, port, vdev; EAL
//! failure) as one clear line each.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrogate_tests::filter_cases::{self, CLIENT2, Tier, add_client2, curl_from, grew};
use ferrogate_tests::{Lab, VIP, ferrogate_bin, keep_alive_load, lab_test};

/// The lab's edge NIC as a one-queue af_packet vdev.
const AF_PACKET_1Q: &str = "net_af_packet0,iface=eth0,qpairs=1";

/// `[engine.dpdk]` for the lab: an af_packet vdev with `queues` queue pairs
/// on the edge's eth0, 256 MB of ordinary memory.
fn dpdk_section(queues: u32) -> String {
    Tier::dpdk(&format!("net_af_packet0,iface=eth0,qpairs={queues}")).config
}

#[test]
fn dpdk_two_queues_serves_2000_keep_alive_requests_with_hand_off() {
    lab_test("dpdk_two_queues", || {
        let lab = Lab::up(2);
        let cfg = lab.config_with("dpdk.toml", &dpdk_section(2));
        let mut engine = lab.start_engine_with(&cfg, "dpdk", 2);
        let log = engine.log();
        assert!(log.contains("backend=dpdk"), "{log}");
        assert!(log.contains("DPDK port started"), "{log}");
        let body = lab
            .curl(&format!("http://{VIP}/hello?x=1"))
            .expect("curl VIP");
        assert!(
            body.contains("origin 10.77.0.3:8080") && body.contains("path=/hello?x=1"),
            "unexpected body {body:?}"
        );
        let before = engine.stats();
        let (ok, errors) = keep_alive_load(&lab, 50, 40);
        assert!(
            errors.is_empty(),
            "failed requests: {errors:?}\nlog:\n{}",
            engine.log()
        );
        assert_eq!(ok, 2_000);
        let after = engine.stats();
        assert!(
            grew(&before, &after, "stack_requests") >= 2_000,
            "{after:?}"
        );
        assert!(
            grew(&before, &after, "stack_responses_2xx") >= 2_000,
            "{after:?}"
        );
        // Upstream replies hashed to the other queue were handed over.
        assert!(
            grew(&before, &after, "handoff_out") > 0,
            "the cross-queue path was not exercised: {after:?}"
        );
        assert_eq!(after["handoff_dropped"], 0, "{after:?}");
        // Port counters from rte_eth_stats / xstats, and the worker-side
        // filter tier's verdicts under the XDP counters' names.
        assert!(
            grew(&before, &after, "dpdk_port_ipackets") >= 2_000,
            "{after:?}"
        );
        assert!(
            grew(&before, &after, "dpdk_port_opackets") >= 2_000,
            "{after:?}"
        );
        assert!(
            after.contains_key("dpdk_xstat_rx_good_packets"),
            "{after:?}"
        );
        assert!(
            grew(&before, &after, "xdp_redirect_vip_packets") >= 2_000,
            "{after:?}"
        );
        assert!(lab.edge_xdp_gone(), "no XDP program under DPDK");
        let (code, metrics, err) = lab.ctl(&["metrics"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            metrics.contains("ferrogate_dpdk_port_total{counter=\"ipackets\"}")
                && metrics.contains("ferrogate_dpdk_xstat_total{xstat=\"rx_good_packets\"}"),
            "{metrics}"
        );
        assert!(engine.is_running());
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
        assert!(
            engine.log().contains("DPDK port closed, EAL cleaned up"),
            "{}",
            engine.log()
        );
    });
}

#[test]
fn dpdk_af_xdp_vdev_proxies_and_detaches_its_program() {
    lab_test("dpdk_af_xdp", || {
        let lab = Lab::up(1);
        // The af_xdp PMD attaches its own XDP program (libxdp) that takes
        // every frame of the queue: the edge host loses the interface while
        // it runs, like a NIC bound to DPDK.
        let cfg = lab.config_with(
            "afxdp.toml",
            r#"
[engine.dpdk]
vdevs = ["net_af_xdp0,iface=eth0,start_queue=0,queue_count=1"]
hugepages = false
memory_mb = 256
mbufs = 4095
"#,
        );
        let mut engine = lab.start_engine_with(&cfg, "dpdk", 1);
        assert!(
            engine.log().contains("driver=net_af_xdp"),
            "{}",
            engine.log()
        );
        let (ok, errors) = keep_alive_load(&lab, 10, 20);
        assert!(errors.is_empty(), "{errors:?}\nlog:\n{}", engine.log());
        assert_eq!(ok, 200);
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
        assert!(lab.edge_xdp_gone(), "the PMD's XDP program stayed attached");
    });
}

/// The same case and assertions as `filter_e2e.rs`, on the workers' software tier.
#[test]
fn dpdk_denied_cidrs_get_nothing_and_allowed_get_200_on_ipv4_and_ipv6() {
    filter_cases::denied_cidrs(&Tier::dpdk(AF_PACKET_1Q));
}

/// The same case and assertions as `filter_e2e.rs`, on the workers' software tier.
#[test]
fn dpdk_a_source_above_its_rate_is_cut_to_the_rate_and_others_are_unaffected() {
    filter_cases::source_rate_limit(&Tier::dpdk(AF_PACKET_1Q));
}

/// The same case and assertions as `filter_e2e.rs`, on the workers' software tier.
#[test]
fn dpdk_allow_list_mode_admits_only_listed_sources() {
    filter_cases::allow_list_mode(&Tier::dpdk(AF_PACKET_1Q));
}

/// The same case and assertions as `filter_e2e.rs`, on the workers' software tier.
#[test]
fn dpdk_malformed_frames_are_dropped_and_counted_like_xdp() {
    // Through net_af_xdp: the af_packet PMD sees IPv4 fragments only after
    // the kernel held or reassembled them; the af_xdp PMD sees frames as the
    // NIC does.
    filter_cases::malformed_frames(&Tier::dpdk(
        "net_af_xdp0,iface=eth0,start_queue=0,queue_count=1",
    ));
}

#[test]
fn dpdk_sighup_swaps_the_filter_rules() {
    lab_test("dpdk_reload", || {
        let lab = Lab::up(1);
        add_client2(&lab);
        let cfg = lab.config_with("live.toml", &dpdk_section(1));
        let engine = lab.start_engine_with(&cfg, "dpdk", 1);
        assert!(curl_from(&lab, CLIENT2, &format!("http://{VIP}/before")).is_ok());
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "{text}\n[filter]\n[[filter.cidr]]\nid = \"late-deny\"\naction = \"deny\"\ncidrs = [\"{CLIENT2}/32\"]\n"
            ),
        )
        .unwrap();
        engine.sighup();
        // Bounded wait for the swap (not a timing assertion).
        let t0 = std::time::Instant::now();
        let mut denied = false;
        while t0.elapsed() < std::time::Duration::from_secs(10) {
            if curl_from(&lab, CLIENT2, &format!("http://{VIP}/after")).is_err() {
                denied = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(denied, "new deny rule not active; log:\n{}", engine.log());
        assert!(curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/ok")).is_ok());
        let s = engine.stats();
        assert!(s["xdp_rule_late-deny_packets"] >= 1, "{s:?}");
        assert!(s["filter_generation"] >= 1, "{s:?}");
    });
}

/// Runs `ferrogate run` with `config` until it exits; (exit code, output).
fn run_to_exit(config: &Path, state: &Path, netns: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(ferrogate_bin());
    cmd.arg("run").arg("--config").arg(config);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    let out = cmd
        .args(["--backend", "dpdk", "--admin-socket", "none", "--state-dir"])
        .arg(state)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("spawn ferrogate run");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The one `DPDK: ...` line of the error; asserts there is exactly one and
/// no panic.
fn dpdk_error_line(code: i32, out: &str) -> String {
    assert_ne!(code, 0, "should have failed:\n{out}");
    assert!(!out.contains("panicked"), "panic:\n{out}");
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("DPDK: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one DPDK error line:\n{out}");
    lines[0].to_string()
}

fn free_hugepages() -> u64 {
    std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("free_hugepages")).ok())
                .filter_map(|s| s.trim().parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn dpdk_start_up_errors_are_one_clear_line_each() {
    lab_test("dpdk_errors", || {
        let lab = Lab::up(1);
        let state = lab.state_dir().join("state");
        let edge = lab.ns("edge");
        // (config, what the one error line must name)
        let cases: [(&str, &str, &[&str]); 3] = [
            (
                "noport.toml",
                "[engine.dpdk]\nvdevs = [\"net_null0\"]\nport = \"net_null7\"\nhugepages = false\nmemory_mb = 128\n",
                &["port \"net_null7\" not found", "net_null0"],
            ),
            // Its interface is not in the namespace: the vdev does not probe.
            (
                "novdev.toml",
                "[engine.dpdk]\nvdevs = [\"net_af_packet0,iface=fgnosuch0\"]\nhugepages = false\nmemory_mb = 128\n",
                &["net_af_packet0", "did not probe"],
            ),
            // An EAL failure: an option it does not know.
            (
                "eal.toml",
                "[engine.dpdk]\nvdevs = [\"net_null0\"]\nhugepages = false\nmemory_mb = 128\neal_args = [\"--fg-no-such-option\"]\n",
                &["EAL initialisation failed", "--fg-no-such-option"],
            ),
        ];
        for (name, extra, wants) in cases {
            let c = lab.config_with(name, extra);
            let (code, out) = run_to_exit(&c, &state, Some(&edge));
            let line = dpdk_error_line(code, &out);
            for w in wants {
                assert!(line.contains(w), "{name}: {line}");
            }
        }

        // Hugepages asked for but none free (only checkable where none are reserved).
        if free_hugepages() == 0 {
            let c = lab.config_with(
                "huge.toml",
                "[engine.dpdk]\nvdevs = [\"net_null0\"]\nhugepages = true\n",
            );
            let (code, out) = run_to_exit(&c, &state, Some(&edge));
            let line = dpdk_error_line(code, &out);
            assert!(
                line.contains("no free hugepages") && line.contains("nr_hugepages"),
                "{line}"
            );
        } else {
            eprintln!("hugepages reserved on this machine: missing-hugepages case not checked");
        }

        // A bad [engine.dpdk] key is a config error with file:line:col.
        let c = lab.config_with(
            "badcfg.toml",
            "[engine.dpdk]\nvdevs = [\"net_null0\"]\nmbufs = 4095\nmbuf_cache = 4000\n",
        );
        let out = Command::new(ferrogate_bin())
            .arg("check")
            .arg(&c)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("badcfg.toml:") && text.contains("engine.dpdk.mbuf_cache"),
            "{text}"
        );
    });
}

/// Reserves 2 MB hugepages and mounts a hugetlbfs for one test; restores
/// `nr_hugepages` and unmounts on drop (also when the test fails).
struct Hugepages {
    before: u64,
    mount: PathBuf,
}

impl Hugepages {
    const NR: &'static str = "/proc/sys/vm/nr_hugepages";

    fn reserve(extra: u64, mount: PathBuf) -> Option<Hugepages> {
        let before: u64 = std::fs::read_to_string(Self::NR)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::fs::write(Self::NR, (before + extra).to_string()).ok()?;
        let g = Hugepages {
            before,
            mount: mount.clone(),
        };
        std::fs::create_dir_all(&mount).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"])
            .arg(&mount)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok || free_hugepages() < extra {
            return None; // drop restores
        }
        Some(g)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::write(Self::NR, self.before.to_string());
    }
}

#[test]
fn dpdk_on_hugepages_serves_keep_alive_requests() {
    lab_test("dpdk_hugepages", || {
        let lab = Lab::up(1);
        let mount = lab.state_dir().join("hugetlbfs");
        let Some(_huge) = Hugepages::reserve(160, mount.clone()) else {
            eprintln!("dpdk_hugepages: skipped: could not reserve 2 MB hugepages here");
            return;
        };
        let cfg = lab.config_with(
            "huge.toml",
            &format!(
                r#"
[engine.dpdk]
vdevs = ["net_af_packet0,iface=eth0"]
hugepages = true
huge_dir = "{}"
memory_mb = 256
mbufs = 4095
"#,
                mount.display()
            ),
        );
        let mut engine = lab.start_engine_with(&cfg, "dpdk", 1);
        assert!(engine.log().contains("--in-memory"), "{}", engine.log());
        let (ok, errors) = keep_alive_load(&lab, 10, 20);
        assert!(errors.is_empty(), "{errors:?}\nlog:\n{}", engine.log());
        assert_eq!(ok, 200);
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    });
}

/// A process in one of the lab's namespaces, killed (by its PID) on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue #24's exception path: the af_xdp vdev takes every frame of the
/// edge NIC (as DPDK takes a bound NIC), and the host's own addresses live
/// on the exception TAP. The host answers ping (IPv4 and IPv6, through ARP
/// and neighbour discovery) and serves HTTP through the port while the VIP
/// is served by the stack on the same port.
#[test]
fn dpdk_exception_tap_carries_the_hosts_own_traffic_beside_the_vip() {
    lab_test("dpdk_exception", || {
        exception_case("net_af_xdp0,iface=eth0,start_queue=0,queue_count=1", 1)
    });
    // Two workers: a TAP queue each (IFF_MULTI_QUEUE).
    lab_test("dpdk_exception_2q", || {
        exception_case("net_af_packet0,iface=eth0,qpairs=2", 2)
    });
}

fn exception_case(vdev: &str, queues: u32) {
    let lab = Lab::up(queues);
    let cfg = lab.config_with(
        "exception.toml",
        &format!(
            "[engine.dpdk]\nvdevs = [\"{vdev}\"]\nhugepages = false\nmemory_mb = 256\nmbufs = 4095\nexception_iface = \"fgx0\"\n"
        ),
    );
    // The host's addresses leave the NIC DPDK takes.
    for a in ["10.77.0.1/24", "fd77::1/64"] {
        lab.exec("edge", &["ip", "addr", "del", a, "dev", "eth0"])
            .expect("ip addr del");
    }
    let mut engine = lab.start_engine_with(&cfg, "dpdk", queues);
    let log = engine.log();
    assert!(log.contains("exception path"), "{log}");
    let mac = lab.edge_mac();
    let link = lab
        .exec("edge", &["ip", "-o", "link", "show", "dev", "fgx0"])
        .expect("the engine made the TAP");
    assert!(link.contains(&mac) && link.contains("UP"), "{link}");
    lab.exec(
        "edge",
        &["ip", "addr", "add", "10.77.0.1/24", "dev", "fgx0"],
    )
    .unwrap();
    lab.exec(
        "edge",
        &["ip", "addr", "add", "fd77::1/64", "dev", "fgx0", "nodad"],
    )
    .unwrap();
    // No link-local address of its own: the stack's comes from the
    // same MAC.
    let addrs = lab
        .exec("edge", &["ip", "-6", "-o", "addr", "show", "dev", "fgx0"])
        .unwrap();
    assert!(!addrs.contains("fe80:"), "{addrs}");
    let server = Command::new("ip")
        .args(["netns", "exec", &lab.ns("edge")])
        .arg(ferrogate_bin().with_file_name("fg-test-origin"))
        .args(["--listen", "10.77.0.1:8099", "--name", "edge-host"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn fg-test-origin");
    let _server = Child(server);
    let before = engine.stats();
    let (ok, out) = lab.client_sh("ping -c 3 -i 0.2 -W 2 10.77.0.1");
    assert!(ok, "ping 10.77.0.1: {out}\nlog:\n{}", engine.log());
    let (ok, out) = lab.client_sh("ping -6 -c 3 -i 0.2 -W 2 fd77::1");
    assert!(ok, "ping fd77::1: {out}\nlog:\n{}", engine.log());
    let mut host = String::new();
    for _ in 0..50 {
        if let Ok(b) = lab.curl("http://10.77.0.1:8099/host") {
            host = b;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(host.contains("edge-host"), "host HTTP: {host:?}");
    let vip = lab.curl(&format!("http://{VIP}/vip")).expect("curl VIP");
    assert!(vip.contains("origin 10.77.0.3:8080"), "{vip:?}");
    let (ok, errors) = keep_alive_load(&lab, 4, 25);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok, 100);
    let after = engine.stats();
    assert!(grew(&before, &after, "exception_to_host") >= 6, "{after:?}");
    assert!(
        grew(&before, &after, "exception_from_host") >= 6,
        "{after:?}"
    );
    assert_eq!(after["exception_dropped"], 0, "{after:?}");
    let st = engine.stop().expect("exit status");
    assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    // The TAP the engine made outlives it, with the host's addresses.
    let kept = lab
        .exec("edge", &["ip", "-o", "addr", "show", "dev", "fgx0"])
        .unwrap_or_default();
    assert!(kept.contains("10.77.0.1/24"), "{kept:?}");
}
