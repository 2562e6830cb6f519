//! ferrogate-bench: side-by-side benchmarks of ferrogate against kernel
//! baselines (nginx, HAProxy, iptables, nftables) on the lab, with an own
//! packet generator and an own open-loop HTTP client. See bench/README.md.

mod attack;
mod cache;
mod ceiling;
mod contenders;
mod env;
mod h2;
mod h3;
mod h3load;
mod handshake;
mod idle;
mod l4;
mod l4gen;
mod loadgen;
mod loopback;
mod loss;
mod measure;
mod pktgen;
mod plugins;
mod report;
mod scenarios;
mod soak;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferrogate-bench",
    about = "ferrogate vs nginx / HAProxy / iptables / nftables on the lab"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Alternating rounds (every contender once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds before each contender's measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// CI mode: 1 round, 1 s, no warm-up, low fixed rates; fails only when a
    /// contender returns errors or nothing.
    #[arg(long)]
    smoke: bool,
    /// Client connections (wrk -c, loadgen --conns; l4: tcp-conn loops
    /// and UDP client sockets).
    #[arg(long, default_value_t = 50)]
    conns: u32,
    /// Lab prefix (namespaces <prefix>client, ...).
    #[arg(long, default_value = "fb-")]
    prefix: String,
    /// Where reports go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// http-latency: fixed request rate (default: 50 % of nginx's saturation).
    #[arg(long)]
    rate: Option<u64>,
    /// flood: packets/s (0 = as fast as the generator goes); goodput-under-flood default 200000.
    #[arg(long)]
    flood_rate: Option<u64>,
    /// flood: packet count bound per measurement (0 = duration only).
    #[arg(long, default_value_t = 0)]
    flood_count: u64,
    #[arg(long, value_enum, default_value = "syn")]
    template: pktgen::Template,
    #[arg(long, default_value = "198.18.0.0/15")]
    src_cidr: String,
    /// CPU the generator is pinned to.
    #[arg(long, default_value_t = env::LOAD_CPU)]
    gen_cpu: usize,
    /// idle: connections held open (default 100000; 2000 with --smoke).
    #[arg(long)]
    idle_conns: Option<usize>,
    /// idle: ferrogate's engine.tcp_buffer (issue #15 measured 16384).
    #[arg(long, default_value_t = 16384)]
    tcp_buffer: usize,
    /// cache: distinct keys per body size (default 10000; 500 with --smoke).
    #[arg(long)]
    cache_keys: Option<usize>,
    /// cache: leave HAProxy's `cache` out (ferrogate vs nginx only).
    #[arg(long)]
    cache_no_haproxy: bool,
    /// cache: the offload rows' cache budget, in % of the keys (each
    /// contender starts cold, the same Zipf run for --seconds, origin
    /// requests counted at the origin); 0 leaves the offload rows out.
    #[arg(long, default_value_t = 10.0)]
    offload_budget_pct: f64,
    /// cache: seconds of each offload run (longer than --seconds: nginx's
    /// cache manager enforces `max_size` only when it wakes, every 10 s
    /// at most, so a short run measures nginx without its budget).
    #[arg(long, default_value_t = 40)]
    offload_seconds: u64,
}

/// `soak`: the common options plus its own.
#[derive(clap::Args, Debug, Clone)]
struct SoakCli {
    #[command(flatten)]
    common: Common,
    /// Run time in minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Run time in seconds instead of --minutes.
    #[arg(long)]
    soak_seconds: Option<u64>,
    /// One report row (and one load-tool chunk) per this many seconds.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
    /// A `ctl apply` (alternating two configs) every this many seconds.
    #[arg(long, default_value_t = 10)]
    apply_every_secs: u64,
    /// The pool's second origin goes down and comes back within this period.
    #[arg(long, default_value_t = 20)]
    flap_every_secs: u64,
    /// Denied-source flood rate (packets/s).
    #[arg(long, default_value_t = 5000)]
    flood_pps: u64,
    /// The pool without health checks, ejection or retries: the flapping
    /// origin then fails requests (shows that the soak counts failures).
    #[arg(long)]
    unprotected: bool,
}

/// `loss`: the common options plus the matrix.
#[derive(clap::Args, Debug, Clone)]
struct LossCli {
    #[command(flatten)]
    common: Common,
    /// Loss in % on each direction of the client link (the same P on
    /// data and ACKs).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.5, 1.0, 3.0])]
    loss: Vec<f64>,
    /// Round-trip times in ms added on the client link (delay RTT/2 each way).
    #[arg(long, value_delimiter = ',', default_values_t = [10u64, 50, 150])]
    rtt: Vec<u64>,
    /// Download sizes (k, m: KiB, MiB).
    #[arg(long, value_delimiter = ',', default_value = "64k,1m,10m")]
    sizes: Vec<String>,
    /// Transfers per contender, size and cell: `SIZE=N,…` (default by
    /// size: ≤ 64 KiB 30, ≤ 1 MiB 8, larger 3).
    #[arg(long, default_value = "")]
    reps: String,
    /// curl --max-time in seconds: `SIZE=S,…` (default by size: ≤ 64 KiB
    /// 15, ≤ 1 MiB 30, larger 60); a transfer not done by then failed.
    #[arg(long, default_value = "")]
    max_time: String,
    /// Seconds per cell (all sizes, both contenders): no new pair of
    /// transfers starts when the last pair would not fit any more.
    #[arg(long, default_value_t = 200)]
    cell_budget: u64,
    /// The upload row's loss (%) and RTT (ms).
    #[arg(long, default_value_t = 1.0)]
    upload_loss: f64,
    #[arg(long, default_value_t = 50)]
    upload_rtt: u64,
    /// The upload row's size and transfers per contender.
    #[arg(long, default_value = "1m")]
    upload_size: String,
    #[arg(long, default_value_t = 8)]
    upload_reps: usize,
    /// No upload row.
    #[arg(long)]
    no_upload: bool,
    /// ferrogate's engine.tcp_buffer (default: the lab config's, 64 KiB).
    #[arg(long)]
    fg_tcp_buffer: Option<usize>,
    /// ferrogate with `engine.tcp_timestamps = false` (for a before/after
    /// of RFC 7323 timestamps in one build).
    #[arg(long)]
    fg_no_timestamps: bool,
    /// nginx's congestion control (the edge namespace's default; `keep`:
    /// leave the namespace's, which is the host's default).
    #[arg(long, default_value = "cubic")]
    kernel_cc: String,
}

impl LossCli {
    /// The matrix; `--smoke`: one cell (1 %, 10 ms), 64k and 1m, 3
    /// transfers each, and the upload row in the same cell.
    fn opts(&self) -> Result<loss::Opts> {
        let reps = loss::per_size(&self.reps)?;
        let max_time = loss::per_size(&self.max_time)?;
        let mk = |name: &str, n: Option<usize>| -> Result<loss::Size> {
            let b = loss::parse_size(name)?;
            loss::size(
                name,
                n.or(loss::lookup(&reps, b).map(|v| v as usize)),
                loss::lookup(&max_time, b),
            )
        };
        if self.common.smoke {
            return Ok(loss::Opts {
                loss_pct: vec![1.0],
                rtt_ms: vec![10],
                sizes: vec![mk("64k", Some(3))?, mk("1m", Some(3))?],
                cell_budget: std::time::Duration::from_secs(120),
                upload: Some(loss::Upload {
                    loss_pct: 1.0,
                    rtt_ms: 10,
                    size: mk(&self.upload_size, Some(3))?,
                }),
                fg_tcp_buffer: self.fg_tcp_buffer,
                fg_no_timestamps: self.fg_no_timestamps,
                kernel_cc: self.kernel_cc.clone(),
            });
        }
        if self.loss.iter().any(|p| !(0.0..=100.0).contains(p)) {
            bail!("--loss: percentages in 0..=100");
        }
        Ok(loss::Opts {
            loss_pct: self.loss.clone(),
            rtt_ms: self.rtt.clone(),
            sizes: self
                .sizes
                .iter()
                .map(|s| mk(s, None))
                .collect::<Result<_>>()?,
            cell_budget: std::time::Duration::from_secs(self.cell_budget.max(1)),
            upload: (!self.no_upload)
                .then(|| -> Result<loss::Upload> {
                    Ok(loss::Upload {
                        loss_pct: self.upload_loss,
                        rtt_ms: self.upload_rtt,
                        size: mk(&self.upload_size, Some(self.upload_reps))?,
                    })
                })
                .transpose()?,
            fg_tcp_buffer: self.fg_tcp_buffer,
            fg_no_timestamps: self.fg_no_timestamps,
            kernel_cc: self.kernel_cc.clone(),
        })
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Keep-alive req/s, latency, proxy CPU/request (tiny and 16 KiB bodies).
    Http(Common),
    /// Latency distribution at a fixed request rate (open loop).
    HttpLatency(Common),
    /// New connections per second (`Connection: close`).
    Conn(Common),
    /// Drop rate of a spoofed flood: ferrogate XDP vs iptables raw vs nft ingress.
    Flood(Common),
    /// Legit req/s under a flood, as a fraction of the no-flood figure.
    GoodputUnderFlood(Common),
    /// Memory per idle keep-alive connection (N held) and keep-alive req/s
    /// with N idle vs none: ferrogate vs nginx.
    Idle(Common),
    /// HTTPS keep-alive (TLS 1.3, ECDSA P-256) req/s, latency, proxy CPU/request.
    Https(Common),
    /// New TLS 1.3 handshakes (full, resumed) per second and proxy CPU per
    /// handshake, with the in-process crypto floor.
    TlsHandshake(Common),
    /// HTTP/2 from the client (h2c, prior knowledge): h2load -c 50 -m 10,
    /// req/s, latency, proxy CPU/request (tiny and 16 KiB bodies).
    H2(Common),
    /// HTTP/3 (issue #26): ferrogate over HTTP/3 (`h3-load`), HTTP/2
    /// (h2load) and HTTP/1.1 (h2load --h1), all over TLS 1.3, and Caddy's
    /// HTTP/3 as the reference: req/s, proxy CPU per request (and per GB
    /// with 1 MiB bodies), ratios.
    H3(Common),
    /// Response cache (issue #21): ferrogate's cache vs nginx `proxy_cache`
    /// (and HAProxy `cache`) on port 8083, every key filled first, then
    /// wrk drawing Zipf(1.0) over 10,000 keys (tiny and 16 KiB bodies):
    /// req/s, latency, hit ratio, proxy CPU per hit; then the offload rows:
    /// from a cold cache smaller than the key space, origin requests per
    /// client request.
    Cache(Common),
    /// L4 (issue #17): iperf3 Gbit/s both ways and proxy CPU per GB, TCP
    /// connections/s and CPU per connection (ferrogate, HAProxy `mode tcp`,
    /// nginx `stream`); UDP echoed datagrams/s and CPU per datagram
    /// (ferrogate, nginx `stream` udp).
    L4(Common),
    /// Stability (issue #18): ferrogate alone for --minutes under mixed
    /// HTTP/1.1 (keep-alive and new connections), HTTPS and h2c load, a
    /// denied-source flood, a config apply every 10 s and a flapping
    /// origin; failed requests, RSS, open sockets and pool sizes over time.
    Soak(SoakCli),
    /// TCP over a lossy, long client link (issue #19): downloads of 64 KiB,
    /// 1 MiB, 10 MiB (and a row of 1 MiB uploads) through ferrogate and
    /// nginx, loss 0/0.5/1/3 % x RTT 10/50/150 ms on the lab's impairment
    /// relay; goodput, p50/p99 completion, failures, ratios.
    Loss(LossCli),
    /// One abusive client over a per-source rate limit (issue #20): proxy
    /// CPU per attack request answered 429 (nginx limit_req, ferrogate
    /// L7) and after ferrogate escalates it into the XDP deny set.
    Attack(Common),
    /// proxy-wasm plugins (issue #22): proxy CPU per request with the
    /// AssemblyScript header adder on the listener vs without, alternating,
    /// their difference, and the plugin's memory per worker.
    Plugins(Common),
    /// Every scenario, one lab (not `soak`, not `loss`).
    All(Common),
    /// ferrogate alone: req/s with 1 and 2 workers (2-queue lab), and
    /// latency at 100 req/s per polling mode (busy, adaptive, interrupt).
    Scale(Common),
    /// The engine's own cost per request with no kernel in the path: the real
    /// engine on an in-memory port, a userspace peer (clients + origin) on the
    /// other CPU. Needs no root and no lab.
    Ceiling(Common),
    /// The packet generator alone (run it inside a namespace; prints JSON).
    Gen(pktgen::GenArgs),
    /// The open-loop HTTP client alone (prints JSON).
    Loadgen(loadgen::LoadArgs),
    /// The idle scenario's holder (run inside the client namespace): opens
    /// N keep-alive connections, one request each, and holds them.
    IdleClient(idle::ClientArgs),
    /// The TLS handshake client alone (prints JSON).
    TlsClient(handshake::ClientArgs),
    /// The server-side CPU of TLS 1.3 handshakes in memory (prints JSON).
    TlsFloor(handshake::FloorArgs),
    /// The l4 scenario's origin (run it in the origin namespace): a TCP
    /// line echo that closes after the answer, and a UDP echo.
    L4Origin(l4gen::OriginArgs),
    /// N loops of connect, one line, its echo to EOF, close (prints JSON).
    TcpConnClient(l4gen::TcpConnArgs),
    /// UDP echo client: N sockets with a window of numbered datagrams each
    /// (prints JSON: datagrams/s, loss, RTT percentiles).
    UdpClient(l4gen::UdpArgs),
    /// The closed-loop HTTP/3 client alone (run it inside the client
    /// namespace; prints JSON).
    H3Load(h3load::H3LoadArgs),
}

fn meta() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let first = |s: String| s.lines().next().unwrap_or("").to_string();
    m.insert("kernel".into(), env::probe(&["uname", "-r"]));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|x| x.1.trim().to_string()))
        .unwrap_or_default();
    m.insert("cpu model".into(), cpu);
    m.insert("online cpus".into(), env::probe(&["nproc"]));
    m.insert("nginx".into(), env::probe(&["nginx", "-v"]));
    m.insert("haproxy".into(), first(env::probe(&["haproxy", "-v"])));
    m.insert("wrk".into(), first(env::probe(&["wrk", "-v"])));
    m.insert("h2load".into(), first(env::probe(&["h2load", "--version"])));
    m.insert("iperf3".into(), first(env::probe(&["iperf3", "--version"])));
    m.insert("openssl".into(), env::probe(&["openssl", "version"]));
    m.insert("iptables".into(), env::probe(&["iptables", "-V"]));
    m.insert("nft".into(), env::probe(&["nft", "-v"]));
    let ws = contenders::workspace();
    m.insert(
        "ferrogate commit".into(),
        env::probe(&[
            "git",
            "-C",
            &ws.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ]),
    );
    m.insert(
        "bench command".into(),
        std::env::args().collect::<Vec<_>>().join(" "),
    );
    m
}

/// The standalone tools' output: one JSON line on stdout.
fn print_json(r: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Gen(a) => return print_json(&pktgen::run(a)?),
        Cmd::Loadgen(a) => return print_json(&loadgen::run(a)?),
        Cmd::IdleClient(a) => return idle::run_client(a),
        Cmd::TlsClient(a) => return print_json(&handshake::run_client(a)?),
        Cmd::TlsFloor(a) => return print_json(&handshake::run_floor(a)?),
        Cmd::L4Origin(a) => return l4gen::run_origin(a),
        Cmd::TcpConnClient(a) => return print_json(&l4gen::run_tcp_conn(a)?),
        Cmd::UdpClient(a) => return print_json(&l4gen::run_udp(a)?),
        Cmd::H3Load(a) => return print_json(&h3load::run(a)?),
        Cmd::Ceiling(c) => {
            let o = ceiling::Opts {
                rounds: if c.smoke { 1 } else { c.rounds.max(1) },
                seconds: if c.smoke { 1 } else { c.seconds.max(1) },
                warmup: if c.smoke { 0 } else { c.warmup },
                conns: c.conns,
                smoke: c.smoke,
            };
            let mut rep = ceiling::run(&o, meta())?;
            let out = c
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
            let files = rep.write(&out)?;
            println!("== ceiling");
            print!(
                "{}",
                rep.markdown().split("## Settings").next().unwrap_or("")
            );
            for f in files {
                println!("wrote {}", f.display());
            }
            let failures = rep.failures();
            if !failures.is_empty() {
                bail!("ceiling: {}", failures.join("\n"));
            }
            return Ok(());
        }
        _ => {}
    }
    let cli = match &cli.cmd {
        Cmd::Http(c)
        | Cmd::HttpLatency(c)
        | Cmd::Conn(c)
        | Cmd::Flood(c)
        | Cmd::GoodputUnderFlood(c)
        | Cmd::Scale(c)
        | Cmd::Idle(c)
        | Cmd::Https(c)
        | Cmd::TlsHandshake(c)
        | Cmd::H2(c)
        | Cmd::H3(c)
        | Cmd::Cache(c)
        | Cmd::L4(c)
        | Cmd::Attack(c)
        | Cmd::Plugins(c)
        | Cmd::All(c) => (c.clone(), &cli.cmd),
        Cmd::Soak(s) => (s.common.clone(), &cli.cmd),
        Cmd::Loss(l) => (l.common.clone(), &cli.cmd),
        Cmd::Gen(_)
        | Cmd::Loadgen(_)
        | Cmd::Ceiling(_)
        | Cmd::IdleClient(_)
        | Cmd::TlsClient(_)
        | Cmd::TlsFloor(_)
        | Cmd::L4Origin(_)
        | Cmd::TcpConnClient(_)
        | Cmd::UdpClient(_)
        | Cmd::H3Load(_) => unreachable!(),
    };
    let (cli, cmd) = cli;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("ferrogate-bench needs root (network namespaces, XDP, iptables)");
    }
    let opts = scenarios::Opts {
        rounds: if cli.smoke { 1 } else { cli.rounds.max(1) },
        seconds: if cli.smoke { 1 } else { cli.seconds.max(1) },
        warmup: if cli.smoke { 0 } else { cli.warmup },
        smoke: cli.smoke,
        conns: cli.conns,
        out: cli
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")),
        rate: cli.rate,
        flood_rate: cli.flood_rate.unwrap_or(if cli.smoke { 20_000 } else { 0 }),
        flood_count: cli.flood_count,
        template: cli.template,
        src_cidr: cli.src_cidr.clone(),
        gen_cpu: cli.gen_cpu,
        idle_conns: cli
            .idle_conns
            .unwrap_or(if cli.smoke { 2000 } else { 100_000 }),
        tcp_buffer: cli.tcp_buffer,
        cache_keys: cli
            .cache_keys
            .unwrap_or(if cli.smoke { 500 } else { 10_000 }),
        cache_haproxy: !cli.cache_no_haproxy,
        offload_budget_pct: cli.offload_budget_pct.clamp(0.0, 100.0),
        offload_seconds: if cli.smoke {
            1
        } else {
            cli.offload_seconds.max(1)
        },
        soak: match cmd {
            Cmd::Soak(s) => soak::Opts {
                duration: std::time::Duration::from_secs(
                    s.soak_seconds
                        .unwrap_or((s.minutes * 60.0).round() as u64)
                        .max(10),
                ),
                sample: std::time::Duration::from_secs(s.sample_secs.max(1)),
                apply_every: std::time::Duration::from_secs(s.apply_every_secs.max(1)),
                flap_every: std::time::Duration::from_secs(s.flap_every_secs.max(2)),
                flood_pps: s.flood_pps,
                unprotected: s.unprotected,
            },
            _ => soak::Opts::default(),
        },
        loss: match cmd {
            Cmd::Loss(l) => l.opts()?,
            _ => loss::Opts::default(),
        },
    };
    env::install_cleanup_handlers()?;
    let bin = contenders::ferrogate_bin()?;
    let queues = if matches!(cmd, Cmd::Scale(_)) { 2 } else { 1 };
    let lab = match cmd {
        // The client link through the impairment relay from the start,
        // unimpaired until the first cell (`lab impair` changes it).
        Cmd::Loss(_) => env::Lab::up_impaired(
            &bin,
            &cli.prefix,
            queues,
            &["client:limit=16384".to_string()],
        )?,
        _ => env::Lab::up(&bin, &cli.prefix, queues)?,
    };
    let mut meta = meta();
    let napi = lab
        .exec("edge", &["cat", "/sys/class/net/eth0/threaded"])
        .unwrap_or_else(|e| format!("{e:#}"));
    let rps = lab
        .exec("edge", &["cat", "/sys/class/net/eth0/queues/rx-0/rps_cpus"])
        .unwrap_or_default();
    meta.insert(
        "threaded NAPI / RPS".into(),
        format!(
            "edge eth0 threaded={} rps_cpus={} (kernel defaults, the same for every contender)",
            napi.trim(),
            rps.trim()
        ),
    );
    let ctx = scenarios::Ctx { lab, opts, meta };
    type Scenario = fn(&scenarios::Ctx) -> Result<report::Report>;
    let list: Vec<(&str, Scenario)> = match cmd {
        Cmd::Http(_) => vec![("http", scenarios::http)],
        Cmd::HttpLatency(_) => vec![("http-latency", scenarios::http_latency)],
        Cmd::Conn(_) => vec![("conn", scenarios::conn)],
        Cmd::Flood(_) => vec![("flood", scenarios::flood)],
        Cmd::GoodputUnderFlood(_) => vec![("goodput-under-flood", scenarios::goodput)],
        Cmd::Scale(_) => vec![("scale", scenarios::scale)],
        Cmd::Idle(_) => vec![("idle", idle::scenario)],
        Cmd::Https(_) => vec![("https", tls::https)],
        Cmd::TlsHandshake(_) => vec![("tls-handshake", tls::handshake)],
        Cmd::H2(_) => vec![("h2", h2::scenario)],
        Cmd::H3(_) => vec![("h3", h3::scenario)],
        Cmd::Cache(_) => vec![("cache", cache::scenario)],
        Cmd::L4(_) => vec![("l4", l4::scenario)],
        Cmd::Attack(_) => vec![("attack", attack::scenario)],
        Cmd::Plugins(_) => vec![("plugins", plugins::scenario)],
        Cmd::Soak(_) => vec![("soak", soak::scenario)],
        Cmd::Loss(_) => vec![("loss", loss::scenario)],
        Cmd::All(_) => vec![
            ("http", scenarios::http),
            ("http-latency", scenarios::http_latency),
            ("conn", scenarios::conn),
            ("flood", scenarios::flood),
            ("goodput-under-flood", scenarios::goodput),
            ("idle", idle::scenario),
            ("https", tls::https),
            ("tls-handshake", tls::handshake),
            ("h2", h2::scenario),
            ("cache", cache::scenario),
            ("l4", l4::scenario),
        ],
        Cmd::Gen(_)
        | Cmd::Loadgen(_)
        | Cmd::Ceiling(_)
        | Cmd::IdleClient(_)
        | Cmd::TlsClient(_)
        | Cmd::TlsFloor(_)
        | Cmd::L4Origin(_)
        | Cmd::TcpConnClient(_)
        | Cmd::UdpClient(_)
        | Cmd::H3Load(_) => unreachable!(),
    };
    let mut failures = Vec::new();
    let mut ctx = ctx;
    for (name, f) in list {
        if name == "goodput-under-flood" && cli.flood_rate.is_none() && !cli.smoke {
            ctx.opts.flood_rate = 200_000;
        }
        let mut rep = match f(&ctx) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        let files = rep.write(&ctx.opts.out)?;
        println!("== {name}");
        print!(
            "{}",
            rep.markdown().split("## Settings").next().unwrap_or("")
        );
        for f in files {
            println!("wrote {}", f.display());
        }
        failures.extend(rep.failures().into_iter().map(|x| format!("{name}: {x}")));
    }
    drop(ctx);
    if !failures.is_empty() {
        bail!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
