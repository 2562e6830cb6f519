//! TCP (L4) listeners in the lab with real tools: iperf3 both ways through
//! the VIP, a payload echoed byte for byte with a half-close (the origin
//! answers only after the client's FIN), and redis-benchmark against a
//! Debian redis-server behind a Maglev (hash on source) pool.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, enter_netns, lab_test};

const ORIGIN_IP: &str = "10.77.0.3";

fn write_config(lab: &Lab) -> PathBuf {
    let path = lab.state_dir().join("l4.toml");
    std::fs::write(
        &path,
        r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 2

[access_log]
path = "access.log"

[[upstreams]]
name = "iperf"
endpoints = ["10.77.0.3:5201"]

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:7100"]

[[upstreams]]
name = "redis"
endpoints = ["10.77.0.3:6390"]
balancer = "hash"
hash_on = "source"

[[listeners]]
port = 80
[[listeners.routes]]
respond = { status = 200, body = "up" }

[[listeners]]
port = 5201
protocol = "tcp"
upstream = "iperf"

[[listeners]]
port = 7100
protocol = "tcp"
upstream = "echo"
idle_timeout_ms = 20000

[[listeners]]
port = 6390
protocol = "tcp"
upstream = "redis"
"#,
    )
    .unwrap();
    path
}

/// A process in the origin namespace, killed by its PID on drop (also
/// when the test fails). `ip netns exec` execs the command: same PID.
struct Proc(Child);

impl Proc {
    fn origin(lab: &Lab, argv: &[&str]) -> Proc {
        Proc::in_ns(lab, "origin", argv)
    }

    fn in_ns(lab: &Lab, role: &str, argv: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(role)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Waits until `port` on the origin accepts a connection (from the origin
/// namespace).
fn wait_listening(lab: &Lab, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = Command::new("ip")
            .args(["netns", "exec", &lab.ns("origin"), "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ORIGIN_IP}/{port}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {ORIGIN_IP}:{port}");
}

/// An origin on 10.77.0.3:7100 (a thread in the origin namespace): reads
/// each connection to its end (the client's FIN), then sends it all back
/// and closes. Stops when the flag is set.
fn start_echo_after_eof(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ns = lab.ns("origin");
    std::thread::spawn(move || {
        enter_netns(&ns).expect("enter origin namespace");
        let l = TcpListener::bind((ORIGIN_IP, 7100)).expect("bind echo");
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut all = Vec::new();
                        if s.read_to_end(&mut all).is_ok() {
                            let _ = s.write_all(&all);
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn tcp_listeners_with_iperf3_a_half_closed_echo_and_redis() {
    lab_test("l4", || {
        let lab = Lab::up(2);
        let cfg = write_config(&lab);
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 2);

        // iperf3: 100 MiB up, then 100 MiB down (-R), through the VIP.
        let iperf = Proc::origin(&lab, &["iperf3", "-s", "-B", ORIGIN_IP, "-p", "5201"]);
        wait_listening(&lab, 5201);
        for dir in ["", "-R"] {
            let (ok, out) = lab.client_sh(&format!(
                "timeout 120 iperf3 -c {VIP} -p 5201 -n 100M {dir} --connect-timeout 5000"
            ));
            assert!(ok, "iperf3 {dir}: {out}");
            assert!(out.contains("iperf Done."), "iperf3 {dir}: {out}");
            let summary: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("sender") || l.contains("receiver"))
                .collect();
            eprintln!("iperf3 {dir}: {summary:?}");
        }
        drop(iperf);
        // iperf3 counts what its sender wrote: the receiving end closes
        // its data stream when the control connection says the test ended,
        // and may reset bytes still on their way (counted as an l4 reset).
        let stats = engine.stats();
        assert!(stats["stack_l4_bytes_up"] >= 95 << 20, "{stats:?}");
        assert!(stats["stack_l4_bytes_down"] >= 95 << 20, "{stats:?}");
        let resets_before = stats["stack_l4_resets"];

        // 16 MiB echoed back only after the client's FIN crossed (a
        // half-close): what comes back equals what was sent.
        let stop = Arc::new(AtomicBool::new(false));
        let echo = start_echo_after_eof(&lab, stop.clone());
        wait_listening(&lab, 7100);
        let data = payload(16 << 20);
        let back = lab.in_client(|| {
            let mut s = TcpStream::connect((VIP, 7100)).expect("connect VIP:7100");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut w = s.try_clone().unwrap();
            let sent = data.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&sent).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            let r = s.read_to_end(&mut back);
            writer.join().unwrap();
            r.map(|_| back)
        });
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
        let back = back.expect("read the echo (after the half-close)");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");

        // redis-benchmark against redis-server, through a Maglev pool.
        let redis = Proc::origin(
            &lab,
            &[
                "redis-server",
                "--port",
                "6390",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--bind",
                ORIGIN_IP,
            ],
        );
        wait_listening(&lab, 6390);
        let (ok, out) = lab.client_sh(&format!(
            "timeout 120 redis-benchmark -h {VIP} -p 6390 -n 20000 -q -t set,get"
        ));
        assert!(ok, "redis-benchmark: {out}");
        assert!(out.contains("SET:") && out.contains("GET:"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("error"), "{out}");
        let (ok, out) = lab.client_sh(&format!(
                "redis-cli -h {VIP} -p 6390 set fg-key through-the-vip && redis-cli -h {VIP} -p 6390 get fg-key"
            ),
        );
        assert!(ok && out.contains("through-the-vip"), "{out}");
        drop(redis);

        let stats = engine.stats();
        assert!(stats["stack_l4_connections"] >= 50, "{stats:?}");
        assert_eq!(stats["stack_l4_resets"], resets_before, "{stats:?}");
        assert_eq!(stats["stack_l4_no_upstream"], 0, "{stats:?}");

        // One access record per connection, protocol TCP with its bytes.
        let log = lab.state_dir().join("access.log");
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"bytes_up\":16777216") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let line = text
            .lines()
            .find(|l| l.contains("\"protocol\":\"TCP\"") && l.contains("\"bytes_up\":16777216"));
        assert!(
            line.is_some_and(
                |l| l.contains("\"bytes_down\":16777216") && l.contains("\"error\":\"closed\"")
            ),
            "no TCP record of the echo in:\n{}",
            &text[..text.len().min(3000)]
        );
        engine.stop();
    });
}

/// TLS passthrough: `openssl s_client -servername a|b` through one TCP
/// VIP reach two origins (`openssl s_server`), each presenting its own
/// certificate, which the client verifies end to end; garbage instead of a
/// ClientHello is reset and counted.
#[test]
fn tls_passthrough_routes_by_sni_to_origins_with_their_own_certificates() {
    lab_test("l4-sni", || {
        let lab = Lab::up(1);
        let dir = lab.state_dir();
        let ca = ferrogate_testkit::Ca::new("fg passthrough CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        ca.leaf(Some("cert-a"), &["a.example"]).write(&dir, "a");
        ca.leaf(Some("cert-b"), &["b.example"]).write(&dir, "b");
        let cfg = lab.state_dir().join("sni.toml");
        std::fs::write(
            &cfg,
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1

[[upstreams]]
name = "tls-a"
endpoints = ["10.77.0.3:9441"]

[[upstreams]]
name = "tls-b"
endpoints = ["10.77.0.3:9442"]

[[listeners]]
port = 80
[[listeners.routes]]
respond = { status = 200, body = "up" }

[[listeners]]
port = 443
protocol = "tcp"
upstream = "tls-a"
sni = { "b.example" = "tls-b" }
"#,
        )
        .unwrap();
        let d = dir.display().to_string();
        let _a = Proc::origin(
            &lab,
            &[
                "openssl",
                "s_server",
                "-quiet",
                "-accept",
                "10.77.0.3:9441",
                "-cert",
                &format!("{d}/a.crt"),
                "-key",
                &format!("{d}/a.key"),
                "-www",
            ],
        );
        let _b = Proc::origin(
            &lab,
            &[
                "openssl",
                "s_server",
                "-quiet",
                "-accept",
                "10.77.0.3:9442",
                "-cert",
                &format!("{d}/b.crt"),
                "-key",
                &format!("{d}/b.key"),
                "-www",
            ],
        );
        wait_listening(&lab, 9441);
        wait_listening(&lab, 9442);
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        for (name, cn) in [("a.example", "cert-a"), ("b.example", "cert-b")] {
            let (_, out) = lab.client_sh(&format!(
                "echo | openssl s_client -connect {VIP}:443 -servername {name} -CAfile {d}/ca.pem -verify_return_error 2>&1"
            ));
            assert!(out.contains(&format!("CN = {cn}")), "{name}: {out}");
            assert!(out.contains("Verify return code: 0 (ok)"), "{name}: {out}");
        }
        // No SNI (an IP address): the default pool's certificate.
        let (_, out) = lab.client_sh(&format!(
            "echo | openssl s_client -connect {VIP}:443 -noservername 2>&1"
        ));
        assert!(out.contains("CN = cert-a"), "{out}");
        // Plain HTTP where a ClientHello must come: reset, counted.
        let (ok, out) = lab.client_sh(&format!("curl -sS -m 5 http://{VIP}:443/"));
        assert!(!ok, "{out}");
        let stats = engine.stats();
        assert!(stats["stack_l4_bad_client_hello"] >= 1, "{stats:?}");
        assert!(stats["stack_l4_connections"] >= 4, "{stats:?}");
    });
}

/// PROXY protocol towards upstreams: nginx (`listen … proxy_protocol`) in
/// the origin namespace sees the real client address through a TCP VIP,
/// with a v1 and with a v2 header; and from a balancer in front (HAProxy
/// `send-proxy-v2`), the client its header names.
#[test]
fn proxy_protocol_v1_and_v2_carry_the_client_address_to_nginx() {
    lab_test("l4-pp", || {
        let lab = Lab::up(1);
        let dir = lab.state_dir();
        let d = dir.display().to_string();
        let conf = dir.join("nginx-pp.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\nuser root;\ndaemon off;\npid {d}/nginx-pp.pid;\nerror_log {d}/nginx-pp.err warn;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/nb;\n  proxy_temp_path {d}/np;\n  fastcgi_temp_path {d}/nf;\n  uwsgi_temp_path {d}/nu;\n  scgi_temp_path {d}/ns;\n\
                 server {{ listen 10.77.0.3:9080 proxy_protocol; return 200 \"client=$proxy_protocol_addr\\n\"; }}\n}}\n"
            ),
        )
        .unwrap();
        let _nginx = Proc::origin(
            &lab,
            &[
                "nginx",
                "-e",
                &format!("{d}/nginx-pp.err"),
                "-c",
                &conf.display().to_string(),
            ],
        );
        wait_listening(&lab, 9080);
        let cfg = dir.join("pp.toml");
        std::fs::write(
            &cfg,
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1

[[upstreams]]
name = "pp1"
endpoints = ["10.77.0.3:9080"]
proxy_protocol = "v1"

[[upstreams]]
name = "pp2"
endpoints = ["10.77.0.3:9080"]
proxy_protocol = "v2"

[[listeners]]
port = 80
[[listeners.routes]]
respond = { status = 200, body = "up" }

[[listeners]]
port = 9081
protocol = "tcp"
upstream = "pp1"

[[listeners]]
port = 9082
protocol = "tcp"
upstream = "pp2"

# Behind a balancer (HAProxy in the client namespace) that sends PROXY v2.
[[listeners]]
port = 9083
protocol = "tcp"
upstream = "pp1"
proxy_protocol_from = ["10.77.0.2/32"]
"#,
        )
        .unwrap();
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        for port in [9081, 9082] {
            let (ok, out) = lab.client_sh(&format!("curl -sS -m 5 http://{VIP}:{port}/"));
            assert!(ok, "{port}: {out}");
            assert_eq!(out.trim(), "client=10.77.0.2", "{port}: {out}");
        }
        // A balancer in front: its PROXY v2 header names the real client
        // (127.0.0.1, curl's address towards HAProxy), which goes on to
        // nginx instead of the balancer's 10.77.0.2.
        let lb = dir.join("lb.cfg");
        std::fs::write(
            &lb,
            format!(
                "global\n  pidfile {d}/lb.pid\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend lb\n  bind 127.0.0.1:9090\n  default_backend edge\n\
                 backend edge\n  server vip {VIP}:9083 send-proxy-v2\n"
            ),
        )
        .unwrap();
        let _lb = Proc::in_ns(
            &lab,
            "client",
            &["haproxy", "-db", "-f", &lb.display().to_string()],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = String::new();
        while Instant::now() < deadline {
            let (ok, o) = lab.client_sh("curl -sS -m 5 http://127.0.0.1:9090/");
            out = o;
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(out.trim(), "client=127.0.0.1", "{out}");
        // The balancer's own address, without a header: refused.
        let (ok, _) = lab.client_sh(&format!("curl -sS -m 5 http://{VIP}:9083/"));
        assert!(
            !ok,
            "a connection from the balancer without a header got through"
        );
        let stats = engine.stats();
        assert!(stats["stack_l4_bad_proxy_header"] >= 1, "{stats:?}");
    });
}

/// A UDP echo origin on 10.77.0.3:`port` (a thread in the origin
/// namespace) until `stop` is set.
fn start_udp_echo(lab: &Lab, port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ns = lab.ns("origin");
    std::thread::spawn(move || {
        enter_netns(&ns).expect("enter origin namespace");
        let s = std::net::UdpSocket::bind((ORIGIN_IP, port)).expect("bind udp echo");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    })
}

/// UDP listeners: `dig` through the VIP to a dnsmasq origin (one at a time
/// and 40 at once), datagrams up to the MTU echoed byte for byte, sessions
/// that expire, a flood of new sources bounded by `max_sessions`, and an
/// origin gone (ICMP port unreachable ends the session). One access
/// record per session.
#[test]
fn udp_listeners_with_dig_dnsmasq_an_echo_expiry_and_a_flood() {
    lab_test("l4-udp", || {
        let lab = Lab::up(2);
        let dir = lab.state_dir();
        let cfg = dir.join("udp.toml");
        std::fs::write(
            &cfg,
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 2

[access_log]
path = "ACCESS_LOG"

[[upstreams]]
name = "dns"
endpoints = ["10.77.0.3:5353"]

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:7200"]
balancer = "hash"
hash_on = "source"

[[listeners]]
port = 80
[[listeners.routes]]
respond = { status = 200, body = "up" }

[[listeners]]
port = 53
protocol = "udp"
upstream = "dns"
idle_timeout_ms = 1500

[[listeners]]
port = 7200
protocol = "udp"
upstream = "echo"
idle_timeout_ms = 1500
max_sessions = 50
"#
            .replace("ACCESS_LOG", &dir.join("access.log").display().to_string()),
        )
        .unwrap();
        let d = dir.display().to_string();
        let dnsmasq = Proc::origin(
            &lab,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.77.0.3",
                "--port=5353",
                "--user=root",
                "--group=root",
                &format!("--pid-file={d}/dnsmasq.pid"),
                "--address=/a.example/10.1.2.3",
                "--address=/b.example/10.4.5.6",
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let echo = start_udp_echo(&lab, 7200, stop.clone());
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 2);

        // Each dig from its own fixed source port: the kernel's random
        // ephemeral ports may repeat one that already has a live session
        // (birthday odds of a few percent over 42 digs), and the session
        // count below must not depend on that.
        for (port, name, want) in [
            (21_001, "a.example", "10.1.2.3"),
            (21_002, "b.example", "10.4.5.6"),
        ] {
            let (ok, out) = lab.client_sh(&format!(
                "dig -b 10.77.0.2#{port} @{VIP} -p 53 {name} +short +time=2 +tries=3"
            ));
            assert!(ok && out.trim() == want, "dig {name}: {out}");
        }
        // 40 clients at once (each dig its own source port: a session).
        let (ok, out) = lab.client_sh(&format!(
            "for i in $(seq 40); do dig -b 10.77.0.2#$((21100 + i)) @{VIP} -p 53 a.example +short +time=2 +tries=3 & done; wait"
        ));
        assert!(ok, "{out}");
        let answers = out.lines().filter(|l| l.trim() == "10.1.2.3").count();
        assert_eq!(answers, 40, "{out}");
        let stats = engine.stats();
        assert!(stats["stack_udp_sessions"] >= 42, "{stats:?}");
        assert_eq!(stats["stack_udp_drop_no_neighbour"], 0, "{stats:?}");

        // Datagrams from 1 byte up to the MTU's 1472, echoed exactly.
        lab.in_client(|| {
            let s = std::net::UdpSocket::bind("10.77.0.2:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 2048];
            for len in [1usize, 100, 512, 1400, 1472] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let mut got = None;
                for _ in 0..3 {
                    s.send_to(&data, (VIP, 7200)).unwrap();
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        assert_eq!(from.to_string(), format!("{VIP}:7200"));
                        got = Some(buf[..n].to_vec());
                        break;
                    }
                }
                assert_eq!(got.as_deref(), Some(&data[..]), "{len} bytes");
            }
        });

        // Every session idles out.
        std::thread::sleep(Duration::from_millis(2_500));
        let stats = engine.stats();
        assert_eq!(stats["stack_udp_active"], 0, "{stats:?}");
        assert!(stats["stack_udp_idle_timeouts"] >= 43, "{stats:?}");

        // A flood of 2000 new sources (ports) on the echo listener: at most
        // 50 sessions per worker, every other datagram dropped and counted
        // (paced so that none is lost before the engine).
        let before = engine.stats();
        lab.in_client(|| {
            let mut socks = Vec::new();
            for i in 0..2000 {
                let s = std::net::UdpSocket::bind("10.77.0.2:0").unwrap();
                let _ = s.send_to(b"flood", (VIP, 7200));
                socks.push(s);
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let grew = |s: &std::collections::HashMap<String, u64>, k: &str| s[k] - before[k];
        let stats = engine.stats_until(|s| {
            grew(s, "stack_udp_sessions") + grew(s, "stack_udp_drop_over_limit") >= 2000
        });
        let udp: Vec<_> = stats
            .iter()
            .filter(|(k, _)| k.starts_with("stack_udp"))
            .collect();
        eprintln!("after the flood: {udp:?}");
        assert!(stats["stack_udp_active"] <= 100, "{stats:?}");
        assert!(stats["stack_udp_active"] >= 50, "{stats:?}");
        assert_eq!(
            grew(&stats, "stack_udp_sessions") + grew(&stats, "stack_udp_drop_over_limit"),
            2000,
            "every datagram of the flood is a session or a counted drop: {stats:?}"
        );

        // The DNS origin gone: its host answers port unreachable, which
        // ends the session.
        drop(dnsmasq);
        let (_, out) = lab.client_sh(&format!("dig @{VIP} -p 53 a.example +time=1 +tries=1"));
        assert!(!out.contains("10.1.2.3"), "{out}");
        let stats = engine.stats();
        assert!(stats["stack_udp_unreachable"] >= 1, "{stats:?}");

        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
        engine.stop();
        let log = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("\"UDP\"") && l.contains("\"error\":\"idle_timeout\"")),
            "{log}"
        );
    });
}

/// TLS terminated on a TCP listener, plaintext to plain origins: a rustls
/// client half-closes (close_notify, then FIN) and reads the echo that the
/// origin sends only after that FIN, ended by ferrogate's close_notify;
/// `redis-cli --tls` and `openssl s_client` against redis-server (the
/// certificate verified, no ALPN); garbage instead of a ClientHello, and a
/// PROXY header from a client not trusted to send one, reset and counted.
#[test]
fn tls_terminated_on_a_tcp_listener_reaches_plain_origins() {
    lab_test("l4-tls", || {
        let lab = Lab::up(1);
        let dir = lab.state_dir();
        let d = dir.display().to_string();
        let ca = ferrogate_testkit::Ca::new("fg l4 termination CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        ca.leaf(Some("edge-tls"), &["tls.example"])
            .write(&dir, "edge");
        let cfg = dir.join("l4-tls.toml");
        std::fs::write(
            &cfg,
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1

[access_log]
path = "access.log"

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:7100"]

[[upstreams]]
name = "redis"
endpoints = ["10.77.0.3:6391"]

[[listeners]]
port = 80
[[listeners.routes]]
respond = { status = 200, body = "up" }

[[listeners]]
port = 7100
protocol = "tcp"
upstream = "echo"

[[listeners]]
port = 7443
protocol = "tcp"
upstream = "echo"
[listeners.tls]
certificates = [{ cert = "edge.crt", key = "edge.key" }]

[[listeners]]
port = 6443
protocol = "tcp"
upstream = "redis"
[listeners.tls]
certificates = [{ cert = "edge.crt", key = "edge.key" }]
"#,
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let echo = start_echo_after_eof(&lab, stop.clone());
        wait_listening(&lab, 7100);
        let redis = Proc::origin(
            &lab,
            &[
                "redis-server",
                "--port",
                "6391",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--bind",
                ORIGIN_IP,
            ],
        );
        wait_listening(&lab, 6391);
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);

        // 4 MiB up, the client's side ended, the echo back to an orderly
        // end (rustls reads to the end only after a close_notify).
        let data = payload(4 << 20);
        let back = lab.in_client(|| tls_echo_after_half_close(&ca, &data));
        let back = back.expect("TLS echo after the half-close");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");

        let (ok, out) = lab.client_sh(&format!(
            "redis-cli --tls --cacert {d}/ca.pem --sni tls.example -h {VIP} -p 6443 set fg-tls through-tls && \
             redis-cli --tls --cacert {d}/ca.pem --sni tls.example -h {VIP} -p 6443 get fg-tls"
        ));
        assert!(ok && out.contains("through-tls"), "{out}");
        let (_, out) = lab.client_sh(&format!(
            "(printf 'PING\\r\\n'; sleep 2) | timeout 20 openssl s_client -connect {VIP}:6443 \
             -servername tls.example -CAfile {d}/ca.pem -verify_return_error 2>&1"
        ));
        assert!(out.contains("CN = edge-tls"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("No ALPN negotiated"), "{out}");
        assert!(out.contains("+PONG"), "{out}");
        drop(redis);

        // Plain HTTP where a ClientHello must come: reset, counted.
        let (ok, out) = lab.client_sh(&format!("curl -sS -m 5 http://{VIP}:7443/"));
        assert!(!ok, "{out}");
        // A PROXY header from the client (not in proxy_protocol_from) on
        // the plain and the TLS listener: reset, nothing reaches the origin.
        for port in [7100u16, 7443] {
            let got = lab.in_client(|| {
                let mut s = TcpStream::connect((VIP, port))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(
                    format!("PROXY TCP4 203.0.113.9 {VIP} 5555 {port}\r\nforged\n").as_bytes(),
                )?;
                // The reset can come before the half-close: shutdown then
                // says NotConnected and the read reports the reset.
                if let Err(e) = s.shutdown(Shutdown::Write)
                    && e.kind() != std::io::ErrorKind::NotConnected
                {
                    return Err(e);
                }
                let mut back = Vec::new();
                s.read_to_end(&mut back).map(|_| back)
            });
            match got {
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{port}"),
                Ok(back) => panic!("{port}: a forged header got through: {back:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();

        let stats = engine.stats_until(|s| s["stack_l4_untrusted_proxy_header"] >= 2);
        assert!(stats["stack_l4_tls_handshakes"] >= 4, "{stats:?}");
        assert!(stats["stack_l4_tls_handshake_failed"] >= 1, "{stats:?}");
        assert_eq!(stats["stack_l4_untrusted_proxy_header"], 2, "{stats:?}");
        assert_eq!(stats["stack_l4_tls_record_errors"], 0, "{stats:?}");
        assert!(stats["stack_l4_bytes_up"] >= 4 << 20, "{stats:?}");

        // The access records say why each ended.
        let log = dir.join("access.log");
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("untrusted_proxy_header") && text.contains("tls_handshake_failed") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let echo_line = format!("\"bytes_up\":{}", 4 << 20);
        assert!(
            text.lines().any(|l| l.contains("\"tls\":true")
                && l.contains(&echo_line)
                && l.contains("\"error\":\"closed\"")),
            "no TLS record of the echo in:\n{}",
            &text[..text.len().min(3000)]
        );
        for reason in ["tls_handshake_failed", "untrusted_proxy_header"] {
            assert!(
                text.contains(&format!("\"error\":\"{reason}\"")),
                "{reason}:\n{text}"
            );
        }
    });
}

/// In the client namespace: sends `data` through TLS to VIP:7443, ends its
/// side with close_notify then FIN, and reads the echo to its end (an
/// error unless that end is a close_notify).
fn tls_echo_after_half_close(ca: &ferrogate_testkit::Ca, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ferrogate_testkit::client_config(provider, ca, &[], None);
    let name = rustls::pki_types::ServerName::try_from("tls.example").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect((VIP, 7443))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(data)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    tls.read_to_end(&mut back)?;
    Ok(back)
}

/// An origin on 10.77.0.3:7200 that closes first: reads one line, writes
/// it back, closes — so Linux keeps each upstream 4-tuple in TIME-WAIT.
fn start_close_first_echo(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ns = lab.ns("origin");
    std::thread::spawn(move || {
        enter_netns(&ns).expect("enter origin namespace");
        let l = TcpListener::bind((ORIGIN_IP, 7200)).expect("bind echo");
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut line = [0u8; 64];
                    if let Ok(n) = s.read(&mut line) {
                        let _ = s.write_all(&line[..n]);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}

/// 300 connections in a row through a TCP listener whose 64 upstream
/// ports wrap four times onto 4-tuples the origin (which closed first)
/// still holds in TIME-WAIT. With timestamps, whose clock is one per
/// address pair, Linux takes each reused 4-tuple's SYN by its newer
/// timestamp: no SYN is answered by a stale ACK. Without them, about half
/// are (a random ISN below the old connection's): reset and resent, as the
/// counter shows — so the first phase is no accident.
fn reused_ports(lab: &Lab, timestamps: bool) -> u64 {
    let path = lab.state_dir().join(format!("tw-{timestamps}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1
tcp_timestamps = {timestamps}
upstream_port_range = [40000, 40063]

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:7200"]

[[listeners]]
port = 80
[[listeners.routes]]
respond = {{ status = 200, body = "up" }}

[[listeners]]
port = 7200
protocol = "tcp"
upstream = "echo"
"#
        ),
    )
    .unwrap();
    let engine = lab.start_engine_with(&path, "af_xdp", 1);
    let failures = lab.in_client(|| {
        (0..300)
            .filter(|i| {
                let line = format!("line {i}\n");
                let echoed = (|| -> std::io::Result<Vec<u8>> {
                    let mut s = TcpStream::connect_timeout(
                        &format!("{VIP}:7200").parse().unwrap(),
                        Duration::from_secs(5),
                    )?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(line.as_bytes())?;
                    let mut got = Vec::new();
                    s.read_to_end(&mut got)?;
                    Ok(got)
                })();
                !matches!(echoed, Ok(got) if got == line.as_bytes())
            })
            .count()
    });
    assert_eq!(failures, 0, "log:\n{}", engine.log());
    // Counted when the upstream sockets are recycled.
    let stats = engine.stats_until(|s| s["stack_sockets_open"] == 0);
    assert_eq!(stats["stack_sockets_open"], 0, "{stats:?}");
    assert!(stats["stack_l4_connections"] >= 300, "{stats:?}");
    let tw = lab
        .exec("origin", &["sh", "-c", "ss -tanH state time-wait | wc -l"])
        .unwrap();
    assert!(
        tw.trim().parse::<u32>().unwrap() >= 32,
        "the origin holds few TIME-WAITs: {tw}"
    );
    stats["stack_tcp_syn_stale_acks"]
}

#[test]
fn reused_upstream_ports_pass_the_origins_time_wait_by_timestamp() {
    lab_test("l4_time_wait", || {
        let lab = Lab::up(1);
        let stop = Arc::new(AtomicBool::new(false));
        // Stops the origin thread also when an assertion fails.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stopper = StopOnDrop(stop.clone());
        let origin = start_close_first_echo(&lab, stop);
        wait_listening(&lab, 7200);
        let with = reused_ports(&lab, true);
        // Then without, on 4-tuples the first phase left in TIME-WAIT.
        let without = reused_ports(&lab, false);
        drop(stopper);
        origin.join().unwrap();
        eprintln!("SYNs answered by a stale ACK: {with} with timestamps, {without} without");
        assert_eq!(with, 0, "SYNs answered by a stale ACK with timestamps");
        assert!(without > 10, "without timestamps: {without} stale ACKs");
    });
}
