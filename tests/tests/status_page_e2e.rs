//! The web status page (issue #25) in a real browser: `ferrogate run` with
//! the control daemon's TCP admin listener and a token, load through the
//! VIP, and headless Chromium (Debian's `chromium`, driven by
//! `tests/browser/status_page.mjs` with playwright-core) loading the page:
//! the request counter it shows moves, a wrong token is refused and shows
//! nothing. The screenshot stays in the lab's state dir and is copied to
//! `status-page.png` beside the `ferrogate` binary (`target/debug/`). The JSON endpoints are checked here too.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrogate_tests::{HttpConn, Lab, StopOnDrop, VIP, enter_netns, lab_test, workspace};

const ORIGIN: &str = "10.77.0.3:8080";

fn config() -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 2
polling = "adaptive"

[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80

[[listeners.routes]]
name = "health"
path_prefix = "/ferrogate/health"
respond = {{ status = 200, body = "ferrogate ok\n" }}

[[listeners.routes]]
name = "local"
path_prefix = "/v"
respond = {{ status = 200, body = "v" }}

[[listeners.routes]]
name = "origin"
path_prefix = "/"
upstream = "origin"
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl` on the host (the daemon's TCP listener is in the host namespace):
/// (status, content type, body).
fn get(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "10", "-D", "-"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn json(url: &str, token: &str) -> serde_json::Value {
    let (status, ctype, body) = get(url, Some(token));
    assert_eq!(status, 200, "{url}: {body}");
    assert!(ctype.starts_with("application/json"), "{url}: {ctype}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

#[test]
fn the_status_page_shows_live_numbers_in_chromium_and_refuses_a_wrong_token() {
    lab_test("status_page", || {
        let browser = workspace().join("tests/browser");
        assert!(
            browser.join("node_modules/playwright-core").exists()
                && std::path::Path::new("/usr/bin/chromium").exists(),
            "playwright-core (tests/browser) or /usr/bin/chromium missing: run ./vendor-setup.sh"
        );
        let lab = Lab::up(2);
        let _origin = lab.start_origin("status-origin", ORIGIN);
        let path = lab.state_dir().join("status.toml");
        std::fs::write(&path, config()).unwrap();
        let token = "status-page-token+0123456789";
        let token_file = lab.state_dir().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let _engine = lab.start_engine_args(
            Some(&path),
            "af_xdp",
            2,
            true,
            &[
                "--admin-tcp",
                &addr,
                "--admin-token-file",
                token_file.to_str().unwrap(),
            ],
        );
        let base = format!("http://{addr}");

        // Without a token, with a wrong one (header or query): refused.
        for (url, t) in [
            (format!("{base}/ui"), None),
            (format!("{base}/ui?token=wrong-token-0123456789"), None),
            (format!("{base}/stats.json"), Some("wrong-token-0123456789")),
            // The query token is for the page only.
            (format!("{base}/stats.json?token={token}"), None),
        ] {
            let (status, _, body) = get(&url, t);
            assert_eq!(status, 401, "{url}: {body}");
            assert!(!body.contains("<html"), "{url} showed the page");
        }
        // The page, with the token in its query (form-encoded: `+` is %2B).
        let (status, ctype, body) = get(
            &format!("{base}/ui?token={}", token.replace('+', "%2B")),
            None,
        );
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert!(body.contains("id=\"total-requests\""), "{body}");
        // The text endpoints are still there.
        let (status, _, body) = get(&format!("{base}/stats"), Some(token));
        assert_eq!(status, 200);
        assert!(body.contains("stack_requests "), "{body}");

        // Load through the VIP (bounded in time and count) while the
        // browser watches: the local route and the origin's.
        let stop = AtomicBool::new(false);
        let served = AtomicU64::new(0);
        let ns = lab.ns("client");
        let result = std::thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            for _ in 0..2 {
                s.spawn(|| {
                    enter_netns(&ns).unwrap();
                    let t0 = Instant::now();
                    let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && t0.elapsed() < Duration::from_secs(90)
                        && n < 2_000_000
                    {
                        let p = if n.is_multiple_of(4) { "/ready" } else { "/v" };
                        let (status, _) = c.get("lab", p).expect("a request failed");
                        assert_eq!(status, 200, "{p}");
                        n += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                        // Keep the machine usable for the browser.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
            }
            // The JSON the page reads, under load.
            let deadline = Instant::now() + Duration::from_secs(20);
            let stats = loop {
                let v = json(&format!("{base}/stats.json"), token);
                if v["stack"]["requests"].as_u64().unwrap_or(0) > 0
                    && v["pools"][0]["requests"].as_u64().unwrap_or(0) > 0
                {
                    break v;
                }
                assert!(Instant::now() < deadline, "no requests counted: {v}");
                std::thread::sleep(Duration::from_millis(250));
            };
            assert_eq!(stats["workers"].as_array().unwrap().len(), 2, "{stats}");
            assert_eq!(stats["pools"][0]["name"], "origin");
            assert_eq!(stats["pools"][0]["endpoints"][0]["addr"], ORIGIN);
            let status = json(&format!("{base}/status.json"), token);
            assert_eq!(status["control"]["in_sync"], true, "{status}");
            assert_eq!(status["engine"]["workers"], 2, "{status}");
            assert!(
                status["engine"]["version"]
                    .as_str()
                    .is_some_and(|v| v.contains('-')),
                "{status}"
            );

            let shot = lab.state_dir().join("status-page.png");
            let out = Command::new("node")
                .arg(browser.join("status_page.mjs"))
                .current_dir(&browser)
                .env("FG_URL", &base)
                .env("FG_TOKEN", token)
                .env("FG_SHOT", &shot)
                .output()
                .expect("spawn node (vendor-setup.sh installs nodejs)");
            stop.store(true, Ordering::Relaxed);
            (out, shot)
        });
        let (out, shot) = result;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}{stderr}");
        assert!(
            out.status.success(),
            "the browser checks failed ({}):\n{stdout}{stderr}",
            out.status
        );
        for line in [
            "ok: a wrong token is refused (HTTP 401)",
            "ok: the refused page shows no dashboard",
            "ok: the request counter moves",
            "status page: all checks passed",
        ] {
            assert!(stdout.contains(line), "{line} missing:\n{stdout}");
        }
        assert!(served.load(Ordering::Relaxed) > 0);
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        // An artifact that outlives the lab's state dir.
        let keep = ferrogate_tests::ferrogate_bin().with_file_name("status-page.png");
        let _ = std::fs::copy(&shot, &keep);
        eprintln!("screenshot: {} ({} bytes)", keep.display(), png.len());
    });
}
