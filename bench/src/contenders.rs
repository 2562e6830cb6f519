//! The proxies compared: ferrogate on the VIP, nginx and HAProxy on the edge
//! host address, and `direct` (client → origin, no proxy) as the ceiling.
//! Each is started for its turn in a round and stopped after it, so only one
//! contender (and only ferrogate's XDP program when it is ferrogate's turn)
//! is on the edge at a time. Every proxy runs pinned to PROXY_CPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::env::{self, EDGE_HOST_IP, Lab, ORIGIN_IP, PROXY_CPU, Proc, VIP};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Contender {
    Direct,
    Ferrogate,
    Nginx,
    Haproxy,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Ferrogate => "ferrogate",
            Contender::Nginx => "nginx",
            Contender::Haproxy => "haproxy",
        }
    }
    pub fn addr(self) -> String {
        match self {
            Contender::Direct => format!("{ORIGIN_IP}:8080"),
            Contender::Ferrogate => format!("{VIP}:80"),
            Contender::Nginx | Contender::Haproxy => format!("{EDGE_HOST_IP}:80"),
        }
    }
}

/// A contender that is up; stopped on drop.
pub struct Running {
    pub who: Contender,
    pub proc: Option<Proc>,
    pub stats_file: Option<PathBuf>,
    pub command: String,
}

pub fn ferrogate_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("FERROGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    for cand in [
        dir.join("ferrogate"),
        dir.parent()
            .map(|p| p.join("ferrogate"))
            .unwrap_or_default(),
    ] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for p in ["target/release/ferrogate", "target/debug/ferrogate"] {
        if ws.join(p).is_file() {
            return Ok(ws.join(p));
        }
    }
    bail!(
        "the ferrogate binary was not found next to the bench: build it (`cargo build --release`) or set FERROGATE_BIN"
    )
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// configs/lab.toml for the bench lab: one queue, worker on PROXY_CPU,
/// plus `extra` (e.g. a filter section).
pub fn ferrogate_config(lab: &Lab, extra: &str) -> Result<PathBuf> {
    let name = if extra.is_empty() {
        "ferrogate.toml"
    } else {
        "ferrogate-filter.toml"
    };
    ferrogate_config_tuned(lab, 1, &PROXY_CPU.to_string(), extra, name)
}

/// configs/lab.toml with `queues` workers on the CPU list `cpus` (e.g.
/// "0,1"), plus `extra`, written to the bench dir as `name`.
pub fn ferrogate_config_tuned(
    lab: &Lab,
    queues: u32,
    cpus: &str,
    extra: &str,
    name: &str,
) -> Result<PathBuf> {
    let base = std::fs::read_to_string(workspace().join("configs/lab.toml"))
        .context("reading configs/lab.toml")?;
    let mut out = String::new();
    let mut in_engine = false;
    for l in base.lines() {
        let t = l.trim_start();
        if t.starts_with('[') {
            in_engine = t.starts_with("[engine]");
        }
        if in_engine && (t.starts_with("queues") || t.starts_with("cpus") || t.starts_with("netns"))
        {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if t.starts_with("[engine]") {
            out.push_str(&format!(
                "netns = \"{}\"\nqueues = {queues}\ncpus = [{cpus}]\n",
                lab.ns("edge")
            ));
        }
    }
    out.push_str(extra);
    let p = lab.bench_dir().join(name);
    std::fs::write(&p, out)?;
    Ok(p)
}

pub const FLOOD_FILTER: &str = "\n[filter]\n[[filter.cidr]]\nid = \"bench-flood\"\naction = \"deny\"\ncidrs = [\"198.18.0.0/15\"]\n";

/// Whether this ferrogate build accepts the deny rule the flood needs
/// (the filter tier, issue #4). Err carries `ferrogate check`'s message.
pub fn ferrogate_filter_available(lab: &Lab) -> Result<PathBuf, String> {
    let cfg = ferrogate_config(lab, FLOOD_FILTER).map_err(|e| format!("{e:#}"))?;
    let bin = ferrogate_bin().map_err(|e| format!("{e:#}"))?;
    let out = Command::new(&bin)
        .arg("check")
        .arg(&cfg)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "`ferrogate check` rejects the [filter] deny rule (filter tier, issue #4, not in this build): {}",
            text.trim()
        ));
    }
    Ok(cfg)
}

/// What a scenario changes in the edge nginx's config.
#[derive(Debug, Clone)]
pub struct NginxTuning {
    /// All pinned to PROXY_CPU (taskset); `reuseport` spreads connections.
    pub worker_processes: u32,
    pub worker_connections: u32,
    /// worker_rlimit_nofile; None = 2 x worker_connections, at least 16384.
    pub rlimit_nofile: Option<u64>,
    /// Lines added to the `http` block (e.g. `keepalive_timeout 900s;`).
    pub http_extra: String,
}

impl Default for NginxTuning {
    fn default() -> Self {
        NginxTuning {
            worker_processes: 1,
            worker_connections: 8192,
            rlimit_nofile: None,
            http_extra: String::new(),
        }
    }
}

/// Extra configuration for the kernel proxies (e.g. an HTTPS listener):
/// `nginx` goes inside nginx's `http {}` block, `haproxy` after the plain
/// frontend and backend. ferrogate's goes into its config file instead.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub nginx: String,
    pub haproxy: String,
    /// The first lines of nginx.conf: `load_module` must come before
    /// any block (nginx refuses it later).
    pub nginx_top: String,
    /// Top level of nginx.conf after the `http {}` block (e.g. `stream {}`).
    pub nginx_main: String,
}

/// `extra.nginx` goes at the end of the `http` block (e.g. an HTTPS
/// server), `nginx_top` first in the file, `nginx_main` after `http {}`.
fn nginx_conf(lab: &Lab, t: &NginxTuning, extra: &Extra) -> Result<PathBuf> {
    let d = lab.bench_dir().join("nginx");
    std::fs::create_dir_all(&d)?;
    let dd = d.display();
    let wc = t.worker_connections;
    // Every connection is a descriptor (plus the upstream ones).
    let nofile = t.rlimit_nofile.unwrap_or((wc as u64 * 2).max(16384));
    let http_extra = &t.http_extra;
    let wp = t.worker_processes;
    let (top, main) = (&extra.nginx_top, &extra.nginx_main);
    let extra = &extra.nginx;
    let conf = format!(
        "{top}worker_processes {wp};\nuser root;\ndaemon off;\npid {dd}/nginx.pid;\nerror_log {dd}/error.log warn;\n\
         worker_rlimit_nofile {nofile};\n\
         events {{ worker_connections {wc}; }}\n\
         http {{\n  access_log off;\n{http_extra}\n  client_body_temp_path {dd}/body;\n  proxy_temp_path {dd}/proxy;\n\
           fastcgi_temp_path {dd}/fastcgi;\n  uwsgi_temp_path {dd}/uwsgi;\n  scgi_temp_path {dd}/scgi;\n\
           keepalive_requests 1000000;\n\
           upstream origin {{ server {ORIGIN_IP}:8080; keepalive 64; keepalive_requests 1000000; }}\n\
           server {{\n    listen {EDGE_HOST_IP}:80 reuseport backlog=4096;\n    \
             location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }}\n  }}\n{extra}}}\n{main}"
    );
    let p = d.join("nginx.conf");
    std::fs::write(&p, conf)?;
    Ok(p)
}

fn haproxy_conf(lab: &Lab, extra: &str) -> Result<PathBuf> {
    let d = lab.bench_dir();
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\n  pidfile {pid}\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  \
         option http-keep-alive\n  http-reuse always\n  maxconn 8000\n\n\
         frontend fe\n  bind {EDGE_HOST_IP}:80 backlog 4096\n  default_backend be\n\n\
         backend be\n  server origin {ORIGIN_IP}:8080\n{extra}",
        pid = d.join("haproxy.pid").display()
    );
    let p = d.join("haproxy.cfg");
    std::fs::write(&p, conf)?;
    Ok(p)
}

fn wait_http(lab: &Lab, url: &str, proc: &mut Option<Proc>, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if lab
            .exec(
                "client",
                &["curl", "-sf", "-m", "1", "-o", "/dev/null", url],
            )
            .is_ok()
        {
            return Ok(());
        }
        if let Some(p) = proc.as_mut()
            && let Some(st) = p.exited()
        {
            bail!(
                "{} exited ({st}) before answering; log:\n{}",
                p.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{url} did not answer within 20 s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn cmdline(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts `who` (ferrogate with `fg_config`, default: the plain lab config)
/// and checks it proxies a request to the origin.
pub fn start(lab: &Lab, who: Contender, fg_config: Option<&Path>) -> Result<Running> {
    start_with(lab, who, fg_config, 1, &PROXY_CPU.to_string())
}

/// Like `start`; ferrogate runs `queues` workers under `taskset -c cpus`.
pub fn start_with(
    lab: &Lab,
    who: Contender,
    fg_config: Option<&Path>,
    queues: u32,
    cpus: &str,
) -> Result<Running> {
    start_custom(
        lab,
        who,
        fg_config,
        queues,
        cpus,
        &NginxTuning::default(),
        &Extra::default(),
    )
}

/// Like `start_with`, with nginx configured by `nginx`.
pub fn start_tuned(
    lab: &Lab,
    who: Contender,
    fg_config: Option<&Path>,
    queues: u32,
    cpus: &str,
    nginx: &NginxTuning,
) -> Result<Running> {
    start_custom(lab, who, fg_config, queues, cpus, nginx, &Extra::default())
}

/// Like `start_with`, with `extra` configuration for nginx and HAProxy.
pub fn start_extra(
    lab: &Lab,
    who: Contender,
    fg_config: Option<&Path>,
    queues: u32,
    cpus: &str,
    extra: &Extra,
) -> Result<Running> {
    start_custom(
        lab,
        who,
        fg_config,
        queues,
        cpus,
        &NginxTuning::default(),
        extra,
    )
}

fn start_custom(
    lab: &Lab,
    who: Contender,
    fg_config: Option<&Path>,
    queues: u32,
    cpus: &str,
    nginx: &NginxTuning,
    extra: &Extra,
) -> Result<Running> {
    let log = lab.bench_dir().join(format!("{}.log", who.name()));
    let mut stats_file = None;
    let (proc, command) = match who {
        Contender::Direct => (None, "(none: client → origin 10.77.0.3:8080)".to_string()),
        Contender::Nginx => {
            let conf = nginx_conf(lab, nginx, extra)?;
            let mut c = lab.pinned(
                "edge",
                PROXY_CPU,
                &["nginx", "-c", &conf.display().to_string()],
            );
            let s = cmdline(&c);
            (Some(Proc::spawn("nginx", &mut c, &log)?), s)
        }
        Contender::Haproxy => {
            let conf = haproxy_conf(lab, &extra.haproxy)?;
            let mut c = lab.pinned(
                "edge",
                PROXY_CPU,
                &["haproxy", "-db", "-f", &conf.display().to_string()],
            );
            let s = cmdline(&c);
            (Some(Proc::spawn("haproxy", &mut c, &log)?), s)
        }
        Contender::Ferrogate => {
            let cfg = match fg_config {
                Some(p) => p.to_path_buf(),
                None => ferrogate_config(lab, "")?,
            };
            let sf = lab.bench_dir().join("ferrogate.stats");
            let _ = std::fs::remove_file(&sf);
            let mut c = Command::new("taskset");
            let q = queues.to_string();
            c.args(["-c", cpus])
                .arg(ferrogate_bin()?)
                .args(["run", "--config"])
                .arg(&cfg)
                .args([
                    "--netns",
                    &lab.ns("edge"),
                    "--queues",
                    &q,
                    "--backend",
                    "af_xdp",
                    "--stats-file",
                ])
                .arg(&sf)
                // Per-lab sockets and state: benches may run side by side.
                .arg("--admin-socket")
                .arg(lab.bench_dir().join("admin.sock"))
                .arg("--state-dir")
                .arg(lab.bench_dir().join("state"))
                .env("RUST_LOG", "info");
            let s = cmdline(&c);
            stats_file = Some(sf);
            (Some(Proc::spawn("ferrogate", &mut c, &log)?), s)
        }
    };
    let mut proc = proc;
    let base = format!("http://{}", who.addr());
    wait_http(lab, &format!("{base}/"), &mut proc, &log)?;
    // The answer must come from the origin through the proxy.
    let body = lab.exec("client", &["curl", "-sS", "-m", "3", &format!("{base}/")])?;
    if !body.contains("origin 10.77.0.3:8080") {
        bail!(
            "{} answered / with {body:?}, not the origin's body",
            who.name()
        );
    }
    if let Some(sf) = &stats_file {
        let deadline = Instant::now() + Duration::from_secs(3);
        while env::read_stats(sf).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Running {
        who,
        proc,
        stats_file,
        command,
    })
}

impl Running {
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        self.stats_file
            .as_deref()
            .map(env::read_stats)
            .unwrap_or_default()
    }
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// A drop rule for the flood's sources in the edge namespace; removed on drop.
pub struct Firewall<'a> {
    lab: &'a Lab,
    kind: FwKind,
    pub command: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwKind {
    Iptables,
    Nft,
}

const NFT_TABLE: &str = "fbflood";

impl<'a> Firewall<'a> {
    pub fn install(lab: &'a Lab, kind: FwKind, cidr: &str) -> Result<Firewall<'a>> {
        let command = match kind {
            FwKind::Iptables => {
                let argv = [
                    "iptables",
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-s",
                    cidr,
                    "-j",
                    "DROP",
                ];
                lab.exec("edge", &argv)?;
                argv.join(" ")
            }
            FwKind::Nft => {
                let script = format!(
                    "table netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook ingress device \"eth0\" priority -500;\n    ip saddr {cidr} counter drop\n  }}\n}}\n"
                );
                let f = lab.bench_dir().join("flood.nft");
                std::fs::write(&f, &script)?;
                let f = f.display().to_string();
                lab.exec("edge", &["nft", "-f", &f])?;
                format!("nft -f {f}  # {}", script.replace('\n', " "))
            }
        };
        Ok(Firewall { lab, kind, command })
    }

    /// Packets the rule dropped so far.
    pub fn dropped(&self) -> u64 {
        match self.kind {
            FwKind::Iptables => self
                .lab
                .exec(
                    "edge",
                    &[
                        "iptables",
                        "-t",
                        "raw",
                        "-L",
                        "PREROUTING",
                        "-v",
                        "-x",
                        "-n",
                    ],
                )
                .ok()
                .and_then(|o| {
                    o.lines()
                        .find(|l| l.contains("DROP"))
                        .and_then(|l| l.split_whitespace().next().and_then(|x| x.parse().ok()))
                })
                .unwrap_or(0),
            FwKind::Nft => self
                .lab
                .exec("edge", &["nft", "list", "table", "netdev", NFT_TABLE])
                .ok()
                .and_then(|o| {
                    let i = o.find("counter packets ")? + 16;
                    o[i..].split_whitespace().next()?.parse().ok()
                })
                .unwrap_or(0),
        }
    }
}

impl Drop for Firewall<'_> {
    fn drop(&mut self) {
        let _ = match self.kind {
            FwKind::Iptables => self
                .lab
                .exec("edge", &["iptables", "-t", "raw", "-F", "PREROUTING"]),
            FwKind::Nft => self
                .lab
                .exec("edge", &["nft", "delete", "table", "netdev", NFT_TABLE]),
        };
    }
}
