//! The TOML configuration: schema (serde, `schema.rs`), diagnostics that
//! name file, line, column and field (`report.rs`), file loading (here), and
//! one compile step (`compile.rs`, with a module per section) into the
//! engine's config.

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
use ferrogate_proxy::route::Http3Listener;
use ferrogate_proxy::{
    DirectResponse, HeaderMatch, L4Listener, Listener, PathMatch, QueryMatch, Route, RouteAction,
    RouteJwt, RouteTable, Timeouts, UdpListener, Upstream,
};
use serde::Deserialize;
use toml::Spanned;

/// Largest body a `respond` route may carry (it must fit the head buffer).
const MAX_DIRECT_BODY: usize = 8 * 1024;

mod cache;
#[cfg(test)]
mod cache_tests;
mod compile;
mod engine;
mod filter;
mod jwt;
mod listener_tls;
#[cfg(test)]
mod plugin_tests;
mod plugins;
mod rate_limits;
mod report;
#[cfg(test)]
mod route_rules_tests;
mod routes;
mod rules;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
mod upstream;

use cache::*;
use compile::*;
use engine::*;
use filter::*;
use jwt::*;
use listener_tls::*;
use plugins::*;
use rate_limits::*;
use report::*;
use routes::*;
use rules::*;
pub use schema::*;
use upstream::*;

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
    /// `timeouts.drain_ms`: the bound of a graceful stop.
    pub drain_timeout: Duration,
}

/// Default bound of a graceful stop.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest drain accepted: the supervisor waits this long (plus its own
/// grace) before it kills an engine that does not stop.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

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
