//! The lab of DESIGN.md: network namespaces, a bridge and veth pairs that
//! stand in for a NIC, a client, and an origin. Built and removed with `ip`;
//! every name carries a prefix so parallel runs do not collide.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub mod impair;
mod pipe;
pub mod relay;
mod stage;

use impair::{ImpairArg, Side, SideSpec};

pub const VIP: &str = "10.77.0.10";
pub const CLIENT_IP: &str = "10.77.0.2";
pub const EDGE_HOST_IP: &str = "10.77.0.1";
pub const ORIGIN_IP: &str = "10.77.0.3";
pub const VIP6: &str = "fd77::10";
pub const CLIENT_IP6: &str = "fd77::2";
pub const EDGE_HOST_IP6: &str = "fd77::1";
pub const ORIGIN_IP6: &str = "fd77::3";

#[derive(Debug, Clone)]
pub struct Lab {
    pub prefix: String,
}

impl Lab {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn wire(&self) -> String {
        format!("{}wire", self.prefix)
    }
    pub fn client(&self) -> String {
        format!("{}client", self.prefix)
    }
    pub fn edge(&self) -> String {
        format!("{}edge", self.prefix)
    }
    pub fn origin(&self) -> String {
        format!("{}origin", self.prefix)
    }
    fn namespaces(&self) -> [String; 4] {
        [self.client(), self.edge(), self.origin(), self.wire()]
    }

    /// Where the lab keeps pid files, nginx configs and logs.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/run/ferrogate-lab/{}",
            self.prefix.trim_end_matches('-')
        ))
    }

    pub fn exists(&self) -> bool {
        netns_list().iter().any(|n| *n == self.edge())
    }

    /// Builds the lab; fails (after cleaning up) if any step fails.
    pub fn up(&self, queues: u32) -> Result<()> {
        self.up_with(queues, &[])
    }

    /// Builds the lab with impairment relays on the sides `impair` names.
    pub fn up_with(&self, queues: u32, impair: &[ImpairArg]) -> Result<()> {
        if self.exists() {
            bail!(
                "lab {:?} already exists: run `ferrogate lab down --prefix {}` first",
                self.prefix,
                self.prefix
            );
        }
        if queues == 0 || queues > 64 {
            bail!("--queues must be 1..=64");
        }
        let mut specs: Vec<(Side, SideSpec)> = Vec::new();
        for a in impair {
            for &side in &a.sides {
                let i = match specs.iter().position(|(s, _)| *s == side) {
                    Some(i) => i,
                    None => {
                        specs.push((side, SideSpec::default()));
                        specs.len() - 1
                    }
                };
                for &d in &a.dirs {
                    specs[i].1.dir_mut(d).apply(&a.patch);
                }
            }
        }
        let r = self.build(queues, &specs);
        if r.is_err() {
            let _ = self.down();
        }
        r
    }

    fn build(&self, queues: u32, impaired: &[(Side, SideSpec)]) -> Result<()> {
        std::fs::create_dir_all(self.state_dir()).context("creating the lab state directory")?;
        for ns in self.namespaces() {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // A kernel TCP socket picks a new flow hash after an RTO or a
            // spurious retransmission (net.core.txrehash). The veth keeps that
            // hash into the edge's port, so the flow would move to another
            // edge queue, whose worker has no socket for it and answers RST.
            // A NIC's RSS hashes the 4-tuple and never moves a flow that way.
            run_in(&ns, &["sysctl", "-qw", "net.core.txrehash=0"])
                .context("sysctl net.core.txrehash=0")?;
        }
        let wire = self.wire();
        ip(&["-n", &wire, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &wire, "link", "set", "br0", "up"])?;
        // With br_netfilter loaded, bridged frames would go through iptables,
        // which validates (and drops) malformed IP before the edge sees it.
        for table in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{table}=0");
            let _ = run_in(&wire, &["sysctl", "-qw", &key]);
        }
        let q = queues.to_string();
        let hosts = [
            (self.client(), "c", CLIENT_IP, CLIENT_IP6, "1"),
            (self.edge(), "e", EDGE_HOST_IP, EDGE_HOST_IP6, q.as_str()),
            (self.origin(), "o", ORIGIN_IP, ORIGIN_IP6, "1"),
        ];
        for (ns, tag, addr, addr6, nq) in hosts {
            let inner = format!("{tag}-eth0");
            let outer = format!("{tag}-port");
            ip(&[
                "-n",
                &wire,
                "link",
                "add",
                "name",
                &inner,
                "numtxqueues",
                nq,
                "numrxqueues",
                nq,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "numtxqueues",
                nq,
                "numrxqueues",
                nq,
            ])?;
            // An impaired side's port is joined to the bridge by its relay.
            if !impaired.iter().any(|(s, _)| s.tag() == tag) {
                ip(&["-n", &wire, "link", "set", "dev", &outer, "master", "br0"])?;
            }
            ip(&["-n", &wire, "link", "set", "dev", &outer, "up"])?;
            if tag == "e" {
                // The bridge moves a VLAN tag into skb metadata, and a veth
                // with tx VLAN offload keeps it there, so XDP on the edge would
                // see the frame untagged. Off: the tag is in the frame, as on
                // a NIC with rx VLAN offload off (the filter tier drops
                // tagged VIP frames, issue #13).
                run_in(
                    &wire,
                    &[
                        "ethtool",
                        "-K",
                        &outer,
                        "txvlan",
                        "off",
                        "tx-vlan-stag-hw-insert",
                        "off",
                    ],
                )
                .context("ethtool -K txvlan off on the edge's bridge port")?;
            }
            ip(&["-n", &wire, "link", "set", "dev", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", "dev", &inner, "name", "eth0"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            // nodad: usable at once (duplicate address detection takes ~1 s).
            let v6 = format!("{addr6}/64");
            ip(&["-n", &ns, "addr", "add", &v6, "dev", "eth0", "nodad"])?;
            ip(&["-n", &ns, "link", "set", "dev", "eth0", "up"])?;
            if tag != "e" {
                // Kernel peers send partial TCP checksums over veth; the
                // userspace stack verifies full ones (PLATFORM.md).
                run_in(&ns, &["ethtool", "-K", "eth0", "tx", "off"])
                    .context("ethtool -K eth0 tx off")?;
            }
        }
        for (side, spec) in impaired {
            self.insert_relay(*side, spec)?;
        }
        self.start_origin()?;
        self.start_edge_nginx()?;
        Ok(())
    }

    fn nginx_conf(&self, name: &str, server: &str) -> Result<PathBuf> {
        let dir = self.state_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nuser root;\ndaemon on;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 100000;\n{server}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    /// The origin: answers every request with a body naming itself.
    /// `/_origin_status` is nginx's `stub_status`: its `requests` counter
    /// is what reached the origin (the bench's cache offload counts there).
    fn start_origin(&self) -> Result<()> {
        let www = self.state_dir().join("www");
        std::fs::create_dir_all(&www)?;
        // A 16 KiB body for the large-response scenarios.
        std::fs::write(www.join("16k"), "x".repeat(16 * 1024))?;
        // Random bytes (incompressible, every bit matters) for tests that
        // compare what a client received with what the origin served
        // (`/files/1m`; tests may add files to `www`).
        let mut rnd = vec![0u8; 1 << 20];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
            .context("reading /dev/urandom")?;
        std::fs::write(www.join("1m"), rnd)?;
        // `POST /upload` answers only once the whole body is in: the
        // origin's own proxy reads it (request buffering) before passing
        // the request to a loopback server that names the length it got
        // (`return` alone answers before the body is read).
        let server = format!(
            "  server {{\n    listen {ORIGIN_IP}:8080 reuseport;\n    location = /16k {{ root {www}; }}\n    \
             location /files/ {{ alias {www}/; }}\n    \
             location = /upload {{ client_max_body_size 1g; proxy_pass http://127.0.0.1:8089; }}\n    \
             location = /_origin_status {{ stub_status; }}\n    \
             location / {{ default_type text/plain; return 200 \"origin {ORIGIN_IP}:8080 {origin} path=$request_uri\\n\"; }}\n  }}\n  \
             server {{\n    listen 127.0.0.1:8089;\n    \
             location / {{ default_type text/plain; return 200 \"uploaded $content_length\\n\"; }}\n  }}",
            origin = self.origin(),
            www = www.display(),
        );
        let conf = self.nginx_conf("origin", &server)?;
        run_in(
            &self.origin(),
            &["nginx", "-c", &conf.display().to_string()],
        )
        .context("starting the origin nginx")
    }

    /// A kernel HTTP server on the edge's host address: host traffic that
    /// must keep working, and the kernel proxy baseline (nginx → origin).
    fn start_edge_nginx(&self) -> Result<()> {
        let server = format!(
            "  upstream origin {{ server {ORIGIN_IP}:8080; keepalive 64; }}\n  server {{\n    listen {EDGE_HOST_IP}:80 reuseport;\n    listen [{EDGE_HOST_IP6}]:80 reuseport;\n    \
             location /host {{ default_type text/plain; return 200 \"edge host kernel\\n\"; }}\n    \
             location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}"
        );
        let conf = self.nginx_conf("edge-nginx", &server)?;
        run_in(&self.edge(), &["nginx", "-c", &conf.display().to_string()])
            .context("starting the edge nginx")
    }

    /// Removes everything the lab made, also after a crash: processes left in
    /// its namespaces, the namespaces (and with them veths, bridge, XDP).
    pub fn down(&self) -> Result<()> {
        let existing = netns_list();
        for ns in self.namespaces() {
            if !existing.contains(&ns) {
                continue;
            }
            for pid in netns_pids(&ns) {
                // SAFETY: kill(2) on a pid that lives in our own namespace.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        // Give processes a moment to exit cleanly, then force.
        for _ in 0..20 {
            if self.namespaces().iter().all(|ns| netns_pids(ns).is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for ns in self.namespaces() {
            for pid in netns_pids(&ns) {
                // SAFETY: as above; the process ignored SIGTERM.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // A fail-closed engine leaves its XDP link pinned: remove the pin
        // (the namespace's deletion would only make it a stale file).
        let edge = format!("{}edge", self.prefix);
        if existing.contains(&edge)
            && let Err(e) = remove_xdp_pin(&edge, "eth0")
        {
            tracing::warn!(netns = %edge, error = %format!("{e:#}"), "could not remove a pinned XDP link");
        }
        let mut failed = Vec::new();
        for ns in self.namespaces() {
            if existing.contains(&ns) && ip(&["netns", "del", &ns]).is_err() {
                failed.push(ns);
            }
        }
        let _ = std::fs::remove_dir_all(self.state_dir());
        if !failed.is_empty() {
            bail!("could not delete namespaces {failed:?}");
        }
        Ok(())
    }

    pub fn status(&self) -> String {
        let mut s = String::new();
        if !self.exists() {
            return format!("lab {:?}: down\n", self.prefix);
        }
        for ns in self.namespaces() {
            s.push_str(&format!("== {ns}\n"));
            if let Ok(o) = output(Command::new("ip").args(["-n", &ns, "-br", "addr"])) {
                s.push_str(&o);
            }
            let link =
                output(Command::new("ip").args(["-n", &ns, "-d", "link", "show", "dev", "eth0"]));
            if let Some(x) = link
                .ok()
                .and_then(|o| o.lines().find(|l| l.contains("prog/xdp")).map(String::from))
            {
                s.push_str(&format!("xdp: {}\n", x.trim()));
            }
            let pids = netns_pids(&ns);
            if !pids.is_empty() {
                s.push_str(&format!("processes: {pids:?}\n"));
            }
        }
        s.push_str(&self.impair_status());
        s
    }

    /// Runs a command in the client namespace and returns its stdout.
    pub fn in_client(&self, argv: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client()]).args(argv);
        output(&mut c)
    }
}

fn output(c: &mut Command) -> Result<String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args)).map(|_| ())
}

fn run_in(ns: &str, argv: &[&str]) -> Result<()> {
    output(Command::new("ip").args(["netns", "exec", ns]).args(argv)).map(|_| ())
}

pub fn netns_list() -> Vec<String> {
    output(Command::new("ip").args(["netns", "list"]))
        .map(|o| {
            o.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn netns_pids(ns: &str) -> Vec<i32> {
    output(Command::new("ip").args(["netns", "pids", ns]))
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the pinned XDP link of `iface` in network namespace `netns` (a
/// fail-closed engine's program detaches once no engine holds it). Runs on
/// its own thread: setns(2) moves only the calling thread. Returns whether
/// a pin existed.
pub fn remove_xdp_pin(netns: &str, iface: &str) -> Result<bool> {
    let path = format!("/var/run/netns/{netns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let iface = iface.to_string();
    std::thread::spawn(move || -> Result<bool> {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) with a valid namespace fd, on this short-lived
        // thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        ferrogate_ebpf::persist::remove_pin(&iface).context("removing the pin")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the pin-removal thread panicked"))?
}
