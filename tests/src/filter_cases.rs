//! Filter-tier cases shared by the XDP program (`filter_e2e.rs`) and the
//! DPDK workers' software tier (`dpdk_e2e.rs`): one body per behaviour, so
//! both tiers are held to the same assertions and counter names.

use std::collections::HashMap;

use crate::{Lab, VIP, frames, lab_test, send_frames_timed, workspace};

const VIP4: [u8; 4] = [10, 77, 0, 10];
/// A second client address, for "another source" cases.
pub const CLIENT2: &str = "10.77.0.22";

/// Which filter tier a case runs against.
pub struct Tier {
    /// Prefix of the lab test's name.
    pub name: &'static str,
    /// `--backend` of the engine.
    pub backend: &'static str,
    /// Config appended before the case's own `[filter]` section.
    pub config: String,
}

impl Tier {
    /// The XDP program in front of AF_XDP sockets.
    pub fn xdp() -> Tier {
        Tier {
            name: "xdp",
            backend: "af_xdp",
            config: String::new(),
        }
    }

    /// The DPDK workers' software tier on a vdev (`vdev` as in
    /// `[engine.dpdk] vdevs`), without hugepages.
    pub fn dpdk(vdev: &str) -> Tier {
        Tier {
            name: "dpdk",
            backend: "dpdk",
            config: format!(
                "\n[engine.dpdk]\nvdevs = [\"{vdev}\"]\nhugepages = false\nmemory_mb = 256\nmbufs = 4095\n"
            ),
        }
    }

    /// Whether frames the tier passes as host traffic reach the stack too
    /// (DPDK: the port is the engine's alone) rather than the kernel.
    pub fn host_frames_reach_stack(&self) -> bool {
        self.backend == "dpdk"
    }

    fn test_name(&self, case: &str) -> String {
        format!("{}_{case}", self.name)
    }
}

/// Adds `CLIENT2` to the client namespace.
pub fn add_client2(lab: &Lab) {
    lab.exec(
        "client",
        &["ip", "addr", "add", &format!("{CLIENT2}/24"), "dev", "eth0"],
    )
    .unwrap();
}

/// curl from the client namespace with source address `src`.
pub fn curl_from(lab: &Lab, src: &str, url: &str) -> Result<String, String> {
    lab.exec(
        "client",
        &[
            "curl",
            "-sS",
            "-m",
            "4",
            "--interface",
            src,
            "--fail-with-body",
            url,
        ],
    )
    .map_err(|e| e.to_string())
}

/// How much counter `k` grew between two stats snapshots.
pub fn grew(before: &HashMap<String, u64>, after: &HashMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// Denied CIDRs (IPv4 and IPv6) get nothing, allowed sources get 200, the
/// host is never filtered.
pub fn denied_cidrs(tier: &Tier) {
    lab_test(&tier.test_name("cidr"), || {
        let lab = Lab::up(1);
        add_client2(&lab);
        let cfg = lab.config_with(
            "deny.toml",
            &format!(
                r#"{}
[filter]
[[filter.cidr]]
id = "deny-client2"
action = "deny"
cidrs = ["10.77.0.22/32", "fd77::22/128"]
"#,
                tier.config
            ),
        );
        lab.exec(
            "client",
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fd77::22/64",
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .unwrap();
        let engine = lab.start_engine_with(&cfg, tier.backend, 1);
        let before = engine.stats();
        // Allowed sources, both families.
        assert!(
            curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/ok"))
                .unwrap()
                .contains("path=/ok")
        );
        assert!(
            curl_from(&lab, "fd77::2", "http://[fd77::10]/ok6")
                .unwrap()
                .contains("path=/ok6")
        );
        // Denied sources: nothing comes back.
        assert!(curl_from(&lab, CLIENT2, &format!("http://{VIP}/no")).is_err());
        assert!(curl_from(&lab, "fd77::22", "http://[fd77::10]/no6").is_err());
        let after = engine.stats();
        assert!(
            grew(&before, &after, "xdp_rule_deny-client2_packets") >= 2,
            "{after:?}"
        );
        assert!(
            grew(&before, &after, "xdp_drop_deny_packets") >= 2,
            "{after:?}"
        );
        // The host is never filtered, even for a denied source.
        assert!(
            curl_from(&lab, CLIENT2, "http://10.77.0.1/host")
                .unwrap()
                .contains("edge host kernel")
        );
    });
}

/// `mode = "allow_list"`: only listed sources reach the VIP; upstream
/// replies still pass.
pub fn allow_list_mode(tier: &Tier) {
    lab_test(&tier.test_name("allow_list"), || {
        let lab = Lab::up(1);
        add_client2(&lab);
        let cfg = lab.config_with(
            "allow.toml",
            &format!(
                r#"{}
[filter]
mode = "allow_list"
[[filter.cidr]]
id = "office"
action = "allow"
cidrs = ["10.77.0.22/32", "fd77::/64"]
"#,
                tier.config
            ),
        );
        let engine = lab.start_engine_probe(&cfg, tier.backend, 1, false);
        // Upstream replies from the origin (not allow-listed) still arrive.
        assert!(
            curl_from(&lab, CLIENT2, &format!("http://{VIP}/in"))
                .unwrap()
                .contains("path=/in")
        );
        assert!(
            curl_from(&lab, "fd77::2", "http://[fd77::10]/in6")
                .unwrap()
                .contains("path=/in6")
        );
        assert!(curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/out")).is_err());
        let s = engine.stats();
        assert!(s["xdp_drop_not_allowed_packets"] >= 1, "{s:?}");
        assert!(s["xdp_rule_not-allow-listed_packets"] >= 1, "{s:?}");
        assert!(s["xdp_rule_office_packets"] >= 2, "{s:?}");
        assert!(s["xdp_rule_upstreams_packets"] >= 2, "{s:?}");
    });
}

/// A source flooding UDP at 4x its rate is cut to `pps × t + burst` while
/// another source is served.
pub fn source_rate_limit(tier: &Tier) {
    lab_test(&tier.test_name("rate"), || {
        let lab = Lab::up(1);
        add_client2(&lab);
        let (pps, burst) = (500u64, 50u64);
        let cfg = lab.config_with(
            "rate.toml",
            &format!(
                r#"{}
[filter]
[[filter.rate]]
id = "per-source-udp"
key = "source"
protocol = "udp"
pps = {pps}
burst_packets = {burst}
"#,
                tier.config
            ),
        );
        let engine = lab.start_engine_with(&cfg, tier.backend, 1);
        let (edge, client) = (lab.mac("edge"), lab.mac("client"));
        let flood: Vec<_> = (0..6000)
            .map(|_| frames::udp4(edge, client, [10, 77, 0, 22], VIP4, 9, 64))
            .collect();
        let before = engine.stats();
        // Another source keeps being served while .22 floods at 4x its rate.
        let other = std::thread::scope(|s| {
            let h = s.spawn(|| {
                (0..10)
                    .map(|i| {
                        curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/other{i}")).is_ok()
                    })
                    .filter(|ok| *ok)
                    .count()
            });
            let r = send_frames_timed(&lab.ns("client"), flood, 4 * pps).unwrap();
            (h.join().unwrap(), r)
        });
        let (ok, flood) = other;
        assert_eq!(ok, 10, "another source was affected");
        let after = engine.stats();
        let dropped = grew(&before, &after, "xdp_rule_per-source-udp_packets");
        assert_eq!(
            grew(&before, &after, "xdp_drop_rate_packets"),
            dropped,
            "{after:?}"
        );
        let passed = flood.sent as u64 - dropped;
        let (lo, hi) = flood.token_bucket_range(pps, burst);
        eprintln!(
            "sent {} in {:.2}s ({} pauses, longest {:.3}s), passed {passed}, a token bucket passes {lo:.0}..={hi:.0}",
            flood.sent,
            flood.secs,
            flood.gaps.len(),
            flood.gaps.iter().cloned().fold(0.0, f64::max),
        );
        assert!(
            passed as f64 >= lo * 0.9 && passed as f64 <= hi * 1.1,
            "passed {passed}, a token bucket passes {lo:.0}..={hi:.0} (±10 %)"
        );
    });
}

/// The scapy corpus (truncations, extension chains, fragments, bogus
/// flags, VLAN tags): each counted exactly, serving continues.
pub fn malformed_frames(tier: &Tier) {
    lab_test("malformed_full", || {
        let lab = Lab::up(1);
        let engine =
            lab.start_engine_with(&lab.config_with("m.toml", &tier.config), tier.backend, 1);
        let before = engine.stats();
        let script = workspace().join("tests/scripts/malformed_full.py");
        let mac = lab.edge_mac();
        let out = lab
            .exec(
                "client",
                &["/usr/bin/python3", script.to_str().unwrap(), "eth0", &mac],
            )
            .expect("scapy sender");
        let sent: HashMap<String, u64> = out
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            })
            .collect();
        let after = engine.stats();
        let g = |k: &str| grew(&before, &after, k);
        eprintln!("sent {sent:?}");
        assert_eq!(
            g("xdp_drop_fragment_vip_packets"),
            sent["fragments"],
            "{after:?}"
        );
        assert_eq!(
            g("xdp_bad_tcp_flags_packets"),
            sent["bogus_flags"],
            "{after:?}"
        );
        assert!(
            g("xdp_malformed_ipv6_packets") >= sent["ext_chain_too_long"] + sent["ext_truncated"],
            "{after:?}"
        );
        // Every truncation of a TCP SYN that cuts into IP or TCP is counted.
        assert!(
            g("xdp_malformed_ipv4_packets")
                + g("xdp_malformed_l4_packets")
                + g("xdp_malformed_ipv6_packets")
                >= sent["truncations"],
            "{after:?}"
        );
        // Tagged frames to a VIP die in the filter tier under their own
        // reason; tagged host traffic is not filtered.
        assert_eq!(
            g("xdp_drop_vlan_vip_packets"),
            sent["vlan_vip"],
            "{after:?}"
        );
        assert!(g("xdp_pass_host_packets") >= sent["vlan_host"], "{after:?}");
        // The stack never sees a tagged VIP frame; tagged host frames reach
        // it only where host traffic does, and are counted there.
        let host_tagged = if tier.host_frames_reach_stack() {
            sent["vlan_host"]
        } else {
            0
        };
        assert_eq!(g("stack_rx_drop_vlan"), host_tagged, "{after:?}");
        // Valid extension chains still reach the stack (and are answered or ignored there).
        assert!(
            g("xdp_ipv6_vip_packets") >= sent["ext_chain_ok"],
            "{after:?}"
        );
        let mut e = engine;
        assert!(e.is_running(), "{}", e.log());
        assert!(
            lab.curl(&format!("http://{VIP}/still"))
                .unwrap()
                .contains("path=/still")
        );
        assert!(e.stop().unwrap().success());
    });
}
