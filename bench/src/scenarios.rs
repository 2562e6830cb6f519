//! The scenarios. Each round runs every contender once, in the same order
//! (A B C A B C …); a contender is started for its turn and stopped after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::contenders::{self, Contender, Firewall, FwKind, Running};
use crate::env::{self, LOAD_CPU, Lab, PROXY_CPU, VIP};
use crate::measure::{self, Metrics};
use crate::pktgen::{GenArgs, Template};
use crate::report::{Report, Sample, col};

#[derive(Debug, Clone)]
pub struct Opts {
    pub rounds: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub smoke: bool,
    pub conns: u32,
    pub out: PathBuf,
    pub rate: Option<u64>,
    pub flood_rate: u64,
    pub flood_count: u64,
    pub template: Template,
    pub src_cidr: String,
    pub gen_cpu: usize,
    /// idle: connections held open.
    pub idle_conns: usize,
    /// idle: ferrogate's `engine.tcp_buffer`.
    pub tcp_buffer: usize,
    /// cache: distinct keys per body size.
    pub cache_keys: usize,
    /// cache: HAProxy's `cache` takes part.
    pub cache_haproxy: bool,
    /// cache: the offload rows' budget in % of the keys (0: no offload rows).
    pub offload_budget_pct: f64,
    /// cache: seconds of each offload run.
    pub offload_seconds: u64,
    /// soak: its own options.
    pub soak: crate::soak::Opts,
    /// loss: the matrix.
    pub loss: crate::loss::Opts,
}

pub struct Ctx {
    pub lab: Lab,
    pub opts: Opts,
    pub meta: BTreeMap<String, String>,
}

const HTTP_CONTENDERS: [Contender; 4] = [
    Contender::Direct,
    Contender::Ferrogate,
    Contender::Nginx,
    Contender::Haproxy,
];

pub(crate) fn settings(ctx: &Ctx, r: &mut Report) {
    let o = &ctx.opts;
    for (k, v) in [
        ("rounds", o.rounds.to_string()),
        ("seconds per measurement", o.seconds.to_string()),
        ("warm-up seconds per contender turn", o.warmup.to_string()),
        ("smoke", o.smoke.to_string()),
        ("client connections", o.conns.to_string()),
        ("client, origin, generator CPU", LOAD_CPU.to_string()),
        ("proxy CPU (every contender)", PROXY_CPU.to_string()),
        ("lab prefix", ctx.lab.prefix.clone()),
    ] {
        r.settings.insert(k.into(), v);
    }
}

pub(crate) fn sample(
    variant: &str,
    who: &str,
    round: usize,
    m: Metrics,
    cmds: Vec<String>,
    err: Option<String>,
) -> Sample {
    Sample {
        variant: variant.into(),
        contender: who.into(),
        round,
        metrics: m,
        commands: cmds,
        error: err,
    }
}

/// The sample of a measurement that failed: no metrics, the command it
/// ran, the error.
pub(crate) fn failed_sample(
    variant: &str,
    who: &str,
    round: usize,
    command: &str,
    e: &anyhow::Error,
) -> Sample {
    sample(
        variant,
        who,
        round,
        Metrics::new(),
        vec![command.to_string()],
        Some(format!("{e:#}")),
    )
}

/// One closed-loop wrk measurement against a running contender.
pub(crate) fn wrk_turn(
    ctx: &Ctx,
    run: &Running,
    path: &str,
    header: Option<&str>,
) -> Result<(Metrics, Vec<String>)> {
    let url = format!("http://{}{path}", run.who.addr());
    wrk_turn_url(ctx, run, &url, header)
}

/// `wrk_turn` on a full URL (e.g. https://…).
pub(crate) fn wrk_turn_url(
    ctx: &Ctx,
    run: &Running,
    url: &str,
    header: Option<&str>,
) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    if o.warmup > 0 {
        measure::wrk(&ctx.lab, url, o.warmup, o.conns, header)?;
    }
    let w = measure::window_start(&ctx.lab, run);
    let (mut m, cmd) = measure::wrk(&ctx.lab, url, o.seconds, o.conns, header)?;
    let n = m["requests"];
    measure::window_end(w, run, n, &mut m);
    measure::check_http(run.who.name(), &m, "requests")?;
    Ok((m, vec![run.command.clone(), cmd]))
}

pub(crate) const CPU_NOTE: &str = "proxy µs/op: nginx/HAProxy = utime+stime of their processes (tick-based; includes softirq run in their context, e.g. the veth transmit of what they send); ferrogate = workers_busy_ns (loop iterations that moved frames, wall time, including its own syscalls such as the TX kick that runs the veth transmit). For every contender the receive-side work of frames sent *to* it runs on the sender's CPU (CPU0, client/origin), not on CPU1. `CPU1 µs/op` = all non-idle time of the proxy core from /proc/stat (includes ferrogate's busy-polling and any softirq landing there): an upper bound that treats every contender the same.";

pub fn http(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("http", ctx.meta.clone());
    settings(ctx, &mut r);
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("p999_us", "p99.9 ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
    ];
    r.ratios = vec![
        ratio("rps", "req/s vs nginx", "nginx"),
        ratio("proxy_us_per_op", "proxy CPU vs nginx", "nginx"),
    ];
    r.plots = vec![
        ("rps".into(), "http: requests/s (median, min–max)".into()),
        ("p99_us".into(), "http: p99 latency µs (wrk)".into()),
        (
            "proxy_us_per_op".into(),
            "http: proxy CPU µs per request".into(),
        ),
    ];
    r.notes.push(CPU_NOTE.into());
    r.notes.push("wrk is closed-loop: its latencies are at saturation and not corrected for coordinated omission; see http-latency for fixed-rate latency.".into());
    let bodies = [("tiny", "/"), ("16k", "/16k")];
    for round in 0..ctx.opts.rounds {
        for who in HTTP_CONTENDERS {
            eprintln!("http round {round}: {}", who.name());
            match contenders::start(&ctx.lab, who, None) {
                Err(e) => {
                    for (v, _) in bodies {
                        r.samples.push(sample(
                            v,
                            who.name(),
                            round,
                            Metrics::new(),
                            vec![],
                            Some(format!("{e:#}")),
                        ));
                    }
                }
                Ok(mut run) => {
                    for (v, path) in bodies {
                        let s = match wrk_turn(ctx, &run, path, None) {
                            Ok((m, c)) => sample(v, who.name(), round, m, c, None),
                            Err(e) => failed_sample(v, who.name(), round, &run.command, &e),
                        };
                        r.samples.push(s);
                    }
                    run.stop();
                }
            }
        }
    }
    Ok(r)
}

pub(crate) fn ratio(key: &str, label: &str, baseline: &str) -> crate::report::Ratio {
    crate::report::Ratio {
        key: key.into(),
        label: label.into(),
        baseline: baseline.into(),
    }
}

pub fn conn(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("conn", ctx.meta.clone());
    settings(ctx, &mut r);
    r.columns = vec![
        col("rps", "conn/s", 1.0),
        col("p99_us", "p99 ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/conn", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/conn", 1.0),
        col("socket_errors", "socket errors", 1.0),
    ];
    r.ratios = vec![
        ratio("rps", "conn/s vs nginx", "nginx"),
        ratio("proxy_us_per_op", "proxy CPU vs nginx", "nginx"),
    ];
    r.plots = vec![(
        "rps".into(),
        "conn: new connections/s (one request each)".into(),
    )];
    r.notes.push("Every request carries `Connection: close`: one TCP connection per request (wrk reconnects). Proxies keep upstream connections alive.".into());
    r.notes.push(CPU_NOTE.into());
    for round in 0..ctx.opts.rounds {
        for who in HTTP_CONTENDERS {
            eprintln!("conn round {round}: {}", who.name());
            let s = contenders::start(&ctx.lab, who, None).and_then(|mut run| {
                let x = wrk_turn(ctx, &run, "/", Some("Connection: close"));
                run.stop();
                x
            });
            r.samples.push(match s {
                Ok((m, c)) => sample("close", who.name(), round, m, c, None),
                Err(e) => sample(
                    "close",
                    who.name(),
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    Ok(r)
}

pub fn http_latency(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("http-latency", ctx.meta.clone());
    settings(ctx, &mut r);
    let o = &ctx.opts;
    let rate = match (o.rate, o.smoke) {
        (Some(x), _) => x,
        (None, true) => 1000,
        (None, false) => {
            eprintln!("http-latency: calibrating: nginx saturation");
            let mut run = contenders::start(&ctx.lab, Contender::Nginx, None)?;
            let (m, _) = wrk_turn(ctx, &run, "/", None)?;
            run.stop();
            let x = (m["rps"] * 0.5) as u64;
            r.notes.push(format!(
                "rate = 50 % of nginx's saturation measured just before ({:.0} req/s)",
                m["rps"]
            ));
            x
        }
    };
    r.settings
        .insert("fixed rate (req/s)".into(), rate.to_string());
    r.columns = vec![
        col("achieved_rps", "req/s done", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p90_us", "p90 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("p999_us", "p99.9 ms", 1e-3),
        col("added_p99_us", "added p99 vs direct ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
    ];
    r.ratios = vec![ratio("added_p99_us", "added p99 vs nginx", "nginx")];
    r.plots = vec![
        (
            "p99_us".into(),
            format!("http-latency: p99 µs at {rate} req/s (open loop, CO-corrected)"),
        ),
        (
            "p999_us".into(),
            format!("http-latency: p99.9 µs at {rate} req/s"),
        ),
    ];
    r.notes.push("Own open-loop client (`ferrogate-bench loadgen`): requests scheduled at fixed intervals over N keep-alive connections, latency measured from the scheduled send time (coordinated-omission corrected), HDR histogram (3 significant digits). `uncorrected_p99_us` in the JSON is the closed-loop view.".into());
    r.notes.push("ferrogate runs twice per round: `ferrogate` with the lab's adaptive polling (spins 50 µs, then sleeps on the AF_XDP socket and its hand-off eventfd) and `ferrogate busy` (spins the whole core).".into());
    let busy_cfg = contenders::ferrogate_config_tuned(
        &ctx.lab,
        1,
        &crate::env::PROXY_CPU.to_string(),
        "\n[numa.node.0]\npolling = \"busy\"\n",
        "ferrogate-busy.toml",
    )?;
    let turns: Vec<(String, Contender, Option<&std::path::Path>)> = HTTP_CONTENDERS
        .iter()
        .flat_map(|&who| {
            let mut t = vec![(who.name().to_string(), who, None)];
            if who == Contender::Ferrogate {
                t.push(("ferrogate busy".to_string(), who, Some(busy_cfg.as_path())));
            }
            t
        })
        .collect();
    let secs = o.seconds as f64;
    for round in 0..o.rounds {
        let mut direct_p99 = None;
        let first = r.samples.len();
        for (name, who, cfg) in &turns {
            let (name, who) = (name.as_str(), *who);
            eprintln!("http-latency round {round}: {name}");
            let s = contenders::start(&ctx.lab, who, *cfg).and_then(|mut run| {
                let addr = who.addr();
                if o.warmup > 0 {
                    measure::loadgen(
                        &ctx.lab,
                        &addr,
                        "/",
                        rate,
                        o.warmup as f64,
                        o.conns as usize,
                    )?;
                }
                let w = measure::window_start(&ctx.lab, &run);
                let (mut m, cmd) =
                    measure::loadgen(&ctx.lab, &addr, "/", rate, secs, o.conns as usize)?;
                let n = m["completed"];
                measure::window_end(w, &run, n, &mut m);
                run.stop();
                measure::check_http(name, &m, "completed")?;
                if m["unfinished"] > 0.0 {
                    anyhow::bail!("{name}: {} requests unanswered", m["unfinished"]);
                }
                Ok((m, vec![run.command.clone(), cmd]))
            });
            r.samples.push(match s {
                Ok((m, c)) => {
                    if who == Contender::Direct {
                        direct_p99 = Some(m["p99_us"]);
                    }
                    sample("tiny", name, round, m, c, None)
                }
                Err(e) => sample(
                    "tiny",
                    name,
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
        if let Some(d) = direct_p99 {
            for s in &mut r.samples[first..] {
                if s.contender != "direct" && s.error.is_none() {
                    let v = s.metrics["p99_us"] - d;
                    s.metrics.insert("added_p99_us".into(), v);
                }
            }
        }
    }
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dropper {
    Ferrogate,
    Iptables,
    Nft,
}

impl Dropper {
    fn name(self) -> &'static str {
        match self {
            Dropper::Ferrogate => "ferrogate-xdp",
            Dropper::Iptables => "iptables-raw",
            Dropper::Nft => "nft-netdev-ingress",
        }
    }
}

/// The proxy (or nothing) plus the drop rule for one flood turn.
struct DropSetup<'a> {
    run: Option<Running>,
    fw: Option<Firewall<'a>>,
    commands: Vec<String>,
}

fn drop_setup<'a>(
    ctx: &'a Ctx,
    d: Dropper,
    proxy: Option<Contender>,
    fg_cfg: Option<&PathBuf>,
) -> Result<DropSetup<'a>> {
    let mut commands = Vec::new();
    let run = match (d, proxy) {
        (Dropper::Ferrogate, _) => Some(contenders::start(
            &ctx.lab,
            Contender::Ferrogate,
            fg_cfg.map(|p| p.as_path()),
        )?),
        (_, Some(p)) => Some(contenders::start(&ctx.lab, p, None)?),
        _ => None,
    };
    if let Some(r) = &run {
        commands.push(r.command.clone());
    }
    let fw = match d {
        Dropper::Iptables => Some(Firewall::install(
            &ctx.lab,
            FwKind::Iptables,
            &ctx.opts.src_cidr,
        )?),
        Dropper::Nft => Some(Firewall::install(
            &ctx.lab,
            FwKind::Nft,
            &ctx.opts.src_cidr,
        )?),
        Dropper::Ferrogate => None,
    };
    if let Some(f) = &fw {
        commands.push(format!(
            "ip netns exec {} {}",
            ctx.lab.ns("edge"),
            f.command
        ));
    }
    Ok(DropSetup { run, fw, commands })
}

impl DropSetup<'_> {
    fn dropped(&self) -> u64 {
        if let Some(f) = &self.fw {
            return f.dropped();
        }
        self.run
            .as_ref()
            .map(|r| r.stats().get("xdp_drop_deny_packets").copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

fn gen_args(ctx: &Ctx, rate: u64, seconds: f64, count: u64) -> Result<GenArgs> {
    Ok(GenArgs {
        iface: "eth0".into(),
        template: ctx.opts.template,
        dst_mac: ctx.lab.mac("edge")?,
        dst_ip: VIP.parse()?,
        dst_port: 80,
        src_cidr: ctx.opts.src_cidr.clone(),
        rate,
        seconds,
        count,
        batch: 64,
    })
}

const FLOOD_NOTE: &str = "Where the work lands: a veth transmit runs the receiving side (bridge, the edge veth's XDP program or netif_receive → iptables/nft) on the *sending* CPU, in the generator's context. With the generator pinned to CPU0, the drop cost is paid on CPU0, not on the edge's CPU1 (CPU1 stays ~idle, see cpu1_busy_frac). `CPU0 ns/pkt` is therefore generator + bridge + drop; the *differences* between droppers are the drop cost. On a real NIC the drop runs in the NIC queue's softirq on the edge's own core.";

pub fn flood(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("flood", ctx.meta.clone());
    settings(ctx, &mut r);
    let o = &ctx.opts;
    r.settings.insert(
        "template".into(),
        format!("{:?}", o.template).to_lowercase(),
    );
    r.settings
        .insert("spoofed source CIDR".into(), o.src_cidr.clone());
    r.settings
        .insert("generator rate (0 = max)".into(), o.flood_rate.to_string());
    r.settings.insert(
        "generator count bound (0 = none)".into(),
        o.flood_count.to_string(),
    );
    r.settings
        .insert("generator CPU".into(), o.gen_cpu.to_string());
    r.columns = vec![
        col("offered_pps", "offered pps", 1.0),
        col("reached_pps", "reached edge veth pps", 1.0),
        col("dropped_pps", "dropped pps", 1.0),
        col("drop_ratio", "dropped/offered", 1.0),
        col("cpu0_ns_per_pkt", "CPU0 ns/pkt", 1.0),
        col("cpu0_softirq_ns_per_pkt", "CPU0 softirq ns/pkt", 1.0),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
    ];
    r.ratios = vec![
        ratio("dropped_pps", "drop rate vs iptables", "iptables-raw"),
        ratio("cpu0_ns_per_pkt", "ns/pkt vs iptables", "iptables-raw"),
    ];
    r.plots = vec![
        (
            "dropped_pps".into(),
            "flood: packets dropped per second".into(),
        ),
        (
            "cpu0_ns_per_pkt".into(),
            "flood: CPU ns per packet (gen + bridge + drop)".into(),
        ),
    ];
    r.notes.push(FLOOD_NOTE.into());
    r.notes.push("offered = the generator's sendmmsg count; reached = tx packets of the bridge port towards the edge (wire namespace, e-port); dropped = the rule's own counter (iptables -v, nft counter, ferrogate's xdp_drop_deny_packets).".into());
    let fg_cfg = match contenders::ferrogate_filter_available(&ctx.lab) {
        Ok(p) => Some(p),
        Err(e) => {
            r.unavailable.insert(
                "ferrogate-xdp".into(),
                format!("UNAVAILABLE — no number is reported for ferrogate. {e}"),
            );
            None
        }
    };
    let mut droppers = vec![];
    if fg_cfg.is_some() {
        droppers.push(Dropper::Ferrogate);
    }
    droppers.extend([Dropper::Iptables, Dropper::Nft]);
    let secs = o.seconds as f64;
    for round in 0..o.rounds {
        for &d in &droppers {
            eprintln!("flood round {round}: {}", d.name());
            let s = (|| -> Result<(Metrics, Vec<String>)> {
                let setup = drop_setup(ctx, d, None, fg_cfg.as_ref())?;
                let _ = ctx
                    .lab
                    .exec("client", &["ping", "-c1", "-W1", env::EDGE_HOST_IP]);
                if o.warmup > 0 {
                    let g = gen_args(ctx, o.flood_rate, o.warmup as f64, 0)?;
                    env::run(&mut measure::gen_command(&ctx.lab, o.gen_cpu, &g)?)?;
                }
                let g = gen_args(ctx, o.flood_rate, secs, o.flood_count)?;
                let mut cmd = measure::gen_command(&ctx.lab, o.gen_cpu, &g)?;
                let cmdline = measure::cmdline(&cmd);
                let pids = ctx.lab.pids("edge");
                let d0 = setup.dropped();
                let (_, _, reach0) = ctx.lab.link_stats("wire", "e-port");
                let (erx0, _, _) = ctx.lab.link_stats("edge", "eth0");
                let c0 = env::cpu_snap(&pids);
                let out = env::run(&mut cmd)?;
                let c1 = env::cpu_snap(&pids);
                std::thread::sleep(Duration::from_millis(300));
                let (_, _, reach1) = ctx.lab.link_stats("wire", "e-port");
                let (erx1, _, _) = ctx.lab.link_stats("edge", "eth0");
                let d1 = setup.dropped();
                let g = measure::parse_gen(&out)?;
                let el = g.elapsed_s.max(1e-9);
                let mut m = Metrics::new();
                let sent = g.sent as f64;
                let dropped = d1.saturating_sub(d0) as f64;
                m.insert("sent".into(), sent);
                m.insert("offered_pps".into(), g.pps);
                m.insert(
                    "reached_pps".into(),
                    reach1.saturating_sub(reach0) as f64 / el,
                );
                m.insert("edge_rx_pps".into(), erx1.saturating_sub(erx0) as f64 / el);
                m.insert("dropped".into(), dropped);
                m.insert("dropped_pps".into(), dropped / el);
                m.insert("drop_ratio".into(), dropped / sent.max(1.0));
                let wall = (c1.at - c0.at).as_secs_f64();
                let (b0, s0) = c0.busy_softirq(&c1, LOAD_CPU);
                let (b1, _) = c0.busy_softirq(&c1, PROXY_CPU);
                m.insert("cpu0_ns_per_pkt".into(), b0 / sent.max(1.0) * 1e9);
                m.insert("cpu0_softirq_ns_per_pkt".into(), s0 / sent.max(1.0) * 1e9);
                m.insert("cpu1_busy_frac".into(), b1 / wall);
                if dropped <= 0.0 {
                    anyhow::bail!("{}: dropped nothing ({} sent)", d.name(), g.sent);
                }
                let mut cmds = setup.commands.clone();
                cmds.push(cmdline);
                drop(setup);
                Ok((m, cmds))
            })();
            r.samples.push(match s {
                Ok((m, c)) => sample(
                    &format!("{:?}", o.template).to_lowercase(),
                    d.name(),
                    round,
                    m,
                    c,
                    None,
                ),
                Err(e) => sample(
                    &format!("{:?}", o.template).to_lowercase(),
                    d.name(),
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    Ok(r)
}

pub fn goodput(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("goodput-under-flood", ctx.meta.clone());
    settings(ctx, &mut r);
    let o = &ctx.opts;
    r.settings.insert(
        "flood template".into(),
        format!("{:?}", o.template).to_lowercase(),
    );
    r.settings
        .insert("flood rate pps".into(), o.flood_rate.to_string());
    r.settings
        .insert("generator CPU".into(), o.gen_cpu.to_string());
    r.columns = vec![
        col("rps_noflood", "req/s no flood", 1.0),
        col("rps_flood", "req/s under flood", 1.0),
        col("goodput_frac", "goodput fraction", 1.0),
        col("flood_pps", "flood pps sent", 1.0),
        col("dropped_pps", "dropped pps", 1.0),
    ];
    r.ratios = vec![ratio(
        "goodput_frac",
        "fraction vs nginx+iptables",
        "nginx+iptables",
    )];
    r.plots = vec![(
        "goodput_frac".into(),
        "goodput under flood: legit req/s as a fraction of no-flood".into(),
    )];
    r.notes.push(FLOOD_NOTE.into());
    r.notes.push("Each turn: wrk without flood, then wrk while the generator floods from spoofed, denied sources at a fixed rate; fraction = flood / no-flood, same turn.".into());
    let fg_cfg = match contenders::ferrogate_filter_available(&ctx.lab) {
        Ok(p) => Some(p),
        Err(e) => {
            r.unavailable.insert(
                "ferrogate".into(),
                format!("UNAVAILABLE — no number is reported for ferrogate. {e}"),
            );
            None
        }
    };
    let mut turns: Vec<(&str, Dropper, Option<Contender>)> = vec![];
    if fg_cfg.is_some() {
        turns.push(("ferrogate", Dropper::Ferrogate, None));
    }
    turns.push(("nginx+iptables", Dropper::Iptables, Some(Contender::Nginx)));
    turns.push(("nginx+nft", Dropper::Nft, Some(Contender::Nginx)));
    for round in 0..o.rounds {
        for &(name, d, proxy) in &turns {
            eprintln!("goodput-under-flood round {round}: {name}");
            let s = (|| -> Result<(Metrics, Vec<String>)> {
                let setup = drop_setup(ctx, d, proxy, fg_cfg.as_ref())?;
                let run = setup.run.as_ref().unwrap();
                let (m0, c0) = wrk_turn(ctx, run, "/", None)?;
                let g = gen_args(ctx, o.flood_rate, o.seconds as f64 + 1.5, 0)?;
                let mut gc = measure::gen_command(&ctx.lab, o.gen_cpu, &g)?;
                let gcmd = measure::cmdline(&gc);
                let d0 = setup.dropped();
                let log = ctx.lab.bench_dir().join("gen.out");
                let mut gp = env::Proc::spawn("generator", &mut gc, &log)?;
                std::thread::sleep(Duration::from_millis(500));
                let url = format!("http://{}/", run.who.addr());
                let (m1, wcmd) = measure::wrk(&ctx.lab, &url, o.seconds, o.conns, None)?;
                while gp.exited().is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                gp.stop();
                let gr = measure::parse_gen(&std::fs::read_to_string(&log).unwrap_or_default())?;
                let d1 = setup.dropped();
                measure::check_http(name, &m1, "requests")?;
                let mut m = Metrics::new();
                m.insert("rps_noflood".into(), m0["rps"]);
                m.insert("rps_flood".into(), m1["rps"]);
                m.insert("goodput_frac".into(), m1["rps"] / m0["rps"].max(1.0));
                m.insert("p99_us_flood".into(), m1["p99_us"]);
                m.insert("flood_pps".into(), gr.pps);
                m.insert(
                    "dropped_pps".into(),
                    d1.saturating_sub(d0) as f64 / gr.elapsed_s.max(1e-9),
                );
                if d1 <= d0 {
                    anyhow::bail!("{name}: the flood was not dropped by the rule");
                }
                let mut cmds = setup.commands.clone();
                cmds.extend(c0.into_iter().skip(1));
                cmds.push(gcmd);
                cmds.push(wcmd);
                Ok((m, cmds))
            })();
            r.samples.push(match s {
                Ok((m, c)) => sample("tiny", name, round, m, c, None),
                Err(e) => sample(
                    "tiny",
                    name,
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    Ok(r)
}

/// Sets the edge NIC (and its bridge-side peer, whose TX queue picks the RX
/// queue on veth) to `n` queues, so every queue has a worker.
fn set_channels(lab: &Lab, n: u32) -> Result<()> {
    let n = n.to_string();
    // The kernel frees a stopped ferrogate's zero-copy AF_XDP sockets
    // asynchronously; until then it refuses fewer channels ("too low for
    // existing zerocopy AF_XDP sockets"), so retry for up to 5 s.
    let argv = ["ethtool", "-L", "eth0", "rx", &n, "tx", &n];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = lab.exec("edge", &argv) {
        if std::time::Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.exec("wire", &["ethtool", "-L", "e-port", "rx", &n, "tx", &n])?;
    Ok(())
}

/// ferrogate alone: closed-loop req/s with 1 and 2 workers, then latency at
/// 100 req/s (open loop) per polling mode with one worker.
pub fn scale(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("scale", ctx.meta.clone());
    settings(ctx, &mut r);
    let o = &ctx.opts;
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
    ];
    r.plots = vec![("rps".into(), "scale: requests/s per worker count".into())];
    r.notes.push("workers: wrk -t1 against ferrogate with 1 worker (CPU 1) and 2 workers (CPUs 0,1) on a 2-queue edge NIC; on a 2-core VM the second worker shares CPU 0 with the client and the origin, so this shows the hand-off and contention cost, not scaling headroom.".into());
    r.notes.push("polling: one worker; the open-loop client at 100 req/s; p50/p99 corrected for coordinated omission. Busy polling spins a whole core; adaptive spins 50 µs, then sleeps on the socket; interrupt sleeps at once.".into());
    r.settings.insert("edge NIC queues".into(), "2".into());
    for round in 0..o.rounds {
        for (queues, cpus) in [
            (1u32, PROXY_CPU.to_string()),
            (2, format!("{LOAD_CPU},{PROXY_CPU}")),
        ] {
            let who = format!(
                "ferrogate {queues} worker{}",
                if queues > 1 { "s" } else { "" }
            );
            eprintln!("scale round {round}: {who}");
            set_channels(&ctx.lab, queues)?;
            let cfg = contenders::ferrogate_config_tuned(
                &ctx.lab,
                queues,
                &cpus,
                "",
                "ferrogate-scale.toml",
            )?;
            let s =
                contenders::start_with(&ctx.lab, Contender::Ferrogate, Some(&cfg), queues, &cpus)
                    .and_then(|mut run| {
                        let out = wrk_turn(ctx, &run, "/", None);
                        run.stop();
                        out
                    });
            r.samples.push(match s {
                Ok((m, c)) => sample("workers", &who, round, m, c, None),
                Err(e) => sample(
                    "workers",
                    &who,
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
        set_channels(&ctx.lab, 1)?;
        for mode in ["busy", "adaptive", "interrupt"] {
            let who = format!("ferrogate {mode}");
            eprintln!("scale round {round}: {who}");
            let extra = format!("\n[numa.node.0]\npolling = \"{mode}\"\n");
            let cpus = PROXY_CPU.to_string();
            let cfg = contenders::ferrogate_config_tuned(
                &ctx.lab,
                1,
                &cpus,
                &extra,
                "ferrogate-polling.toml",
            )?;
            let s = contenders::start_with(&ctx.lab, Contender::Ferrogate, Some(&cfg), 1, &cpus)
                .and_then(|mut run| {
                    let addr = Contender::Ferrogate.addr();
                    let w = measure::window_start(&ctx.lab, &run);
                    let (mut m, cmd) =
                        measure::loadgen(&ctx.lab, &addr, "/", 100, o.seconds as f64, 10)?;
                    let n = m["completed"];
                    measure::window_end(w, &run, n, &mut m);
                    run.stop();
                    measure::check_http(&who, &m, "completed")?;
                    let achieved = m["achieved_rps"];
                    m.insert("rps".into(), achieved);
                    Ok((m, vec![run.command.clone(), cmd]))
                });
            r.samples.push(match s {
                Ok((m, c)) => sample("polling at 100 req/s", &who, round, m, c, None),
                Err(e) => sample(
                    "polling at 100 req/s",
                    &who,
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    Ok(r)
}
