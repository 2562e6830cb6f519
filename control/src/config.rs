//! The TOML configuration: schema (serde), validation with errors that name
//! file, line, column and field, and compilation into the engine's config.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrogate_ebpf::{
    AttachMode, CidrAction, CidrRule, FailMode, FilterRules, L4Rule, RateKey, RateRule,
};
use ferrogate_engine::{BackendChoice, EngineConfig, PollingMode};
use ferrogate_stack::{
    DirectResponse, Listener, Route, RouteAction, RouteTable, Timeouts, Upstream,
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
    #[serde(default = "default_backlog")]
    pub listen_backlog: usize,
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    #[serde(default = "default_tcp_buffer")]
    pub tcp_buffer: Spanned<usize>,
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
fn default_backlog() -> usize {
    64
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub port: Spanned<u16>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "root_path")]
    pub path_prefix: Spanned<String>,
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub respond: Option<Spanned<RespondSection>>,
}

fn root_path() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
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
    pub endpoints: Vec<Spanned<String>>,
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
}

struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Reporter<'_> {
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
        Ok(compiled.expect("no errors means compiled"))
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
        let mut eps = Vec::new();
        if u.endpoints.is_empty() {
            rep.at(
                u.name.span(),
                format!("upstreams[{i}].endpoints"),
                "needs at least one endpoint",
            );
        }
        for (j, ep) in u.endpoints.iter().enumerate() {
            match ep.get_ref().parse::<SocketAddr>() {
                Ok(a) => eps.push(a),
                Err(_) => rep.at(
                    ep.span(),
                    format!("upstreams[{i}].endpoints[{j}]"),
                    format!("{:?} is not ip:port", ep.get_ref()),
                ),
            }
        }
        pools.push((
            name.clone(),
            Arc::new(Upstream {
                name,
                endpoints: eps,
            }),
        ));
    }

    let mut listeners = Vec::new();
    let mut ports = HashSet::new();
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
            if !r.path_prefix.get_ref().starts_with('/') {
                rep.at(
                    r.path_prefix.span(),
                    format!("{field}.path_prefix"),
                    "must start with '/'",
                );
            }
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
                        r.path_prefix.span(),
                        field.clone(),
                        "needs exactly one of `upstream` or `respond`",
                    );
                    None
                }
            };
            if let Some(action) = action {
                routes.push(Route {
                    name: r.name.clone().unwrap_or_else(|| format!("{port}:{j}")),
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.get_ref().clone(),
                    action,
                });
            }
        }
        listeners.push(Listener { port, routes });
    }
    let filter = check_filter(cfg, rep, &vips, &pools);
    if !rep.errors.is_empty() {
        return None;
    }
    let (filter, fail_mode) = filter?;
    let routes = Arc::new(RouteTable {
        version: 1,
        listeners,
    });
    let mut ec = EngineConfig::new(e.interface.clone(), vips, routes);
    ec.queues = *e.queues.get_ref();
    ec.backend = match e.backend {
        Backend::AfXdp => BackendChoice::AfXdp,
        Backend::AfPacket => BackendChoice::AfPacket,
        Backend::Auto => BackendChoice::Auto,
    };
    ec.xdp_mode = match e.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    };
    ec.batch_size = *e.batch_size.get_ref();
    ec.polling = match e.polling {
        Polling::Busy => PollingMode::Busy,
        Polling::Adaptive => PollingMode::Adaptive {
            spin: Duration::from_micros(50),
        },
    };
    ec.cpus = e.cpus.clone();
    ec.verify_rx_checksums = e.verify_rx_checksums;
    ec.hugepages = e.hugepages;
    ec.listen_backlog = e.listen_backlog.max(1);
    ec.max_connections = e.max_connections;
    ec.tcp_buffer = *e.tcp_buffer.get_ref();
    ec.gateway_v4 = gateway;
    ec.filter = filter;
    ec.fail_mode = fail_mode;
    let d = Timeouts::default();
    let ms = |v: Option<u64>, dflt: Duration| v.map(Duration::from_millis).unwrap_or(dflt);
    ec.timeouts = Timeouts {
        client_header: ms(cfg.timeouts.client_header_ms, d.client_header),
        client_idle: ms(cfg.timeouts.client_idle_ms, d.client_idle),
        upstream_connect: ms(cfg.timeouts.upstream_connect_ms, d.upstream_connect),
        upstream_response: ms(cfg.timeouts.upstream_response_ms, d.upstream_response),
        linger: d.linger,
    };
    Some(Compiled {
        netns: e.netns.clone(),
        engine: ec,
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
    fn shipped_configs_compile() {
        for name in ["lab.toml", "filter.example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            let c = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!c.engine.vips.is_empty());
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
        assert_eq!(c.engine.routes.listeners[0].routes.len(), 2);
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
}
