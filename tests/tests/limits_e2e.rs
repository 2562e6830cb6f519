//! L7 rate limits in the lab (issue #20): a `[[rate_limits]]` bucket per
//! source answers 429 with `Retry-After` over its burst; a source that
//! keeps offering many times the rate is escalated into the XDP deny set
//! (its packets counted as XDP drops, listed by `ferrogate ctl blocked`,
//! lifted by `ferrogate ctl unblock`) while another client keeps 100 %
//! success.

use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, ctl_ok, lab_test};

/// The attacker: a second address on the client's interface.
const ATTACKER: &str = "10.77.0.50";

fn config() -> String {
    r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[access_log]
path = "access.log"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[rate_limits]]
name = "per-client"
rate = 5
burst = 5
key = "source"
escalate = { factor = 4, after_s = 2, ttl_s = 6 }

[[rate_limits]]
name = "per-key"
rate = 1
burst = 2
key = "header:x-api-key"

[[listeners]]
port = 80
rate_limits = ["per-client"]

[[listeners.routes]]
name = "api"
path_prefix = "/api/"
upstream = "origin"
rate_limits = ["per-key"]

[[listeners.routes]]
name = "origin"
upstream = "origin"
"#
    .to_string()
}

/// Offers requests from `src` as fast as one connection at a time allows
/// for `secs`; prints `status count` lines (`timeout` for no answer).
const FLOOD: &str = r#"
import socket, sys, time, collections
src, dst, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + secs
seen = collections.Counter()
while time.time() < end:
    try:
        s = socket.create_connection((dst, 80), timeout=0.5, source_address=(src, 0))
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        seen[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "garbled"] += 1
    except OSError:
        seen["timeout"] += 1
for k, v in sorted(seen.items()):
    print(k, v)
"#;

#[test]
fn limits_answer_429_then_escalate_an_abusive_source_into_xdp() {
    lab_test("limits", || {
        let lab = Lab::up(1);
        let path = lab.state_dir().join("limits.toml");
        std::fs::write(&path, config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        let url = |p: &str| format!("http://{VIP}{p}");

        // The burst of five (full again after the engine's readiness
        // probe took a token), then 429 with Retry-After: eight requests
        // on one keep-alive connection, well within a token's 200 ms.
        std::thread::sleep(Duration::from_millis(1200));
        let a = url("/a");
        let mut argv = vec!["curl", "-sS", "-m", "5", "-D", "-", "-o", "/dev/null"];
        argv.extend(std::iter::repeat_n(a.as_str(), 8));
        let heads = lab.exec("client", &argv).unwrap();
        let statuses: Vec<&str> = heads
            .lines()
            .filter(|l| l.starts_with("HTTP/"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(&statuses[..5], &["200"; 5], "{heads}");
        assert_eq!(statuses.last(), Some(&"429"), "{heads}");
        assert!(
            heads.to_ascii_lowercase().contains("retry-after: 1\r\n"),
            "{heads}"
        );
        // A header key: per API key, requests without the header are not counted by it.
        std::thread::sleep(Duration::from_millis(1500));
        let k = |key: &str| {
            lab.status_head(&["-H", &format!("X-Api-Key: {key}"), &url("/api/x")])
                .0
        };
        assert_eq!((k("k1"), k("k1"), k("k1")), (200, 200, 429));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(k("k2"), 200, "another key has its own bucket");

        // The attacker's address beside the client's.
        let dev = lab
            .exec("client", &["ip", "-o", "-4", "addr", "show"])
            .unwrap()
            .lines()
            .find(|l| l.contains("10.77.0.2/"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .expect("the client's interface");
        lab.exec(
            "client",
            &["ip", "addr", "add", &format!("{ATTACKER}/24"), "dev", &dev],
        )
        .unwrap();

        // The flood (many times 4 x 5/s for 5 s: escalated after two whole
        // seconds over, for 6 s, so once) and, meanwhile, a client at 2
        // requests a second.
        let flood = std::thread::scope(|s| {
            let flood = s.spawn(|| {
                lab.exec("client", &["python3", "-c", FLOOD, ATTACKER, VIP, "5"])
                    .expect("flood")
            });
            let mut legit = Vec::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                legit.push(lab.status_head(&[&url("/legit")]).0);
                std::thread::sleep(Duration::from_millis(500));
            }
            assert!(
                legit.len() >= 5 && legit.iter().all(|&s| s == 200),
                "legit client: {legit:?}"
            );
            flood.join().unwrap()
        });
        eprintln!("flood: {flood}");
        let count = |k: &str| {
            flood
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k} ")))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(count("429") > 20, "the flood was limited first: {flood}");
        assert!(
            count("timeout") > 0,
            "then its packets were dropped: {flood}"
        );

        let st =
            engine.stats_until(|st| st.get("xdp_drop_escalated_packets").copied().unwrap_or(0) > 0);
        assert_eq!(st.get("limit_per-client_escalated"), Some(&1), "{st:?}");
        assert!(st["limit_per-client_limited"] > 20);
        assert_eq!(st.get("escalation_escalated"), Some(&1));
        assert!(st["xdp_drop_escalated_packets"] > 0);

        // Listed while denied.
        let listed = ctl_ok(&lab, &["blocked"]);
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{ATTACKER} per-client "))),
            "{listed}"
        );
        // The deny lifts when its TTL runs out (a unit test checks that)
        // or when the operator says so.
        assert!(ctl_ok(&lab, &["unblock", ATTACKER]).contains("unblocked"));
        assert_eq!(lab.ctl(&["unblock", ATTACKER]).0, 1, "no longer denied");
        assert!(!ctl_ok(&lab, &["blocked"]).contains(ATTACKER));
        std::thread::sleep(Duration::from_millis(1200));
        let (s, head) = lab.status_head(&["--interface", ATTACKER, &url("/again")]);
        assert_eq!(s, 200, "the attacker is served again: {head}");
        let st = engine.stats();
        assert_eq!(st.get("escalation_denied_sources"), Some(&0));

        // The access log names the limit of a 429.
        let log = std::fs::read_to_string(lab.state_dir().join("access.log")).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("\"status\":429") && l.contains("\"limit\":\"per-client\"")),
            "no 429 naming its limit in the access log"
        );
    });
}
