//! JWT bearer authentication in the lab (issue #20): tokens signed by
//! `openssl` with HS256, RS256 and ES256 against a JWKS file; 401 with
//! `WWW-Authenticate` for a missing, forged, expired or wrongly-issued
//! token; a rule on a claim; a rate limit per subject; a JWKS change
//! applied without a restart; a route exempt from its listener's provider,
//! and a route with its own provider on a listener without one.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrogate_tests::{Lab, VIP, lab_test};

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn openssl(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    c.stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or(b""))
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A DER ECDSA signature (SEQUENCE of two INTEGERs) as JWS's r || s.
fn ecdsa_raw(der: &[u8]) -> Vec<u8> {
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "INTEGER");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

struct Keys {
    dir: std::path::PathBuf,
    secret: &'static [u8],
}

impl Keys {
    fn make(dir: &Path) -> (Keys, String) {
        openssl(dir, &["genrsa", "-out", "rsa.pem", "2048"], None);
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ec.pem",
            ],
            None,
        );
        let modulus = String::from_utf8(openssl(
            dir,
            &["rsa", "-in", "rsa.pem", "-noout", "-modulus"],
            None,
        ))
        .unwrap();
        let n = hex(modulus.trim().trim_start_matches("Modulus="));
        let spki = openssl(
            dir,
            &["ec", "-in", "ec.pem", "-pubout", "-outform", "DER"],
            None,
        );
        let point = &spki[spki.len() - 65..];
        assert_eq!(point[0], 4, "an uncompressed P-256 point");
        let secret: &'static [u8] = b"lab-hmac-secret-of-32-bytes-long!";
        let jwks = format!(
            r#"{{"keys":[
  {{"kty":"RSA","kid":"rsa1","alg":"RS256","n":"{}","e":"AQAB"}},
  {{"kty":"EC","kid":"ec1","crv":"P-256","x":"{}","y":"{}"}},
  {{"kty":"oct","kid":"hs1","k":"{}"}}
]}}"#,
            b64url(&n),
            b64url(&point[1..33]),
            b64url(&point[33..]),
            b64url(secret)
        );
        (
            Keys {
                dir: dir.to_path_buf(),
                secret,
            },
            jwks,
        )
    }

    /// A token signed with `alg`; `claims` is the JSON payload.
    fn token(&self, alg: &str, kid: &str, claims: &str) -> String {
        let head = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
        let input = format!("{head}.{}", b64url(claims.as_bytes()));
        let sig = match alg {
            "HS256" => {
                let key = format!(
                    "hexkey:{}",
                    self.secret
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                openssl(
                    &self.dir,
                    &[
                        "dgst", "-sha256", "-mac", "HMAC", "-macopt", &key, "-binary",
                    ],
                    Some(input.as_bytes()),
                )
            }
            "RS256" => openssl(
                &self.dir,
                &["dgst", "-sha256", "-sign", "rsa.pem", "-binary"],
                Some(input.as_bytes()),
            ),
            "ES256" => ecdsa_raw(&openssl(
                &self.dir,
                &["dgst", "-sha256", "-sign", "ec.pem", "-binary"],
                Some(input.as_bytes()),
            )),
            _ => unreachable!(),
        };
        format!("{input}.{}", b64url(&sig))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config() -> String {
    r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[jwt]]
name = "users"
jwks = "jwks.json"
algorithms = ["HS256", "RS256", "ES256"]
issuer = "https://issuer.lab"
audience = "edge"
clock_skew_s = 5

[[rate_limits]]
name = "per-user"
rate = 1
burst = 2
key = "jwt:sub"

[[listeners]]
port = 80
http2 = true
jwt = "users"
rate_limits = ["per-user"]

[[listeners.rules]]
name = "admins"
path_prefix = "/admin/"
jwt_claims = { role = "admin" }
action = "allow"

[[listeners.rules]]
name = "no-admin"
path_prefix = "/admin/"
action = "deny"

# Exempt from the listener's provider (a health check, ACME).
[[listeners.routes]]
name = "health"
path_exact = "/health"
jwt = "none"
upstream = "origin"

[[listeners.routes]]
name = "origin"
upstream = "origin"

# No provider on the listener; one route needs the partners' token, and
# its rules see the claims.
[[jwt]]
name = "partners"
jwks = "jwks.json"
algorithms = ["HS256"]
issuer = "https://issuer.lab"
audience = "edge"

[[listeners]]
port = 81
http2 = true

[[listeners.routes]]
name = "partner"
path_prefix = "/partner/"
jwt = "partners"
upstream = "origin"

[[listeners.routes.rules]]
name = "partner-no-users"
jwt_claims = { role = "user" }
action = "deny"

[[listeners.routes]]
name = "public"
upstream = "origin"
"#
    .to_string()
}

#[test]
fn bearer_tokens_from_a_jwks_guard_the_listener() {
    lab_test("jwt", || {
        let lab = Lab::up(1);
        let dir = lab.state_dir();
        let (keys, jwks) = Keys::make(&dir);
        std::fs::write(dir.join("jwks.json"), &jwks).unwrap();
        let path = dir.join("jwt.toml");
        std::fs::write(&path, config()).unwrap();
        // Every request needs a token: the harness's probe would see 401.
        let engine = lab.start_engine_probe(&path, "af_xdp", 1, false);
        let url = |p: &str| format!("http://{VIP}{p}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.status_head(&[&url("/ready")]).0 != 401 {
            assert!(Instant::now() < deadline, "the engine never answered 401");
            std::thread::sleep(Duration::from_millis(200));
        }
        let t = now();
        let claims = |sub: &str, extra: &str| {
            format!(
                r#"{{"sub":"{sub}","iss":"https://issuer.lab","aud":"edge","exp":{},"nbf":{}{extra}}}"#,
                t + 600,
                t - 10
            )
        };
        let bearer = |tok: &str| format!("Authorization: Bearer {tok}");

        // No token: 401 with the challenge (no error: none was presented).
        let (s, head) = lab.status_head(&[&url("/a")]);
        assert_eq!(s, 401, "{head}");
        assert!(
            head.contains("WWW-Authenticate: Bearer realm=\"users\"\r\n"),
            "{head}"
        );
        // Each algorithm, signed by openssl.
        for (alg, kid, sub) in [
            ("HS256", "hs1", "u1"),
            ("RS256", "rsa1", "u2"),
            ("ES256", "ec1", "u3"),
        ] {
            let tok = keys.token(alg, kid, &claims(sub, ""));
            let (s, head) = lab.status_head(&["-H", &bearer(&tok), &url("/a")]);
            assert_eq!(s, 200, "{alg}: {head}");
        }
        // Over h2 too.
        let tok = keys.token("ES256", "ec1", &claims("u4", ""));
        assert_eq!(
            lab.status_head(&["--http2-prior-knowledge", "-H", &bearer(&tok), &url("/a")])
                .0,
            200
        );
        // Forged (a flipped signature byte), expired, not yet valid, wrong
        // issuer, wrong audience, alg none: 401 invalid_token.
        let good = keys.token("RS256", "rsa1", &claims("u5", ""));
        // The signature's first character changed: its first 6 bits differ.
        let (signed, sig) = good.rsplit_once('.').unwrap();
        let swap = if sig.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{swap}{}", &sig[1..]);
        let expired = keys.token(
            "RS256",
            "rsa1",
            &format!(
                r#"{{"sub":"x","iss":"https://issuer.lab","aud":"edge","exp":{}}}"#,
                t - 100
            ),
        );
        let early = keys.token(
            "RS256",
            "rsa1",
            &format!(
                r#"{{"sub":"x","iss":"https://issuer.lab","aud":"edge","exp":{},"nbf":{}}}"#,
                t + 600,
                t + 300
            ),
        );
        let issuer = keys.token(
            "ES256",
            "ec1",
            &format!(
                r#"{{"sub":"x","iss":"https://evil","aud":"edge","exp":{}}}"#,
                t + 600
            ),
        );
        let audience = keys.token(
            "HS256",
            "hs1",
            &format!(
                r#"{{"sub":"x","iss":"https://issuer.lab","aud":"other","exp":{}}}"#,
                t + 600
            ),
        );
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(claims("x", "").as_bytes())
        );
        for (what, tok) in [
            ("forged", &forged),
            ("expired", &expired),
            ("not yet valid", &early),
            ("issuer", &issuer),
            ("audience", &audience),
            ("alg none", &none),
        ] {
            let (s, head) = lab.status_head(&["-H", &bearer(tok), &url("/a")]);
            assert_eq!(s, 401, "{what}: {head}");
            assert!(head.contains("error=\"invalid_token\""), "{what}: {head}");
        }
        // Two Authorization fields (the first valid): refused, an origin
        // might read the other.
        let (s2, head) = lab.status_head(&[
            "-H",
            &bearer(&good),
            "-H",
            "Authorization: Bearer x",
            &url("/a"),
        ]);
        assert_eq!(s2, 401, "{head}");
        // A rule on a claim.
        let admin = keys.token("HS256", "hs1", &claims("boss", r#","role":"admin""#));
        let user = keys.token("HS256", "hs1", &claims("pleb", r#","role":"user""#));
        assert_eq!(
            lab.status_head(&["-H", &bearer(&admin), &url("/admin/x")])
                .0,
            200
        );
        assert_eq!(
            lab.status_head(&["-H", &bearer(&user), &url("/admin/x")]).0,
            403
        );
        // Per route: the exempt health route answers without a token
        // (the others still need one); on a listener without a provider,
        // a route with its own answers 401 without a token, and its rules
        // test the claims.
        let (s, head) = lab.status_head(&[&url("/health")]);
        assert_eq!(s, 200, "{head}");
        assert_eq!(lab.status_head(&[&url("/healthz")]).0, 401);
        let on81 = |p: &str| format!("http://{VIP}:81{p}");
        let (s, head) = lab.status_head(&[&on81("/partner/x")]);
        assert_eq!(s, 401, "{head}");
        assert!(head.contains("realm=\"partners\""), "{head}");
        assert_eq!(lab.status_head(&[&on81("/x")]).0, 200);
        assert_eq!(
            lab.status_head(&["-H", &bearer(&admin), &on81("/partner/x")])
                .0,
            200
        );
        assert_eq!(
            lab.status_head(&["-H", &bearer(&user), &on81("/partner/x")])
                .0,
            403
        );
        // Over h2 too: the exempt route without a token, the route with
        // its own provider without and with one.
        let h2 = "--http2-prior-knowledge";
        let (s, head) = lab.status_head(&[h2, &url("/health")]);
        assert_eq!(s, 200, "{head}");
        assert!(head.starts_with("HTTP/2 "), "{head}");
        let (s, head) = lab.status_head(&[h2, &on81("/partner/x")]);
        assert_eq!(s, 401, "{head}");
        assert!(head.contains("realm=\"partners\""), "{head}");
        let (s, head) = lab.status_head(&[h2, "-H", &bearer(&admin), &on81("/partner/x")]);
        assert_eq!(s, 200, "{head}");
        // A path the public route matches as sent, but the origin
        // resolves under /partner/: refused (400), never the origin's
        // /partner/x without a token; over HTTP/1.1 and h2. Also as the
        // lenient origins resolve it: `\` and `%5C` separate (IIS),
        // `;parameters` end a segment (Tomcat, Jetty, Spring).
        for path in [
            "/public/../partner/x",
            "/%70artner/x",
            "//partner/x",
            "/public\\..\\partner/x",
            "/public%5C..%5Cpartner/x",
            "/public/..;/partner/x",
            "/partner;x/y",
        ] {
            for proto in ["--http1.1", h2] {
                let (s, head) = lab.status_head(&["--path-as-is", proto, &on81(path)]);
                assert_eq!(s, 400, "{path} {proto}: {head}");
            }
        }
        // One that resolves to the same route goes on.
        let (s, head) = lab.status_head(&["--path-as-is", &on81("/public/../x")]);
        assert_eq!(s, 200, "{head}");
        let st = engine.stats_until(|s| s.get("stack_ambiguous_paths") == Some(&14));
        assert_eq!(st["stack_ambiguous_paths"], 14, "{st:?}");
        // A rate limit per subject (1/s, burst 2): a third request at once
        // is 429 for that subject, another subject still passes.
        std::thread::sleep(Duration::from_millis(2100));
        let tok = keys.token("RS256", "rsa1", &claims("busy", ""));
        let h = bearer(&tok);
        let mut argv = vec!["-H", h.as_str()];
        let u = url("/a");
        argv.extend([u.as_str(), u.as_str(), u.as_str()]);
        let (_, heads) = lab.status_head(&argv);
        let statuses: Vec<&str> = heads
            .lines()
            .filter(|l| l.starts_with("HTTP/"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(statuses, ["200", "200", "429"], "{heads}");
        let other = keys.token("RS256", "rsa1", &claims("calm", ""));
        assert_eq!(lab.status_head(&["-H", &bearer(&other), &url("/a")]).0, 200);

        let st = engine.stats_until(|s| s.get("stack_jwt_rejected").copied().unwrap_or(0) >= 8);
        // 1 without a token + 6 invalid + 1 doubled, and the readiness probes.
        assert!(st["stack_jwt_rejected"] >= 8, "{st:?}");
        assert!(st["stack_jwt_verified"] >= 10);

        // The JWKS without the RSA key: applied by the daemon (the file is
        // watched), RS256 tokens are refused, the others still pass.
        let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        let rest: Vec<_> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kty"] != "RSA")
            .cloned()
            .collect();
        std::fs::write(
            dir.join("jwks.json"),
            serde_json::json!({ "keys": rest }).to_string(),
        )
        .unwrap();
        let rsa = keys.token("RS256", "rsa1", &claims("late", ""));
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.status_head(&["-H", &bearer(&rsa), &url("/b")]).0 != 401 {
            assert!(Instant::now() < deadline, "the new JWKS was never applied");
            std::thread::sleep(Duration::from_millis(300));
        }
        let ec = keys.token("ES256", "ec1", &claims("late2", ""));
        assert_eq!(lab.status_head(&["-H", &bearer(&ec), &url("/b")]).0, 200);
        drop(engine);
    });
}
