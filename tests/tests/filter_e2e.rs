//! The XDP filter tier in the lab: CIDR deny/allow (IPv4 and IPv6), per-source
//! and SYN rate limits, L4 rules, live reload under load, malformed frames.

use std::time::{Duration, Instant};

use ferrogate_tests::{
    HttpConn, Lab, VIP, enter_netns, frames, lab_test, send_frames, send_frames_timed, workspace,
};

use ferrogate_tests::filter_cases::{self, CLIENT2, Tier, add_client2, curl_from, grew};

const VIP4: [u8; 4] = [10, 77, 0, 10];

#[test]
fn denied_cidrs_get_nothing_and_allowed_get_200_on_ipv4_and_ipv6() {
    filter_cases::denied_cidrs(&Tier::xdp());
}

#[test]
fn allow_list_mode_admits_only_listed_sources() {
    filter_cases::allow_list_mode(&Tier::xdp());
}

#[test]
fn a_source_above_its_rate_is_cut_to_the_rate_and_others_are_unaffected() {
    filter_cases::source_rate_limit(&Tier::xdp());
}

#[test]
fn spoofed_syn_flood_is_limited_and_keep_alive_clients_keep_working() {
    lab_test("syn_flood", || {
        let lab = Lab::up(1);
        let (global, burst) = (300u64, 30u64);
        let cfg = lab.config_with(
            "syn.toml",
            &format!(
                r#"
[filter]
[[filter.rate]]
id = "syn-per-source"
syn_only = true
pps = 20
burst_packets = 10
[[filter.rate]]
id = "syn-vip80"
key = "global"
syn_only = true
vip = "10.77.0.10"
port = 80
pps = {global}
burst_packets = {burst}
"#
            ),
        );
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let (edge, client) = (lab.mac("edge"), lab.mac("client"));
        // 20,000 SYNs from random sources in 198.18.0.0/15.
        let mut x: u32 = 0x1234_5678;
        let flood: Vec<_> = (0..20_000u32)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let src = [198, 18 + (x >> 31) as u8, (x >> 8) as u8, x as u8];
                frames::syn4(edge, client, src, VIP4, 1024 + (i % 60000) as u16, 80)
            })
            .collect();
        let ns = lab.ns("client");
        let before = engine.stats();
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let (served, flood) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                enter_netns(&ns).unwrap();
                let mut conns: Vec<_> = (0..5)
                    .map(|_| HttpConn::connect(&format!("{VIP}:80")).unwrap())
                    .collect();
                connected_tx.send(()).unwrap();
                let mut served = 0;
                let end = Instant::now() + Duration::from_secs(3);
                while Instant::now() < end {
                    for c in &mut conns {
                        let (status, body) = c
                            .get("lab", "/during")
                            .expect("keep-alive request during the flood");
                        assert_eq!(status, 200, "{body}");
                        served += 1;
                    }
                }
                served
            });
            // The keep-alive clients connect before the flood (their SYNs
            // would otherwise compete with it for the global SYN budget).
            connected
                .recv_timeout(Duration::from_secs(10))
                .expect("keep-alive clients connect before the flood");
            let r = send_frames_timed(&ns, flood, 10_000).unwrap();
            (h.join().unwrap(), r)
        });
        let after = engine.stats();
        let limited = grew(&before, &after, "xdp_rule_syn-vip80_packets")
            + grew(&before, &after, "xdp_rule_syn-per-source_packets");
        let admitted = flood.sent as u64 - limited;
        let (lo, hi) = flood.token_bucket_range(global, burst);
        eprintln!(
            "sent {} SYNs in {:.2}s ({} pauses), admitted {admitted} (a token bucket admits {lo:.0}..={hi:.0}), served {served} requests",
            flood.sent,
            flood.secs,
            flood.gaps.len()
        );
        assert!(
            admitted as f64 <= hi * 1.1,
            "{admitted} SYNs admitted, cap {hi:.0}"
        );
        assert!(
            admitted as f64 >= lo * 0.9,
            "limit too strict: {admitted} of {lo:.0}..={hi:.0}"
        );
        assert!(served >= 5, "keep-alive clients starved: {served}");
        // New legitimate connections still succeed after the flood.
        assert!(
            lab.curl(&format!("http://{VIP}/after"))
                .unwrap()
                .contains("path=/after")
        );
    });
}

#[test]
fn l4_rules_keep_only_listed_ports_open() {
    lab_test("l4", || {
        let lab = Lab::up(1);
        let cfg = lab.config_with(
            "l4.toml",
            r#"
[filter]
[[filter.l4]]
id = "vip-web-only"
vip = "10.77.0.10"
allow = ["tcp/80", "icmp"]
"#,
        );
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let (edge, client) = (lab.mac("edge"), lab.mac("client"));
        let udp: Vec<_> = (0..100)
            .map(|_| frames::udp4(edge, client, [10, 77, 0, 2], VIP4, 53, 32))
            .collect();
        let before = engine.stats();
        send_frames(&lab.ns("client"), udp, 0).unwrap();
        assert!(
            lab.curl(&format!("http://{VIP}/web"))
                .unwrap()
                .contains("path=/web")
        );
        lab.exec("client", &["ping", "-c", "1", "-W", "1", VIP])
            .expect("ICMP allowed");
        let after = engine.stats();
        assert_eq!(
            grew(&before, &after, "xdp_rule_vip-web-only_packets"),
            100,
            "{after:?}"
        );
        assert_eq!(grew(&before, &after, "xdp_drop_l4_packets"), 100);
    });
}

#[test]
fn rules_change_under_load_without_failed_requests_and_apply_on_sighup() {
    lab_test("reload", || {
        let lab = Lab::up(2);
        add_client2(&lab);
        let cfg = lab.config_with("live.toml", "");
        let engine = lab.start_engine_with(&cfg, "af_xdp", 2);
        assert!(curl_from(&lab, CLIENT2, &format!("http://{VIP}/before")).is_ok());
        let before = engine.stats();
        let ns = lab.ns("client");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (served, applied_in) = std::thread::scope(|s| {
            // A panic in the body must still stop the load threads.
            let _stop_guard = ferrogate_tests::StopOnDrop(&stop);
            let load: Vec<_> = (0..8)
                .map(|_| {
                    let (ns, stop) = (&ns, &stop);
                    s.spawn(move || {
                        enter_netns(ns).unwrap();
                        let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
                        let mut n = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let (status, _) = c
                                .get("lab", "/load")
                                .expect("legit request failed during reload");
                            assert_eq!(status, 200);
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(500));
            let base = std::fs::read_to_string(workspace().join("configs/lab.toml")).unwrap();
            let new = format!(
                "{base}\n[filter]\n[[filter.cidr]]\nid = \"late-deny\"\naction = \"deny\"\ncidrs = [\"{CLIENT2}/32\"]\n"
            )
            .replace("[[listeners.routes]]\nname = \"health\"", "[[listeners.routes]]\nname = \"version\"\npath_prefix = \"/version\"\nrespond = { status = 200, body = \"v2\" }\n\n[[listeners.routes]]\nname = \"health\"");
            std::fs::write(&cfg, new).unwrap();
            let t0 = Instant::now();
            engine.sighup();
            let mut applied = None;
            while t0.elapsed() < Duration::from_secs(3) {
                if curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/version"))
                    .is_ok_and(|b| b == "v2")
                {
                    applied = Some(t0.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let served: Vec<usize> = load.into_iter().map(|h| h.join().unwrap()).collect();
            (served, applied)
        });
        let applied = applied_in.expect("the new snapshot never answered /version");
        // How fast is a figure for notes, not an assert (2 shared cores).
        eprintln!(
            "the new snapshot answered {applied:?} after SIGHUP; requests per connection {served:?}"
        );
        assert!(
            served.iter().all(|&n| n >= 1),
            "a load connection starved: {served:?}"
        );
        assert!(
            curl_from(&lab, CLIENT2, &format!("http://{VIP}/after")).is_err(),
            "new deny rule not active"
        );
        let s = engine.stats();
        assert!(s["xdp_rule_late-deny_packets"] >= 1, "{s:?}");
        // One reload is one atomic swap: the rule set flipped generation
        // once and the workers run the next snapshot.
        assert_eq!(
            s["filter_generation"],
            1 - before["filter_generation"],
            "the rule set must flip exactly once; before {before:?}, after {s:?}"
        );
        assert_eq!(s["snapshot_version"], before["snapshot_version"] + 1);
    });
}

#[test]
fn malformed_truncations_ext_headers_fragments_and_bogus_flags_are_dropped_and_counted() {
    filter_cases::malformed_frames(&Tier::xdp());
}

#[test]
fn a_million_prefix_deny_set_loads_and_denies() {
    lab_test("million", || {
        let lab = Lab::up(1);
        add_client2(&lab);
        // 1,000,000 /30s (100.64.0.0 - 100.125.9.255), plus the client's /32.
        let path = lab.state_dir().join("million.txt");
        let mut text = String::with_capacity(20_000_000);
        for i in 0..1_000_000u32 {
            let a = (100u32 << 24 | 64 << 16) + i * 4;
            text.push_str(&format!(
                "{}.{}.{}.{}/30\n",
                a >> 24,
                (a >> 16) & 255,
                (a >> 8) & 255,
                a & 255
            ));
        }
        text.push_str(&format!("{CLIENT2}/32\n"));
        std::fs::write(&path, text).unwrap();
        let cfg = lab.config_with(
            "million.toml",
            &format!("[filter]\n[[filter.cidr]]\nid = \"million\"\naction = \"deny\"\ncidr_files = [\"{}\"]\n", path.display()),
        );
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let log = engine.log();
        let line = log
            .lines()
            .find(|l| l.contains("filter rules applied"))
            .expect("apply log line");
        assert!(line.contains("prefixes=1000002"), "{line}");
        eprintln!("{line}");
        assert!(curl_from(&lab, "10.77.0.2", &format!("http://{VIP}/in")).is_ok());
        assert!(curl_from(&lab, CLIENT2, &format!("http://{VIP}/out")).is_err());
        assert!(engine.stats()["xdp_rule_million_packets"] >= 1);
    });
}
