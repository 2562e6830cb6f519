//! TLS 1.3 handshakes from this binary: `ferrogate-bench tls-client` (N
//! concurrent loops of connect, handshake, one request, close, against a
//! server in the lab) and `ferrogate-bench tls-floor` (the server side of
//! one handshake in memory, no sockets: the crypto floor). Both use rustls
//! with ferrogate's own provider, TLS 1.3 only and X25519 only, so every
//! server does the same key exchange (rustls would also offer a
//! post-quantum hybrid that only a rustls server picks).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrogate_proxy::tls::{CertSpec, ClientAuth, MinVersion, TlsListenerConfig, TlsServer};
use hdrhistogram::Histogram;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, ServerConfig,
    ServerConnection, SignatureScheme,
};
use serde::{Deserialize, Serialize};

/// ferrogate's provider with X25519 as the only key exchange group.
fn client_provider() -> Arc<CryptoProvider> {
    let mut p = (*ferrogate_proxy::tls::provider()).clone();
    p.kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    Arc::new(p)
}

/// Accepts exactly the bench's leaf certificate and skips the signature
/// checks: the client shares CPU0 with the origin and is the bottleneck, and
/// the server's work is the same either way. `start_tls` verifies the chain
/// with curl and openssl against the CA before any measurement.
#[derive(Debug)]
struct PinnedLeaf {
    der: Vec<u8>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the bench's server certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// A TLS 1.3 client config pinned to `cert_pem`'s leaf; with `resume`, its
/// own session cache (tickets), else no resumption at all.
fn client_config(cert_pem: &[u8], resume: bool) -> Result<Arc<ClientConfig>> {
    let der = CertificateDer::from_pem_slice(cert_pem).context("server certificate PEM")?;
    let p = client_provider();
    let schemes = p.signature_verification_algorithms.supported_schemes();
    let mut c = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedLeaf {
            der: der.as_ref().to_vec(),
            schemes,
        }))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = if resume {
        Resumption::in_memory_sessions(16)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(c))
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// SNI name.
    #[arg(long)]
    pub name: String,
    /// The server's certificate (PEM, leaf first): the only one accepted.
    #[arg(long)]
    pub cert: PathBuf,
    /// Concurrent handshake loops (one thread each).
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Resume every handshake after a loop's first (session tickets; each
    /// loop has its own cache, so no loop waits for another's ticket).
    #[arg(long)]
    pub resume: bool,
    /// The one request sent on each connection (with `Connection: close`).
    #[arg(long, default_value = "/tls-hs")]
    pub path: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub errors: u64,
    /// Connections whose response was not a 200.
    pub bad_responses: u64,
    pub elapsed_s: f64,
    pub hs_per_s: f64,
    /// Connect to handshake done, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    pub suite: String,
    pub group: String,
    pub first_error: String,
}

struct Loop {
    rep: ClientReport,
    hist: Histogram<u64>,
}

/// One connection: connect, handshake, the request, read to the end.
fn one(
    cfg: &Arc<ClientConfig>,
    addr: &SocketAddr,
    name: &ServerName<'static>,
    req: &[u8],
    l: &mut Loop,
) -> Result<()> {
    let t0 = Instant::now();
    let mut tcp = TcpStream::connect_timeout(addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut c = ClientConnection::new(cfg.clone(), name.clone())?;
    while c.is_handshaking() {
        c.complete_io(&mut tcp)?;
    }
    let _ = l.hist.record((t0.elapsed().as_micros() as u64).max(1));
    l.rep.handshakes += 1;
    match c.handshake_kind() {
        Some(HandshakeKind::Resumed) => l.rep.resumed += 1,
        _ => l.rep.full += 1,
    }
    if l.rep.suite.is_empty() {
        l.rep.suite = c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        l.rep.group = c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
    }
    let mut s = rustls::Stream::new(&mut c, &mut tcp);
    s.write_all(req)?;
    let mut buf = Vec::with_capacity(512);
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        // A server that closes without close_notify after a whole response.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        l.rep.bad_responses += 1;
    }
    Ok(())
}

pub fn run_client(a: &ClientArgs) -> Result<ClientReport> {
    let pem = std::fs::read(&a.cert).with_context(|| format!("{}", a.cert.display()))?;
    let name = ServerName::try_from(a.name.clone()).context("SNI name")?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        a.path, a.name
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let loops: Vec<Result<Loop>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..a.conns.max(1))
            .map(|_| {
                let (pem, name, req) = (&pem, &name, req.as_bytes());
                sc.spawn(move || -> Result<Loop> {
                    let cfg = client_config(pem, a.resume)?;
                    let mut l = Loop {
                        rep: ClientReport::default(),
                        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
                    };
                    while Instant::now() < deadline {
                        if let Err(e) = one(&cfg, &a.addr, name, req, &mut l) {
                            l.rep.errors += 1;
                            if l.rep.first_error.is_empty() {
                                l.rep.first_error = format!("{e:#}");
                            }
                            // A refused or reset connect must not spin.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    Ok(l)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a client loop panicked")))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut r = ClientReport::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for l in loops {
        let l = l?;
        r.handshakes += l.rep.handshakes;
        r.full += l.rep.full;
        r.resumed += l.rep.resumed;
        r.errors += l.rep.errors;
        r.bad_responses += l.rep.bad_responses;
        for (mine, theirs) in [
            (&mut r.suite, l.rep.suite),
            (&mut r.group, l.rep.group),
            (&mut r.first_error, l.rep.first_error),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            }
        }
        hist.add(&l.hist)?;
    }
    r.elapsed_s = elapsed;
    r.hs_per_s = r.handshakes as f64 / elapsed.max(1e-9);
    r.p50_us = hist.value_at_quantile(0.5) as f64;
    r.p99_us = hist.value_at_quantile(0.99) as f64;
    Ok(r)
}

#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// The server certificate (PEM) and key, as the proxies use them.
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// Seconds of handshakes per kind (full, resumed).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FloorReport {
    /// Mean server-side µs per handshake.
    pub full_us: f64,
    pub resumed_us: f64,
    pub full_n: u64,
    pub resumed_n: u64,
    /// Median server-side µs per handshake.
    pub full_p50_us: f64,
    pub resumed_p50_us: f64,
}

/// Replaces `buf` with every pending TLS record of one side (`write_tls`).
fn drain(
    buf: &mut Vec<u8>,
    mut write_tls: impl FnMut(&mut Vec<u8>) -> std::io::Result<usize>,
) -> Result<()> {
    buf.clear();
    while write_tls(buf)? > 0 {}
    Ok(())
}

/// One handshake in memory, then the tickets to the client; returns the
/// wall time spent in the server's calls only, and the handshake's kind.
fn floor_handshake(
    cc: &Arc<ClientConfig>,
    sc: &Arc<ServerConfig>,
    name: &ServerName<'static>,
) -> Result<(Duration, HandshakeKind)> {
    let mut client = ClientConnection::new(cc.clone(), name.clone())?;
    let t = Instant::now();
    let mut server = ServerConnection::new(sc.clone())?;
    let mut server_time = t.elapsed();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        drain(&mut to_server, |b| client.write_tls(b))?;
        let t = Instant::now();
        let mut r = &to_server[..];
        while !r.is_empty() {
            server.read_tls(&mut r)?;
            server.process_new_packets()?;
        }
        drain(&mut to_client, |b| server.write_tls(b))?;
        server_time += t.elapsed();
        let mut r = &to_client[..];
        while !r.is_empty() {
            client.read_tls(&mut r)?;
            client.process_new_packets()?;
        }
        if to_server.is_empty()
            && to_client.is_empty()
            && !client.is_handshaking()
            && !server.is_handshaking()
        {
            let kind = server.handshake_kind().unwrap_or(HandshakeKind::Full);
            return Ok((server_time, kind));
        }
    }
    bail!("the in-memory handshake did not finish")
}

fn floor_kind(
    cc: &Arc<ClientConfig>,
    sc: &Arc<ServerConfig>,
    name: &ServerName<'static>,
    want: HandshakeKind,
    seconds: f64,
) -> Result<(f64, f64, u64)> {
    // The first handshake fills the client's ticket cache (and warms up).
    floor_handshake(cc, sc, name)?;
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let (d, kind) = floor_handshake(cc, sc, name)?;
        if kind != want {
            bail!("crypto floor: a {kind:?} handshake where {want:?} was wanted");
        }
        times.push(d.as_secs_f64() * 1e6);
    }
    let n = times.len().max(1);
    let mean = times.iter().sum::<f64>() / n as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    let p50 = times.get(times.len() / 2).copied().unwrap_or(0.0);
    Ok((mean, p50, times.len() as u64))
}

/// The server side of TLS 1.3 handshakes with ferrogate's own listener
/// config (the same `TlsServer::build` as `[listeners.tls]` with
/// `min_version = "1.3"` and tickets on).
pub fn run_floor(a: &FloorArgs) -> Result<FloorReport> {
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![CertSpec {
            cert: a.cert.clone(),
            key: a.key.clone(),
            names: vec![],
            default: true,
        }],
        alpn: vec![b"http/1.1".to_vec()],
        min_version: MinVersion::Tls13,
        client_auth: ClientAuth::None,
        session_tickets: true,
    })
    .context("the server config")?;
    let pem = std::fs::read(&a.cert).with_context(|| format!("{}", a.cert.display()))?;
    let name = ServerName::try_from("bench.invalid".to_string())?;
    let (full_us, full_p50_us, full_n) = floor_kind(
        &client_config(&pem, false)?,
        &server.config,
        &name,
        HandshakeKind::Full,
        a.seconds,
    )?;
    let (resumed_us, resumed_p50_us, resumed_n) = floor_kind(
        &client_config(&pem, true)?,
        &server.config,
        &name,
        HandshakeKind::Resumed,
        a.seconds,
    )?;
    Ok(FloorReport {
        full_us,
        resumed_us,
        full_n,
        resumed_n,
        full_p50_us,
        resumed_p50_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_does_full_and_resumed_handshakes() {
        let d = ferrogate_testkit::temp_dir("fb-floor");
        let ca = ferrogate_testkit::Ca::new("floor CA");
        let (cert, key) = ca.leaf(Some("bench"), &["bench.invalid"]).write(&d, "s");
        let r = run_floor(&FloorArgs {
            cert,
            key,
            seconds: 0.05,
        })
        .unwrap();
        assert!(r.full_n > 0 && r.resumed_n > 0, "{r:?}");
        let _ = std::fs::remove_dir_all(d);
    }
}
