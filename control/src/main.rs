//! The `ferrogate` command: run the engine, check configs, drive the lab.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferrogate_control::{admin, config, ctl, demo, lab, run};

#[derive(Parser)]
#[command(name = "ferrogate", version, about = "Kernel-bypass edge proxy")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the data plane with a TOML config (without one: the persisted
    /// last-known-good snapshot).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
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
        /// The admin API's Unix socket (mode 0600); `none` serves none.
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Where the last applied snapshot is persisted.
        #[arg(long, default_value = "/var/lib/ferrogate")]
        state_dir: PathBuf,
    },
    /// Talk to a running engine's admin API.
    Ctl {
        /// The admin API's Unix socket.
        #[arg(long, global = true, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
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
    /// Build, inspect, remove and demo the network-namespace lab.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand)]
enum CtlSub {
    /// Running version, uptime, backend, workers, filter generation.
    Status,
    /// The engine's counters, `name value` lines.
    Stats,
    /// Prometheus text exposition.
    Metrics,
    /// Validate a config file against the running engine's schema.
    Validate { file: PathBuf },
    /// Validate and apply a config file as a new snapshot.
    Apply { file: PathBuf },
    /// Running configuration vs the file on disk, per section.
    Diff,
    /// Back to the previous kept version.
    Rollback,
}

#[derive(Subcommand)]
enum LabCmd {
    Up {
        #[arg(long, default_value = "fg-")]
        prefix: String,
        #[arg(long, default_value_t = 2)]
        queues: u32,
    },
    Down {
        #[arg(long, default_value = "fg-")]
        prefix: String,
    },
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
            netns,
            stats_file,
            duration,
            queues,
            backend,
            admin_socket,
            state_dir,
        } => run::run(run::RunArgs {
            config,
            netns,
            stats_file,
            duration: duration.map(Duration::from_secs),
            queues,
            backend: backend.as_deref().map(parse_backend).transpose()?,
            admin_socket: (admin_socket.as_os_str() != "none").then_some(admin_socket),
            state_dir,
        }),
        Cmd::Ctl { socket, cmd } => {
            use ctl::CtlCmd;
            let cmd = match cmd {
                CtlSub::Status => CtlCmd::Status,
                CtlSub::Stats => CtlCmd::Stats,
                CtlSub::Metrics => CtlCmd::Metrics,
                CtlSub::Validate { file } => CtlCmd::Validate(file),
                CtlSub::Apply { file } => CtlCmd::Apply(file),
                CtlSub::Diff => CtlCmd::Diff,
                CtlSub::Rollback => CtlCmd::Rollback,
            };
            match ctl::ctl(&socket, cmd) {
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
        Cmd::Lab { cmd } => match cmd {
            LabCmd::Up { prefix, queues } => {
                lab::Lab::new(&prefix).up(queues)?;
                print!("{}", lab::Lab::new(&prefix).status());
                Ok(())
            }
            LabCmd::Down { prefix } => lab::Lab::new(&prefix).down(),
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
