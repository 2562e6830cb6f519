//! `plugins` (issue #22): what a proxy-wasm plugin costs per request. The
//! same keep-alive load (wrk, tiny body) through ferrogate without a
//! plugin and with the AssemblyScript header adder
//! (`stack/plugins/tests/as`, a request and a response header per request)
//! on the listener, alternating in each round; the proxy CPU per request of
//! each and their difference, and the plugin's memory on the one worker:
//! the guest's linear memory (`stack_plugin_memory_bytes`) and the edge's
//! RSS with the plugin minus without. A third turn runs the same headers
//! from a hand-written module (`stack/plugins/examples/header_adder.wat`):
//! what the host itself costs, apart from an SDK's guest code.

use anyhow::{Result, bail};

use crate::contenders::{self, Contender, workspace};
use crate::env::PROXY_CPU;
use crate::measure::Metrics;
use crate::report::{Report, col};
use crate::scenarios::{Ctx, ratio, sample, settings, wrk_turn};

const BASE: &str = "ferrogate";
const PLUGIN: &str = "ferrogate-plugin";
/// The hand-written module adding the same headers (no SDK).
const PLUGIN_WAT: &str = "ferrogate-plugin-wat";

fn config(ctx: &Ctx, variant: &str) -> Result<std::path::PathBuf> {
    if variant == BASE {
        return contenders::ferrogate_config_tuned(
            &ctx.lab,
            1,
            &PROXY_CPU.to_string(),
            "",
            "ferrogate-noplugin.toml",
        );
    }
    let wasm = if variant == PLUGIN {
        let wasm = workspace().join("stack/plugins/tests/as/build/header_adder.wasm");
        if !wasm.exists() {
            bail!(
                "{} missing: run stack/plugins/tests/as/build.sh",
                wasm.display()
            );
        }
        wasm
    } else {
        // The same two headers by hand: the host's own cost.
        let text = workspace().join("stack/plugins/examples/header_adder.wat");
        let bytes = wat::parse_file(&text)?;
        let wasm = ctx.lab.bench_dir().join("header_adder_wat.wasm");
        std::fs::write(&wasm, bytes)?;
        wasm
    };
    let extra = format!(
        "\n[[plugins]]\nname = \"adder\"\nwasm = \"{}\"\nroot_id = \"header_adder\"\nconfiguration = \"bench\"\n",
        wasm.display()
    );
    let p = contenders::ferrogate_config_tuned(
        &ctx.lab,
        1,
        &PROXY_CPU.to_string(),
        &extra,
        &format!("{variant}.toml"),
    )?;
    let text = std::fs::read_to_string(&p)?;
    let listener = "[[listeners]]\nport = 80\n";
    if !text.contains(listener) {
        bail!("configs/lab.toml's port 80 listener changed: cannot attach the plugin");
    }
    std::fs::write(
        &p,
        text.replacen(listener, &format!("{listener}plugins = [\"adder\"]\n"), 1),
    )?;
    Ok(p)
}

/// VmRSS of every process in the edge namespace (supervisor + engine), KiB.
fn edge_rss_kb(ctx: &Ctx) -> u64 {
    ctx.lab
        .pids("edge")
        .iter()
        .map(|&p| crate::idle::proc_status_kb(p, "VmRSS"))
        .sum()
}

fn turn(ctx: &Ctx, variant: &str) -> Result<(Metrics, Vec<String>)> {
    let plugin = variant != BASE;
    let cfg = config(ctx, variant)?;
    let mut run = contenders::start(&ctx.lab, Contender::Ferrogate, Some(&cfg))?;
    let r = wrk_turn(ctx, &run, "/", None);
    let stats = run.stats();
    let rss = edge_rss_kb(ctx);
    run.stop();
    let (mut m, cmds) = r?;
    let calls = stats.get("stack_plugin_calls").copied().unwrap_or(0);
    if plugin && calls == 0 {
        bail!("the plugin was not called");
    }
    if plugin && stats.get("stack_plugin_failures").copied().unwrap_or(0) > 0 {
        bail!("the plugin failed: {stats:?}");
    }
    m.insert("plugin_calls".into(), calls as f64);
    m.insert(
        "plugin_memory_kib".into(),
        stats.get("stack_plugin_memory_bytes").copied().unwrap_or(0) as f64 / 1024.0,
    );
    m.insert("edge_rss_kib".into(), rss as f64);
    Ok((m, cmds))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    (!v.is_empty()).then(|| v[v.len() / 2])
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("plugins", ctx.meta.clone());
    settings(ctx, &mut r);
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
        col("plugin_us_delta", "plugin Δ µs/req", 1.0),
        col("plugin_memory_kib", "guest memory KiB/worker", 1.0),
        col("edge_rss_kib", "edge RSS KiB", 1.0),
    ];
    r.ratios = vec![ratio("proxy_us_per_op", "proxy CPU vs no plugin", BASE)];
    r.plots = vec![(
        "proxy_us_per_op".into(),
        "plugins: proxy CPU per request".into(),
    )];
    r.notes.push(format!("wrk -c {} keep-alive GET / (tiny body) through ferrogate on port 80, one worker on CPU{PROXY_CPU}; `{BASE}`: configs/lab.toml as is, `{PLUGIN}`: the same with the AssemblyScript header adder (assemblyscript 0.17.14 + @solo-io/proxy-runtime 0.1.8, stack/plugins/tests/as/assembly/header_adder.ts: one request header, one response header) on the listener, `{PLUGIN_WAT}`: the same two headers added by a hand-written module (stack/plugins/examples/header_adder.wat, one host call per header: the host's own cost without an SDK's guest code). Alternating in each round; `plugin Δ µs/req` = the plugin turn's proxy µs/req minus the same round's turn without it. Goal (issue #22): ≤ +1 µs.", ctx.opts.conns));
    r.notes.push("guest memory KiB/worker: the plugin instance's wasm linear memory on the one worker after the load (`stack_plugin_memory_bytes`); edge RSS: VmRSS of the edge namespace's processes (supervisor + engine) after the load — the difference between the variants adds the compiled module and the wasmtime store to the guest memory.".into());
    r.notes.push(crate::scenarios::CPU_NOTE.into());
    let mut deltas = Vec::new();
    let mut rss_deltas = Vec::new();
    let mut wat_deltas = Vec::new();
    for round in 0..ctx.opts.rounds {
        let mut base: Option<Metrics> = None;
        for variant in [BASE, PLUGIN, PLUGIN_WAT] {
            eprintln!("plugins round {round}: {variant}");
            r.samples.push(match turn(ctx, variant) {
                Ok((mut m, c)) => {
                    if variant == BASE {
                        base = Some(m.clone());
                    } else if let Some(b) = &base {
                        let d = m["proxy_us_per_op"] - b["proxy_us_per_op"];
                        m.insert("plugin_us_delta".into(), d);
                        if variant == PLUGIN {
                            deltas.push(d);
                            rss_deltas.push(m["edge_rss_kib"] - b["edge_rss_kib"]);
                        } else {
                            wat_deltas.push(d);
                        }
                    }
                    sample("tiny", variant, round, m, c, None)
                }
                Err(e) => sample(
                    "tiny",
                    variant,
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    if let (Some(d), Some(rss)) = (median(deltas.clone()), median(rss_deltas)) {
        r.notes.push(format!(
            "median over {} rounds: plugin Δ {d:+.2} µs/req; edge RSS with the plugin − without: {rss:+.0} KiB",
            deltas.len()
        ));
    }
    if let Some(d) = median(wat_deltas) {
        r.notes.push(format!(
            "median: `{PLUGIN_WAT}` Δ {d:+.2} µs/req (the host's own cost; the rest of `{PLUGIN}`'s is the SDK's guest code)"
        ));
    }
    Ok(r)
}
