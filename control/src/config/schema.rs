//! The file's schema: one serde struct per section, with spans kept
//! (`Spanned`) where an error has to point into the file.

use super::*;

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
    pub rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub jwt: Vec<JwtSection>,
    #[serde(default)]
    pub numa: NumaSection,
    #[serde(default)]
    pub access_log: Option<AccessLogSection>,
    #[serde(default)]
    pub http2: Http2Section,
    /// `[http3]`: limits of the QUIC endpoints of `http3 = true` listeners.
    #[serde(default)]
    pub http3: Http3Section,
    /// `[cache]`: the engine's response cache (routes opt in with `cache`).
    #[serde(default)]
    pub cache: CacheSection,
    /// `[[plugins]]`: proxy-wasm modules listeners and routes run (`plugins = […]`).
    #[serde(default)]
    pub plugins: Vec<PluginSection>,
}

/// `[http2]`: settings and limits of HTTP/2 connections (listeners with
/// `http2 = true`). Defaults follow Envoy's edge recommendations.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http2Section {
    /// SETTINGS_MAX_CONCURRENT_STREAMS (default 100).
    #[serde(default)]
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Request-body window per stream, octets (default 65536).
    #[serde(default)]
    pub stream_window: Option<Spanned<u32>>,
    /// Request-body window per connection, octets (default 1 MiB).
    #[serde(default)]
    pub connection_window: Option<Spanned<u32>>,
    /// Largest frame accepted, 16384..=16777215 (default 16384).
    #[serde(default)]
    pub max_frame_size: Option<Spanned<u32>>,
    /// Largest decoded request header list, octets (default 16384; 431 above).
    #[serde(default)]
    pub max_header_list_size: Option<Spanned<u32>>,
    /// Time for the client to acknowledge our SETTINGS (default 10000).
    #[serde(default)]
    pub settings_timeout_ms: Option<Spanned<u64>>,
    /// Streams a client may reset (or have refused) per second before
    /// GOAWAY ENHANCE_YOUR_CALM (rapid reset; default 100).
    #[serde(default)]
    pub max_resets_per_second: Option<Spanned<u32>>,
    /// PING, SETTINGS, PRIORITY, WINDOW_UPDATE or empty frames of one kind
    /// per second before GOAWAY ENHANCE_YOUR_CALM (default 1000).
    #[serde(default)]
    pub max_control_frames_per_second: Option<Spanned<u32>>,
}

/// `[http3]`: the QUIC endpoint (and HTTP/3) limits of listeners with
/// `http3 = true`; one endpoint per worker, so connection bounds are per
/// worker.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http3Section {
    /// Address validation (a Retry) before every new connection (default
    /// false): a spoofed source then costs one stateless packet.
    #[serde(default)]
    pub retry: Option<Spanned<bool>>,
    /// QUIC connections at once per worker (default 10000).
    #[serde(default)]
    pub max_connections: Option<Spanned<usize>>,
    /// QUIC connections at once from one source address, per worker
    /// (default 100).
    #[serde(default)]
    pub max_connections_per_source: Option<Spanned<u32>>,
    /// Handshakes in progress per worker above which every new
    /// connection must first prove its address with a Retry (default 256).
    #[serde(default)]
    pub retry_above_handshakes: Option<Spanned<usize>>,
    /// No packet either way for this long closes a connection (default 30000).
    #[serde(default)]
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// Request streams at once per connection (default 100).
    #[serde(default)]
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Request-body octets buffered per stream (default 65536).
    #[serde(default)]
    pub max_buffered_body: Option<Spanned<usize>>,
    /// Largest request header section, octets (default 16384; 431 above).
    #[serde(default)]
    pub max_field_section_size: Option<Spanned<u64>>,
    /// `Alt-Svc: h3=":port"; ma=<this>` on HTTP/1.1 and HTTP/2 responses,
    /// seconds (default 86400; 0: not advertised).
    #[serde(default)]
    pub alt_svc_max_age: Option<Spanned<u32>>,
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

pub(super) fn default_access_queue() -> Spanned<usize> {
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

pub(super) fn prefix4_default() -> u8 {
    32
}
pub(super) fn prefix6_default() -> u8 {
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
    /// Largest a connection's buffers grow to when `tcp_buffer` caps its
    /// flight (long, fast paths); `tcp_buffer` turns growth off. Default
    /// 4 MiB (or `tcp_buffer`, if larger).
    #[serde(default)]
    pub tcp_buffer_max: Option<Spanned<usize>>,
    /// Bytes all grown buffers of one worker may hold beyond `tcp_buffer`.
    #[serde(default = "default_tcp_buffer_budget")]
    pub tcp_buffer_budget: Spanned<usize>,
    /// TCP Timestamps (RFC 7323) with peers that offer them.
    #[serde(default = "default_true")]
    pub tcp_timestamps: bool,
    /// Local ports of upstream connections, first and last (inclusive, as
    /// Linux's `ip_local_port_range`), split evenly between the workers.
    #[serde(default = "default_upstream_port_range")]
    pub upstream_port_range: Spanned<[u16; 2]>,
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
    /// The host's exception TAP (non-VIP frames to the kernel and back).
    #[serde(default)]
    pub exception_iface: Option<Spanned<String>>,
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
            exception_iface: None,
        }
    }
}

pub(super) fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
pub(super) fn default_batch() -> Spanned<usize> {
    Spanned::new(0..0, 64)
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_max_conns() -> usize {
    16_384
}
pub(super) fn default_tcp_buffer() -> Spanned<usize> {
    Spanned::new(0..0, 64 * 1024)
}
pub(super) fn default_upstream_port_range() -> Spanned<[u16; 2]> {
    Spanned::new(0..0, [32_768, 60_999])
}

pub(super) fn default_tcp_buffer_budget() -> Spanned<usize> {
    Spanned::new(0..0, 128 * 1024 * 1024)
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
    /// TLS termination on this port (HTTPS; a TCP listener splices the
    /// plaintext to its `upstream`).
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTlsSection>>,
    /// Headers carrying the verified client certificate identity (mTLS) to
    /// the upstream; client-sent headers of these names are removed.
    #[serde(default)]
    pub mtls_headers: Option<MtlsHeadersSection>,
    /// HTTP/2 beside HTTP/1.1: ALPN `h2` on TLS, h2c with prior knowledge
    /// on plain listeners (default false).
    #[serde(default)]
    pub http2: bool,
    /// HTTP/3 (QUIC) on the same port over UDP, with this listener's
    /// certificates (default false; TLS listeners only, see `[http3]`).
    #[serde(default)]
    pub http3: Option<Spanned<bool>>,
    /// `"http"` (default), `"tcp"` or `"udp"`: a TCP listener splices
    /// every connection to `upstream`, a UDP listener forwards each
    /// client's datagrams to one endpoint of it; neither has routes.
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    /// The pool of a TCP or UDP listener.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// TCP listeners: no byte either way for this long closes both sides
    /// (default 300000). UDP listeners: no datagram either way for this
    /// long ends the session (default 30000).
    #[serde(default)]
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// TCP listeners: connections at once per worker (default: only the
    /// engine's `max_connections`); beyond it a SYN is reset.
    #[serde(default)]
    pub max_connections: Option<Spanned<usize>>,
    /// UDP listeners: sessions (clients) at once per worker (default
    /// 16384); a datagram from a new client beyond it is dropped.
    #[serde(default)]
    pub max_sessions: Option<Spanned<usize>>,
    /// TCP listeners: TLS passthrough, the pool per server name of the
    /// ClientHello (`"a.example" = "pool-a"`, `"*.b.example" = "pool-b"`);
    /// other names and hellos without one go to `upstream`.
    #[serde(default)]
    pub sni: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    /// TCP listeners: address prefixes of load balancers in front whose
    /// PROXY v2 (or v1) header comes first; its client address is used.
    #[serde(default)]
    pub proxy_protocol_from: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// L7 rules evaluated before routing (HTTP listeners).
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// `[[rate_limits]]` (by name) every request of the listener takes from.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// A `[[jwt]]` provider (by name): every request needs its bearer token.
    #[serde(default)]
    pub jwt: Option<Spanned<String>>,
    /// `[[plugins]]` (by name), in order: each sees every request before
    /// routing and its response head before the client write.
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
}

/// `[listeners.tls]`. Paths are relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    pub certificates: Vec<Spanned<CertificateSection>>,
    /// ALPN protocols offered, in preference order (default `["http/1.1"]`,
    /// or `["h2", "http/1.1"]` with `http2 = true`; none on a TCP listener).
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
    /// `[[rate_limits]]` (by name) of this route, after the listener's.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// A share of the route's requests to another pool, with a brake.
    #[serde(default)]
    pub canary: Option<Spanned<CanarySection>>,
    /// L7 rules evaluated once the route is chosen, after the listener's.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// A `[[jwt]]` provider (by name) whose bearer token the route's
    /// requests need instead of the listener's, or `"none"`: no token.
    #[serde(default)]
    pub jwt: Option<Spanned<String>>,
    /// Response caching: `true` (defaults), `false`, or `{ ttl = …, … }`.
    #[serde(default)]
    pub cache: Option<Spanned<RouteCacheSetting>>,
    /// `[[plugins]]` (by name), in order: each sees the request head once
    /// this route is chosen (origin request, after the listener's plugins)
    /// and the origin's response head before the listener's plugins do
    /// (origin response).
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
}

/// `canary = { pool, percent, key, brake = { … } }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySection {
    pub pool: String,
    /// Share of requests, 0..=100 (two decimals).
    pub percent: f64,
    /// Sticky cohorts: "header:NAME" or "cookie:NAME".
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub brake: Option<BrakeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrakeSection {
    /// Trip when the canary's 5xx ratio exceeds the baseline's by more
    /// than this (0..=1; e.g. 0.05 = five points).
    #[serde(default = "brake_delta_default")]
    pub max_5xx_delta: f64,
    /// Trip when the canary's p99 exceeds the baseline's times this.
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
    #[serde(default = "brake_window_default")]
    pub window_s: u64,
    #[serde(default = "brake_min_default")]
    pub min_requests: u64,
}

pub(super) fn brake_delta_default() -> f64 {
    0.05
}
pub(super) fn brake_window_default() -> u64 {
    30
}
pub(super) fn brake_min_default() -> u64 {
    20
}

/// `[[listeners.rules]]` and `[[listeners.routes.rules]]` (see
/// `configs/edge.example.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: Spanned<String>,
    /// Client addresses or prefixes; any one matches.
    #[serde(default)]
    pub source: Vec<Spanned<String>>,
    /// Exact host or `*.suffix`.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub path_exact: Option<Spanned<String>>,
    /// Must match the whole path.
    #[serde(default)]
    pub path_regex: Option<Spanned<String>>,
    /// Name → "exact", true (present), false (absent) or { regex = "…" }.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub cookies: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub client_cert_cn: Option<String>,
    /// "allow", "deny" or "redirect".
    pub action: Spanned<String>,
    /// deny: 400..=599 (default 403); redirect: 301/302/303/307/308
    /// (default 302).
    #[serde(default)]
    pub status: Option<Spanned<u16>>,
    /// deny: the answer's body (default "forbidden\n").
    #[serde(default)]
    pub body: Option<String>,
    /// redirect: `Location`, with {scheme} {host} {path} {query}
    /// {request_uri}.
    #[serde(default)]
    pub location: Option<Spanned<String>>,
    /// Written to the access log of matched requests.
    #[serde(default)]
    pub tag: Option<String>,
    /// allow: fields changed in the upstream request.
    #[serde(default)]
    pub request_headers: Option<Spanned<HeaderOpsSection>>,
    /// allow: fields changed in the response to the client.
    #[serde(default)]
    pub response_headers: Option<Spanned<HeaderOpsSection>>,
    /// allow: `{ from = "/api/v1/", to = "/v1/" }`, the target's prefix
    /// replaced upstream.
    #[serde(default)]
    pub rewrite_prefix: Option<Spanned<RewritePrefixSection>>,
    /// allow: proxy to this pool instead of the route's.
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    /// Claims of the verified bearer token (the listener's or the route's
    /// `jwt`): name = "text" (numbers and booleans as printed).
    #[serde(default)]
    pub jwt_claims: BTreeMap<String, Spanned<toml::Value>>,
}

/// `set` replaces (remove + add), `add` appends, `remove` drops fields.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSection {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewritePrefixSection {
    pub from: String,
    pub to: String,
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

pub(super) fn ok_status() -> u16 {
    200
}
pub(super) fn text_plain() -> String {
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
    /// Longest silence mid-body (server-sent events, long polls).
    #[serde(default)]
    pub read_ms: Option<Spanned<u64>>,
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
    /// `"v1"` or `"v2"`: a PROXY protocol header with the client's address
    /// first on each connection to an endpoint (TCP listeners only).
    #[serde(default)]
    pub proxy_protocol: Option<Spanned<String>>,
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

pub(super) fn one_u32() -> u32 {
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
    pub upstream_read_ms: Option<u64>,
    /// How long a graceful stop (SIGTERM, `ferrogate ctl drain`) waits for
    /// in-flight requests and open connections before cutting them
    /// (default 30000; 0: stop at once; at most 3600000).
    #[serde(default)]
    pub drain_ms: Option<Spanned<u64>>,
}

/// `[[rate_limits]]`: one token bucket definition, enforced at L7 (per key,
/// 429 with `Retry-After`) or in XDP (per source prefix, dropped). Named
/// `rate_limits` because `[limits]` already holds body limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub name: Spanned<String>,
    /// Requests (L7), packets or connections (XDP) a second.
    pub rate: Spanned<f64>,
    /// Admitted at once from a full bucket (default: one second's worth).
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
    /// `source` (default), `global`, `route`, `header:NAME`.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default = "prefix4_default")]
    pub prefix4: u8,
    #[serde(default = "prefix6_default")]
    pub prefix6: u8,
    /// `l7` (default) or `xdp`.
    #[serde(default)]
    pub enforce: Option<Spanned<String>>,
    /// XDP only: `packets` (default) or `connections` (TCP SYNs).
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Sources never limited nor escalated (CIDRs).
    #[serde(default)]
    pub exempt: Vec<Spanned<String>>,
    #[serde(default)]
    pub escalate: Option<Spanned<EscalateSection>>,
}

/// `[rate_limits.escalate]`: a source offering `factor` times the rate for
/// `after_s` seconds in a row is dropped in XDP for `ttl_s` seconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateSection {
    pub factor: f64,
    pub after_s: u64,
    pub ttl_s: u64,
}

/// `[[jwt]]`: a bearer-token provider listeners name with `jwt = "…"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    pub name: Spanned<String>,
    /// A JWKS file (relative to the config); a change is applied as a
    /// new snapshot.
    pub jwks: Spanned<String>,
    /// Accepted algorithms: "HS256", "RS256", "ES256" (default RS256, ES256).
    #[serde(default)]
    pub algorithms: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Leeway for exp and nbf, seconds (default 60).
    #[serde(default = "jwt_skew_default")]
    pub clock_skew_s: Spanned<u64>,
}

/// `[[plugins]]`: a proxy-wasm (ABI 0.2.x) module, compiled when the
/// snapshot is built; listeners name it in `plugins = […]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    pub name: Spanned<String>,
    /// The `.wasm` file (relative to the config); a change is applied as
    /// a new snapshot.
    pub wasm: Spanned<String>,
    /// The root id SDKs register their root context under.
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub vm_id: String,
    /// What `proxy_on_configure` reads (often JSON).
    #[serde(default)]
    pub configuration: Option<Spanned<String>>,
    /// A failed call (trap, fuel, memory, ABI) lets the request go on
    /// instead of answering 500 (default false).
    #[serde(default)]
    pub fail_open: bool,
    /// Linear memory per instance, MiB (default 32, 1..=4096).
    #[serde(default)]
    pub memory_mb: Option<Spanned<u64>>,
    /// Fuel (about one wasm instruction each) per callback (default
    /// 10 000 000, 1000..=10^9: a call stalls its worker).
    #[serde(default)]
    pub fuel_per_call: Option<Spanned<u64>>,
}

pub(super) fn jwt_skew_default() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

/// `[cache]`: the engine's response cache, one store shared by every
/// worker. Sizes are bytes. Read at engine start: a reload that changes it
/// is reported ("needs a restart") and the running store stays, except one
/// that only adds `[cache.disk]` (the tier is attached).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Byte budget of the whole store (default 268435456 = 256 MiB).
    #[serde(default)]
    pub max_bytes: Option<Spanned<i64>>,
    /// Largest object kept (default 8 MiB, at most max_bytes / shards).
    #[serde(default)]
    pub max_object_bytes: Option<Spanned<i64>>,
    /// Store shards, rounded up to a power of two (default 16).
    #[serde(default)]
    pub shards: Option<Spanned<i64>>,
    /// Response header whose values tag objects for purge by tag (default
    /// "surrogate-key"; "" or false: no tags).
    #[serde(default)]
    pub tag_header: Option<Spanned<HeaderSetting>>,
    /// Response header naming what the cache did (default "x-cache"; ""
    /// or false: none).
    #[serde(default)]
    pub status_header: Option<Spanned<HeaderSetting>>,
    /// How long a request waits for another's fetch of the same object
    /// before going upstream itself (default 5000).
    #[serde(default)]
    pub lock_timeout_ms: Option<Spanned<i64>>,
    /// Seed of the key hash: an integer or up to 32 hex digits (default:
    /// random at each engine start).
    #[serde(default)]
    pub key_seed: Option<Spanned<toml::Value>>,
    /// `[cache.disk]`: the optional disk tier.
    #[serde(default)]
    pub disk: Option<Spanned<CacheDiskSection>>,
}

/// `[cache.disk]`: a directory whose objects survive a restart. Every
/// completed object is written there (by one thread of the engine's, off
/// the data path); a memory miss loads it back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDiskSection {
    /// The directory (relative to the config file; created at engine
    /// start). One engine per directory.
    pub dir: Spanned<String>,
    /// Byte budget of all files (the oldest written go first).
    pub max_bytes: Spanned<i64>,
    /// Largest object written (default max_bytes / 8).
    #[serde(default)]
    pub max_object_bytes: Option<Spanned<i64>>,
    /// fsync every file before it counts (survives power loss; one disk
    /// flush per object). Default false.
    #[serde(default)]
    pub fsync: bool,
}

/// A header name, or none (`""` / `false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSetting {
    Name(String),
    Off,
    /// `true`: reported (a header needs a name).
    On,
}

impl<'de> Deserialize<'de> for HeaderSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HeaderSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header name, \"\" or false")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HeaderSetting, E> {
                Ok(if v.is_empty() {
                    HeaderSetting::Off
                } else {
                    HeaderSetting::Name(v.to_string())
                })
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<HeaderSetting, E> {
                Ok(if v {
                    HeaderSetting::On
                } else {
                    HeaderSetting::Off
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A route's `cache`: `true` (the defaults), `false` (none), or a table.
#[derive(Debug)]
pub enum RouteCacheSetting {
    Off,
    Defaults,
    Table(Box<RouteCacheSection>),
}

impl<'de> Deserialize<'de> for RouteCacheSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RouteCacheSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table of cache settings")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RouteCacheSetting, E> {
                Ok(if v {
                    RouteCacheSetting::Defaults
                } else {
                    RouteCacheSetting::Off
                })
            }
            // The table goes through the file's own deserializer, so its
            // keys keep their spans and unknown ones are located.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RouteCacheSetting, A::Error> {
                RouteCacheSection::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| RouteCacheSetting::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `cache = { … }` on a route (see `configs/edge.example.toml`). Times
/// are seconds.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    /// Freshness lifetime of every storable response, replacing the
    /// origin's (responses that may not be stored still are not).
    #[serde(default)]
    pub ttl: Option<Spanned<i64>>,
    #[serde(default)]
    pub min_ttl: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_ttl: Option<Spanned<i64>>,
    /// Heuristic lifetime as a percentage of Date − Last-Modified (default
    /// 10; 0: none).
    #[serde(default)]
    pub heuristic_percent: Option<Spanned<i64>>,
    /// Cap of a heuristic lifetime (default 86400).
    #[serde(default)]
    pub heuristic_max: Option<Spanned<i64>>,
    /// Leave the query out of the key.
    #[serde(default)]
    pub ignore_query: bool,
    /// Query parameters left out of the key (e.g. "utm_source").
    #[serde(default)]
    pub ignore_params: Vec<Spanned<String>>,
    /// Request headers whose values join the key.
    #[serde(default)]
    pub key_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub ignore_request_no_cache: bool,
    #[serde(default)]
    pub ignore_response_no_cache: bool,
    /// Store responses with Set-Cookie (off: one user's cookie would be
    /// handed to everyone).
    #[serde(default)]
    pub store_set_cookie: bool,
}
