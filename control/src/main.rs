//! The `ferrogate` command: run the engine, check configs, drive the lab.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use ferrogate_control::{admin, config, ctl, daemon, demo, fleet, lab, run, supervise};

#[derive(Parser)]
#[command(name = "ferrogate", version, about = "Kernel-bypass edge proxy")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run ferrogate on this machine: the engine and, with a config file,
    /// the control daemon that owns it; restarts either when it dies.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineOpts,
        /// The operator API's Unix socket (mode 0600); `none` serves none.
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Where the last applied snapshot is persisted.
        #[arg(long, default_value = "/var/lib/ferrogate")]
        state_dir: PathBuf,
        /// The engine's own socket, which the control daemon talks to
        /// (default: `engine.sock` beside the admin socket).
        #[arg(long)]
        engine_socket: Option<PathBuf>,
        /// Also serve the operator API on this TCP address (host side;
        /// needs --admin-token-file).
        #[arg(long)]
        admin_tcp: Option<SocketAddr>,
        /// File holding the bearer token for --admin-tcp (≥ 16 characters).
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Run the engine alone, without the control daemon.
        #[arg(long)]
        no_control: bool,
    },
    /// The data plane process alone (what `run` supervises): serves its
    /// config, or without one the persisted last-known-good snapshot.
    Engine {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineOpts,
        /// The engine's API socket (mode 0600); `none` serves none.
        #[arg(long, default_value = "/run/ferrogate/engine.sock")]
        admin_socket: PathBuf,
        #[arg(long, default_value = "/var/lib/ferrogate")]
        state_dir: PathBuf,
        /// Take over from the engine running with this --state-dir (a
        /// binary upgrade: its connections finish through this one, new
        /// ones come here; `ferrogate run` does this on SIGUSR2).
        #[arg(long)]
        upgrade: bool,
    },
    /// The control daemon alone (what `run` supervises): owns the config
    /// file, pushes changes to the engine, serves the operator API. With
    /// --etcd it follows a fleet's signed bundle in etcd instead of a file.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["config", "bootstrap"])))]
    Control {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Fleet mode: etcd endpoints (http://HOST:PORT, comma-separated).
        #[arg(long, value_delimiter = ',', requires = "bootstrap")]
        etcd: Vec<String>,
        /// Fleet mode: the cluster (keys under /ferrogate/NAME/); default
        /// from the bootstrap file.
        #[arg(long)]
        cluster: Option<String>,
        /// Fleet mode: the bootstrap file (trusted public keys, cluster,
        /// endpoints, host name).
        #[arg(long)]
        bootstrap: Option<PathBuf>,
        /// Fleet mode: this host's name in the fleet (default: bootstrap,
        /// then the machine's host name).
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value = "/run/ferrogate/engine.sock")]
        engine_socket: PathBuf,
        /// The operator API's Unix socket (mode 0600); `none` serves none.
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        admin_tcp: Option<SocketAddr>,
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/ferrogate")]
        state_dir: PathBuf,
        /// How often the config file and the engine are looked at (ms).
        #[arg(long, default_value_t = 250)]
        watch_ms: u64,
    },
    /// Talk to a running engine's admin API.
    Ctl {
        /// The admin API's Unix socket.
        #[arg(long, global = true, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Talk to the daemon's TCP listener instead (needs --token-file).
        #[arg(long, global = true)]
        tcp: Option<String>,
        /// File holding the bearer token for --tcp.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        cmd: CtlSub,
    },
    /// Validate a config file like `nginx -t`.
    Check { file: PathBuf },
    /// Print the machine's topology and where the config's workers would run.
    Numa {
        #[arg(long)]
        config: PathBuf,
        /// Network namespace of the interface (overrides engine.netns).
        #[arg(long)]
        netns: Option<String>,
    },
    /// Operate on ferrogate's XDP program outside a running engine.
    Xdp {
        #[command(subcommand)]
        cmd: XdpCmd,
    },
    /// Build, inspect, remove and demo the network-namespace lab.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Print a shell completion script (e.g. `ferrogate completions bash >
    /// /usr/share/bash-completion/completions/ferrogate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) generated from this CLI; with --out-dir,
    /// write ferrogate.1 and one page per subcommand there.
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// Options of the engine process (passed through by `run`).
#[derive(clap::Args, Clone)]
struct EngineOpts {
    /// Network namespace to enter (overrides engine.netns).
    #[arg(long)]
    netns: Option<String>,
    /// Write counters to this file every 250 ms and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Number of NIC queues / workers (overrides engine.queues).
    #[arg(long)]
    queues: Option<u32>,
    /// af_xdp, af_packet or auto (overrides engine.backend).
    #[arg(long)]
    backend: Option<String>,
}

impl EngineOpts {
    fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut opt = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(k.to_string());
                v.push(val);
            }
        };
        opt("--netns", self.netns.clone());
        opt(
            "--stats-file",
            self.stats_file.as_ref().map(|p| p.display().to_string()),
        );
        opt("--duration", self.duration.map(|d| d.to_string()));
        opt("--queues", self.queues.map(|q| q.to_string()));
        opt("--backend", self.backend.clone());
        v
    }
}

fn socket_opt(p: PathBuf) -> Option<PathBuf> {
    (p.as_os_str() != "none").then_some(p)
}

#[derive(Subcommand)]
enum CtlSub {
    /// Running version, uptime, backend, workers, filter generation.
    Status,
    /// The engine's counters, `name value` lines.
    Stats,
    /// Prometheus text exposition.
    Metrics,
    /// Sources L7 rate limits escalated to the XDP deny set, with their TTL.
    Blocked,
    /// Lift an escalated source's deny now.
    Unblock { addr: std::net::IpAddr },
    /// Purge the response cache: one URL (every variant), every URL under
    /// a prefix, or every object tagged (surrogate key). Light (default)
    /// marks objects stale, to be revalidated; --hard deletes them.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["url", "prefix", "tag"])))]
    Purge {
        /// scheme://host/path?query, exactly.
        #[arg(long)]
        url: Option<String>,
        /// scheme://host/path-prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// A value of the configured tag header ([cache] tag_header).
        #[arg(long)]
        tag: Option<String>,
        /// Delete the objects instead of marking them stale.
        #[arg(long)]
        hard: bool,
    },
    /// Stop gracefully (as SIGTERM): refuse new connections, finish the
    /// open ones (bounded by timeouts.drain_ms), then exit.
    Drain,
    /// Validate a config file against the running engine's schema.
    Validate { file: PathBuf },
    /// Validate and apply a config file as a new snapshot.
    Apply { file: PathBuf },
    /// Running configuration vs the file on disk, per section.
    Diff,
    /// Back to the previous kept version.
    Rollback,
    /// Validate FILE like `check`, bundle it with the files it names,
    /// sign it and write it to a fleet's etcd (compare-and-swap: a
    /// concurrent publish makes this one fail with exit code 3).
    Publish {
        file: PathBuf,
        /// The ed25519 private key (PKCS#8 PEM, `ctl keygen`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long)]
        cluster: String,
        /// The bundle's version string (default: time and digest).
        #[arg(long)]
        version: Option<String>,
        /// Write only over this bundle revision (0: none published yet);
        /// default: the revision read just before.
        #[arg(long)]
        expect_revision: Option<i64>,
        /// The bundle's serial (default: above the current bundle's and at
        /// least the time in ms). Hosts
        /// refuse a serial that is not newer than the one they run: set it
        /// only when etcd lost its data.
        #[arg(long)]
        serial: Option<u64>,
        /// Roll out progressively: cumulative wave sizes, e.g. `1,25%,100%`
        /// (a host count or a share of the cluster's members). Each wave
        /// applies once every host of the earlier ones passed its gate; a
        /// failed gate stops the rollout and rolls the updated hosts back.
        #[arg(long)]
        rollout: Option<String>,
        /// Gate: largest share of 5xx responses during the bake.
        #[arg(long, requires = "rollout", default_value_t = 0.05)]
        gate_max_error_ratio: f64,
        /// Gate: largest p99 during the bake, as a multiple of the same
        /// host's p99 before the apply.
        #[arg(long, requires = "rollout", default_value_t = 2.0)]
        gate_max_p99_ratio: f64,
        /// Gate: fewer responses than this in a window and it is not
        /// judged (passes with a note).
        #[arg(long, requires = "rollout", default_value_t = 20)]
        gate_min_requests: u64,
        /// How long each host runs the bundle before its gate is judged.
        #[arg(long, requires = "rollout", default_value_t = 30)]
        bake_s: u64,
    },
    /// Write a new ed25519 key pair for signing bundles: OUT (private,
    /// 0600) and OUT.pub.
    Keygen { out: PathBuf },
    /// A fleet's hosts as they report themselves in etcd.
    Fleet {
        #[command(subcommand)]
        cmd: FleetSub,
    },
    /// Live per-worker rates (packets, requests, busy %), refreshed.
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum FleetSub {
    /// Hosts, their bundle version and revision, in sync or not, and the
    /// ones gone silent; exit 1 unless all are live and in sync.
    Status {
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long)]
        cluster: String,
    },
    /// Remove a decommissioned host from the fleet's members (it must
    /// have stopped reporting): `status` stops naming it silent and
    /// rollouts stop waiting for it.
    Forget {
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long)]
        cluster: String,
        host: String,
    },
}

#[derive(Subcommand)]
enum XdpCmd {
    /// Remove the program a fail-closed engine left attached (its pinned
    /// link); a running engine keeps its own until it exits.
    Detach {
        #[arg(long)]
        iface: String,
        /// Network namespace of the interface.
        #[arg(long)]
        netns: Option<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab (network namespaces named PREFIX…, a veth with
    /// --queues queues as the edge's NIC, an origin) and print its status.
    Up {
        #[arg(long, default_value = "fg-")]
        prefix: String,
        #[arg(long, default_value_t = 2)]
        queues: u32,
        /// Impair a side's link: `SIDE[.tx|.rx]:key=value,…` with SIDE
        /// client, origin or both; keys loss, delay, jitter, reorder,
        /// reorder_hold, dup, corrupt, rate, limit (e.g.
        /// `client:loss=1%,delay=20ms,jitter=5ms`). Repeatable.
        #[arg(long = "impair", value_name = "SPEC")]
        impair: Vec<lab::impair::ImpairArg>,
    },
    /// Change the impairments of a running lab (a side without a relay
    /// gets one; `--clear` with no `--set` forwards unimpaired).
    Impair {
        #[arg(long, default_value = "fg-")]
        prefix: String,
        /// client, origin or both, optionally .tx or .rx (seen from the side).
        #[arg(long)]
        side: String,
        /// `key=value,…` on top of the current spec.
        #[arg(long, default_value = "")]
        set: String,
        /// Start from no impairment instead of the current spec.
        #[arg(long)]
        clear: bool,
    },
    /// The impairment relay of one side (started by the lab, in its wire
    /// namespace).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        side: String,
    },
    /// Stop the lab's processes and remove its namespaces and links.
    Down {
        #[arg(long, default_value = "fg-")]
        prefix: String,
    },
    /// The lab's namespaces, addresses and links (or that it is down).
    Status {
        #[arg(long, default_value = "fg-")]
        prefix: String,
    },
    /// Lab up, engine up, curl and wrk through the VIP, counters, lab down.
    Demo {
        #[arg(long, default_value = "fg-")]
        prefix: String,
        #[arg(long, default_value_t = 2)]
        queues: u32,
        #[arg(long, default_value = "configs/lab.toml")]
        config: PathBuf,
        /// af_xdp or af_packet (overrides the config).
        #[arg(long)]
        backend: Option<String>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn parse_backend(s: &str) -> Result<ferrogate_engine::BackendChoice> {
    use ferrogate_engine::BackendChoice::*;
    Ok(match s {
        "af_xdp" => AfXdp,
        "af_packet" => AfPacket,
        "auto" => Auto,
        "dpdk" => Dpdk,
        other => anyhow::bail!("--backend {other:?}: expected af_xdp, af_packet, dpdk or auto"),
    })
}

fn numa_plan(config: &std::path::Path, netns: Option<&str>) -> Result<()> {
    use ferrogate_engine::numa;
    let compiled = config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let machine = numa::Machine::discover()?;
    for n in &machine.nodes {
        let cores: Vec<String> = n.cores.iter().map(|c| format!("{:?}", c.pus)).collect();
        println!("node {}: cores {}", n.id, cores.join(" "));
    }
    let iface = compiled.engine.iface.clone();
    // The NIC's node is read before entering a namespace (sysfs is the host's).
    let nic_node = numa::nic_node(&iface);
    if let Some(ns) = netns.or(compiled.netns.as_deref()) {
        println!("interface {iface} in namespace {ns}: NUMA node {nic_node:?}");
    }
    let plan = numa::plan(
        &machine,
        &numa::PlanRequest {
            queues: compiled.engine.queues,
            nic_node,
            tuning: &compiled.engine.numa,
        },
    )?;
    print!("{}", plan.render());
    for w in &plan.workers {
        println!(
            "  advice: pin the IRQ of {iface} queue {} to cpu {} (echo {} > /proc/irq/<irq>/smp_affinity_list)",
            w.queue, w.cpu, w.cpu
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            engine,
            admin_socket,
            state_dir,
            engine_socket,
            admin_tcp,
            admin_token_file,
            no_control,
        } => {
            if let Some(b) = &engine.backend {
                parse_backend(b)?;
            }
            let admin_socket = socket_opt(admin_socket);
            let engine_socket = engine_socket.unwrap_or_else(|| {
                admin_socket
                    .as_deref()
                    .and_then(|p| p.parent())
                    .unwrap_or(std::path::Path::new("/run/ferrogate"))
                    .join("engine.sock")
            });
            let mut control_args = Vec::new();
            if let Some(a) = admin_tcp {
                control_args.extend(["--admin-tcp".to_string(), a.to_string()]);
            }
            if let Some(t) = admin_token_file {
                control_args.extend(["--admin-token-file".to_string(), t.display().to_string()]);
            }
            supervise::run(supervise::SuperviseArgs {
                engine_args: engine.to_args(),
                config,
                admin_socket,
                engine_socket,
                state_dir,
                control_args,
                control: !no_control,
            })
        }
        Cmd::Engine {
            config,
            engine,
            admin_socket,
            state_dir,
            upgrade,
        } => {
            let args = run::RunArgs {
                config,
                netns: engine.netns,
                stats_file: engine.stats_file,
                duration: engine.duration.map(Duration::from_secs),
                queues: engine.queues,
                backend: engine.backend.as_deref().map(parse_backend).transpose()?,
                admin_socket: socket_opt(admin_socket),
                state_dir,
                upgrade,
            };
            // A panic is a failure like any other: the exit code says
            // whether the running engine was touched.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run::run(args)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the engine panicked")));
            match r {
                // A successor that failed before the running engine let go
                // of anything says so by its exit code (the supervisor keeps
                // that engine as it is).
                Err(e) if upgrade && !ferrogate_control::upgrade::may_have_touched() => {
                    eprintln!("Error: {e:?}");
                    std::process::exit(ferrogate_control::upgrade::UNTOUCHED_EXIT);
                }
                // It handed the NIC over and the successor failed: the
                // supervisor starts a fresh engine on this code.
                Err(e) if e.is::<ferrogate_control::upgrade::Orphaned>() => {
                    eprintln!("Error: {e:?}");
                    std::process::exit(ferrogate_control::upgrade::ORPHANED_EXIT);
                }
                r => r,
            }
        }
        Cmd::Control {
            config,
            etcd,
            cluster,
            bootstrap,
            host,
            engine_socket,
            socket,
            admin_tcp,
            admin_token_file,
            state_dir,
            watch_ms,
        } => daemon::run(daemon::DaemonArgs {
            fleet: bootstrap.map(|bootstrap| fleet::FleetArgs {
                // Empty: the bootstrap file's endpoints.
                etcd: fleet::cli::endpoints(&etcd).unwrap_or_default(),
                cluster,
                bootstrap,
                host,
            }),
            config: config.unwrap_or_default(),
            engine_socket,
            socket: socket_opt(socket),
            tcp: admin_tcp,
            token_file: admin_token_file,
            state_dir,
            watch: Duration::from_millis(watch_ms.max(10)),
        }),
        Cmd::Ctl {
            cmd:
                CtlSub::Publish {
                    file,
                    key,
                    etcd,
                    cluster,
                    version,
                    expect_revision,
                    serial,
                    rollout,
                    gate_max_error_ratio,
                    gate_max_p99_ratio,
                    gate_min_requests,
                    bake_s,
                },
            ..
        } => {
            let rollout = rollout.map(|waves| fleet::rollout::Plan {
                max_error_ratio: gate_max_error_ratio,
                max_p99_ratio: gate_max_p99_ratio,
                min_requests: gate_min_requests,
                bake_s,
                ..fleet::rollout::Plan::new(&waves)
            });
            let args = fleet::cli::PublishArgs {
                file,
                key,
                etcd: fleet::cli::endpoints(&etcd)?,
                cluster,
                version,
                expect_revision,
                serial,
                rollout,
            };
            match fleet::cli::publish(&args) {
                Ok(out) => {
                    print!("{out}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(e.exit_code());
                }
            }
        }
        Cmd::Ctl {
            cmd: CtlSub::Keygen { out },
            ..
        } => {
            print!("{}", fleet::cli::keygen(&out)?);
            Ok(())
        }
        Cmd::Ctl {
            cmd:
                CtlSub::Fleet {
                    cmd: FleetSub::Status { etcd, cluster },
                },
            ..
        } => {
            let (code, out) = fleet::cli::fleet_status(&fleet::cli::endpoints(&etcd)?, &cluster)?;
            print!("{out}");
            std::process::exit(code);
        }
        Cmd::Ctl {
            cmd:
                CtlSub::Fleet {
                    cmd:
                        FleetSub::Forget {
                            etcd,
                            cluster,
                            host,
                        },
                },
            ..
        } => {
            let (code, out) =
                fleet::cli::fleet_forget(&fleet::cli::endpoints(&etcd)?, &cluster, &host)?;
            print!("{out}");
            std::process::exit(code);
        }
        Cmd::Ctl {
            socket,
            tcp,
            token_file,
            cmd,
        } => {
            let ep = match (tcp, token_file) {
                (None, _) => admin::Endpoint::Unix(socket),
                (Some(addr), Some(f)) => {
                    let token = std::fs::read_to_string(&f)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?
                        .trim()
                        .to_string();
                    admin::Endpoint::Tcp { addr, token }
                }
                (Some(_), None) => anyhow::bail!("--tcp needs --token-file"),
            };
            use ctl::CtlCmd;
            let cmd = match cmd {
                CtlSub::Status => CtlCmd::Status,
                CtlSub::Stats => CtlCmd::Stats,
                CtlSub::Metrics => CtlCmd::Metrics,
                CtlSub::Blocked => CtlCmd::Blocked,
                CtlSub::Unblock { addr } => CtlCmd::Unblock(addr),
                CtlSub::Purge {
                    url,
                    prefix,
                    tag,
                    hard,
                } => {
                    use ferrogate_proxy::cache::{Purge, PurgeTarget, core::PurgeMode};
                    let target = match (url, prefix, tag) {
                        (Some(u), _, _) => PurgeTarget::Url(u),
                        (_, Some(p), _) => PurgeTarget::Prefix(p),
                        (_, _, Some(t)) => PurgeTarget::Tag(t),
                        _ => unreachable!("clap requires one target"),
                    };
                    let mode = if hard {
                        PurgeMode::Hard
                    } else {
                        PurgeMode::Light
                    };
                    CtlCmd::Purge(Purge { mode, target })
                }
                CtlSub::Validate { file } => CtlCmd::Validate(file),
                CtlSub::Apply { file } => CtlCmd::Apply(file),
                CtlSub::Drain => CtlCmd::Drain,
                CtlSub::Diff => CtlCmd::Diff,
                CtlSub::Rollback => CtlCmd::Rollback,
                CtlSub::Top { interval_ms, count } => CtlCmd::Top {
                    interval: Duration::from_millis(interval_ms.max(100)),
                    count,
                },
                CtlSub::Publish { .. } | CtlSub::Keygen { .. } | CtlSub::Fleet { .. } => {
                    unreachable!("handled above")
                }
            };
            match ctl::ctl(&ep, cmd) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::Check { file } => match config::load(&file) {
            Ok(_) => {
                println!("{}: configuration ok", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: configuration invalid", file.display());
                std::process::exit(1);
            }
        },
        Cmd::Numa { config, netns } => numa_plan(&config, netns.as_deref()),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ferrogate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { out_dir } => match out_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                clap_mangen::generate_to(Cli::command(), &dir)
                    .with_context(|| format!("writing man pages to {}", dir.display()))?;
                Ok(())
            }
            None => clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page"),
        },
        Cmd::Xdp {
            cmd: XdpCmd::Detach { iface, netns },
        } => {
            let existed = match &netns {
                Some(ns) => lab::remove_xdp_pin(ns, &iface)?,
                None => ferrogate_ebpf::persist::remove_pin(&iface)?,
            };
            if existed {
                println!(
                    "{iface}: pinned XDP link removed; the program detaches unless an engine holds it"
                );
            } else {
                println!("{iface}: no pinned XDP link");
            }
            Ok(())
        }
        Cmd::Lab { cmd } => match cmd {
            LabCmd::Up {
                prefix,
                queues,
                impair,
            } => {
                lab::Lab::new(&prefix).up_with(queues, &impair)?;
                print!("{}", lab::Lab::new(&prefix).status());
                Ok(())
            }
            LabCmd::Down { prefix } => lab::Lab::new(&prefix).down(),
            LabCmd::Impair {
                prefix,
                side,
                set,
                clear,
            } => {
                let l = lab::Lab::new(&prefix);
                l.impair(&side, &set, clear)?;
                print!("{}", l.impair_status());
                Ok(())
            }
            LabCmd::Relay { prefix, side } => {
                let side = match side.as_str() {
                    "client" => lab::impair::Side::Client,
                    "origin" => lab::impair::Side::Origin,
                    other => anyhow::bail!("--side {other:?}: expected client or origin"),
                };
                lab::Lab::new(&prefix).run_relay(side)
            }
            LabCmd::Status { prefix } => {
                print!("{}", lab::Lab::new(&prefix).status());
                Ok(())
            }
            LabCmd::Demo {
                prefix,
                queues,
                config,
                backend,
                seconds,
            } => demo::demo(demo::DemoArgs {
                prefix,
                queues,
                config,
                backend,
                seconds,
            }),
        },
    }
}
