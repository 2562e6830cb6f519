//! `[listeners.tls]`: certificates, SNI, client auth, compiled into the
//! rustls server config once per snapshot.

use super::*;

/// Validates `[listeners.tls]` and compiles it into the rustls server config
/// (certificates loaded and checked against their keys here, off the data
/// path, once per snapshot).
pub(super) fn check_listener_tls(
    i: usize,
    l: &ListenerSection,
    rep: &mut Reporter<'_>,
) -> Option<ferrogate_proxy::tls::ListenerTls> {
    use ferrogate_proxy::tls::{
        CertSpec, ClientAuth, IdentityHeaders, ListenerTls, MinVersion, TlsListenerConfig,
        TlsServer, load_certified_key, provider,
    };
    let field = format!("listeners[{i}].tls");
    let Some(tls) = &l.tls else {
        if let Some(h) = &l.mtls_headers
            && (h.common_name.is_some() || h.sans.is_some())
        {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].mtls_headers"),
                "needs [listeners.tls] with a client_ca",
            );
        }
        return None;
    };
    let span = tls.span();
    let t = tls.get_ref();
    let errors_before = rep.errors.len();
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| base.join(p);
    let provider = provider();
    if t.certificates.is_empty() {
        rep.at(
            span.clone(),
            format!("{field}.certificates"),
            "at least one certificate is required",
        );
    }
    let mut certs = Vec::new();
    let mut defaults = 0;
    for (k, c) in t.certificates.iter().enumerate() {
        let cf = format!("{field}.certificates[{k}]");
        let cs = c.get_ref();
        for n in &cs.names {
            let v = n.get_ref();
            let host = v.strip_prefix("*.").unwrap_or(v);
            if host.is_empty()
                || host.contains('*')
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                rep.at(
                    n.span(),
                    format!("{cf}.names"),
                    format!("{v:?} is not a host name or *.suffix wildcard"),
                );
            }
        }
        defaults += cs.default as usize;
        let spec = CertSpec {
            cert: resolve(cs.cert.get_ref()),
            key: resolve(cs.key.get_ref()),
            names: cs.names.iter().map(|n| n.get_ref().clone()).collect(),
            default: cs.default,
        };
        rep.uses(&spec.cert);
        rep.uses(&spec.key);
        if let Err(e) = load_certified_key(&spec.cert, &spec.key, &provider) {
            use ferrogate_proxy::tls::CertError;
            let (sp, f) = match &e {
                CertError::Key { .. } => (cs.key.span(), format!("{cf}.key")),
                _ => (cs.cert.span(), format!("{cf}.cert")),
            };
            rep.at(sp, f, e.to_string());
        }
        certs.push(spec);
    }
    if defaults > 1 {
        rep.at(
            span.clone(),
            format!("{field}.certificates"),
            "more than one certificate has default = true",
        );
    }
    let mut alpn = Vec::new();
    let tcp = l.protocol.as_ref().is_some_and(|p| p.get_ref() == "tcp");
    match &t.alpn {
        // A TCP listener splices whatever protocol: none is claimed unless
        // listed, and any listed one is offered as it is.
        None if tcp => {}
        Some(list) if tcp => {
            for (k, a) in list.iter().enumerate() {
                let id = a.get_ref().as_bytes();
                if !(1..=255).contains(&id.len()) {
                    rep.at(
                        a.span(),
                        format!("{field}.alpn[{k}]"),
                        "a protocol name is 1..=255 bytes",
                    );
                }
                alpn.push(id.to_vec());
            }
        }
        None if l.http2 => alpn.extend([b"h2".to_vec(), b"http/1.1".to_vec()]),
        None => alpn.push(b"http/1.1".to_vec()),
        Some(list) => {
            for (k, a) in list.iter().enumerate() {
                match a.get_ref().as_str() {
                    "http/1.1" => {}
                    "h2" if l.http2 => {}
                    "h2" => rep.at(
                        a.span(),
                        format!("{field}.alpn[{k}]"),
                        format!("\"h2\" needs http2 = true on listeners[{i}]"),
                    ),
                    other => rep.at(
                        a.span(),
                        format!("{field}.alpn[{k}]"),
                        format!("{other:?} is not supported (\"h2\" or \"http/1.1\")"),
                    ),
                }
                alpn.push(a.get_ref().as_bytes().to_vec());
            }
        }
    }
    let min_version = match t.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "1.2")) => MinVersion::Tls12,
        Some((_, "1.3")) => MinVersion::Tls13,
        Some((v, other)) => {
            rep.at(
                v.span(),
                format!("{field}.min_version"),
                format!("{other:?} must be \"1.2\" or \"1.3\""),
            );
            MinVersion::Tls12
        }
    };
    let ca = t.client_ca.as_ref().map(|c| resolve(c.get_ref()));
    if let Some(ca) = &ca {
        rep.uses(ca);
    }
    let mode = t.client_auth.as_ref().map(|m| (m, m.get_ref().as_str()));
    let client_auth = match (mode, ca) {
        (None, None) | (Some((_, "none")), _) => ClientAuth::None,
        (None, Some(ca)) | (Some((_, "required")), Some(ca)) => ClientAuth::Required { ca },
        (Some((_, "optional")), Some(ca)) => ClientAuth::Optional { ca },
        (Some((m, "required" | "optional")), None) => {
            rep.at(
                m.span(),
                format!("{field}.client_auth"),
                "needs client_ca (the CA bundle that signs client certificates)",
            );
            ClientAuth::None
        }
        (Some((m, other)), _) => {
            rep.at(
                m.span(),
                format!("{field}.client_auth"),
                format!("{other:?} must be \"none\", \"optional\" or \"required\""),
            );
            ClientAuth::None
        }
    };
    let identity_headers = match &l.mtls_headers {
        None => IdentityHeaders::default(),
        Some(h) => {
            for (k, v) in [("common_name", &h.common_name), ("sans", &h.sans)] {
                if let Some(v) = v
                    && !is_header_name(v)
                {
                    rep.at(
                        span.clone(),
                        format!("listeners[{i}].mtls_headers.{k}"),
                        format!("{v:?} is not a header name"),
                    );
                }
            }
            IdentityHeaders {
                common_name: h.common_name.clone(),
                sans: h.sans.clone(),
            }
        }
    };
    let handshake_timeout = match &t.handshake_timeout_ms {
        None => Duration::from_secs(10),
        Some(ms) => {
            if !(100..=600_000).contains(ms.get_ref()) {
                rep.at(
                    ms.span(),
                    format!("{field}.handshake_timeout_ms"),
                    "must be 100..=600000",
                );
            }
            Duration::from_millis(*ms.get_ref())
        }
    };
    if rep.errors.len() > errors_before {
        return None;
    }
    let cfg = TlsListenerConfig {
        certs,
        alpn,
        min_version,
        client_auth,
        session_tickets: t.session_tickets,
    };
    match TlsServer::build(&cfg) {
        Ok(server) => {
            let mut lt = ListenerTls::new(server);
            lt.handshake_timeout = handshake_timeout;
            lt.identity_headers = identity_headers;
            Some(lt)
        }
        Err(e) => {
            let f = match &e {
                ferrogate_proxy::tls::TlsConfigError::Cert(
                    ferrogate_proxy::tls::CertError::Ca { .. },
                )
                | ferrogate_proxy::tls::TlsConfigError::Verifier(_) => {
                    format!("{field}.client_ca")
                }
                _ => field.clone(),
            };
            let sp = t
                .client_ca
                .as_ref()
                .filter(|_| f.ends_with("client_ca"))
                .map(|c| c.span())
                .unwrap_or(span);
            rep.at(sp, f, e.to_string());
            None
        }
    }
}
