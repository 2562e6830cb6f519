use super::*;

fn pem_pair(cn: &str) -> (String, String) {
    let p = ferrogate_testkit::Pem::self_signed(cn);
    (p.cert, p.key)
}

fn dir() -> PathBuf {
    ferrogate_testkit::temp_dir("fg-cfg-tls")
}

fn config(tls: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[listeners]]
port = 443
{tls}
[[listeners.routes]]
respond = {{ status = 200, body = "hi" }}
"#
    )
}

fn compile_in(d: &Path, text: &str) -> Result<Compiled, Vec<String>> {
    let path = d.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    load(&path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn tls_listener_compiles_with_paths_relative_to_the_config() {
    let d = dir();
    let (c, k) = pem_pair("a.example");
    std::fs::write(d.join("a.crt"), c).unwrap();
    std::fs::write(d.join("a.key"), k).unwrap();
    let (ca, _) = pem_pair("client ca");
    std::fs::write(d.join("ca.pem"), ca).unwrap();
    let text = config(
        r#"[listeners.tls]
certificates = [{ cert = "a.crt", key = "a.key", names = ["a.example", "*.a.example"], default = true }]
min_version = "1.3"
client_ca = "ca.pem"
client_auth = "optional"
handshake_timeout_ms = 2000
[listeners.mtls_headers]
common_name = "X-Client-CN"
sans = "X-Client-SAN"
"#,
    );
    let c = compile_in(&d, &text).expect("compiles");
    let l = &c.engine.routes.listeners[0];
    let tls = l.tls.as_ref().expect("tls listener");
    assert_eq!(tls.handshake_timeout, Duration::from_millis(2000));
    assert_eq!(tls.server.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert_eq!(
        tls.identity_headers.common_name.as_deref(),
        Some("X-Client-CN")
    );
}

fn upstream_config(tls: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "secure"
endpoints = ["10.77.0.3:9443"]
{tls}

[[listeners]]
port = 80
[[listeners.routes]]
upstream = "secure"
"#
    )
}

#[test]
fn upstream_tls_needs_a_ca_or_an_explicit_skip() {
    let d = dir();
    let (ca, _) = pem_pair("origin ca");
    std::fs::write(d.join("origin-ca.pem"), ca).unwrap();
    let c = compile_in(
        &d,
        &upstream_config("tls = true\nca = \"origin-ca.pem\"\nsni = \"origin.example\""),
    )
    .expect("compiles");
    let tls = c.engine.routes.upstreams[0].tls.as_ref().expect("tls pool");
    assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);

    let e = compile_in(&d, &upstream_config("tls = true")).unwrap_err();
    assert!(
        e.iter().any(|l| l.contains("upstreams[0].ca")
            && l.contains("insecure_skip_verify")
            && l.contains(":9:")),
        "{e:?}"
    );
    let e = compile_in(&d, &upstream_config("tls = true\nca = \"missing.pem\"")).unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("upstreams[0].ca") && l.contains("missing.pem")),
        "{e:?}"
    );
    let e = compile_in(&d, &upstream_config("ca = \"origin-ca.pem\"")).unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("upstreams[0].ca") && l.contains("only used with tls = true")),
        "{e:?}"
    );
    let e = compile_in(
        &d,
        &upstream_config("tls = true\nca = \"origin-ca.pem\"\n[upstreams.health]\npath = \"/\""),
    )
    .unwrap_err();
    assert!(
        e.iter().any(|l| l.contains("upstreams[0].health.type")),
        "{e:?}"
    );
    let c = compile_in(
        &d,
        &upstream_config("tls = true\ninsecure_skip_verify = true"),
    )
    .expect("compiles");
    assert!(c.engine.routes.upstreams[0].tls.is_some());
}

#[test]
fn tls_errors_name_file_line_field_and_cause() {
    let d = dir();
    let (c, _) = pem_pair("a.example");
    let (_, other_key) = pem_pair("b.example");
    std::fs::write(d.join("a.crt"), c).unwrap();
    std::fs::write(d.join("b.key"), other_key).unwrap();
    std::fs::write(
        d.join("bad.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = config(
        r#"[listeners.tls]
certificates = [
  { cert = "a.crt", key = "b.key", names = ["a.example"] },
  { cert = "missing.crt", key = "b.key" },
  { cert = "bad.pem", key = "b.key", names = ["bad name"] },
]
min_version = "1.1"
client_auth = "required"
"#,
    );
    let e = compile_in(&d, &text).unwrap_err();
    let has = |needle: &str| {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
    };
    has("edge.toml:10:12: listeners[0].tls.certificates[0].cert: ");
    has("the key does not match the certificate");
    has("edge.toml:11:12: listeners[0].tls.certificates[1].cert: ");
    has("missing.crt: cannot read certificates");
    has("listeners[0].tls.certificates[2].cert: ");
    has("listeners[0].tls.certificates[2].names: \"bad name\" is not a host name");
    has("edge.toml:14:15: listeners[0].tls.min_version: \"1.1\" must be");
    has("listeners[0].tls.client_auth: needs client_ca");
}

#[test]
fn alpn_offers_h2_only_on_http2_listeners() {
    let d = dir();
    let (c, k) = pem_pair("a.example");
    std::fs::write(d.join("a.crt"), c).unwrap();
    std::fs::write(d.join("a.key"), k).unwrap();
    let tls =
        "[listeners.tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\", default = true }]\n";
    let h2 = config(tls).replace("port = 443\n", "port = 443\nhttp2 = true\n");
    let c = compile_in(&d, &h2).expect("compiles");
    let alpn = &c.engine.routes.listeners[0]
        .tls
        .as_ref()
        .unwrap()
        .server
        .config
        .alpn_protocols;
    assert_eq!(alpn, &vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    // "h2" in an explicit list needs http2 = true.
    let explicit = format!("{tls}alpn = [\"h2\", \"http/1.1\"]\n");
    let e = compile_in(&d, &config(&explicit)).unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("listeners[0].tls.alpn[0]: \"h2\" needs http2 = true")),
        "{e:#?}"
    );
    let c = compile_in(
        &d,
        &config(&explicit).replace("port = 443\n", "port = 443\nhttp2 = true\n"),
    )
    .expect("compiles");
    assert!(c.engine.routes.listeners[0].http2);
}

fn tcp_config(keys: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "redis"
endpoints = ["10.77.0.3:6379"]

[[listeners]]
port = 6380
protocol = "tcp"
upstream = "redis"
{keys}
[listeners.tls]
certificates = [{{ cert = "a.crt", key = "a.key" }}]
"#
    )
}

#[test]
fn a_tcp_listener_terminates_tls_and_offers_alpn_only_when_listed() {
    let d = dir();
    let (c, k) = pem_pair("a.example");
    std::fs::write(d.join("a.crt"), c).unwrap();
    std::fs::write(d.join("a.key"), k).unwrap();
    let c = compile_in(&d, &tcp_config("")).expect("compiles");
    let l = c.engine.routes.listener(6380).unwrap();
    assert_eq!(
        l.l4.as_ref().expect("a TCP listener").upstream.name,
        "redis"
    );
    let tls = l.tls.as_ref().expect("terminates TLS");
    assert!(tls.server.config.alpn_protocols.is_empty(), "no ALPN");
    let with_alpn = tcp_config("").replace(
        "key = \"a.key\" }]\n",
        "key = \"a.key\" }]\nalpn = [\"redis\", \"x-custom/1\"]\n",
    );
    let c = compile_in(&d, &with_alpn).expect("compiles");
    let tls = c.engine.routes.listener(6380).unwrap().tls.clone().unwrap();
    assert_eq!(
        tls.server.config.alpn_protocols,
        vec![b"redis".to_vec(), b"x-custom/1".to_vec()]
    );
    let e = compile_in(&d, &with_alpn.replace("\"redis\"", "\"\"")).unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("/edge.toml:17:9: listeners[0].tls.alpn[0]: ")),
        "{e:?}"
    );
}

#[test]
fn sni_passthrough_and_tls_termination_on_one_listener_are_refused_with_their_line() {
    let d = dir();
    let (c, k) = pem_pair("a.example");
    std::fs::write(d.join("a.crt"), c).unwrap();
    std::fs::write(d.join("a.key"), k).unwrap();
    let e = compile_in(&d, &tcp_config("sni = { \"a.example\" = \"redis\" }\n")).unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("/edge.toml:14:7: listeners[0].sni: ")
                && l.contains("exclude each other")),
        "{e:?}"
    );
    // A certificate error is still reported beside it.
    let e = compile_in(
        &d,
        &tcp_config("sni = { \"a.example\" = \"redis\" }\n").replace("a.crt", "none.crt"),
    )
    .unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.contains("listeners[0].tls.certificates[0].cert")),
        "{e:?}"
    );
}
