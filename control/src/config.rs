//! The TOML configuration: schema (serde), validation with errors that name
//! file, line, column and field, and compilation into the engine's config.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrogate_ebpf::{
    AttachMode, CidrAction, CidrRule, FailMode, FilterRules, L4Rule, RateKey, RateRule,
};
use ferrogate_engine::{BackendChoice, EngineConfig, PollingMode};
use ferrogate_proxy::http::head::valid_host;
use ferrogate_proxy::lb::{
    Balancer, BreakerPolicy, CheckKind, Endpoint, HashOn, HealthCheck, MAX_ENDPOINTS,
    PassivePolicy, PoolPolicy, RetryPolicy, UpstreamTimeouts,
};
use ferrogate_proxy::{
    DirectResponse, HeaderMatch, Listener, PathMatch, QueryMatch, Route, RouteAction, RouteTable,
    Timeouts, Upstream,
};
use serde::Deserialize;
use toml::Spanned;

/// Largest body a `respond` route may carry (it must fit the head buffer).
const MAX_DIRECT_BODY: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub engine: EngineSection,
    pub vips: Vec<Spanned<String>>,
    #[serde(default)]
    pub gateway: Option<Spanned<String>>,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub timeouts: TimeoutSection,
    #[serde(default)]
    pub filter: FilterSection,
    #[serde(default)]
    pub limits: LimitSection,
    #[serde(default)]
    pub numa: NumaSection,
    #[serde(default)]
    pub access_log: Option<AccessLogSection>,
}

/// JSON access log, one line per response, written off the data path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// File to append to (relative to the config file), or "-" for the
    /// process log (tracing target `ferrogate::access`).
    pub path: Spanned<String>,
    /// Records each worker may queue before lines are dropped (counted).
    #[serde(default = "default_access_queue")]
    pub queue: Spanned<usize>,
}

fn default_access_queue() -> Spanned<usize> {
    Spanned::new(0..0, 8192)
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    File(PathBuf),
    /// The process log, through `tracing`.
    Log,
}

/// Per-NUMA-node tuning: `[numa.node.0]`, `[numa.node.1]`, ... Only the
/// NIC's node's entry applies to the engine; absent keys come from the
/// topology (cores) and the [engine] defaults.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NumaSection {
    #[serde(default)]
    pub node: std::collections::BTreeMap<String, NumaNodeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNodeSection {
    /// CPU list like "2-5,8" (one worker per listed CPU, in order).
    #[serde(default)]
    pub cores: Option<Spanned<String>>,
    #[serde(default)]
    pub umem_frames: Option<Spanned<u32>>,
    #[serde(default)]
    pub ring_size: Option<Spanned<u32>>,
    #[serde(default)]
    pub batch_size: Option<Spanned<usize>>,
    #[serde(default)]
    pub hugepages: Option<bool>,
    /// busy | adaptive | interrupt
    #[serde(default)]
    pub polling: Option<Spanned<String>>,
}

/// Request limits of every listener.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    /// Largest request body in bytes (413 above it); 0 or absent = no limit.
    #[serde(default)]
    pub max_request_body_bytes: u64,
}

/// The XDP filter tier (applies to traffic addressed to VIPs only).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    #[serde(default)]
    pub mode: FilterMode,
    #[serde(default)]
    pub fail_mode: FailModeSetting,
    #[serde(default)]
    pub cidr: Vec<CidrSection>,
    #[serde(default)]
    pub rate: Vec<RateSection>,
    #[serde(default)]
    pub l4: Vec<L4Section>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// Everything not denied reaches the VIPs.
    #[default]
    DenyList,
    /// Only sources in an `allow` CIDR reach the VIPs.
    AllowList,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FailModeSetting {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrSection {
    pub id: Spanned<String>,
    pub action: CidrActionSetting,
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// Files with one prefix per line (`#` comments), relative to the config.
    #[serde(default)]
    pub cidr_files: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum CidrActionSetting {
    Deny,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSection {
    pub id: Spanned<String>,
    /// `source` (one bucket per source prefix) or `global`.
    #[serde(default)]
    pub key: RateKeySetting,
    #[serde(default = "prefix4_default")]
    pub prefix4: u8,
    #[serde(default = "prefix6_default")]
    pub prefix6: u8,
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub burst_packets: Option<u64>,
    #[serde(default)]
    pub bps: u64,
    #[serde(default)]
    pub burst_bytes: Option<u64>,
    #[serde(default)]
    pub syn_only: bool,
    #[serde(default)]
    pub vip: Option<Spanned<String>>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
}

fn prefix4_default() -> u8 {
    32
}
fn prefix6_default() -> u8 {
    128
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RateKeySetting {
    #[default]
    Source,
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Section {
    pub id: Spanned<String>,
    pub vip: Spanned<String>,
    /// `tcp/80`, `udp/53`, `icmp`, `icmpv6`.
    pub allow: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub interface: String,
    /// Network namespace to enter before opening the interface.
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default = "one")]
    pub queues: Spanned<u32>,
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_batch")]
    pub batch_size: Spanned<usize>,
    #[serde(default)]
    pub polling: Polling,
    #[serde(default)]
    pub cpus: Vec<usize>,
    #[serde(default = "default_true")]
    pub verify_rx_checksums: bool,
    #[serde(default)]
    pub hugepages: bool,
    /// Never had an effect (sockets open per SYN; `max_connections` bounds
    /// accepted connections). Still accepted so older files load, with a
    /// warning; nothing reads it.
    #[serde(default)]
    pub listen_backlog: Option<usize>,
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    #[serde(default = "default_tcp_buffer")]
    pub tcp_buffer: Spanned<usize>,
    /// `[engine.dpdk]`: EAL and port settings for `backend = "dpdk"`.
    #[serde(default)]
    pub dpdk: DpdkSection,
}

/// `[engine.dpdk]` (see `configs/edge.example.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    /// `--vdev` devices, e.g. `net_af_packet0,iface=eth0,qpairs=2`.
    #[serde(default)]
    pub vdevs: Vec<Spanned<String>>,
    /// A vdev name or a PCI address; default: the first vdev, else port 0.
    #[serde(default)]
    pub port: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    pub hugepages: bool,
    #[serde(default)]
    pub huge_dir: Option<String>,
    /// EAL memory in MB; 0 = the EAL default (with hugepages), 512 without.
    #[serde(default)]
    pub memory_mb: Option<Spanned<u32>>,
    #[serde(default)]
    pub mbufs: Option<Spanned<u32>>,
    #[serde(default)]
    pub mbuf_cache: Option<Spanned<u32>>,
    #[serde(default)]
    pub rx_desc: Option<Spanned<u16>>,
    #[serde(default)]
    pub tx_desc: Option<Spanned<u16>>,
    #[serde(default)]
    pub file_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub eal_args: Vec<Spanned<String>>,
}

impl Default for DpdkSection {
    fn default() -> Self {
        DpdkSection {
            vdevs: Vec::new(),
            port: None,
            hugepages: true,
            huge_dir: None,
            memory_mb: None,
            mbufs: None,
            mbuf_cache: None,
            rx_desc: None,
            tx_desc: None,
            file_prefix: None,
            eal_args: Vec::new(),
        }
    }
}

/// Checks `[engine.dpdk]` and builds the engine's settings from it.
fn check_dpdk(d: &DpdkSection, rep: &mut Reporter<'_>) -> ferrogate_engine::DpdkSettings {
    let mut s = ferrogate_engine::DpdkSettings {
        hugepages: d.hugepages,
        huge_dir: d.huge_dir.clone(),
        ..Default::default()
    };
    for v in &d.vdevs {
        let t = v.get_ref();
        if !t.starts_with("net_") || t.chars().any(char::is_whitespace) {
            rep.at(
                v.span(),
                "engine.dpdk.vdevs",
                format!(
                    "{t:?}: expected a DPDK net vdev like \"net_af_packet0,iface=eth0\" (no spaces)"
                ),
            );
        }
        s.vdevs.push(t.clone());
    }
    if let Some(p) = &d.port {
        if p.get_ref().is_empty() {
            rep.at(p.span(), "engine.dpdk.port", "must not be empty");
        }
        s.port = Some(p.get_ref().clone());
    }
    if let Some(m) = &d.memory_mb {
        let v = *m.get_ref();
        if (!d.hugepages && v < 64) || v > 1024 * 1024 {
            rep.at(
                m.span(),
                "engine.dpdk.memory_mb",
                "must be 64..=1048576 without hugepages (0 = EAL default with hugepages)",
            );
        }
        s.memory_mb = v;
    }
    if let Some(m) = &d.mbufs {
        let v = *m.get_ref();
        if !(1023..=16 * 1024 * 1024).contains(&v) {
            rep.at(m.span(), "engine.dpdk.mbufs", "must be 1023..=16777216");
        }
        s.mbufs = v;
    }
    if let Some(m) = &d.mbuf_cache {
        let v = *m.get_ref();
        if v > 512 || (v as u64) * 3 / 2 > s.mbufs as u64 {
            rep.at(
                m.span(),
                "engine.dpdk.mbuf_cache",
                "must be <= 512 and <= mbufs / 1.5",
            );
        }
        s.mbuf_cache = v;
    }
    for (field, v, dst) in [
        ("engine.dpdk.rx_desc", &d.rx_desc, &mut s.rx_desc),
        ("engine.dpdk.tx_desc", &d.tx_desc, &mut s.tx_desc),
    ] {
        if let Some(v) = v {
            if !(64..=16384).contains(v.get_ref()) {
                rep.at(v.span(), field, "must be 64..=16384");
            }
            *dst = *v.get_ref();
        }
    }
    if let Some(p) = &d.file_prefix {
        let t = p.get_ref();
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            rep.at(
                p.span(),
                "engine.dpdk.file_prefix",
                "must be letters, digits, '_' or '-'",
            );
        }
        s.file_prefix = Some(t.clone());
    }
    for a in &d.eal_args {
        if !a.get_ref().starts_with('-') {
            rep.at(
                a.span(),
                "engine.dpdk.eal_args",
                format!(
                    "{:?}: each entry is one EAL option starting with '-' (use --opt=value)",
                    a.get_ref()
                ),
            );
        }
        s.eal_args.push(a.get_ref().clone());
    }
    s
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_batch() -> Spanned<usize> {
    Spanned::new(0..0, 64)
}
fn default_true() -> bool {
    true
}
fn default_max_conns() -> usize {
    16_384
}
fn default_tcp_buffer() -> Spanned<usize> {
    Spanned::new(0..0, 64 * 1024)
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    AfXdp,
    AfPacket,
    Auto,
    Dpdk,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Polling {
    Busy,
    #[default]
    Adaptive,
    Interrupt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub port: Spanned<u16>,
    /// TLS termination on this port (HTTPS).
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTlsSection>>,
    /// Headers carrying the verified client certificate identity (mTLS) to
    /// the upstream; client-sent headers of these names are removed.
    #[serde(default)]
    pub mtls_headers: Option<MtlsHeadersSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

/// `[listeners.tls]`. Paths are relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    pub certificates: Vec<Spanned<CertificateSection>>,
    /// ALPN protocols offered, in preference order (default `["http/1.1"]`).
    #[serde(default)]
    pub alpn: Option<Vec<Spanned<String>>>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: Option<Spanned<String>>,
    /// PEM bundle of the CAs that sign client certificates.
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
    /// `none`, `optional` or `required` (default: `required` with a
    /// `client_ca`, `none` without).
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    #[serde(default)]
    pub handshake_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
    /// SNI names served with it (`host` or `*.suffix`).
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
    /// Served when no name matches (the only certificate is the default).
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MtlsHeadersSection {
    /// e.g. `X-Client-CN`: the subject common name.
    #[serde(default)]
    pub common_name: Option<String>,
    /// e.g. `X-Client-SAN`: `DNS:` / `URI:` subject alternative names.
    #[serde(default)]
    pub sans: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub host: Option<String>,
    /// At most one of `path_prefix` (default `/`), `path_exact`, `path_regex`.
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub path_exact: Option<Spanned<String>>,
    /// Must match the whole path (regex crate syntax).
    #[serde(default)]
    pub path_regex: Option<Spanned<String>>,
    /// Any of these methods (case-sensitive); absent or empty: any method.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Header name → exact value (a string) or presence (`true`).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<toml::Value>>,
    /// Query parameter → exact raw value (a string) or presence (`true`).
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub respond: Option<Spanned<RespondSection>>,
    /// Matches only requests on an mTLS connection whose verified client
    /// certificate has this subject common name.
    #[serde(default)]
    pub client_cert_cn: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "text_plain")]
    pub content_type: String,
}

fn ok_status() -> u16 {
    200
}
fn text_plain() -> String {
    "text/plain".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: Spanned<String>,
    /// `"ip:port"` or `{ address = "ip:port", weight = 3 }`.
    pub endpoints: Vec<Spanned<EndpointSetting>>,
    /// `round_robin` (default), `weighted`, `least_conn` or `hash`.
    #[serde(default)]
    pub balancer: Option<Spanned<String>>,
    /// For `hash`: `header:NAME`, `cookie:NAME` or `source` (default).
    #[serde(default)]
    pub hash_on: Option<Spanned<String>>,
    /// Panic mode: with every endpoint unhealthy, use all of them (default
    /// true) instead of answering 503.
    #[serde(default)]
    pub fail_open: Option<bool>,
    #[serde(default)]
    pub health: Option<Spanned<HealthSection>>,
    #[serde(default)]
    pub passive: Option<Spanned<PassiveSection>>,
    #[serde(default)]
    pub breaker: Option<Spanned<BreakerSection>>,
    #[serde(default)]
    pub retry: Option<Spanned<RetrySection>>,
    #[serde(default)]
    pub connect_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub response_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub idle_ms: Option<Spanned<u64>>,
    /// TLS to the endpoints, verified against `ca`.
    #[serde(default)]
    pub tls: Option<Spanned<bool>>,
    /// PEM trust anchors for the endpoints' certificates (needed with
    /// `tls = true` unless `insecure_skip_verify = true`).
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    /// Accept any upstream certificate (logged as a warning).
    #[serde(default)]
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// Server name sent and verified (default: the endpoint's IP address).
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// Idle connections kept per endpoint and worker, reused by any client
    /// connection (default 64; 0: one exchange per connection).
    #[serde(default)]
    pub keepalive: Option<Spanned<u32>>,
    /// Requests per upstream connection before it is closed (default 1000;
    /// 0: no limit).
    #[serde(default)]
    pub max_requests: Option<Spanned<u32>>,
    /// `Host` for requests that arrive without one (HTTP/1.0); default: the
    /// `sni` name, else the endpoint's address (`ip[:port]`).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EndpointSetting {
    Address(String),
    Table(EndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTable {
    pub address: String,
    #[serde(default = "one_u32")]
    pub weight: u32,
}

fn one_u32() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `http` (default when `path` is set) or `tcp`.
    #[serde(default, rename = "type")]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// `Host` header of HTTP probes (default: the endpoint's address).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub rise: Option<Spanned<u32>>,
    #[serde(default)]
    pub fall: Option<Spanned<u32>>,
    /// `"200"` or an inclusive range `"200-399"` (the default).
    #[serde(default)]
    pub expect_status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveSection {
    #[serde(default)]
    pub consecutive_failures: Option<Spanned<u32>>,
    #[serde(default)]
    pub eject_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    #[serde(default)]
    pub failure_percent: Option<Spanned<u32>>,
    #[serde(default)]
    pub min_requests: Option<Spanned<u32>>,
    /// 0 (default): only the ratio trips the breaker.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    #[serde(default)]
    pub window_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub cooldown_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub half_open_probes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries per request, the first included (1 = no retries).
    #[serde(default)]
    pub attempts: Option<Spanned<u32>>,
    #[serde(default)]
    pub budget_percent: Option<Spanned<u32>>,
    #[serde(default)]
    pub min_per_sec: Option<u32>,
    #[serde(default)]
    pub window_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    pub client_header_ms: Option<u64>,
    pub client_idle_ms: Option<u64>,
    pub upstream_connect_ms: Option<u64>,
    pub upstream_response_ms: Option<u64>,
}

/// An error located in a config file: `file:line:col: field: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{col}: {field}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub field: String,
    pub message: String,
}

/// Several errors found in one pass, printed one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Everything `ferrogate run` needs from a config file.
#[derive(Debug)]
pub struct Compiled {
    pub netns: Option<String>,
    pub engine: EngineConfig,
    pub access_log: Option<AccessLogTarget>,
    /// Files the config names, whose changes the control daemon applies.
    pub files: Vec<PathBuf>,
}

struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Files the config names (certificates, keys, CA bundles, prefix
    /// lists): the control daemon re-applies when one changes.
    files: Vec<PathBuf>,
}

impl Reporter<'_> {
    fn uses(&mut self, p: &Path) {
        if !self.files.iter().any(|f| f == p) {
            self.files.push(p.to_path_buf());
        }
    }

    fn at(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn parse_protocol(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        _ => None,
    }
}

/// Reads a prefix file: one `addr/len` (or bare address) per line, `#` comments.
fn read_prefix_file(path: &Path) -> Result<Vec<(IpAddr, u8)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parsed = parse_cidr(line).or_else(|| {
            line.parse::<IpAddr>()
                .ok()
                .map(|ip| (ip, if ip.is_ipv4() { 32 } else { 128 }))
        });
        match parsed {
            Some(p) => out.push(p),
            None => {
                return Err(format!(
                    "{}:{}: {line:?} is not a prefix",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    Ok(out)
}

fn check_filter(
    cfg: &FileConfig,
    rep: &mut Reporter<'_>,
    vips: &[(IpAddr, u8)],
    pools: &[(String, Arc<Upstream>)],
) -> Option<(FilterRules, FailMode)> {
    let f = &cfg.filter;
    let before = rep.errors.len();
    let mut ids: HashSet<String> = HashSet::new();
    let mut id_ok = |rep: &mut Reporter<'_>, id: &Spanned<String>, field: String| {
        let v = id.get_ref();
        let valid = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            rep.at(
                id.span(),
                field,
                "ids are 1..=64 characters of [A-Za-z0-9_-]",
            );
        } else if !ids.insert(v.clone())
            || v == ferrogate_ebpf::NOT_ALLOWED_RULE
            || v == UPSTREAM_RULE
        {
            rep.at(
                id.span(),
                field,
                format!("duplicate or reserved rule id {v:?}"),
            );
        }
    };
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut rules = FilterRules {
        default_deny: matches!(f.mode, FilterMode::AllowList),
        ..Default::default()
    };
    for (i, c) in f.cidr.iter().enumerate() {
        id_ok(rep, &c.id, format!("filter.cidr[{i}].id"));
        let mut prefixes = Vec::new();
        for (j, p) in c.cidrs.iter().enumerate() {
            match parse_cidr(p.get_ref()) {
                Some(x) => prefixes.push(x),
                None => rep.at(
                    p.span(),
                    format!("filter.cidr[{i}].cidrs[{j}]"),
                    format!("{:?} is not a prefix like 192.0.2.0/24", p.get_ref()),
                ),
            }
        }
        for (j, file) in c.cidr_files.iter().enumerate() {
            rep.uses(&base.join(file.get_ref()));
            match read_prefix_file(&base.join(file.get_ref())) {
                Ok(mut v) => prefixes.append(&mut v),
                Err(e) => rep.at(file.span(), format!("filter.cidr[{i}].cidr_files[{j}]"), e),
            }
        }
        if prefixes.is_empty() {
            rep.at(
                c.id.span(),
                format!("filter.cidr[{i}]"),
                "needs `cidrs` or `cidr_files`",
            );
        }
        rules.cidr.push(CidrRule {
            id: c.id.get_ref().clone(),
            action: match c.action {
                CidrActionSetting::Deny => CidrAction::Deny,
                CidrActionSetting::Allow => CidrAction::Allow,
            },
            prefixes,
        });
    }
    if matches!(f.mode, FilterMode::AllowList)
        && !f
            .cidr
            .iter()
            .any(|c| matches!(c.action, CidrActionSetting::Allow))
    {
        rep.at(
            0..0,
            "filter.mode",
            "allow_list needs at least one [[filter.cidr]] with action = \"allow\"",
        );
    }
    if f.rate.len() > ferrogate_ebpf::rules::MAX_RATE_RULES {
        rep.at(
            0..0,
            "filter.rate",
            format!(
                "at most {} rate rules",
                ferrogate_ebpf::rules::MAX_RATE_RULES
            ),
        );
    }
    for (i, r) in f.rate.iter().enumerate() {
        let field = format!("filter.rate[{i}]");
        id_ok(rep, &r.id, format!("{field}.id"));
        if r.pps == 0 && r.bps == 0 {
            rep.at(r.id.span(), field.clone(), "needs pps or bps (or both)");
        }
        if r.prefix4 > 32 || r.prefix6 > 128 {
            rep.at(
                r.id.span(),
                format!("{field}.prefix4"),
                "prefix4 <= 32, prefix6 <= 128",
            );
        }
        let vip = r
            .vip
            .as_ref()
            .and_then(|v| match v.get_ref().parse::<IpAddr>() {
                Ok(ip) if vips.iter().any(|(x, _)| *x == ip) => Some(ip),
                _ => {
                    rep.at(
                        v.span(),
                        format!("{field}.vip"),
                        format!("{:?} is not one of the configured vips", v.get_ref()),
                    );
                    None
                }
            });
        let protocol = r
            .protocol
            .as_ref()
            .and_then(|p| match parse_protocol(p.get_ref()) {
                Some(x) => Some(x),
                None => {
                    rep.at(
                        p.span(),
                        format!("{field}.protocol"),
                        "tcp, udp, icmp or icmpv6",
                    );
                    None
                }
            });
        if r.syn_only && protocol.is_some_and(|p| p != 6) {
            rep.at(
                r.id.span(),
                format!("{field}.syn_only"),
                "syn_only needs protocol tcp (or none)",
            );
        }
        // Default bursts: one second's worth.
        let burst_packets = r.burst_packets.unwrap_or(r.pps);
        let burst_bytes = r.burst_bytes.unwrap_or(r.bps);
        if burst_packets > ferrogate_ebpf::rules::MAX_BURST_PACKETS
            || burst_bytes > ferrogate_ebpf::rules::MAX_BURST_BYTES
        {
            rep.at(r.id.span(), format!("{field}.burst"), "burst too large");
        }
        rules.rate.push(RateRule {
            id: r.id.get_ref().clone(),
            key: match r.key {
                RateKeySetting::Source => RateKey::Source {
                    prefix4: r.prefix4.min(32),
                    prefix6: r.prefix6.min(128),
                },
                RateKeySetting::Global => RateKey::Global,
            },
            pps: r.pps,
            burst_packets,
            bps: r.bps,
            burst_bytes,
            syn_only: r.syn_only,
            vip,
            port: r.port,
            protocol: if r.syn_only && protocol.is_none() {
                Some(6)
            } else {
                protocol
            },
        });
    }
    for (i, l) in f.l4.iter().enumerate() {
        let field = format!("filter.l4[{i}]");
        id_ok(rep, &l.id, format!("{field}.id"));
        let vip = match l.vip.get_ref().parse::<IpAddr>() {
            Ok(ip) if vips.iter().any(|(x, _)| *x == ip) => ip,
            _ => {
                rep.at(
                    l.vip.span(),
                    format!("{field}.vip"),
                    format!("{:?} is not one of the configured vips", l.vip.get_ref()),
                );
                continue;
            }
        };
        let mut allow = Vec::new();
        for (j, a) in l.allow.iter().enumerate() {
            let v = a.get_ref();
            let (proto, port) = match v.split_once('/') {
                Some((p, port)) => (
                    parse_protocol(p),
                    port.parse::<u16>().ok().filter(|p| *p > 0),
                ),
                None => (parse_protocol(v), Some(0)),
            };
            match (proto, port) {
                (Some(p @ (6 | 17)), Some(port)) if port > 0 => allow.push((p, port)),
                (Some(p @ (1 | 58)), Some(0)) => allow.push((p, 0)),
                _ => rep.at(
                    a.span(),
                    format!("{field}.allow[{j}]"),
                    format!("{v:?}: expected tcp/PORT, udp/PORT, icmp or icmpv6"),
                ),
            }
        }
        rules.l4.push(L4Rule {
            id: l.id.get_ref().clone(),
            vip,
            allow,
        });
    }
    // Replies from upstream endpoints must never meet client rules.
    let mut upstream_prefixes: Vec<(IpAddr, u8)> = pools
        .iter()
        .flat_map(|(_, p)| p.endpoints.iter())
        .map(|e| (e.ip(), if e.is_ipv4() { 32 } else { 128 }))
        .collect();
    upstream_prefixes.sort();
    upstream_prefixes.dedup();
    if !upstream_prefixes.is_empty() {
        rules.cidr.push(CidrRule {
            id: UPSTREAM_RULE.into(),
            action: CidrAction::Upstream,
            prefixes: upstream_prefixes,
        });
    }
    if rep.errors.len() > before {
        return None;
    }
    let fail = match f.fail_mode {
        FailModeSetting::Open => FailMode::Open,
        FailModeSetting::Closed => FailMode::Closed,
    };
    Some((rules, fail))
}

/// An HTTP token (header names, methods).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header/query match value: a string (exact) or `true` (presence).
fn match_value(
    v: &Spanned<toml::Value>,
    field: String,
    rep: &mut Reporter<'_>,
) -> Option<Option<String>> {
    match v.get_ref() {
        toml::Value::String(s) => Some(Some(s.clone())),
        toml::Value::Boolean(true) => Some(None),
        _ => {
            rep.at(
                v.span(),
                field,
                "must be a string (exact value) or true (present)",
            );
            None
        }
    }
}

fn check_path(
    r: &RouteSection,
    field: &str,
    anchor: Range<usize>,
    rep: &mut Reporter<'_>,
) -> Option<PathMatch> {
    let set = [&r.path_prefix, &r.path_exact, &r.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if set > 1 {
        rep.at(
            anchor,
            field.to_string(),
            "at most one of `path_prefix`, `path_exact`, `path_regex`",
        );
        return None;
    }
    let slash = |p: &Spanned<String>, key: &str, rep: &mut Reporter<'_>| {
        let ok = p.get_ref().starts_with('/');
        if !ok {
            rep.at(p.span(), format!("{field}.{key}"), "must start with '/'");
        }
        ok
    };
    if let Some(p) = &r.path_exact {
        return slash(p, "path_exact", rep).then(|| PathMatch::Exact(p.get_ref().clone()));
    }
    if let Some(p) = &r.path_regex {
        return match PathMatch::regex(p.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                rep.at(
                    p.span(),
                    format!("{field}.path_regex"),
                    format!("invalid regex: {msg}"),
                );
                None
            }
        };
    }
    match &r.path_prefix {
        Some(p) => slash(p, "path_prefix", rep).then(|| PathMatch::Prefix(p.get_ref().clone())),
        None => Some(PathMatch::Prefix("/".into())),
    }
}

/// A number within `range`, or `default` when absent.
fn bounded<T>(
    v: &Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    field: String,
    rep: &mut Reporter<'_>,
) -> T
where
    T: Copy + PartialOrd + std::fmt::Display,
{
    match v {
        None => default,
        Some(x) => {
            if !range.contains(x.get_ref()) {
                rep.at(
                    x.span(),
                    field,
                    format!("must be {}..={}", range.start(), range.end()),
                );
            }
            *x.get_ref()
        }
    }
}

fn ms_of(
    v: &Option<Spanned<u64>>,
    default: Duration,
    field: String,
    rep: &mut Reporter<'_>,
) -> Duration {
    let d = default.as_millis() as u64;
    Duration::from_millis(bounded(v, d, 1..=86_400_000, field, rep))
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

/// TLS to the endpoints of `[[upstreams]]` number `i` (`tls = true`).
fn check_upstream_tls(
    i: usize,
    u: &UpstreamSection,
    rep: &mut Reporter<'_>,
) -> Option<ferrogate_proxy::tls::UpstreamTls> {
    use ferrogate_proxy::tls::{CertError, TlsConfigError, UpstreamTls, UpstreamTlsConfig};
    let f = format!("upstreams[{i}]");
    let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
    let insecure = u
        .insecure_skip_verify
        .as_ref()
        .is_some_and(|t| *t.get_ref());
    if !on {
        for (span, key) in [
            (u.ca.as_ref().map(|c| c.span()), "ca"),
            (u.sni.as_ref().map(|c| c.span()), "sni"),
            (
                u.insecure_skip_verify.as_ref().map(|c| c.span()),
                "insecure_skip_verify",
            ),
        ] {
            if let Some(sp) = span {
                rep.at(sp, format!("{f}.{key}"), "only used with tls = true");
            }
        }
        return None;
    }
    let tls_span = u.tls.as_ref().map(|t| t.span()).unwrap_or(u.name.span());
    if let Some(h) = &u.health
        && h.get_ref().kind.as_ref().map(|k| k.get_ref().as_str()) != Some("tcp")
    {
        // Active checks speak plain HTTP; against a TLS port they would fail.
        rep.at(
            h.span(),
            format!("{f}.health.type"),
            "TLS pools support only type = \"tcp\" health checks",
        );
    }
    if u.ca.is_none() && !insecure {
        rep.at(
            tls_span,
            format!("{f}.ca"),
            "tls = true needs ca = \"trust-anchors.pem\" to verify the upstream \
             (or insecure_skip_verify = true)",
        );
        return None;
    }
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(c) = &u.ca {
        rep.uses(&base.join(c.get_ref()));
    }
    let cfg = UpstreamTlsConfig {
        ca: u.ca.as_ref().map(|c| base.join(c.get_ref())),
        insecure_skip_verify: insecure && u.ca.is_none(),
        sni: u.sni.as_ref().map(|s| s.get_ref().clone()),
    };
    match UpstreamTls::build(&cfg) {
        Ok(t) => {
            if cfg.insecure_skip_verify {
                tracing::warn!(
                    upstream = %u.name.get_ref(),
                    "insecure_skip_verify: upstream certificates are not verified"
                );
            }
            Some(t)
        }
        Err(e) => {
            let (sp, key) = match &e {
                TlsConfigError::Cert(CertError::Ca { .. }) => {
                    (u.ca.as_ref().map(|c| c.span()), "ca")
                }
                _ => (u.sni.as_ref().map(|c| c.span()), "sni"),
            };
            rep.at(sp.unwrap_or(tls_span), format!("{f}.{key}"), e.to_string());
            None
        }
    }
}

/// Endpoints and policy of `[[upstreams]]` number `i`.
fn check_upstream(
    i: usize,
    u: &UpstreamSection,
    rep: &mut Reporter<'_>,
) -> (Vec<Endpoint>, PoolPolicy) {
    let f = format!("upstreams[{i}]");
    let mut eps: Vec<Endpoint> = Vec::new();
    if u.endpoints.is_empty() {
        rep.at(
            u.name.span(),
            format!("{f}.endpoints"),
            "needs at least one endpoint",
        );
    }
    if u.endpoints.len() > MAX_ENDPOINTS {
        rep.at(
            u.name.span(),
            format!("{f}.endpoints"),
            format!("at most {MAX_ENDPOINTS} endpoints"),
        );
    }
    for (j, ep) in u.endpoints.iter().enumerate() {
        let (addr, weight) = match ep.get_ref() {
            EndpointSetting::Address(a) => (a, 1),
            EndpointSetting::Table(t) => (&t.address, t.weight),
        };
        if !(1..=10_000).contains(&weight) {
            rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}].weight"),
                "must be 1..=10000",
            );
        }
        match addr.parse::<SocketAddr>() {
            Ok(a) if eps.iter().any(|e| e.addr == a) => rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}]"),
                format!("duplicate endpoint {a}"),
            ),
            Ok(a) => eps.push(Endpoint::weighted(a, weight.max(1))),
            Err(_) => rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}]"),
                format!("{addr:?} is not ip:port"),
            ),
        }
    }
    let hash_on = u
        .hash_on
        .as_ref()
        .and_then(|h| match HashOn::parse(h.get_ref()) {
            Ok(x) => Some(x),
            Err(e) => {
                rep.at(h.span(), format!("{f}.hash_on"), e);
                None
            }
        });
    let balancer = match u.balancer.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "round_robin")) => Balancer::RoundRobin,
        Some((_, "weighted")) => Balancer::Weighted,
        Some((_, "least_conn")) => Balancer::LeastConn,
        Some((_, "hash")) => Balancer::Hash(hash_on.clone().unwrap_or(HashOn::Source)),
        Some((b, other)) => {
            rep.at(
                b.span(),
                format!("{f}.balancer"),
                format!("unknown balancer {other:?}: round_robin, weighted, least_conn or hash"),
            );
            Balancer::Hash(HashOn::Source)
        }
    };
    if let Some(h) = &u.hash_on
        && hash_on.is_some()
        && !balancer.is_hash()
    {
        rep.at(
            h.span(),
            format!("{f}.hash_on"),
            "only used with balancer = \"hash\"",
        );
    }
    let health = u.health.as_ref().map(|h| {
        let hf = format!("{f}.health");
        let s = h.get_ref();
        let d = HealthCheck::default();
        let kind = match s.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
            Some((_, "tcp")) => {
                if let Some(p) = &s.path {
                    rep.at(p.span(), format!("{hf}.path"), "tcp checks send no request");
                }
                CheckKind::Tcp
            }
            None | Some((_, "http")) => {
                let path = s.path.as_ref().map(|p| p.get_ref().as_str()).unwrap_or("/");
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    rep.at(
                        s.path.as_ref().map(|p| p.span()).unwrap_or(h.span()),
                        format!("{hf}.path"),
                        "must start with '/' and contain no spaces or control characters",
                    );
                }
                if s.kind.is_none() && s.path.is_none() {
                    CheckKind::Tcp
                } else {
                    CheckKind::Http {
                        path: path.to_string(),
                        host: s.host.clone().unwrap_or_default(),
                    }
                }
            }
            Some((k, other)) => {
                rep.at(
                    k.span(),
                    format!("{hf}.type"),
                    format!("unknown check type {other:?}: http or tcp"),
                );
                CheckKind::Tcp
            }
        };
        let interval = ms_of(&s.interval_ms, d.interval, format!("{hf}.interval_ms"), rep);
        let timeout = ms_of(&s.timeout_ms, d.timeout, format!("{hf}.timeout_ms"), rep);
        if timeout >= interval && !interval.is_zero() {
            rep.at(
                s.timeout_ms.as_ref().map(|t| t.span()).unwrap_or(h.span()),
                format!("{hf}.timeout_ms"),
                "must be shorter than interval_ms",
            );
        }
        let expect_status = match &s.expect_status {
            None => d.expect_status,
            Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|| {
                rep.at(
                    e.span(),
                    format!("{hf}.expect_status"),
                    format!(
                        "{:?} is not a status or range like \"200-399\"",
                        e.get_ref()
                    ),
                );
                d.expect_status
            }),
        };
        HealthCheck {
            kind,
            interval,
            timeout,
            rise: bounded(&s.rise, d.rise, 1..=100, format!("{hf}.rise"), rep),
            fall: bounded(&s.fall, d.fall, 1..=100, format!("{hf}.fall"), rep),
            expect_status,
        }
    });
    let passive = u.passive.as_ref().map(|p| {
        let pf = format!("{f}.passive");
        let s = p.get_ref();
        let d = PassivePolicy::default();
        PassivePolicy {
            consecutive_failures: bounded(
                &s.consecutive_failures,
                d.consecutive_failures,
                1..=1000,
                format!("{pf}.consecutive_failures"),
                rep,
            ),
            eject: ms_of(&s.eject_ms, d.eject, format!("{pf}.eject_ms"), rep),
        }
    });
    let breaker = u.breaker.as_ref().map(|b| {
        let bf = format!("{f}.breaker");
        let s = b.get_ref();
        let d = BreakerPolicy::default();
        BreakerPolicy {
            failure_percent: bounded(
                &s.failure_percent,
                d.failure_percent,
                1..=100,
                format!("{bf}.failure_percent"),
                rep,
            ),
            min_requests: bounded(
                &s.min_requests,
                d.min_requests,
                1..=1_000_000,
                format!("{bf}.min_requests"),
                rep,
            ),
            consecutive_failures: s.consecutive_failures.unwrap_or(d.consecutive_failures),
            window: ms_of(&s.window_ms, d.window, format!("{bf}.window_ms"), rep),
            cooldown: ms_of(&s.cooldown_ms, d.cooldown, format!("{bf}.cooldown_ms"), rep),
            half_open_probes: bounded(
                &s.half_open_probes,
                d.half_open_probes,
                1..=1000,
                format!("{bf}.half_open_probes"),
                rep,
            ),
        }
    });
    let retry = match &u.retry {
        None => RetryPolicy::default(),
        Some(r) => {
            let rf = format!("{f}.retry");
            let s = r.get_ref();
            let d = RetryPolicy::default();
            RetryPolicy {
                attempts: bounded(
                    &s.attempts,
                    d.attempts,
                    1..=10,
                    format!("{rf}.attempts"),
                    rep,
                ),
                budget_percent: bounded(
                    &s.budget_percent,
                    d.budget_percent,
                    0..=100,
                    format!("{rf}.budget_percent"),
                    rep,
                ),
                min_per_sec: s.min_per_sec.unwrap_or(d.min_per_sec),
                window: ms_of(&s.window_ms, d.window, format!("{rf}.window_ms"), rep),
            }
        }
    };
    let opt_ms = |v: &Option<Spanned<u64>>, key: &str, rep: &mut Reporter<'_>| {
        v.as_ref()
            .map(|_| ms_of(v, Duration::ZERO, format!("{f}.{key}"), rep))
    };
    let timeouts = UpstreamTimeouts {
        connect: opt_ms(&u.connect_ms, "connect_ms", rep),
        response: opt_ms(&u.response_ms, "response_ms", rep),
        idle: opt_ms(&u.idle_ms, "idle_ms", rep),
    };
    let policy = PoolPolicy {
        balancer,
        health,
        passive,
        breaker,
        retry,
        timeouts,
        fail_open: u.fail_open.unwrap_or(true),
        keepalive: match &u.keepalive {
            Some(k) if *k.get_ref() > 10_000 => {
                rep.at(
                    k.span(),
                    format!("{f}.keepalive"),
                    "at most 10000 idle connections per endpoint",
                );
                0
            }
            Some(k) => *k.get_ref() as usize,
            None => PoolPolicy::default().keepalive,
        },
        max_requests: u
            .max_requests
            .as_ref()
            .map_or(PoolPolicy::default().max_requests, |m| *m.get_ref()),
    };
    (eps, policy)
}

fn check_numa(
    cfg: &FileConfig,
    rep: &mut Reporter<'_>,
) -> std::collections::BTreeMap<usize, ferrogate_engine::numa::NodeTuning> {
    let mut out = std::collections::BTreeMap::new();
    for (key, n) in &cfg.numa.node {
        let field = format!("numa.node.{key}");
        let Ok(id) = key.parse::<usize>() else {
            rep.at(0..0, field, "node ids are numbers: [numa.node.0]");
            continue;
        };
        let mut t = ferrogate_engine::numa::NodeTuning::default();
        if let Some(c) = &n.cores {
            match ferrogate_engine::numa::parse_cpu_list(c.get_ref()) {
                Ok(list) if !list.is_empty() => t.cores = Some(list),
                _ => rep.at(
                    c.span(),
                    format!("{field}.cores"),
                    format!("{:?} is not a CPU list like \"2-5,8\"", c.get_ref()),
                ),
            }
        }
        if let Some(v) = &n.umem_frames {
            if !(64..=1 << 20).contains(v.get_ref()) || !v.get_ref().is_power_of_two() {
                rep.at(
                    v.span(),
                    format!("{field}.umem_frames"),
                    "a power of two in 64..=1048576",
                );
            }
            t.umem_frames = Some(*v.get_ref());
        }
        if let Some(v) = &n.ring_size {
            if !(64..=1 << 16).contains(v.get_ref()) || !v.get_ref().is_power_of_two() {
                rep.at(
                    v.span(),
                    format!("{field}.ring_size"),
                    "a power of two in 64..=65536",
                );
            }
            t.ring_size = Some(*v.get_ref());
        }
        if let Some(v) = &n.batch_size {
            if !(1..=1024).contains(v.get_ref()) {
                rep.at(v.span(), format!("{field}.batch_size"), "must be 1..=1024");
            }
            t.batch_size = Some(*v.get_ref());
        }
        t.hugepages = n.hugepages;
        if let Some(p) = &n.polling {
            if !matches!(p.get_ref().as_str(), "busy" | "adaptive" | "interrupt") {
                rep.at(
                    p.span(),
                    format!("{field}.polling"),
                    "busy, adaptive or interrupt",
                );
            }
            t.polling = Some(p.get_ref().clone());
        }
        out.insert(id, t);
    }
    out
}

/// Id of the generated rule that lets upstream replies through.
pub const UPSTREAM_RULE: &str = "upstreams";

/// Reads, parses, validates and compiles a config file.
pub fn load(path: &Path) -> Result<Compiled, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    compile(path, &text)
}

/// Parses and validates `text` (named `path` in errors).
pub fn compile(path: &Path, text: &str) -> Result<Compiled, ConfigErrors> {
    let mut rep = Reporter {
        file: path,
        text,
        errors: Vec::new(),
        files: Vec::new(),
    };
    let cfg: FileConfig = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            let field = field_at(text, span.start);
            rep.at(span, field, msg);
            return Err(ConfigErrors(rep.errors));
        }
    };
    let compiled = check(&cfg, &mut rep);
    if rep.errors.is_empty() {
        let mut c = compiled.expect("no errors means compiled");
        c.files = std::mem::take(&mut rep.files);
        Ok(c)
    } else {
        Err(ConfigErrors(rep.errors))
    }
}

/// Best effort name of the key on the line of `offset`, for syntax errors.
fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && is_token(s)
}

/// Validates `[listeners.tls]` and compiles it into the rustls server config
/// (certificates loaded and checked against their keys here, off the data
/// path, once per snapshot).
fn check_listener_tls(
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
    match &t.alpn {
        None => alpn.push(b"http/1.1".to_vec()),
        Some(list) => {
            for (k, a) in list.iter().enumerate() {
                if a.get_ref() != "http/1.1" {
                    rep.at(
                        a.span(),
                        format!("{field}.alpn[{k}]"),
                        format!("{:?} is not supported (only \"http/1.1\")", a.get_ref()),
                    );
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

fn check(cfg: &FileConfig, rep: &mut Reporter<'_>) -> Option<Compiled> {
    let e = &cfg.engine;
    if *e.queues.get_ref() == 0 || *e.queues.get_ref() > ferrogate_ebpf::MAX_QUEUES {
        rep.at(
            e.queues.span(),
            "engine.queues",
            format!("must be 1..={}", ferrogate_ebpf::MAX_QUEUES),
        );
    }
    if !(1..=1024).contains(e.batch_size.get_ref()) {
        rep.at(e.batch_size.span(), "engine.batch_size", "must be 1..=1024");
    }
    if !(4096..=16 * 1024 * 1024).contains(e.tcp_buffer.get_ref()) {
        rep.at(
            e.tcp_buffer.span(),
            "engine.tcp_buffer",
            "must be 4096..=16777216 bytes",
        );
    }
    if e.interface.is_empty() || e.interface.len() > 15 {
        rep.at(
            0..0,
            "engine.interface",
            "must be an interface name of 1..=15 characters",
        );
    }

    let mut vips = Vec::new();
    if cfg.vips.is_empty() {
        rep.at(0..0, "vips", "at least one service address is required");
    }
    for (i, v) in cfg.vips.iter().enumerate() {
        match parse_cidr(v.get_ref()) {
            Some(c) => vips.push(c),
            None => rep.at(
                v.span(),
                format!("vips[{i}]"),
                format!(
                    "{:?} is not an address/prefix like 10.0.0.10/24",
                    v.get_ref()
                ),
            ),
        }
    }
    let gateway = cfg
        .gateway
        .as_ref()
        .and_then(|g| match g.get_ref().parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                rep.at(
                    g.span(),
                    "gateway",
                    format!("{:?} is not an IPv4 address", g.get_ref()),
                );
                None
            }
        });

    let mut pools: Vec<(String, Arc<Upstream>)> = Vec::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let name = u.name.get_ref().clone();
        if pools.iter().any(|(n, _)| *n == name) {
            rep.at(
                u.name.span(),
                format!("upstreams[{i}].name"),
                format!("duplicate upstream {name:?}"),
            );
        }
        let (eps, policy) = check_upstream(i, u, rep);
        let index = pools.len();
        let mut pool = Upstream::new(name.clone(), index, &eps, policy);
        if let Some(tls) = check_upstream_tls(i, u, rep) {
            pool = pool.with_tls(tls);
        }
        match (&u.host, &u.sni) {
            (Some(h), _) if h.get_ref().is_empty() || !valid_host(h.get_ref().as_bytes()) => {
                rep.at(
                    h.span(),
                    format!("upstreams[{i}].host"),
                    format!("{:?} is not host[:port]", h.get_ref()),
                );
            }
            (Some(h), _) => pool = pool.with_host(h.get_ref().as_str()),
            (None, Some(sni)) if pool.tls.is_some() => {
                pool = pool.with_host(sni.get_ref().as_str())
            }
            _ => {}
        }
        pools.push((name, Arc::new(pool)));
    }

    let mut listeners = Vec::new();
    let mut ports = HashSet::new();
    let mut route_names = HashSet::new();
    if cfg.listeners.is_empty() {
        rep.at(0..0, "listeners", "at least one listener is required");
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let port = *l.port.get_ref();
        if port == 0 || !ports.insert(port) {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].port"),
                format!("port {port} is zero or used twice"),
            );
        }
        if (32_768..61_000).contains(&port) {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].port"),
                "lies in the upstream port range 32768..61000",
            );
        }
        let mut routes = Vec::new();
        for (j, r) in l.routes.iter().enumerate() {
            let field = format!("listeners[{i}].routes[{j}]");
            let name = match &r.name {
                Some(n) => {
                    if !route_names.insert(n.get_ref().clone()) {
                        rep.at(
                            n.span(),
                            format!("{field}.name"),
                            format!(
                                "duplicate route name {:?} (counters are kept by name)",
                                n.get_ref()
                            ),
                        );
                    }
                    n.get_ref().clone()
                }
                None => format!("{port}:{j}"),
            };
            let anchor = r
                .upstream
                .as_ref()
                .map(|u| u.span())
                .or_else(|| r.respond.as_ref().map(|x| x.span()))
                .unwrap_or(0..0);
            let path = check_path(r, &field, anchor.clone(), rep);
            let action = match (&r.upstream, &r.respond) {
                (Some(u), None) => match pools.iter().find(|(n, _)| n == u.get_ref()) {
                    Some((_, p)) => Some(RouteAction::Proxy(p.clone())),
                    None => {
                        rep.at(
                            u.span(),
                            format!("{field}.upstream"),
                            format!("no upstream named {:?}", u.get_ref()),
                        );
                        None
                    }
                },
                (None, Some(resp)) => {
                    let d = resp.get_ref();
                    if !(200..=599).contains(&d.status) {
                        rep.at(
                            resp.span(),
                            format!("{field}.respond.status"),
                            "must be 200..=599",
                        );
                    }
                    if d.body.len() > MAX_DIRECT_BODY {
                        rep.at(
                            resp.span(),
                            format!("{field}.respond.body"),
                            format!("longer than {MAX_DIRECT_BODY} bytes"),
                        );
                    }
                    Some(RouteAction::Respond(Arc::new(DirectResponse {
                        status: d.status,
                        content_type: d.content_type.clone(),
                        body: d.body.clone().into_bytes(),
                    })))
                }
                _ => {
                    rep.at(
                        anchor.clone(),
                        field.clone(),
                        "needs exactly one of `upstream` or `respond`",
                    );
                    None
                }
            };
            let mut methods = Vec::new();
            for (k, m) in r.methods.iter().enumerate() {
                let v = m.get_ref();
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
                {
                    rep.at(
                        m.span(),
                        format!("{field}.methods[{k}]"),
                        format!("{v:?} is not an upper-case method like GET (methods are case-sensitive)"),
                    );
                }
                methods.push(v.clone());
            }
            let headers = r
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    if !is_token(k) {
                        rep.at(
                            v.span(),
                            format!("{field}.headers.{k}"),
                            format!("{k:?} is not a header name"),
                        );
                    }
                    match_value(v, format!("{field}.headers.{k}"), rep).map(|value| HeaderMatch {
                        name: k.clone(),
                        value,
                    })
                })
                .collect();
            let query = r
                .query
                .iter()
                .filter_map(|(k, v)| {
                    if k.is_empty() {
                        rep.at(v.span(), format!("{field}.query"), "empty parameter name");
                    }
                    match_value(v, format!("{field}.query.{k}"), rep).map(|value| QueryMatch {
                        name: k.clone(),
                        value,
                    })
                })
                .collect();
            if let Some(cn) = &r.client_cert_cn
                && l.tls.is_none()
            {
                rep.at(
                    cn.span(),
                    format!("{field}.client_cert_cn"),
                    "needs a TLS listener with client certificates ([listeners.tls] client_ca)",
                );
            }
            if let (Some(action), Some(path)) = (action, path) {
                routes.push(Route {
                    host: r.host.clone(),
                    path,
                    methods,
                    headers,
                    query,
                    client_cert_cn: r.client_cert_cn.as_ref().map(|c| c.get_ref().clone()),
                    ..Route::new(name, action)
                });
            }
        }
        let mut listener = Listener::new(port, routes);
        if let Some(tls) = check_listener_tls(i, l, rep) {
            listener = listener.with_tls(Arc::new(tls));
        }
        listeners.push(listener);
    }
    let filter = check_filter(cfg, rep, &vips, &pools);
    let numa = check_numa(cfg, rep);
    let dpdk = check_dpdk(&e.dpdk, rep);
    if !rep.errors.is_empty() {
        return None;
    }
    let (filter, fail_mode) = filter?;
    let routes = Arc::new(RouteTable::new(
        1,
        listeners,
        pools.iter().map(|(_, p)| p.clone()).collect(),
    ));
    let mut ec = EngineConfig::new(e.interface.clone(), vips, routes);
    ec.queues = *e.queues.get_ref();
    ec.backend = match e.backend {
        Backend::AfXdp => BackendChoice::AfXdp,
        Backend::AfPacket => BackendChoice::AfPacket,
        Backend::Auto => BackendChoice::Auto,
        Backend::Dpdk => BackendChoice::Dpdk,
    };
    ec.dpdk = dpdk;
    ec.xdp_mode = match e.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    };
    ec.batch_size = *e.batch_size.get_ref();
    ec.polling = match e.polling {
        Polling::Interrupt => PollingMode::Interrupt,
        Polling::Busy => PollingMode::Busy,
        Polling::Adaptive => PollingMode::Adaptive {
            spin: Duration::from_micros(50),
        },
    };
    ec.cpus = e.cpus.clone();
    ec.stack.net.verify_rx_checksums = e.verify_rx_checksums;
    ec.hugepages = e.hugepages;
    if e.listen_backlog.is_some() {
        tracing::warn!(
            "engine.listen_backlog has no effect and is ignored (engine.max_connections bounds accepted connections); remove it"
        );
    }
    ec.stack.net.max_connections = e.max_connections;
    ec.stack.net.tcp_rx_buffer = *e.tcp_buffer.get_ref();
    ec.stack.net.tcp_tx_buffer = *e.tcp_buffer.get_ref();
    ec.stack.net.gateway_v4 = gateway;
    ec.stack.max_request_body = cfg.limits.max_request_body_bytes;
    let mut access_log = None;
    if let Some(a) = &cfg.access_log {
        let path = a.path.get_ref().trim();
        if path.is_empty() {
            rep.at(
                a.path.span(),
                "access_log.path",
                "must name a file or \"-\"",
            );
        } else if path == "-" {
            access_log = Some(AccessLogTarget::Log);
        } else {
            let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
            access_log = Some(AccessLogTarget::File(base.join(path)));
        }
        if !(16..=1 << 20).contains(a.queue.get_ref()) {
            rep.at(
                a.queue.span(),
                "access_log.queue",
                "must be 16..=1048576 records",
            );
        }
        ec.access_log_queue = *a.queue.get_ref();
    }
    ec.numa = numa;
    ec.filter = filter;
    ec.fail_mode = fail_mode;
    let d = Timeouts::default();
    let ms = |v: Option<u64>, dflt: Duration| v.map(Duration::from_millis).unwrap_or(dflt);
    ec.stack.timeouts = Timeouts {
        client_header: ms(cfg.timeouts.client_header_ms, d.client_header),
        client_idle: ms(cfg.timeouts.client_idle_ms, d.client_idle),
        upstream_connect: ms(cfg.timeouts.upstream_connect_ms, d.upstream_connect),
        upstream_response: ms(cfg.timeouts.upstream_response_ms, d.upstream_response),
    };
    Some(Compiled {
        netns: e.netns.clone(),
        engine: ec,
        access_log,
        files: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 2

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[listeners]]
port = 80
[[listeners.routes]]
path_prefix = "/direct"
respond = { status = 200, body = "hi" }
[[listeners.routes]]
upstream = "origin"
"#;

    fn errors(text: &str) -> Vec<String> {
        match compile(Path::new("t.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_file_that_still_sets_the_dead_listen_backlog_loads() {
        let old = GOOD.replace("queues = 2", "queues = 2\nlisten_backlog = 128");
        assert_eq!(errors(&old), Vec::<String>::new());
        let typo = GOOD.replace("queues = 2", "queues = 2\nlisten_backlogg = 128");
        assert!(errors(&typo)[0].contains("unknown field"));
    }

    #[test]
    fn pool_host_for_requests_without_one_is_checked() {
        let with = |host: &str| {
            GOOD.replace(
                "endpoints = [\"10.77.0.3:8080\"]",
                &format!("endpoints = [\"10.77.0.3:8080\"]\nhost = {host:?}"),
            )
        };
        let c = compile(Path::new("t.toml"), &with("api.example:8080")).unwrap();
        assert_eq!(
            c.engine.routes.upstreams[0].host.as_deref(),
            Some("api.example:8080")
        );
        for bad in ["", "a b", "evil.com/x", "user@evil"] {
            let e = errors(&with(bad));
            assert!(
                e.iter()
                    .any(|e| e.starts_with("t.toml:11:") && e.contains("upstreams[0].host")),
                "{bad:?}: {e:?}"
            );
        }
        let c = compile(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.engine.routes.upstreams[0].host, None);
    }

    #[test]
    fn pool_keepalive_and_max_requests_reach_the_policy_and_are_bounded() {
        let with = |extra: &str| {
            GOOD.replace(
                "endpoints = [\"10.77.0.3:8080\"]",
                &format!("endpoints = [\"10.77.0.3:8080\"]\n{extra}"),
            )
        };
        let c = compile(
            Path::new("t.toml"),
            &with("keepalive = 4\nmax_requests = 9"),
        )
        .unwrap();
        let p = &c.engine.routes.upstreams[0].policy;
        assert_eq!((p.keepalive, p.max_requests), (4, 9));
        let c = compile(Path::new("t.toml"), GOOD).unwrap();
        let p = &c.engine.routes.upstreams[0].policy;
        assert_eq!((p.keepalive, p.max_requests), (64, 1000));
        let e = errors(&with("keepalive = 10001"));
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:11:") && e.contains("upstreams[0].keepalive")),
            "{e:?}"
        );
    }

    #[test]
    fn shipped_configs_compile() {
        for name in ["lab.toml", "filter.example.toml", "edge.example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            let c = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!c.engine.vips().is_empty());
        }
        let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/filter.example.toml"))
            .unwrap();
        let f = &c.engine.filter;
        assert_eq!(f.rate.len(), 4);
        assert_eq!(f.l4[0].allow, vec![(6, 80), (6, 443), (1, 0)]);
        // The generated upstream rule lets origin replies through.
        assert!(
            f.cidr
                .iter()
                .any(|r| r.id == UPSTREAM_RULE && r.action == CidrAction::Upstream)
        );
    }

    #[test]
    fn filter_errors_name_their_field() {
        let bad = format!(
            "{GOOD}\n[filter]\n[[filter.rate]]\nid = \"r\"\nvip = \"10.9.9.9\"\npps = 1\n[[filter.l4]]\nid = \"l\"\nvip = \"10.77.0.10\"\nallow = [\"tcp/0\", \"sctp/9\"]\n[[filter.cidr]]\nid = \"r\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/33\"]\n"
        );
        let e = errors(&bad);
        assert!(
            e.iter().any(|l| l.contains("filter.rate[0].vip")
                && l.contains("not one of the configured vips")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.contains("filter.l4[0].allow[0]")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.contains("filter.l4[0].allow[1]")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.contains("filter.cidr[0].cidrs[0]")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("duplicate or reserved rule id \"r\"")),
            "{e:?}"
        );
    }

    #[test]
    fn good_config_compiles() {
        let c = compile(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.engine.queues, 2);
        assert_eq!(c.engine.routes.listeners[0].routes().len(), 2);
    }

    #[test]
    fn unknown_upstream_is_named_with_line() {
        let bad = GOOD.replace("upstream = \"origin\"", "upstream = \"nope\"");
        let e = errors(&bad);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.toml:18:12: listeners[0].routes[1].upstream: no upstream named \"nope\""
            ),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_key_and_bad_type_are_located() {
        let e = errors(&GOOD.replace("queues = 2", "queuez = 2"));
        assert!(e[0].starts_with("t.toml:6:1: queuez:"), "{e:?}");
        assert!(e[0].contains("unknown field"), "{e:?}");
        let e = errors(&GOOD.replace("queues = 2", "queues = \"two\""));
        assert!(e[0].starts_with("t.toml:6:10: queues:"), "{e:?}");
    }

    #[test]
    fn several_semantic_errors_are_all_reported() {
        let bad = GOOD
            .replace("10.77.0.10/24", "10.77.0.300/24")
            .replace("10.77.0.3:8080", "nowhere")
            .replace("queues = 2", "queues = 0");
        let e = errors(&bad);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|l| l.contains("vips[0]")));
        assert!(e.iter().any(|l| l.contains("upstreams[0].endpoints[0]")));
        assert!(e.iter().any(|l| l.contains("engine.queues")));
    }

    fn compiled(text: &str) -> Compiled {
        compile(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn edge_example_compiles_every_new_key() {
        let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/edge.example.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let t = &c.engine.routes;
        let api = t.upstreams.iter().find(|u| u.name == "api").unwrap();
        assert_eq!(api.policy.balancer, Balancer::Weighted);
        assert!(api.weights.iter().any(|&w| w > 1));
        assert!(api.policy.health.is_some() && api.policy.breaker.is_some());
        let sessions = t.upstreams.iter().find(|u| u.name == "sessions").unwrap();
        assert!(sessions.maglev.is_some());
        assert!(t.routes().any(|r| matches!(r.path, PathMatch::Regex(_))));
        assert!(t.routes().any(|r| !r.headers.is_empty()));
        assert!(t.routes().any(|r| !r.query.is_empty()));
        assert!(t.routes().any(|r| !r.methods.is_empty()));
        assert!(t.listeners.iter().any(|l| l.tls.is_some()));
        assert!(t.routes().any(|r| r.client_cert_cn.is_some()));
        for (i, u) in t.upstreams.iter().enumerate() {
            assert_eq!(u.index, i);
        }
    }

    #[test]
    fn upstream_policy_compiles_from_toml() {
        let text = GOOD.replace(
            "endpoints = [\"10.77.0.3:8080\"]",
            r#"endpoints = ["10.77.0.3:8080", { address = "10.77.0.4:8080", weight = 3 }]
balancer = "hash"
hash_on = "cookie:sid"
fail_open = false
connect_ms = 250
[upstreams.health]
type = "http"
path = "/healthz"
interval_ms = 1000
timeout_ms = 300
rise = 2
fall = 4
expect_status = "200-299"
[upstreams.passive]
consecutive_failures = 3
eject_ms = 15000
[upstreams.breaker]
failure_percent = 40
min_requests = 50
consecutive_failures = 10
window_ms = 5000
cooldown_ms = 2000
half_open_probes = 2
[upstreams.retry]
attempts = 3
budget_percent = 20
min_per_sec = 5"#,
        );
        let c = compiled(&text);
        let u = &c.engine.routes.upstreams[0];
        assert_eq!(u.weights, vec![1, 3]);
        let p = &u.policy;
        assert_eq!(p.balancer, Balancer::Hash(HashOn::Cookie("sid".into())));
        assert!(!p.fail_open);
        assert_eq!(p.timeouts.connect, Some(Duration::from_millis(250)));
        assert_eq!(p.timeouts.response, None);
        let h = p.health.as_ref().unwrap();
        assert_eq!(
            h.kind,
            CheckKind::Http {
                path: "/healthz".into(),
                host: String::new()
            }
        );
        assert_eq!((h.rise, h.fall, h.expect_status), (2, 4, (200, 299)));
        assert_eq!(p.passive.unwrap().eject, Duration::from_secs(15));
        let b = p.breaker.unwrap();
        assert_eq!(
            (b.failure_percent, b.min_requests, b.half_open_probes),
            (40, 50, 2)
        );
        assert_eq!(
            (
                p.retry.attempts,
                p.retry.budget_percent,
                p.retry.min_per_sec
            ),
            (3, 20, 5)
        );
        assert!(u.maglev.is_some());
    }

    #[test]
    fn route_matchers_compile_and_route_requests() {
        let text = GOOD.replace(
            "[[listeners.routes]]\nupstream = \"origin\"",
            r#"[[listeners.routes]]
name = "canary"
host = "*.example.com"
path_regex = "/v[0-9]+/users/[^/]+"
methods = ["GET", "HEAD"]
headers = { "X-Env" = "canary", "X-Trace" = true }
query = { v = "2" }
upstream = "origin"
[[listeners.routes]]
name = "exact"
path_exact = "/login"
upstream = "origin"
[[listeners.routes]]
upstream = "origin""#,
        );
        let c = compiled(&text);
        let l = &c.engine.routes.listeners[0];
        let h = [
            ferrogate_proxy::http::Header {
                name: "x-env",
                value: b"canary",
            },
            ferrogate_proxy::http::Header {
                name: "x-trace",
                value: b"1",
            },
        ];
        let req = |m, host, target, hs: &[ferrogate_proxy::http::Header<'_>]| {
            let hs = ferrogate_proxy::http::Headers::from_list(hs);
            l.route_request(&ferrogate_proxy::RequestView::new(m, host, target, hs))
                .map(|r| r.name.clone())
        };
        assert_eq!(
            req("GET", Some("a.example.com"), "/v2/users/bob?v=2", &h[..]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            req("POST", Some("a.example.com"), "/v2/users/bob?v=2", &h[..]).as_deref(),
            Some("80:3")
        );
        assert_eq!(
            req("GET", Some("a.example.com"), "/v2/users/bob?v=2", &h[..1]).as_deref(),
            Some("80:3")
        );
        assert_eq!(req("GET", None, "/login", &[]).as_deref(), Some("exact"));
        assert_eq!(req("GET", None, "/direct", &[]).as_deref(), Some("80:0"));
    }

    #[test]
    fn upstream_policy_errors_name_file_line_and_field() {
        let text = GOOD.replace(
            "endpoints = [\"10.77.0.3:8080\"]",
            r#"endpoints = ["10.77.0.3:8080", { address = "10.77.0.4:8080", weight = 0 }, "10.77.0.3:8080"]
balancer = "random"
hash_on = "ip"
[upstreams.health]
type = "udp"
interval_ms = 0
rise = 0
expect_status = "2xx"
[upstreams.passive]
consecutive_failures = 0
[upstreams.breaker]
failure_percent = 101
[upstreams.retry]
attempts = 0"#,
        );
        let e = errors(&text);
        let has = |needle: &str| {
            assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
        };
        has("t.toml:10:32: upstreams[0].endpoints[1].weight: must be 1..=10000");
        has("upstreams[0].endpoints[2]: duplicate endpoint 10.77.0.3:8080");
        has("t.toml:11:12: upstreams[0].balancer: unknown balancer \"random\"");
        has("t.toml:12:11: upstreams[0].hash_on: \"ip\" is not `header:NAME`");
        has("upstreams[0].health.type: unknown check type \"udp\"");
        has("upstreams[0].health.interval_ms: must be 1..=86400000");
        has("upstreams[0].health.rise: must be 1..=100");
        has("upstreams[0].health.expect_status:");
        has("upstreams[0].passive.consecutive_failures: must be 1..=1000");
        has("upstreams[0].breaker.failure_percent: must be 1..=100");
        has("upstreams[0].retry.attempts: must be 1..=10");
        assert!(
            !e.iter().any(|l| l.contains("only used with")),
            "no follow-on error for an unknown balancer: {e:#?}"
        );
    }

    #[test]
    fn route_matcher_errors_name_file_line_and_field() {
        let text = GOOD.replace(
            "[[listeners.routes]]\nupstream = \"origin\"",
            r#"[[listeners.routes]]
name = "r"
path_regex = "/users/(["
methods = ["get"]
headers = { "X Bad" = "x", "X-Num" = 3 }
upstream = "origin"
[[listeners.routes]]
name = "r"
path_exact = "/a"
path_prefix = "/b"
upstream = "origin""#,
        );
        let e = errors(&text);
        let has = |needle: &str| {
            assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
        };
        has("t.toml:19:14: listeners[0].routes[1].path_regex: invalid regex: ");
        has("t.toml:20:12: listeners[0].routes[1].methods[0]: \"get\" is not an upper-case method");
        has("listeners[0].routes[1].headers.X Bad: \"X Bad\" is not a header name");
        has("listeners[0].routes[1].headers.X-Num: must be a string (exact value) or true");
        has("listeners[0].routes[2].name: duplicate route name \"r\"");
        has("listeners[0].routes[2]: at most one of `path_prefix`, `path_exact`, `path_regex`");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    fn pem_pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "fg-cfg-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
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
            &upstream_config(
                "tls = true\nca = \"origin-ca.pem\"\n[upstreams.health]\npath = \"/\"",
            ),
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
}
