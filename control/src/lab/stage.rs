//! The lab's impairment stage: per side, the host's port leaves the bridge
//! and a relay process in the wire namespace joins it to a new veth pair
//! (`c-rly` ↔ `c-br`, `c-br` on the bridge), impairing frames both ways.
//! Files in the lab state dir: `impair-<side>.spec` (what the relay
//! applies, re-read on SIGHUP), `.stats` (its counters, every 250 ms),
//! `.pid`, `.log`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::impair::{Dir, Side, SideSpec, parse_patch, parse_target};
use super::relay::{self, RelayArgs};
use super::{Lab, ip, netns_pids, run_in};

impl Lab {
    pub fn impair_file(&self, side: Side, ext: &str) -> PathBuf {
        self.state_dir()
            .join(format!("impair-{}.{ext}", side.name()))
    }

    /// The relay's pid, if it runs.
    fn relay_pid(&self, side: Side) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.impair_file(side, "pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The pid must be a process in our wire namespace (not a reused pid).
        netns_pids(&self.wire()).contains(&pid).then_some(pid)
    }

    /// The relay's counters (`tx_lost`, `rx_corrupted`, …), empty if none.
    pub fn impair_stats(&self, side: Side) -> HashMap<String, u64> {
        std::fs::read_to_string(self.impair_file(side, "stats"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// The spec a side's relay applies (None: no relay on that side).
    pub fn impairment(&self, side: Side) -> Option<SideSpec> {
        let text = std::fs::read_to_string(self.impair_file(side, "spec")).ok()?;
        SideSpec::from_file(&text).ok()
    }

    /// Changes impairments at run time: `target` is `client`, `origin` or
    /// `both`, optionally `.tx`/`.rx`; `set` is `key=value,…` applied on
    /// top of the current spec, or with `clear` on top of no impairment.
    /// A side without a relay gets one. Returns when every relay applies
    /// the new spec.
    pub fn impair(&self, target: &str, set: &str, clear: bool) -> Result<()> {
        if !self.exists() {
            bail!("lab {:?} is not up", self.prefix);
        }
        let (sides, dirs) = parse_target(target)?;
        let patch = parse_patch(set)?;
        for side in sides {
            let mut spec = self.impairment(side).unwrap_or_default();
            for &d in &dirs {
                if clear {
                    *spec.dir_mut(d) = Default::default();
                }
                spec.dir_mut(d).apply(&patch);
            }
            match self.relay_pid(side) {
                Some(pid) => {
                    let before = self.impair_stats(side).get("spec_generation").copied();
                    std::fs::write(self.impair_file(side, "spec"), spec.to_file())?;
                    // SAFETY: kill(2) on the relay of our own lab.
                    unsafe { libc::kill(pid, libc::SIGHUP) };
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while self.impair_stats(side).get("spec_generation").copied() == before {
                        if Instant::now() > deadline {
                            bail!("the {} relay did not apply the new spec", side.name());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                None => self.insert_relay(side, &spec)?,
            }
        }
        Ok(())
    }

    /// Puts a relay between the side's port and the bridge (the port is
    /// taken off the bridge if it is on it) and waits until it runs.
    pub(super) fn insert_relay(&self, side: Side, spec: &SideSpec) -> Result<()> {
        let wire = self.wire();
        let t = side.tag();
        let (port, rly, br) = (format!("{t}-port"), format!("{t}-rly"), format!("{t}-br"));
        std::fs::write(self.impair_file(side, "spec"), spec.to_file())?;
        let _ = std::fs::remove_file(self.impair_file(side, "stats"));
        // A relay that died leaves its veth pair: replace it.
        let _ = ip(&["-n", &wire, "link", "del", &rly]);
        ip(&[
            "-n", &wire, "link", "add", "name", &rly, "type", "veth", "peer", "name", &br,
        ])?;
        // No IPv6 link-local chatter (router/neighbour solicitations) from
        // the relay's own interfaces.
        for dev in [&port, &rly, &br] {
            let key = format!("net.ipv6.conf.{dev}.disable_ipv6=1");
            let _ = run_in(&wire, &["sysctl", "-qw", &key]);
        }
        // The relay must see MTU-sized frames with full checksums: no
        // segmentation or receive offloads on any end it touches.
        for dev in [&port, &rly, &br] {
            run_in(
                &wire,
                &[
                    "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )
            .with_context(|| format!("ethtool -K {dev} offloads off"))?;
        }
        // Kernel senders anywhere in the lab could reach the relay with GSO
        // super-frames (the edge's nginx, the origin, the client): no TSO.
        for ns in [self.client(), self.edge(), self.origin()] {
            run_in(&ns, &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])
                .with_context(|| format!("ethtool -K eth0 tso off gso off in {ns}"))?;
        }
        let side_ns = match side {
            Side::Client => self.client(),
            Side::Origin => self.origin(),
        };
        run_in(&side_ns, &["ethtool", "-K", "eth0", "gro", "off"])?;
        // Relay up before the port leaves the bridge: a short outage only.
        let log = std::fs::File::create(self.impair_file(side, "log"))?;
        let bin = std::env::current_exe().context("the ferrogate binary")?;
        let st = Command::new("ip")
            .args(["netns", "exec", &wire, "setsid", "-f"])
            .arg(&bin)
            .args([
                "lab",
                "relay",
                "--prefix",
                &self.prefix,
                "--side",
                side.name(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("starting the relay")?;
        if !st.success() {
            bail!("starting the {} relay: {st}", side.name());
        }
        ip(&["-n", &wire, "link", "set", "dev", &rly, "up"])?;
        ip(&["-n", &wire, "link", "set", "dev", &port, "nomaster"])?;
        ip(&["-n", &wire, "link", "set", "dev", &br, "master", "br0"])?;
        ip(&["-n", &wire, "link", "set", "dev", &br, "up"])?;
        ip(&["-n", &wire, "link", "set", "dev", &port, "up"])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.impair_stats(side).is_empty() || self.relay_pid(side).is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the {} relay did not start; its log:\n{}",
                    side.name(),
                    std::fs::read_to_string(self.impair_file(side, "log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// What `lab relay` runs (in the wire namespace).
    pub fn run_relay(&self, side: Side) -> Result<()> {
        let t = side.tag();
        relay::run(RelayArgs {
            host_if: format!("{t}-port"),
            lab_if: format!("{t}-rly"),
            spec_file: self.impair_file(side, "spec"),
            stats_file: self.impair_file(side, "stats"),
            pid_file: self.impair_file(side, "pid"),
        })
    }

    /// `lab status` lines about impairments.
    pub fn impair_status(&self) -> String {
        let mut s = String::new();
        for side in Side::ALL {
            let Some(spec) = self.impairment(side) else {
                continue;
            };
            let run = match self.relay_pid(side) {
                Some(pid) => format!("relay pid {pid}"),
                None => "relay NOT running".to_string(),
            };
            s.push_str(&format!("impairment {} ({run}):\n", side.name()));
            let stats = self.impair_stats(side);
            for d in Dir::ALL {
                let c: Vec<String> = [
                    "frames_in",
                    "frames_out",
                    "lost",
                    "duplicated",
                    "corrupted",
                    "reordered",
                    "queue_drops",
                ]
                .iter()
                .map(|k| {
                    format!(
                        "{k}={}",
                        stats.get(&format!("{}_{k}", d.name())).unwrap_or(&0)
                    )
                })
                .collect();
                s.push_str(&format!(
                    "  {} {}\n    {}\n",
                    d.name(),
                    spec.dir(d),
                    c.join(" ")
                ));
            }
        }
        s
    }
}
