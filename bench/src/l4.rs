//! The `l4` scenario (issue #17): L4 proxying with no HTTP. TCP: iperf3
//! throughput both ways and short connections/s (connect, one line, its
//! echo, close) through ferrogate's TCP listeners, HAProxy `mode tcp` and
//! nginx `stream`; UDP: echoed datagrams/s through ferrogate's UDP
//! listener and nginx `stream` (`udp`; HAProxy has no UDP proxying).
//! Figures per proxy: rate, proxy CPU per GB / per connection / per
//! datagram, and the ratios against HAProxy and nginx.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Extra, Running};
use crate::env::{self, EDGE_HOST_IP, LOAD_CPU, Lab, ORIGIN_IP, PROXY_CPU, Proc, VIP};
use crate::l4gen::{TcpConnReport, UdpReport};
use crate::measure::{self, Metrics};
use crate::report::{Layout, Report, col};
use crate::scenarios::{CPU_NOTE, Ctx, failed_sample, ratio, sample, settings};

/// iperf3's server in the origin namespace; every proxy listens on the same port.
const IPERF_PORT: u16 = 5201;
/// The bench's line echo (TCP) and datagram echo (UDP) in the origin namespace.
const ECHO_PORT: u16 = 7100;
const UDP_PORT: u16 = 7200;
/// Bytes per connection each way in `tcp-conn` (a short request/response).
const LINE: usize = 64;
/// UDP datagrams in flight per client socket.
const UDP_WINDOW: usize = 4;
const UDP_SIZE: usize = 64;
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

const TCP_CONTENDERS: [Contender; 4] = [
    Contender::Direct,
    Contender::Ferrogate,
    Contender::Nginx,
    Contender::Haproxy,
];

/// Where `who` listens for the L4 ports.
fn ip(who: Contender) -> &'static str {
    match who {
        Contender::Direct => ORIGIN_IP,
        Contender::Ferrogate => VIP,
        Contender::Nginx | Contender::Haproxy => EDGE_HOST_IP,
    }
}

/// ferrogate's TCP listeners (and its UDP one when `udp`), each to its
/// own one-endpoint pool.
fn ferrogate_listeners(udp: bool) -> String {
    let mut s = format!(
        "\n[[upstreams]]\nname = \"l4-iperf\"\nendpoints = [\"{ORIGIN_IP}:{IPERF_PORT}\"]\n\n\
         [[upstreams]]\nname = \"l4-echo\"\nendpoints = [\"{ORIGIN_IP}:{ECHO_PORT}\"]\n\n\
         [[listeners]]\nport = {IPERF_PORT}\nprotocol = \"tcp\"\nupstream = \"l4-iperf\"\n\n\
         [[listeners]]\nport = {ECHO_PORT}\nprotocol = \"tcp\"\nupstream = \"l4-echo\"\n"
    );
    if udp {
        s.push_str(&format!(
            "\n[[upstreams]]\nname = \"l4-udp-echo\"\nendpoints = [\"{ORIGIN_IP}:{UDP_PORT}\"]\n\n\
             [[listeners]]\nport = {UDP_PORT}\nprotocol = \"udp\"\nupstream = \"l4-udp-echo\"\n"
        ));
    }
    s
}

/// nginx `stream {}` (Debian: the dynamic module of libnginx-mod-stream,
/// loaded by absolute path: the bench's nginx.conf does not include
/// /etc/nginx/modules-enabled) and HAProxy `mode tcp` frontends. nginx's
/// UDP server answers one datagram per session (`proxy_responses 1`, the
/// DNS-style setting): each request datagram is its own session.
fn extra() -> Result<Extra> {
    let top = if Path::new(NGINX_STREAM_MODULE).is_file() {
        format!("load_module {NGINX_STREAM_MODULE};\n")
    } else if env::probe(&["nginx", "-V"]).contains("--with-stream ") {
        String::new() // built in statically
    } else {
        bail!(
            "nginx has no stream module: install libnginx-mod-stream (vendor-setup.sh) for {NGINX_STREAM_MODULE}"
        );
    };
    let h = EDGE_HOST_IP;
    let o = ORIGIN_IP;
    Ok(Extra {
        nginx_top: top,
        nginx_main: format!(
            "stream {{\n  \
               server {{ listen {h}:{IPERF_PORT} reuseport backlog=4096; proxy_pass {o}:{IPERF_PORT}; }}\n  \
               server {{ listen {h}:{ECHO_PORT} reuseport backlog=4096; proxy_pass {o}:{ECHO_PORT}; }}\n  \
               server {{ listen {h}:{UDP_PORT} udp reuseport; proxy_pass {o}:{UDP_PORT}; proxy_responses 1; proxy_timeout 5s; }}\n\
             }}\n"
        ),
        haproxy: format!(
            "\nfrontend fe_l4_iperf\n  mode tcp\n  bind {h}:{IPERF_PORT} backlog 4096\n  default_backend be_l4_iperf\n\n\
             backend be_l4_iperf\n  mode tcp\n  server o {o}:{IPERF_PORT}\n\n\
             frontend fe_l4_echo\n  mode tcp\n  bind {h}:{ECHO_PORT} backlog 4096\n  default_backend be_l4_echo\n\n\
             backend be_l4_echo\n  mode tcp\n  server o {o}:{ECHO_PORT}\n"
        ),
        ..Extra::default()
    })
}

/// Whether this ferrogate accepts a `protocol = "udp"` listener (issue
/// #17's UDP listeners). Err carries `ferrogate check`'s message.
fn ferrogate_udp_available(lab: &Lab) -> Result<PathBuf, String> {
    let cfg = contenders::ferrogate_config_tuned(
        lab,
        1,
        &PROXY_CPU.to_string(),
        &ferrogate_listeners(true),
        "ferrogate-l4-udp.toml",
    )
    .map_err(|e| format!("{e:#}"))?;
    let bin = contenders::ferrogate_bin().map_err(|e| format!("{e:#}"))?;
    let out = Command::new(&bin)
        .arg("check")
        .arg(&cfg)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "needs UDP listeners: `ferrogate check` rejects a `protocol = \"udp\"` listener in this build: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(cfg)
}

/// The origins of this scenario, in the origin namespace on LOAD_CPU:
/// iperf3's server and the bench's echoes; stopped (by PID) on drop.
struct Origins {
    _iperf: Proc,
    _echo: Proc,
    commands: Vec<String>,
}

fn start_origins(lab: &Lab) -> Result<Origins> {
    let d = lab.bench_dir();
    let port = IPERF_PORT.to_string();
    let mut c = lab.pinned(
        "origin",
        LOAD_CPU,
        &["iperf3", "-s", "-B", ORIGIN_IP, "-p", &port],
    );
    let mut commands = vec![measure::cmdline(&c)];
    let iperf = Proc::spawn("iperf3-server", &mut c, &d.join("iperf3-server.log"))?;
    let exe = std::env::current_exe()?.display().to_string();
    let (tp, up) = (ECHO_PORT.to_string(), UDP_PORT.to_string());
    let mut c = lab.pinned(
        "origin",
        LOAD_CPU,
        &[
            &exe,
            "l4-origin",
            "--bind",
            ORIGIN_IP,
            "--tcp-port",
            &tp,
            "--udp-port",
            &up,
        ],
    );
    commands.push(measure::cmdline(&c));
    let echo = Proc::spawn("l4-origin", &mut c, &d.join("l4-origin.log"))?;
    // Both must accept before any contender is checked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = [IPERF_PORT, ECHO_PORT].iter().all(|p| {
            lab.exec(
                "origin",
                &["bash", "-c", &format!("exec 3<>/dev/tcp/{ORIGIN_IP}/{p}")],
            )
            .is_ok()
        });
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("iperf3 -s or l4-origin did not listen on {ORIGIN_IP} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Origins {
        _iperf: iperf,
        _echo: echo,
        commands,
    })
}

fn tcp_conn_client(
    lab: &Lab,
    addr: &str,
    conns: u32,
    seconds: f64,
    count: u64,
) -> Result<(TcpConnReport, String)> {
    let exe = std::env::current_exe()?.display().to_string();
    let (c_, s_, n_, l_) = (
        conns.to_string(),
        seconds.to_string(),
        count.to_string(),
        LINE.to_string(),
    );
    let mut c = lab.pinned(
        "client",
        LOAD_CPU,
        &[
            &exe,
            "tcp-conn-client",
            "--addr",
            addr,
            "--conns",
            &c_,
            "--seconds",
            &s_,
            "--count",
            &n_,
            "--size",
            &l_,
        ],
    );
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let r = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("tcp-conn-client output: {out}"))?;
    Ok((r, cmd))
}

fn udp_client(
    lab: &Lab,
    addr: &str,
    sockets: u32,
    window: usize,
    seconds: f64,
    count: u64,
) -> Result<(UdpReport, String)> {
    let exe = std::env::current_exe()?.display().to_string();
    let (k, w, s_, n_, z) = (
        sockets.to_string(),
        window.to_string(),
        seconds.to_string(),
        count.to_string(),
        UDP_SIZE.to_string(),
    );
    let mut c = lab.pinned(
        "client",
        LOAD_CPU,
        &[
            &exe,
            "udp-client",
            "--addr",
            addr,
            "--sockets",
            &k,
            "--window",
            &w,
            "--seconds",
            &s_,
            "--count",
            &n_,
            "--size",
            &z,
        ],
    );
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let r = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("udp-client output: {out}"))?;
    Ok((r, cmd))
}

/// Starts `who` with its L4 listeners and checks each carries traffic to
/// the bench's origins: 20 echoed lines over 20 connections, and (with
/// `udp`) 20 echoed datagrams. `start` has already checked HTTP on :80.
fn start_l4(ctx: &Ctx, who: Contender, fg_cfg: &Path, udp: bool) -> Result<Running> {
    let lab = &ctx.lab;
    let cpu = PROXY_CPU.to_string();
    let run = match who {
        Contender::Ferrogate => contenders::start_with(lab, who, Some(fg_cfg), 1, &cpu)?,
        _ => contenders::start_extra(lab, who, None, 1, &cpu, &extra()?)?,
    };
    let tcp = format!("{}:{ECHO_PORT}", ip(who));
    let (r, _) = tcp_conn_client(lab, &tcp, 1, 5.0, 20)?;
    if r.completed != 20 {
        bail!(
            "{}: {tcp}: {} of 20 connections got their line echoed ({} errors, {} connect errors, {} short)",
            who.name(),
            r.completed,
            r.errors,
            r.connect_errors,
            r.short_echoes
        );
    }
    if udp {
        let a = format!("{}:{UDP_PORT}", ip(who));
        let (r, _) = udp_client(lab, &a, 1, 1, 5.0, 20)?;
        if r.received != 20 || r.foreign != 0 {
            bail!(
                "{}: udp {a}: {} of 20 datagrams echoed ({} foreign)",
                who.name(),
                r.received,
                r.foreign
            );
        }
    }
    Ok(run)
}

/// `iperf3 -c <ip> -p 5201 -t <seconds> -J [-R]` pinned to LOAD_CPU in the
/// client namespace, bounded by `timeout`. Returns received bytes,
/// seconds, Gbit/s and the sender's retransmits.
fn iperf3(ctx: &Ctx, who: Contender, reverse: bool, seconds: u64) -> Result<(Metrics, String)> {
    let bound = (seconds + 20).to_string();
    let (t, p) = (seconds.to_string(), IPERF_PORT.to_string());
    let mut argv = vec![
        "timeout",
        &bound,
        "iperf3",
        "-c",
        ip(who),
        "-p",
        &p,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    if reverse {
        argv.push("-R");
    }
    let mut c = ctx.lab.pinned("client", LOAD_CPU, &argv);
    let cmd = measure::cmdline(&c);
    // iperf3 -J exits non-zero on errors but still prints JSON with "error".
    let o = c
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| cmd.clone())?;
    let text = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}{}",
            o.status,
            text.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let recv = &v["end"]["sum_received"];
    let bytes = recv["bytes"].as_f64().unwrap_or(0.0);
    let secs = recv["seconds"].as_f64().unwrap_or(0.0);
    if bytes <= 0.0 || secs <= 0.0 {
        bail!("iperf3 moved nothing: {}", v["end"]);
    }
    let mut m = Metrics::new();
    m.insert("bytes".into(), bytes);
    m.insert("duration_s".into(), secs);
    m.insert("gbps".into(), bytes * 8.0 / secs / 1e9);
    m.insert(
        "retransmits".into(),
        v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
    );
    Ok((m, cmd))
}

/// ferrogate counters kept in the JSON (deltas over each window): its L4
/// listeners' own, and what explains a tail (drops, full queues and rings).
const FG_L4: &[&str] = &[
    "stack_l4_",
    "stack_udp",
    "stack_l4udp",
    "stack_rx_",
    "stack_tx_",
    "io_",
    "handoff_",
];

/// Before a window: ferrogate's stats file lags its work by up to 250 ms,
/// so the previous run's tail must land in it before the first snapshot
/// (else its busy time counts against this run). Done for every contender
/// alike.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

/// proxy CPU per `unit` ops: ferrogate's busy time over its own counter
/// `fg_key` (same snapshots) when that moved, else over the client's count.
fn per_op(
    m: &mut Metrics,
    who: Contender,
    client_ops: f64,
    fg_ops: Option<f64>,
    key: &str,
    scale: f64,
) {
    let Some(&cpu) = m.get("proxy_cpu_s") else {
        return;
    };
    let ops = match (who, fg_ops) {
        (Contender::Ferrogate, Some(n)) if n > 0.0 => n,
        _ => client_ops,
    };
    if ops > 0.0 {
        m.insert(key.into(), cpu / ops * scale);
    }
    let cpu1 = m["cpu1_busy_s"];
    if client_ops > 0.0 {
        m.insert(format!("cpu1_{key}"), cpu1 / client_ops * scale);
    }
}

/// One iperf3 direction: warm-up, then the measured run with the proxy's
/// CPU around it. CPU per GB of payload received by iperf3.
fn throughput_turn(ctx: &Ctx, run: &Running, reverse: bool) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    if o.warmup > 0 {
        iperf3(ctx, run.who, reverse, o.warmup)?;
    }
    settle();
    let w = measure::window_start(&ctx.lab, run);
    let (mut m, cmd) = iperf3(ctx, run.who, reverse, o.seconds)?;
    measure::window_totals(w, run, FG_L4, &mut m);
    let fg_bytes = m.get("fg_stack_l4_bytes_up").copied().unwrap_or(0.0)
        + m.get("fg_stack_l4_bytes_down").copied().unwrap_or(0.0);
    let gb = m["bytes"];
    per_op(&mut m, run.who, gb, Some(fg_bytes), "proxy_s_per_gb", 1e9);
    Ok((m, vec![run.command.clone(), cmd]))
}

/// The origin namespace's `net.ipv4.tcp_max_tw_buckets` set to `value`
/// for a turn and put back on drop.
struct OriginTw<'a> {
    lab: &'a Lab,
    before: String,
}

const TW_SYSCTL: &str = "net.ipv4.tcp_max_tw_buckets";

impl<'a> OriginTw<'a> {
    fn set(lab: &'a Lab, value: u32) -> Result<OriginTw<'a>> {
        let before = lab.exec("origin", &["sysctl", "-n", TW_SYSCTL])?;
        lab.exec(
            "origin",
            &["sysctl", "-qw", &format!("{TW_SYSCTL}={value}")],
        )?;
        Ok(OriginTw {
            lab,
            before: before.trim().to_string(),
        })
    }
}

impl Drop for OriginTw<'_> {
    fn drop(&mut self) {
        let _ = self.lab.exec(
            "origin",
            &["sysctl", "-qw", &format!("{TW_SYSCTL}={}", self.before)],
        );
    }
}

/// `tw`: the origin keeps TIME_WAIT as Linux does by default; else none
/// (`tcp_max_tw_buckets = 0` in the origin namespace), so the turn
/// measures the proxies' per-connection cost and not how their SYNs fare
/// against a 4-tuple the origin still holds (see the notes).
fn conn_turn(ctx: &Ctx, run: &Running, tw: bool) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let _tw = if tw {
        None
    } else {
        Some(OriginTw::set(&ctx.lab, 0)?)
    };
    let addr = format!("{}:{ECHO_PORT}", ip(run.who));
    if o.warmup > 0 {
        tcp_conn_client(&ctx.lab, &addr, o.conns, o.warmup as f64, 0)?;
    }
    settle();
    let w = measure::window_start(&ctx.lab, run);
    let (r, cmd) = tcp_conn_client(&ctx.lab, &addr, o.conns, o.seconds as f64, 0)?;
    let mut m = json_metrics(&r)?;
    measure::window_totals(w, run, FG_L4, &mut m);
    let fg = m.get("fg_stack_l4_connections").copied();
    per_op(
        &mut m,
        run.who,
        r.completed as f64,
        fg,
        "proxy_us_per_conn",
        1e6,
    );
    let n = r.completed as f64;
    if n <= 0.0 {
        bail!("{}: no connection completed", run.who.name());
    }
    if r.errors as f64 > n * 0.01 {
        bail!(
            "{}: {} failed connections for {n} completed ({} connect, {} short echoes)",
            run.who.name(),
            r.errors,
            r.connect_errors,
            r.short_echoes
        );
    }
    Ok((m, vec![run.command.clone(), cmd]))
}

fn udp_turn(ctx: &Ctx, run: &Running) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let addr = format!("{}:{UDP_PORT}", ip(run.who));
    if o.warmup > 0 {
        udp_client(&ctx.lab, &addr, o.conns, UDP_WINDOW, o.warmup as f64, 0)?;
    }
    settle();
    let w = measure::window_start(&ctx.lab, run);
    let (r, cmd) = udp_client(&ctx.lab, &addr, o.conns, UDP_WINDOW, o.seconds as f64, 0)?;
    let mut m = json_metrics(&r)?;
    measure::window_totals(w, run, FG_L4, &mut m);
    // ferrogate: its replies sent back to clients, from the same stats
    // snapshots as its busy time.
    let fg = m.get("fg_stack_udp_datagrams_down").copied();
    per_op(
        &mut m,
        run.who,
        r.received as f64,
        fg,
        "proxy_us_per_dgram",
        1e6,
    );
    if r.received == 0 {
        bail!("{}: no datagram came back", run.who.name());
    }
    if r.foreign > 0 {
        bail!(
            "{}: {} replies matched no datagram sent on their socket",
            run.who.name(),
            r.foreign
        );
    }
    Ok((m, vec![run.command.clone(), cmd]))
}

fn json_metrics(r: &impl serde::Serialize) -> Result<Metrics> {
    let v = serde_json::to_value(r)?;
    Ok(v.as_object()
        .context("a JSON object")?
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(0.0)))
        .collect())
}

/// tcp-conn-tw after tcp-conn: the TIME_WAIT it leaves at the origin
/// lasts 60 s, past the next contender's turn but (for these tuples,
/// which only this contender uses) not into its next round's.
const VARIANTS: [&str; 5] = ["tcp-up", "tcp-down", "tcp-conn", "tcp-conn-tw", "udp"];

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("l4", ctx.meta.clone());
    settings(ctx, &mut r);
    let o = &ctx.opts;
    let lab = &ctx.lab;
    r.settings.insert(
        "ferrogate listeners".into(),
        format!(
            "[[listeners]] protocol = \"tcp\" on {VIP}:{IPERF_PORT} and :{ECHO_PORT}, protocol = \"udp\" on :{UDP_PORT} (when this build has UDP listeners), each `upstream` a one-endpoint pool in the origin namespace; engine settings of configs/lab.toml (1 queue, CPU{PROXY_CPU})"
        ),
    );
    r.settings.insert(
        "libnginx-mod-stream".into(),
        env::probe(&["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-stream"]),
    );
    r.settings.insert(
        "nginx stream".into(),
        format!(
            "load_module {NGINX_STREAM_MODULE}; stream {{ server {{ listen {EDGE_HOST_IP}:<port> [udp] reuseport; proxy_pass {ORIGIN_IP}:<port>; }} }}, UDP with proxy_responses 1; proxy_timeout 5s; worker_processes 1"
        ),
    );
    r.settings.insert(
        "HAProxy".into(),
        format!("frontend/backend mode tcp on {EDGE_HOST_IP}:<port>, nbthread 1"),
    );
    r.settings.insert(
        "tcp-conn".into(),
        format!("{} loops of connect, {LINE} bytes (one line), its echo to EOF (the origin closes first), close; tcp-conn: origin `{TW_SYSCTL} = 0`, tcp-conn-tw: the default", o.conns),
    );
    r.settings.insert(
        "udp".into(),
        format!(
            "{} client sockets x {UDP_WINDOW} datagrams of {UDP_SIZE} bytes in flight (closed loop; a socket silent for 200 ms counts its window lost and sends a new one)",
            o.conns
        ),
    );
    let gbps = || Layout {
        columns: vec![
            col("gbps", "Gbit/s", 1.0),
            col("proxy_s_per_gb", "proxy CPU-s/GB", 1.0),
            col("cpu1_proxy_s_per_gb", "CPU1 s/GB", 1.0),
            col("cpu1_busy_frac", "CPU1 busy", 1.0),
            col("cpu0_busy_frac", "CPU0 busy", 1.0),
            col("retransmits", "retransmits", 1.0),
        ],
        ratios: vec![
            ratio("gbps", "Gbit/s vs HAProxy", "haproxy"),
            ratio("proxy_s_per_gb", "proxy CPU/GB vs HAProxy", "haproxy"),
            ratio("proxy_s_per_gb", "proxy CPU/GB vs nginx", "nginx"),
        ],
    };
    r.layouts.insert("tcp-up".into(), gbps());
    r.layouts.insert("tcp-down".into(), gbps());
    let conn = || Layout {
        columns: vec![
            col("conn_rate", "conn/s", 1.0),
            col("p50_us", "p50 ms", 1e-3),
            col("p99_us", "p99 ms", 1e-3),
            col("p999_us", "p99.9 ms", 1e-3),
            col("proxy_us_per_conn", "proxy µs/conn", 1.0),
            col("cpu1_proxy_us_per_conn", "CPU1 µs/conn", 1.0),
            col("cpu1_busy_frac", "CPU1 busy", 1.0),
            col("cpu0_busy_frac", "CPU0 busy", 1.0),
            col("errors", "errors", 1.0),
        ],
        ratios: vec![
            ratio("conn_rate", "conn/s vs HAProxy", "haproxy"),
            ratio("proxy_us_per_conn", "proxy CPU/conn vs HAProxy", "haproxy"),
            ratio("proxy_us_per_conn", "proxy CPU/conn vs nginx", "nginx"),
        ],
    };
    r.layouts.insert("tcp-conn".into(), conn());
    r.layouts.insert("tcp-conn-tw".into(), conn());
    r.layouts.insert(
        "udp".into(),
        Layout {
            columns: vec![
                col("dgram_rate", "echoed dgram/s", 1.0),
                col("loss_frac", "loss", 1.0),
                col("p50_us", "p50 ms", 1e-3),
                col("p99_us", "p99 ms", 1e-3),
                col("proxy_us_per_dgram", "proxy µs/dgram", 1.0),
                col("cpu1_proxy_us_per_dgram", "CPU1 µs/dgram", 1.0),
                col("cpu1_busy_frac", "CPU1 busy", 1.0),
                col("cpu0_busy_frac", "CPU0 busy", 1.0),
            ],
            ratios: vec![
                ratio("dgram_rate", "dgram/s vs nginx", "nginx"),
                ratio("proxy_us_per_dgram", "proxy CPU/dgram vs nginx", "nginx"),
            ],
        },
    );
    r.plots = vec![
        ("gbps".into(), "l4: iperf3 Gbit/s through each proxy".into()),
        (
            "proxy_s_per_gb".into(),
            "l4: proxy CPU-seconds per GB".into(),
        ),
        (
            "conn_rate".into(),
            "l4: TCP connections/s (64 B echo each)".into(),
        ),
        (
            "proxy_us_per_conn".into(),
            "l4: proxy CPU µs per TCP connection".into(),
        ),
        ("dgram_rate".into(), "l4: UDP echoed datagrams/s".into()),
        (
            "proxy_us_per_dgram".into(),
            "l4: proxy CPU µs per echoed datagram".into(),
        ),
    ];
    r.unavailable.insert(
        "haproxy (udp)".into(),
        "HAProxy (2.6, Debian) has no UDP proxy mode: only `mode tcp` and `mode http`; it speaks UDP only for its own syslog forwarding and DNS resolvers. The udp variant compares ferrogate with nginx `stream` (udp).".into(),
    );
    let fg_udp_cfg = match ferrogate_udp_available(lab) {
        Ok(p) => Some(p),
        Err(e) => {
            r.unavailable
                .insert("ferrogate (udp)".into(), format!("NOT MEASURED — {e}"));
            None
        }
    };
    let fg_cfg = match &fg_udp_cfg {
        Some(p) => p.clone(),
        None => contenders::ferrogate_config_tuned(
            lab,
            1,
            &PROXY_CPU.to_string(),
            &ferrogate_listeners(false),
            "ferrogate-l4.toml",
        )?,
    };
    let origins = start_origins(lab)?;
    r.notes.push(format!(
        "Origins (origin namespace, CPU{LOAD_CPU}, for the whole run): `{}`; the l4-origin echoes a TCP line and then closes first (TIME_WAIT stays at the origin, like an HTTP/1.0 server), and echoes every UDP datagram to its sender.",
        origins.commands.join("`, `")
    ));
    r.notes.push(format!(
        "tcp-up / tcp-down: `iperf3 -c <proxy> -p {IPERF_PORT} -t <seconds> -J [-R]` in the client namespace on CPU{LOAD_CPU} (one stream; tcp-down = `-R`, the origin sends), after an untimed run of the warm-up's length. Gbit/s = iperf3's received bytes / seconds; `proxy CPU-s/GB` = proxy CPU seconds over the run / GB (10⁹ bytes) received; for ferrogate divided by its own Δ`stack_l4_bytes_up + _down` from the same stats snapshots as its busy time. Both iperf3 ends run on CPU0: when `CPU0 busy` is ~1.0 the client side is the limit."
    ));
    r.notes.push(format!(
        "tcp-conn: `ferrogate-bench tcp-conn-client` ({} threads: connect, write a {LINE}-byte line, read the echo to EOF, close; a turn fails on > 1 % failed connections). proxy µs/conn = proxy CPU / completed connections (ferrogate: / Δ`stack_l4_connections`). Each connection is a new upstream connection for every proxy.",
        o.conns
    ));
    r.notes.push(format!(
        "tcp-conn vs tcp-conn-tw: the origin closes first, so it keeps each upstream 4-tuple in TIME_WAIT for 60 s. In `tcp-conn` the origin namespace has `{TW_SYSCTL} = 0` (no TIME_WAIT kept; the same for every proxy), in `tcp-conn-tw` Linux's default. Linux accepts a SYN on a 4-tuple it holds in TIME_WAIT only when the SYN's sequence number (or TCP timestamp) is newer than the old connection's, else it answers with the old connection's ACK. Linux proxies send clock-based ISNs and timestamps, so theirs pass; so do ferrogate's since session 13 (timestamps from a clock per address pair; `stack_tcp_syn_stale_acks` counts the SYNs that still get that ACK: ferrogate answers it with a RST, which ends the TIME_WAIT, and resends the SYN at once — the only path before timestamps, and before that patch the resend waited for the 1 s initial RTO: 99.6 conn/s, p99 1,002 ms). Its upstream ports (one range per worker, taken round-robin) wrap within seconds at these rates, so `tcp-conn-tw` measures that path."
    ));
    r.notes.push(format!(
        "udp: `ferrogate-bench udp-client` (one thread, {} connected sockets, {UDP_WINDOW} datagrams of {UDP_SIZE} bytes in flight each; echoed dgram/s = replies / time to the last reply; loss = (sent − received) / sent; RTT from the send time carried in each datagram). proxy µs/dgram = proxy CPU / echoed datagrams (each is a request and a reply through the proxy; ferrogate: / Δ`stack_udp_datagrams_down`, its `stack_udp_*` counters are in the JSON). nginx with `proxy_responses 1` opens an upstream socket per request datagram; ferrogate keeps one session per client socket.",
        o.conns
    ));
    r.notes.push(CPU_NOTE.into());
    r.notes.push("Goal of issue #17: ferrogate's proxy CPU per GB and per connection ≤ 0.5x HAProxy's. The lab's veth makes bulk transfers per-frame work for ferrogate (a copy-mode AF_XDP transmit runs veth + bridge + the receiver's stack per 1514-byte frame) while the kernel proxies splice 64 KiB GSO skbs (DESIGN.md, Measuring): tcp-up/down ratios understate ferrogate on real NICs.".into());
    let udp_contenders: Vec<Contender> =
        [Contender::Direct, Contender::Ferrogate, Contender::Nginx]
            .into_iter()
            .filter(|c| *c != Contender::Ferrogate || fg_udp_cfg.is_some())
            .collect();
    for round in 0..o.rounds {
        for who in TCP_CONTENDERS {
            eprintln!("l4 round {round}: {}", who.name());
            let udp = udp_contenders.contains(&who);
            let variants: Vec<&str> = VARIANTS
                .iter()
                .copied()
                .filter(|v| *v != "udp" || udp)
                .collect();
            match start_l4(ctx, who, &fg_cfg, udp) {
                Err(e) => {
                    for v in &variants {
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
                    for v in variants {
                        let res = match v {
                            "tcp-up" => throughput_turn(ctx, &run, false),
                            "tcp-down" => throughput_turn(ctx, &run, true),
                            "tcp-conn" => conn_turn(ctx, &run, false),
                            "tcp-conn-tw" => conn_turn(ctx, &run, true),
                            _ => udp_turn(ctx, &run),
                        };
                        r.samples.push(match res {
                            Ok((m, c)) => sample(v, who.name(), round, m, c, None),
                            Err(e) => failed_sample(v, who.name(), round, &run.command, &e),
                        });
                    }
                    run.stop();
                }
            }
        }
    }
    drop(origins);
    Ok(r)
}
