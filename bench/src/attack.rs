//! `attack` (issue #20): what one abusive client costs the proxy. The
//! client (wrk, a new connection per request) runs far over a per-source
//! limit of 5 requests/s; every request past the burst is answered 429.
//!
//! - `nginx-limit_req`: nginx `limit_req` (zone per `$binary_remote_addr`,
//!   burst 5 nodelay, status 429): proxy CPU per attack request.
//! - `ferrogate-l7`: `[[rate_limits]]` on the route, no escalation: worker
//!   CPU per attack request (TCP handshake, HTTP parse, the 429, close).
//! - `ferrogate-escalated`: the same limit with `escalate` (factor 2, 1 s):
//!   after the warm-up the client's address is in the XDP deny set; its
//!   SYNs are dropped before the stack sees them. Worker CPU per dropped
//!   attack packet, the proxy core's busy fraction, and the attack packets
//!   dropped per second (wrk's connections only retry their SYNs, so the
//!   offered rate is low; the drop's own per-packet cost is `flood`'s
//!   figure, where the same program drops a spoofed flood).

use anyhow::{Result, bail};

use crate::contenders::{self, Contender, Extra};
use crate::env::{LOAD_CPU, PROXY_CPU};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{Ctx, ratio, sample, settings};

const RATE: u32 = 5;
const BURST: u32 = 5;

fn fg_config(ctx: &Ctx, escalate: bool) -> Result<std::path::PathBuf> {
    let esc = if escalate {
        "escalate = { factor = 2, after_s = 1, ttl_s = 600 }\n"
    } else {
        ""
    };
    let extra = format!(
        "\n[[rate_limits]]\nname = \"attack\"\nrate = {RATE}\nburst = {BURST}\nkey = \"source\"\n{esc}"
    );
    let name = if escalate {
        "ferrogate-escalated.toml"
    } else {
        "ferrogate-l7.toml"
    };
    let p = contenders::ferrogate_config_tuned(&ctx.lab, 1, &PROXY_CPU.to_string(), &extra, name)?;
    // The limit on the origin route of configs/lab.toml.
    let text = std::fs::read_to_string(&p)?;
    let route = "name = \"origin\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    if !text.contains(route) {
        bail!("configs/lab.toml's origin route changed: cannot attach the limit");
    }
    std::fs::write(
        &p,
        text.replace(route, &format!("{route}rate_limits = [\"attack\"]\n")),
    )?;
    Ok(p)
}

fn nginx_extra() -> Extra {
    Extra {
        nginx: format!(
            "limit_req_zone $binary_remote_addr zone=attack:1m rate={RATE}r/s;\n\
             limit_req zone=attack burst={BURST} nodelay;\nlimit_req_status 429;\n"
        ),
        ..Extra::default()
    }
}

/// One turn: the attack for the warm-up, then measured.
fn turn(ctx: &Ctx, variant: &str) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let mut run = match variant {
        "nginx-limit_req" => contenders::start_extra(
            &ctx.lab,
            Contender::Nginx,
            None,
            1,
            &PROXY_CPU.to_string(),
            &nginx_extra(),
        )?,
        _ => {
            let cfg = fg_config(ctx, variant == "ferrogate-escalated")?;
            contenders::start(&ctx.lab, Contender::Ferrogate, Some(&cfg))?
        }
    };
    let url = format!("http://{}/attack", run.who.addr());
    let close = Some("Connection: close");
    // At least 3 s: the escalation needs a whole second over the factor
    // (once escalated, wrk connects nowhere and fails: expected).
    let warm = measure::wrk(&ctx.lab, &url, o.warmup.max(3), o.conns, close);
    if variant != "ferrogate-escalated" {
        warm?;
    }
    let w = measure::window_start(&ctx.lab, &run);
    let before = run.stats();
    let escalated = variant == "ferrogate-escalated";
    let (mut m, cmd) = match measure::wrk(&ctx.lab, &url, o.seconds, o.conns, close) {
        Ok(x) => x,
        // Every connection of the escalated client times out: wrk
        // reports nothing and fails, which is the point.
        Err(e) if escalated => {
            let mut m = Metrics::new();
            m.insert("requests".into(), 0.0);
            m.insert("rps".into(), 0.0);
            (m, format!("wrk (no connection made: {e:#})"))
        }
        Err(e) => return Err(e),
    };
    let after = run.stats();
    let d = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0)) as f64
    };
    let requests = m["requests"];
    let dropped = d("xdp_drop_escalated_packets");
    m.insert("dropped_pps".into(), dropped / o.seconds.max(1) as f64);
    m.insert("fg_limited".into(), d("limit_attack_limited"));
    m.insert(
        "fg_escalated_sources".into(),
        after.get("escalation_denied_sources").copied().unwrap_or(0) as f64,
    );
    let per = if escalated {
        if after.get("escalation_denied_sources").copied().unwrap_or(0) == 0 {
            bail!("the client was not escalated during the warm-up");
        }
        dropped
    } else {
        if m.get("non2xx").copied().unwrap_or(0.0) < requests * 0.9 {
            bail!("{variant}: fewer than 90 % of the attack requests were limited");
        }
        requests
    };
    measure::window_end(w, &run, per, &mut m);
    if escalated {
        // Worker time per dropped attack packet (window_end divided by
        // requests counted in the stack, which are none here).
        m.insert(
            "proxy_us_per_op".into(),
            d("workers_busy_ns") / dropped.max(1.0) / 1e3,
        );
    }
    let cmds = vec![run.command.clone(), cmd];
    run.stop();
    Ok((m, cmds))
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("attack", ctx.meta.clone());
    settings(ctx, &mut r);
    r.settings.insert(
        "limit".into(),
        format!("{RATE}/s per source, burst {BURST}"),
    );
    r.columns = vec![
        col("rps", "attack req/s answered", 1.0),
        col(
            "proxy_us_per_op",
            "proxy µs per attack request (escalated: per dropped packet)",
            1.0,
        ),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
        col("dropped_pps", "XDP drops/s", 1.0),
    ];
    r.ratios = vec![ratio(
        "proxy_us_per_op",
        "proxy CPU vs nginx",
        "nginx-limit_req",
    )];
    r.plots = vec![(
        "proxy_us_per_op".into(),
        "attack: proxy CPU per attack request".into(),
    )];
    r.notes.push(format!("One client (wrk -c {} -H 'Connection: close', CPU{LOAD_CPU}) far over a limit of {RATE} requests/s per source (burst {BURST}); the proxy on CPU{PROXY_CPU}. Warm-up {} s (at least 3: ferrogate-escalated needs a whole second at twice the rate), then {} s measured.", ctx.opts.conns, ctx.opts.warmup.max(3), ctx.opts.seconds));
    r.notes.push("ferrogate-escalated: the client's SYNs are dropped by the XDP program (xdp_drop_escalated_packets); its wrk connections only retransmit SYNs, so few packets arrive and `proxy µs` is the worker's time per dropped packet (the worker sees none of them). The XDP drop itself runs in the veth's softirq on the sender's CPU in the lab; see `flood` for its ns per packet.".into());
    r.notes.push(crate::scenarios::CPU_NOTE.into());
    for round in 0..ctx.opts.rounds {
        for variant in ["nginx-limit_req", "ferrogate-l7", "ferrogate-escalated"] {
            eprintln!("attack round {round}: {variant}");
            r.samples.push(match turn(ctx, variant) {
                Ok((m, c)) => sample("close", variant, round, m, c, None),
                Err(e) => sample(
                    "close",
                    variant,
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
