//! End-to-end tests of the first packet path in the lab: real namespaces,
//! real veths with XDP attached, the real `ferrogate` binary, curl and an
//! HTTP/1.1 client from the client namespace, nginx as origin.

use std::time::Duration;

use ferrogate_tests::{EDGE_HOST_IP, Lab, VIP, keep_alive_load, lab_test, workspace};

/// curl to the VIP returns the origin's body (it names the origin).
fn assert_proxied(lab: &Lab) {
    let body = lab
        .curl(&format!("http://{VIP}/hello?x=1"))
        .expect("curl VIP");
    assert!(
        body.contains("origin 10.77.0.3:8080") && body.contains("path=/hello?x=1"),
        "unexpected body {body:?}"
    );
}

fn no_kernel_listener_on_vip(lab: &Lab) {
    let ss = lab.exec("edge", &["ss", "-ltnH"]).expect("ss");
    for line in ss.lines() {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        assert!(
            !local.starts_with(VIP)
                && !local.starts_with("0.0.0.0:80")
                && !local.starts_with("*:80"),
            "a kernel socket could take VIP traffic: {line}"
        );
    }
}

fn two_queue_load(backend: &str) {
    let lab = Lab::up(2);
    let mut engine = lab.start_engine(backend, 2);
    assert_proxied(&lab);
    no_kernel_listener_on_vip(&lab);
    let before = engine.stats();
    let (ok, errors) = keep_alive_load(&lab, 50, 40);
    assert!(
        errors.is_empty(),
        "failed requests: {errors:?}\nlog:\n{}",
        engine.log()
    );
    assert_eq!(ok, 2_000);
    let after = engine.stats();
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert!(grew("stack_requests") >= 2_000, "{after:?}");
    assert!(grew("stack_responses_2xx") >= 2_000, "{after:?}");
    // Upstream replies RSS-hashed to the other queue were handed over.
    assert!(
        grew("handoff_out") > 0,
        "the cross-queue path was not exercised: {after:?}"
    );
    assert_eq!(after["handoff_dropped"], 0, "{after:?}");
    if backend == "af_xdp" {
        // Each request is at least one frame through the XDP redirect.
        assert!(grew("xdp_redirect_vip_packets") >= 2_000, "{after:?}");
    } else {
        assert!(grew("xdp_pass_vip_packets") >= 2_000, "{after:?}");
    }
    assert!(engine.is_running());
    let st = engine.stop().expect("exit status");
    assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    assert!(lab.edge_xdp_gone(), "XDP still attached after a clean exit");
}

#[test]
fn af_xdp_two_queues_serves_2000_keep_alive_requests_with_hand_off() {
    lab_test("af_xdp_two_queues", || two_queue_load("af_xdp"));
}

#[test]
fn af_packet_two_queues_serves_2000_keep_alive_requests_with_hand_off() {
    lab_test("af_packet_two_queues", || two_queue_load("af_packet"));
}

/// In interrupt mode an idle worker sleeps at once; a reply handed to it by
/// the other queue's worker must wake it (its eventfd), not wait out the
/// sleep. One request at a time, so the owner of each upstream connection
/// sleeps while it waits for the reply; no upstream reuse, so every request
/// has an upstream connection from a new port, whose reply RSS steers to
/// either queue (half of them to the other worker).
#[test]
fn interrupt_mode_wakes_the_sleeping_owner_of_a_handed_off_frame() {
    lab_test("interrupt_wakeups", || {
        let lab = Lab::up(2);
        let base = std::fs::read_to_string(workspace().join("configs/lab.toml")).unwrap();
        let endpoints = "endpoints = [\"10.77.0.3:8080\"]";
        assert!(base.contains(endpoints), "configs/lab.toml changed");
        let text = base.replace(endpoints, &format!("{endpoints}\nkeepalive = 0"))
            + "\n[numa.node.0]\npolling = \"interrupt\"\n";
        let config = lab.state_dir().join("interrupt.toml");
        std::fs::write(&config, text).unwrap();
        let mut engine = lab.start_engine_with(&config, "af_xdp", 2);
        let before = engine.stats();
        for i in 0..40 {
            let body = lab.curl(&format!("http://{VIP}/wake/{i}")).expect("curl");
            assert!(body.contains(&format!("path=/wake/{i}")), "{body}");
        }
        let after = engine.stats();
        let grew =
            |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        assert!(
            grew("handoff_out") > 0,
            "no reply crossed queues: {after:?}"
        );
        assert!(
            grew("handoff_wakeups") > 0,
            "no hand-off woke a sleeping worker: {after:?}"
        );
        let st = engine.stop().expect("exit status");
        assert!(st.success(), "engine exit {st}; log:\n{}", engine.log());
    });
}

#[test]
fn one_queue_proxies_with_both_backends() {
    lab_test("one_queue", || {
        let lab = Lab::up(1);
        for backend in ["af_xdp", "af_packet"] {
            let mut engine = lab.start_engine(backend, 1);
            assert!(
                engine.log().contains(&format!("backend={backend}")),
                "{}",
                engine.log()
            );
            assert_proxied(&lab);
            let (ok, errors) = keep_alive_load(&lab, 10, 20);
            assert!(errors.is_empty(), "{backend}: {errors:?}");
            assert_eq!(ok, 200);
            assert!(engine.stop().unwrap().success());
        }
    });
}

#[test]
fn host_traffic_works_during_and_after_the_engine_even_after_sigkill() {
    lab_test("host_traffic", || {
        let lab = Lab::up(2);
        let host = format!("http://{EDGE_HOST_IP}/host");
        assert_eq!(lab.curl(&host).unwrap().trim(), "edge host kernel");
        let mut engine = lab.start_engine("af_xdp", 2);
        assert!(lab.edge_has_xdp());
        // Host address: kernel HTTP, ICMP and ARP still answer.
        assert_eq!(lab.curl(&host).unwrap().trim(), "edge host kernel");
        lab.exec("client", &["ping", "-c", "2", "-W", "1", EDGE_HOST_IP])
            .expect("ping host");
        // The VIP's ICMP and ARP are answered by the userspace stack.
        lab.exec("client", &["ping", "-c", "2", "-W", "1", VIP])
            .expect("ping VIP");
        let neigh = lab.exec("client", &["ip", "neigh", "show", VIP]).unwrap();
        assert!(neigh.contains(&lab.edge_mac()), "VIP ARP answer: {neigh}");
        assert!(engine.stop().unwrap().success());
        assert!(lab.edge_xdp_gone());
        assert_eq!(lab.curl(&host).unwrap().trim(), "edge host kernel");
        lab.exec("client", &["ping", "-c", "1", "-W", "1", EDGE_HOST_IP])
            .expect("ping host after");

        // A crashed engine must not black-hole the host either.
        let mut engine = lab.start_engine("af_xdp", 2);
        engine.kill9();
        std::thread::sleep(Duration::from_millis(300));
        assert!(lab.edge_xdp_gone(), "XDP left attached after SIGKILL");
        assert_eq!(lab.curl(&host).unwrap().trim(), "edge host kernel");
    });
}

#[test]
fn malformed_frames_are_counted_and_serving_continues() {
    lab_test("malformed", || {
        let lab = Lab::up(2);
        let mut engine = lab.start_engine("af_xdp", 2);
        let before = engine.stats();
        let script = workspace().join("tests/scripts/malformed.py");
        let mac = lab.edge_mac();
        let load = std::thread::scope(|s| {
            let l = s.spawn(|| keep_alive_load(&lab, 10, 50));
            let out = lab
                .exec(
                    "client",
                    &[
                        "/usr/bin/python3",
                        script.to_str().unwrap(),
                        "eth0",
                        &mac,
                        VIP,
                        "20",
                    ],
                )
                .expect("scapy sender");
            assert_eq!(out.lines().count(), 7, "{out}");
            l.join().unwrap()
        });
        assert!(
            load.1.is_empty(),
            "requests failed during the malformed burst: {:?}",
            load.1
        );
        assert_eq!(load.0, 500);
        let after = engine.stats();
        let grew =
            |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        // truncated IPv4, IHL < 5 and total length beyond the frame
        assert!(grew("xdp_malformed_ipv4_packets") >= 60, "{after:?}");
        // bad data offset and truncated TCP header
        assert!(grew("xdp_malformed_l4_packets") >= 40, "{after:?}");
        assert!(grew("xdp_malformed_arp_packets") >= 20, "{after:?}");
        // A truncated VLAN tag never crosses the lab's bridge (the kernel's
        // VLAN untagging drops it on the way); the ebpf crate's own veth test
        // covers that counter. Frames whose VIP destination is readable are
        // dropped in XDP: IHL < 5, bad total length, both L4 cases.
        assert!(grew("xdp_drop_malformed_vip_packets") >= 80, "{after:?}");
        assert!(engine.is_running(), "engine died: {}", engine.log());
        assert_proxied(&lab);
        assert!(engine.stop().unwrap().success());
    });
}

#[test]
fn lab_down_after_a_crash_removes_everything() {
    lab_test("lab_down", || {
        let lab = Lab::up(2);
        let mut engine = lab.start_engine("af_packet", 2);
        engine.kill9();
        let prefix = lab.prefix.clone();
        drop(lab);
        let left: Vec<_> = ferrogate_tests::netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(
            !std::path::Path::new(&format!(
                "/run/ferrogate-lab/{}",
                prefix.trim_end_matches('-')
            ))
            .exists()
        );
    });
}

#[test]
fn engine_refuses_more_workers_than_nic_queues_with_a_clear_error() {
    lab_test("queues", || {
        let lab = Lab::up(1);
        let out = std::process::Command::new(ferrogate_tests::ferrogate_bin())
            .args(["run", "--config"])
            .arg(workspace().join("configs/lab.toml"))
            .args([
                "--netns",
                &lab.ns("edge"),
                "--queues",
                "2",
                "--duration",
                "1",
            ])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("eth0 has 1 receive queue(s) but 2 workers"),
            "{err}"
        );
        assert!(
            lab.edge_xdp_gone(),
            "a failed start must not leave XDP attached"
        );
    });
}

#[test]
fn upstream_next_hops_are_resolved_before_the_first_request() {
    lab_test("arp_prime", || {
        let lab = Lab::up(1);
        // The client already knows the VIP, so the engine must ARP for the
        // client first; smoltcp's interface-wide ARP rate limit would then hold
        // the first upstream connection for a second unless the origin's
        // address was resolved ahead of time.
        let cfg = lab.config_with("prime.toml", "");
        let engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut neigh = String::new();
        while std::time::Instant::now() < deadline {
            neigh = lab
                .exec("origin", &["ip", "neigh", "show", VIP])
                .unwrap_or_default();
            if neigh.contains("lladdr") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The origin learned the VIP's MAC from the engine's own ARP request,
        // before any client traffic existed.
        assert!(
            neigh.contains(&lab.edge_mac()),
            "origin neighbour table: {neigh:?}"
        );
        assert_proxied(&lab);
        drop(engine);
    });
}

/// `tcpi_options` of a connected socket (Linux `TCP_INFO`): which options
/// the handshake negotiated.
fn negotiated_options(s: &std::net::TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed tcp_info is a valid value (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open for the call; info and len point to live,
    // correctly sized storage the kernel writes at most len bytes into.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_options
}

// linux/tcp.h
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// The MSS Linux uses on the edge's pooled connection to the origin (`ss`
/// on the origin): 1448 when every segment carries the timestamp option.
fn origin_side_mss(lab: &Lab) -> String {
    let ss = lab
        .exec("origin", &["sh", "-c", "ss -tniH '( sport = :8080 )'"])
        .expect("ss");
    ss.split_whitespace()
        .find_map(|w| w.strip_prefix("mss:"))
        .unwrap_or_else(|| panic!("no connection from the edge on the origin: {ss}"))
        .to_string()
}

/// Linux on both sides of the edge — the client's connection to the VIP and
/// the edge's pooled connection to the origin — negotiates TCP Timestamps
/// (RFC 7323) with ferrogate's stack (the client's kernel sizes its receive
/// window from the RTT they give it); `engine.tcp_timestamps = false`
/// turns them off on both. SACK and window scaling either way.
fn timestamps_with_linux(timestamps: bool) {
    let lab = Lab::up(1);
    let base = std::fs::read_to_string(workspace().join("configs/lab.toml")).unwrap();
    let cfg = lab.state_dir().join("timestamps.toml");
    let setting = format!("[engine]\ntcp_timestamps = {timestamps}\n");
    std::fs::write(&cfg, base.replacen("[engine]\n", &setting, 1)).unwrap();
    let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
    let options = lab.in_client(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(format!("{VIP}:80")).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: lab\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("response");
        assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
        negotiated_options(&s)
    });
    assert_eq!(
        options & TCPI_OPT_TIMESTAMPS != 0,
        timestamps,
        "client: {options:#x}"
    );
    assert_eq!(
        options & (TCPI_OPT_SACK | TCPI_OPT_WSCALE),
        TCPI_OPT_SACK | TCPI_OPT_WSCALE
    );
    // The request went upstream on a pooled connection that is still open.
    let want = if timestamps { "1448" } else { "1460" };
    assert_eq!(origin_side_mss(&lab), want);
    drop(engine);
}

#[test]
fn linux_peers_negotiate_tcp_timestamps_with_the_edge() {
    lab_test("timestamps_on", || timestamps_with_linux(true));
}

#[test]
fn tcp_timestamps_can_be_turned_off() {
    lab_test("timestamps_off", || timestamps_with_linux(false));
}
