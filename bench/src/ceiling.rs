//! `ceiling`: what the engine itself costs per request, with no kernel in
//! the path. The real engine (one worker, busy polling, pinned to the proxy
//! CPU) runs on an in-memory port; on the load CPU a userspace peer with its
//! own TCP/IP stack plays the keep-alive clients and the origin. Reports
//! requests/s, the worker's busy ns per request, frames per request and its
//! busy ratio: below ~0.9 the peer, not the worker, is the bottleneck, and
//! ns/req (from busy time) is the figure to read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrogate_engine::{Engine, EngineConfig, EngineStats, MemPeer, PollingMode, mem_port};
use ferrogate_proxy::rules::{Cidr, PathTest, Rule, RuleAction, RuleMatch, Rules, ValueTest};
use ferrogate_proxy::{DirectResponse, Listener, Route, RouteAction, RouteTable, Upstream};
use ferrogate_testkit::peer::{HttpPeer, Link, PeerConfig};

use crate::env::{LOAD_CPU, PROXY_CPU};
use crate::measure::Metrics;
use crate::report::{Report, Sample, col};

/// L7 rules of the `ferrogate-N-rules` contender.
const RULES: usize = 1000;

/// Variants: (name, response body bytes, one request per connection).
const VARIANTS: [(&str, usize, bool); 3] = [
    ("tiny", 13, false),
    ("16k", 16 * 1024, false),
    ("close", 13, true),
];

struct PeerLink(MemPeer);

impl Link for PeerLink {
    fn send(&mut self, frame: &[u8]) -> bool {
        self.0.send(frame)
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        self.0.recv(max, f)
    }
}

pub struct Opts {
    pub rounds: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub conns: u32,
    pub smoke: bool,
}

fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Totals {
    ok: u64,
    bad: u64,
    requests: u64,
    busy_ns: u64,
    frames: u64,
}

fn totals(peer_ok: u64, peer_bad: u64, s: &EngineStats) -> Totals {
    let w = &s.workers[0];
    Totals {
        ok: peer_ok,
        bad: peer_bad,
        requests: w.stack.requests,
        busy_ns: w.busy_ns,
        frames: w.io.rx_frames + w.io.tx_frames,
    }
}

/// Rules that no request of the peer matches (issue #20's figure: proxy
/// CPU per request with 1,000 rules): a quarter each of path prefixes,
/// whole-path regexes (one `RegexSet`), header presence and source
/// addresses, evaluated in full for every request.
fn unmatched_rules(n: usize) -> Rules {
    let deny = RuleAction::Deny(Arc::new(DirectResponse {
        status: 403,
        content_type: "text/plain".into(),
        body: b"no\n".to_vec(),
        location: None,
        retry_after: None,
        www_authenticate: None,
    }));
    let rules = (0..n)
        .map(|i| {
            let m = match i % 4 {
                0 => RuleMatch {
                    path: Some(PathTest::Prefix(format!("/never/{i}/"))),
                    ..Default::default()
                },
                1 => RuleMatch {
                    path: Some(PathTest::Regex(format!("/r{i}/[a-z]+\\.php"))),
                    ..Default::default()
                },
                2 => RuleMatch {
                    headers: vec![(format!("x-never-{i}"), ValueTest::Present)],
                    ..Default::default()
                },
                _ => RuleMatch {
                    sources: vec![
                        Cidr::new(
                            std::net::IpAddr::from([198, 18, (i >> 8) as u8, i as u8]),
                            32,
                        )
                        .expect("a /32"),
                    ],
                    ..Default::default()
                },
            };
            Rule::new(format!("r{i}"), m, deny.clone())
        })
        .collect();
    Rules::new(rules).expect("the rules compile")
}

/// One measurement: `warmup` then `seconds` of load through a fresh engine
/// whose listener has `rules` unmatched L7 rules.
fn measure(o: &Opts, body_len: usize, close_each: bool, rules: usize) -> Result<Metrics> {
    let (port, peer_end) = mem_port(4096);
    // A NIC would check and fill checksums: so does this port.
    let port = port.with_checksum_offload(true);
    let peer_cfg = PeerConfig {
        checksum_offload: true,
        close_each,
        ..PeerConfig::memory_lab(o.conns as usize, body_len)
    };
    let pool = Arc::new(Upstream::simple("origin", 0, &[peer_cfg.origin()]));
    let listener = Listener::new(
        80,
        vec![Route::new("all", RouteAction::Proxy(pool.clone()))],
    )
    .with_rules(unmatched_rules(rules));
    let routes = RouteTable::new(1, vec![listener], vec![pool]);
    let mut cfg = EngineConfig::new("mem0", vec![peer_cfg.vip_cidr()], Arc::new(routes));
    cfg.polling = PollingMode::Busy;
    cfg.cpus = vec![PROXY_CPU];
    let engine = Engine::start_on_memory(cfg, vec![port]).context("engine on a memory port")?;
    pin_this_thread(LOAD_CPU);
    let mut peer = HttpPeer::new(
        PeerLink(peer_end),
        peer_cfg,
        smoltcp::time::Instant::from_millis(0),
    );
    let start = Instant::now();
    let poll_until = |peer: &mut HttpPeer<PeerLink>, end: Instant| {
        while Instant::now() < end {
            peer.poll(smoltcp::time::Instant::from_micros(
                start.elapsed().as_micros() as i64,
            ));
        }
    };
    poll_until(&mut peer, start + Duration::from_secs(o.warmup));
    let p0 = peer.stats();
    let t0 = totals(p0.ok, p0.bad, &engine.stats());
    let m0 = Instant::now();
    poll_until(&mut peer, m0 + Duration::from_secs(o.seconds));
    let wall = m0.elapsed();
    let p1 = peer.stats();
    let t1 = totals(p1.ok, p1.bad, &engine.stats());
    engine.shutdown().context("engine stop")?;
    let ok = t1.ok - t0.ok;
    let requests = (t1.requests - t0.requests).max(1);
    let busy = t1.busy_ns - t0.busy_ns;
    let mut m = Metrics::new();
    m.insert("rps".into(), ok as f64 / wall.as_secs_f64());
    m.insert("worker_ns_per_req".into(), busy as f64 / requests as f64);
    m.insert(
        "req_per_core_s".into(),
        requests as f64 / (busy as f64 / 1e9).max(1e-9),
    );
    m.insert(
        "frames_per_req".into(),
        (t1.frames - t0.frames) as f64 / requests as f64,
    );
    m.insert("busy_ratio".into(), busy as f64 / wall.as_nanos() as f64);
    m.insert("bad_responses".into(), (t1.bad - t0.bad) as f64);
    m.insert("client_drops".into(), p1.client_drops as f64);
    if ok == 0 {
        bail!("no response in {} s", o.seconds);
    }
    Ok(m)
}

/// A measurement (metrics and the command that made them) as a sample;
/// an error is kept with it.
fn sample(variant: &str, who: &str, round: usize, m: Result<(Metrics, String)>) -> Sample {
    let (metrics, commands, error) = match m {
        Ok((m, cmd)) => (m, vec![cmd], None),
        Err(e) => (Metrics::new(), vec![], Some(format!("{e:#}"))),
    };
    Sample {
        variant: variant.into(),
        contender: who.into(),
        round,
        metrics,
        commands,
        error,
    }
}

pub fn run(o: &Opts, meta: BTreeMap<String, String>) -> Result<Report> {
    let mut r = Report::new("ceiling", meta);
    for (k, v) in [
        ("rounds", o.rounds.to_string()),
        ("seconds per measurement", o.seconds.to_string()),
        ("warm-up seconds", o.warmup.to_string()),
        ("smoke", o.smoke.to_string()),
        ("keep-alive client connections", o.conns.to_string()),
        ("peer CPU", LOAD_CPU.to_string()),
        ("worker CPU (busy polling)", PROXY_CPU.to_string()),
    ] {
        r.settings.insert(k.into(), v);
    }
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("worker_ns_per_req", "worker ns/req", 1.0),
        col("req_per_core_s", "req/s per busy core", 1.0),
        col("frames_per_req", "frames/req", 1.0),
        col("busy_ratio", "worker busy", 1.0),
        col("bad_responses", "bad responses", 1.0),
    ];
    r.plots = vec![(
        "worker_ns_per_req".into(),
        "ceiling: worker ns per request (in-memory port, no kernel)".into(),
    )];
    r.notes.push("The real engine (filter tier, stack, proxy, pooled upstream connections) on an in-memory port; the peer (keep-alive clients and the origin on one smoltcp stack) runs on the other CPU. `worker ns/req` is the worker's busy time (loop iterations that moved frames) per request; `worker busy` below ~0.9 means the peer could not keep the worker busy.".into());
    r.ratios = vec![
        crate::report::Ratio {
            key: "worker_ns_per_req".into(),
            label: "ns/req vs nginx-loopback".into(),
            baseline: "nginx-loopback".into(),
        },
        crate::report::Ratio {
            key: "worker_ns_per_req".into(),
            label: "ns/req vs ferrogate".into(),
            baseline: "ferrogate".into(),
        },
    ];
    r.notes.push(format!("ferrogate-{RULES}-rules (tiny only): the same engine with {RULES} L7 rules on the listener that no request matches (path prefixes, whole-path regexes in one RegexSet, header presence, source addresses: every rule is evaluated for every request); issue #20's goal is at most +1 µs per request over none."));
    r.notes.push("nginx-loopback: wrk → nginx (1 worker, CPU 1) → origin nginx on 127.0.0.1 (wrk and origin on CPU 0), upstream keepalive 64; its `worker ns/req` is the proxy nginx's utime+stime per request (tick-based). On loopback the sender's syscall runs the receiving TCP stack too, so nginx pays receive work for what it sends, not for what it is sent.".into());
    let scratch = crate::loopback::scratch();
    for round in 0..o.rounds {
        for (variant, body, close_each) in VARIANTS {
            eprintln!("ceiling round {round}: {variant} nginx-loopback");
            let nginx =
                crate::loopback::measure(&scratch, body, close_each, o.warmup, o.seconds, o.conns);
            r.samples
                .push(sample(variant, "nginx-loopback", round, nginx));
            eprintln!("ceiling round {round}: {variant}");
            let fg = measure(o, body, close_each, 0).map(|m| {
                let cmd = format!(
                    "in-process: Engine::start_on_memory (1 worker, busy, CPU {PROXY_CPU}) + testkit HttpPeer ({} conns, {body} B bodies, close_each={close_each}, CPU {LOAD_CPU})",
                    o.conns
                );
                (m, cmd)
            });
            if let Ok((m, _)) = &fg
                && m.get("bad_responses").is_some_and(|b| *b > 0.0)
            {
                bail!("{variant}: bad responses through the engine: {m:?}");
            }
            r.samples.push(sample(variant, "ferrogate", round, fg));
            if variant == "tiny" {
                eprintln!("ceiling round {round}: {variant} with {RULES} rules");
                let ruled = measure(o, body, close_each, RULES).map(|m| {
                    let cmd = format!(
                        "in-process: as ferrogate, the listener with {RULES} L7 rules no request matches"
                    );
                    (m, cmd)
                });
                r.samples.push(sample(
                    variant,
                    &format!("ferrogate-{RULES}-rules"),
                    round,
                    ruled,
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(r)
}
