//! TLS termination in memory: a rustls client against `TlsSession`, with
//! certificates made by rcgen for each test.

use std::path::Path;
use std::sync::Arc;

use ferrogate_testkit::{Ca, temp_dir, write};
use ferrogate_tls::{
    CertSpec, ClientAuth, HandshakeKind, MinVersion, TlsListenerConfig, TlsServer, TlsSession,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// (cert PEM, key PEM) for `names`, signed by `ca`.
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let p = ca.leaf(None, names);
    (p.cert, p.key)
}

fn spec(d: &Path, tag: &str, pem: (String, String), names: &[&str], default: bool) -> CertSpec {
    CertSpec {
        cert: write(d, &format!("{tag}.crt"), &pem.0),
        key: write(d, &format!("{tag}.key"), &pem.1),
        names: names.iter().map(|s| s.to_string()).collect(),
        default,
    }
}

fn client_config(ca: &Ca, alpn: &[&[u8]], identity: Option<(String, String)>) -> Arc<ClientConfig> {
    let identity = identity.map(|(cert, key)| ferrogate_testkit::Pem { cert, key });
    ferrogate_testkit::client_config(ferrogate_tls::provider(), ca, alpn, identity.as_ref())
}

/// Runs the handshake and one request/response; returns the server session
/// or the first error either side saw.
fn exchange(
    server: &TlsServer,
    client: Arc<ClientConfig>,
    sni: &str,
) -> Result<(TlsSession, ClientConnection), String> {
    let mut s = TlsSession::new(server.config.clone()).map_err(|e| e.to_string())?;
    let mut c = ClientConnection::new(client, ServerName::try_from(sni.to_string()).unwrap())
        .map_err(|e| e.to_string())?;
    use std::io::{Read, Write};
    c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got_request = false;
    let mut response: Vec<u8> = Vec::new();
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let feed = s.feed(&wire);
        let n = s.take_tls(&mut buf);
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        let client_state = c.process_new_packets();
        feed.map_err(|e| format!("server: {e}"))?;
        client_state.map_err(|e| format!("client: {e}"))?;
        let mut plain = [0u8; 256];
        let k = s.read_plain(&mut plain);
        if k > 0 {
            assert_eq!(&plain[..k], b"GET / HTTP/1.1\r\n\r\n");
            got_request = true;
            s.write_plain(b"HTTP/1.1 200 OK\r\n\r\n");
        }
        // WouldBlock until the response arrives; whatever was read counts.
        let _ = c.reader().read_to_end(&mut response);
        if response == b"HTTP/1.1 200 OK\r\n\r\n" {
            return Ok((s, c));
        }
    }
    Err(format!(
        "no complete exchange (request seen: {got_request})"
    ))
}

fn served_name(c: &ClientConnection) -> String {
    let cert = &c.peer_certificates().unwrap()[0];
    // The SAN strings are visible in the DER; enough to tell certificates apart.
    String::from_utf8_lossy(cert.as_ref()).to_string()
}

#[test]
fn sni_picks_exact_then_wildcard_then_default_certificate() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("test root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![
            spec(
                &d,
                "api",
                leaf(&root, &["api.example.test"]),
                &["api.example.test"],
                false,
            ),
            spec(
                &d,
                "wild",
                leaf(&root, &["*.example.test"]),
                &["*.example.test"],
                false,
            ),
            spec(
                &d,
                "dflt",
                leaf(&root, &["default.test"]),
                &["default.test"],
                true,
            ),
        ],
        alpn: vec![b"http/1.1".to_vec()],
        ..Default::default()
    })
    .unwrap();
    let cc = client_config(&root, &[b"http/1.1"], None);
    let (s, c) = exchange(&server, cc.clone(), "api.example.test").unwrap();
    assert!(served_name(&c).contains("api.example.test"));
    assert_eq!(s.sni(), Some("api.example.test"));
    assert_eq!(s.alpn(), Some(&b"http/1.1"[..]));
    let (_, c) = exchange(&server, cc.clone(), "www.example.test").unwrap();
    assert!(served_name(&c).contains("*.example.test"));
    // A name no certificate covers gets the default, which the client rejects.
    let e = exchange(&server, cc, "other.test").err().unwrap();
    assert!(e.contains("client"), "{e}");
}

#[test]
fn mtls_required_refuses_missing_and_foreign_certificates() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("server root");
    let clients = Ca::new("client root");
    let other = Ca::new("other root");
    let ca_path = write(&d, "clients.pem()", clients.pem());
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        client_auth: ClientAuth::Required { ca: ca_path },
        ..Default::default()
    })
    .unwrap();
    assert!(exchange(&server, client_config(&root, &[], None), "svc.test").is_err());
    let good = leaf(&clients, &["client-a"]);
    let (s, _) = exchange(&server, client_config(&root, &[], Some(good)), "svc.test").unwrap();
    assert!(s.peer_certificates().is_some_and(|c| !c.is_empty()));
    let foreign = leaf(&other, &["client-b"]);
    assert!(
        exchange(
            &server,
            client_config(&root, &[], Some(foreign)),
            "svc.test"
        )
        .is_err()
    );
}

#[test]
fn mtls_optional_accepts_clients_without_certificates() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("server root");
    let clients = Ca::new("client root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        client_auth: ClientAuth::Optional {
            ca: write(&d, "c.pem", clients.pem()),
        },
        ..Default::default()
    })
    .unwrap();
    let (s, _) = exchange(&server, client_config(&root, &[], None), "svc.test").unwrap();
    assert!(s.peer_certificates().is_none());
}

#[test]
fn tickets_resume_sessions() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        session_tickets: true,
        ..Default::default()
    })
    .unwrap();
    let cc = client_config(&root, &[], None);
    let (s1, _) = exchange(&server, cc.clone(), "svc.test").unwrap();
    assert_eq!(s1.handshake_kind(), Some(HandshakeKind::Full));
    let (s2, _) = exchange(&server, cc, "svc.test").unwrap();
    assert_eq!(s2.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn tls13_minimum_refuses_tls12_clients() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        min_version: MinVersion::Tls13,
        ..Default::default()
    })
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root.pem().as_bytes()).unwrap())
        .unwrap();
    let tls12 = ClientConfig::builder_with_provider(ferrogate_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(exchange(&server, Arc::new(tls12), "svc.test").is_err());
}

#[test]
fn mismatched_key_is_rejected_at_build_time() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let (cert, _) = leaf(&root, &["a.test"]);
    let (_, other_key) = leaf(&root, &["b.test"]);
    let err = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(&d, "bad", (cert, other_key), &["a.test"], true)],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn garbage_and_truncated_hello_fail_cleanly_with_an_alert() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        ..Default::default()
    })
    .unwrap();
    let corpus: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff],
        vec![0x17, 0x03, 0x03, 0x00, 0x10]
            .into_iter()
            .chain([0u8; 16])
            .collect(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff],
        (0..=255u8).collect(),
    ];
    for case in corpus {
        let mut s = TlsSession::new(server.config.clone()).unwrap();
        let r = s.feed(&case);
        let mut out = vec![0u8; 4096];
        let n = s.take_tls(&mut out);
        match r {
            Err(_) => assert!(
                n > 0 && out[0] == 0x15,
                "an alert record goes back: {:?}",
                &out[..n.min(8)]
            ),
            // A partial record just waits for more bytes.
            Ok(_) => assert!(s.is_handshaking()),
        }
    }
    // A truncated real ClientHello is incomplete, not an error.
    let mut c = ClientConnection::new(
        client_config(&root, &[], None),
        ServerName::try_from("svc.test").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    let mut s = TlsSession::new(server.config.clone()).unwrap();
    assert!(s.feed(&hello[..hello.len() / 2]).is_ok());
    assert!(s.is_handshaking());
}

/// A real ClientHello, as the one record rustls writes it.
fn client_hello(root: &Ca) -> Vec<u8> {
    let mut c = ClientConnection::new(
        client_config(root, &[], None),
        ServerName::try_from("svc.test").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    hello
}

/// The hello's handshake message in two handshake records with `between`
/// (a whole record) in the middle.
fn hello_interleaved_with(hello: &[u8], between: &[u8]) -> Vec<u8> {
    let body = &hello[5..];
    let mut out = Vec::new();
    for (i, part) in [&body[..10], &body[10..]].into_iter().enumerate() {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
        if i == 0 {
            out.extend_from_slice(between);
        }
    }
    out
}

#[test]
fn handshake_errors_rustls_sends_no_alert_for_get_one_from_ferrogate() {
    use ferrogate_tls::FailAlert;
    use rustls::AlertDescription as A;
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        ..Default::default()
    })
    .unwrap();
    let hello = client_hello(&root);
    let cases: Vec<(&str, Vec<u8>, A)> = vec![
        (
            "application data between two fragments of the ClientHello",
            hello_interleaved_with(&hello, &[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
            A::UnexpectedMessage,
        ),
        (
            "an alert between two fragments of the ClientHello",
            hello_interleaved_with(&hello, &[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]),
            A::UnexpectedMessage,
        ),
        (
            "change_cipher_spec between two fragments of the ClientHello",
            hello_interleaved_with(&hello, &[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]),
            A::UnexpectedMessage,
        ),
        (
            "a ClientHello of 64 KiB (over rustls's limit)",
            vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00],
            A::DecodeError,
        ),
    ];
    for (what, bytes, desc) in cases {
        let mut s = TlsSession::new(server.config.clone()).unwrap();
        assert!(s.feed(&bytes).is_err(), "{what}: refused");
        let mut out = vec![0u8; 4096];
        let n = s.take_tls(&mut out);
        assert_eq!(
            &out[..n],
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(desc)],
            "{what}: one fatal {desc:?} alert"
        );
        assert_eq!(s.failure(), Some(FailAlert::Added(desc)), "{what}");
        assert!(!s.wants_write(), "{what}: nothing after the alert");
    }
    // Where rustls queues its own alert, it goes alone (no second one).
    let mut s = TlsSession::new(server.config.clone()).unwrap();
    assert!(s.feed(b"GET / HTTP/1.1\r\n\r\n").is_err());
    let mut out = vec![0u8; 4096];
    let n = s.take_tls(&mut out);
    assert_eq!(n, 7, "{:?}", &out[..n]);
    assert_eq!(out[0], 0x15);
    assert_eq!(s.failure(), Some(FailAlert::Rustls));
}

#[test]
fn rustls_errors_map_to_rfc8446_alerts() {
    use ferrogate_tls::alert_for;
    use rustls::{AlertDescription as A, Error, InvalidMessage, PeerMisbehaved as P};
    let cases = [
        (
            Error::PeerMisbehaved(P::IllegalTlsInnerPlaintext),
            Some(A::UnexpectedMessage),
        ),
        (
            Error::PeerMisbehaved(P::MessageInterleavedWithHandshakeMessage),
            Some(A::UnexpectedMessage),
        ),
        (
            Error::PeerMisbehaved(P::TooManyEmptyFragments),
            Some(A::UnexpectedMessage),
        ),
        (
            Error::InvalidMessage(InvalidMessage::HandshakePayloadTooLarge),
            Some(A::DecodeError),
        ),
        (Error::PeerSentOversizedRecord, Some(A::RecordOverflow)),
        (Error::DecryptError, Some(A::BadRecordMac)),
        (Error::AlertReceived(A::HandshakeFailure), None),
        (Error::General("x".into()), Some(A::InternalError)),
    ];
    for (err, want) in cases {
        assert_eq!(alert_for(&err), want, "{err:?}");
    }
}

#[test]
fn plaintext_pending_counts_what_rustls_holds_until_read() {
    let d = temp_dir("fg-tls");
    let root = Ca::new("root");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![spec(
            &d,
            "srv",
            leaf(&root, &["svc.test"]),
            &["svc.test"],
            true,
        )],
        ..Default::default()
    })
    .unwrap();
    let (mut s, mut c) = exchange(&server, client_config(&root, &[], None), "svc.test").unwrap();
    assert_eq!(s.plaintext_pending(), 0);
    use std::io::Write;
    c.writer().write_all(b"0123456789").unwrap();
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    s.feed_some(&wire).unwrap();
    // What the splice's recv_queue counts before decrypting more.
    assert_eq!(s.plaintext_pending(), 10);
    let mut out = [0u8; 4];
    assert_eq!(s.read_plain(&mut out), 4);
    assert_eq!(s.plaintext_pending(), 6);
    let mut rest = [0u8; 16];
    assert_eq!(s.read_plain(&mut rest), 6);
    assert_eq!(s.plaintext_pending(), 0);
}
