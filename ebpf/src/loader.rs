//! Loading, configuring and attaching the XDP program with aya.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    os::fd::RawFd,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuValues, XskMap,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        Link as _, ProgramError, Xdp,
        xdp::{XdpLink, XdpMode},
    },
};

use crate::{
    AttachMode, EbpfError, FailMode, VipAction,
    counters::{Counter, Verdict, XdpCounters},
    error::{key_missing, map_errno, program_errno},
    rules::{
        CidrAction, FilterRules, MAX_BURST_BYTES, MAX_BURST_PACKETS, MAX_L4_ENTRIES, MAX_PREFIXES,
        MAX_RATE_RULES, MAX_RULES, RATE_GLOBAL, RATE_MATCH_PORT, RATE_MATCH_PROTO, RATE_MATCH_VIP,
        RATE_SYN_ONLY, RateKey, RawCidrValue, RawL4Key, RawRuleset, addr_bytes, masked,
    },
};

/// The compiled XDP program (built by `build.rs` from `bpf/ferrogate.bpf.c`).
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferrogate.bpf.o"));
/// Where the build wrote the object (useful with `ip link set dev IF xdp obj ...`
/// on the machine that built it).
pub const OBJECT_PATH: &str = concat!(env!("OUT_DIR"), "/ferrogate.bpf.o");

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "ferrogate_xdp";
/// Slots of the `xsks` XSKMAP (queues 0..MAX_QUEUES); `FG_MAX_QUEUES` in C.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of `vips4` and of `vips6` each; `FG_MAX_VIPS` in C.
pub const MAX_VIPS: usize = 4096;
/// Capacity of `blocked4` and of `blocked6` each (the escalated-sources deny
/// set); `FG_MAX_BLOCKED` in C.
pub const MAX_BLOCKED_SOURCES: usize = 65536;

/// `struct fg_config`: the program's settings (single entry of the `config` array).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpConfig {
    /// 0 = redirect VIP frames to AF_XDP, 1 = pass them to the kernel.
    pub vip_action: u32,
    /// The active rule-set generation (0 or 1).
    pub generation: u32,
    /// VIP frame on a queue without a socket: 0 = pass, 1 = drop.
    pub vip_miss: u32,
    pub reserved: u32,
}

// SAFETY: `XdpConfig` is `#[repr(C)]` with four `u32` fields (no padding, no
// pointers); any bit pattern is valid, so it can be copied as raw bytes.
unsafe impl Pod for XdpConfig {}

fn vip_action_value(action: VipAction) -> u32 {
    match action {
        VipAction::RedirectToXsk => 0,
        VipAction::PassToKernel => 1,
    }
}

/// What one generation of the rule maps holds, mirrored in userspace so an
/// update only writes the difference.
#[derive(Default)]
struct Generation {
    cidr4: StdHashMap<([u8; 4], u8), RawCidrValue>,
    cidr6: StdHashMap<([u8; 16], u8), RawCidrValue>,
    l4: StdHashMap<RawL4Key, u32>,
}

/// What [`XdpFilter::apply_rules`] did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// The generation now active.
    pub generation: u32,
    pub prefixes: usize,
    /// Map writes and deletions needed (the difference to that generation).
    pub writes: usize,
    pub elapsed: Duration,
}

/// Id of the pseudo-rule counting allow-list-mode drops.
pub const NOT_ALLOWED_RULE: &str = "not-allow-listed";

/// Counter totals carried across a binary upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterTotals {
    pub program: Vec<(String, Verdict)>,
    pub rules: Vec<(String, Verdict)>,
}

/// The loaded XDP program attached to one interface. Dropping it detaches.
pub struct XdpFilter {
    iface: String,
    mode: AttachMode,
    link: Option<XdpLink>,
    /// Where the link is pinned (fail-closed mode): it outlives the process.
    pinned: Option<std::path::PathBuf>,
    xsks: XskMap<MapData>,
    vips4: HashMap<MapData, u32, u32>,
    vips6: HashMap<MapData, [u8; 16], u32>,
    /// Escalated sources → expiry (`bpf_ktime_get_ns`).
    blocked4: HashMap<MapData, u32, u64>,
    blocked6: HashMap<MapData, [u8; 16], u64>,
    config: Array<MapData, XdpConfig>,
    counters: PerCpuArray<MapData, Verdict>,
    cidr4: [LpmTrie<MapData, [u8; 4], RawCidrValue>; 2],
    cidr6: [LpmTrie<MapData, [u8; 16], RawCidrValue>; 2],
    l4: [HashMap<MapData, RawL4Key, u32>; 2],
    rulesets: Array<MapData, RawRuleset>,
    rule_counters: PerCpuArray<MapData, Verdict>,
    cfg: XdpConfig,
    held: [Generation; 2],
    /// Rule id → index of its counters; stable across updates.
    rule_index: StdHashMap<String, u32>,
    // Declared last: the program (and its fds) outlive the link and maps above.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for XdpFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpFilter")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("attached", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

fn take_map<M>(ebpf: &mut Ebpf, iface: &str, name: &'static str) -> Result<M, EbpfError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| EbpfError::Missing {
        iface: iface.to_owned(),
        kind: "map",
        name,
    })?;
    M::try_from(map).map_err(|source| EbpfError::MapType {
        iface: iface.to_owned(),
        name,
        source: Box::new(source),
    })
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Auto => XdpMode::Default,
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    }
}

fn attach_error(iface: &str, mode: AttachMode, source: ProgramError) -> EbpfError {
    if matches!(source, ProgramError::UnknownInterface { .. }) {
        return EbpfError::UnknownInterface {
            iface: iface.to_owned(),
        };
    }
    // EBUSY: a program/link is attached in this mode; EEXIST: one is attached
    // in the other mode (native and generic can't be active at the same time).
    match program_errno(&source) {
        Some(libc::EBUSY) | Some(libc::EEXIST) => EbpfError::AlreadyAttached {
            iface: iface.to_owned(),
            source: Box::new(source),
        },
        _ => EbpfError::Attach {
            iface: iface.to_owned(),
            mode,
            source: Box::new(source),
        },
    }
}

/// Attaches in `mode` (Native or Generic) and takes ownership of the link.
fn attach_in(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<XdpLink, EbpfError> {
    let id = prog
        .attach(iface, xdp_mode(mode))
        .map_err(|e| attach_error(iface, mode, e))?;
    prog.take_link(id).map_err(|e| attach_error(iface, mode, e))
}

impl XdpFilter {
    /// Loads the embedded object, sets the config, fills the VIPs and attaches
    /// to `iface` (by name, in the current network namespace), with a BPF link
    /// (detached by the kernel when the process exits, even on SIGKILL).
    ///
    /// Fails with [`EbpfError::AlreadyAttached`] when the interface already has
    /// an XDP program: it is never replaced.
    pub fn attach(
        iface: &str,
        mode: AttachMode,
        vips: &[IpAddr],
        action: VipAction,
    ) -> Result<XdpFilter, EbpfError> {
        Self::attach_with_rules(
            iface,
            mode,
            vips,
            action,
            FailMode::Open,
            &FilterRules::default(),
        )
    }

    /// Like [`attach`](Self::attach), with the filter rules and fail mode in
    /// place before the first frame is seen.
    pub fn attach_with_rules(
        iface: &str,
        mode: AttachMode,
        vips: &[IpAddr],
        action: VipAction,
        fail_mode: FailMode,
        rules: &FilterRules,
    ) -> Result<XdpFilter, EbpfError> {
        let mut filter = Self::load(iface, vips, action, fail_mode, rules)?;
        filter.attach_loaded(mode, vips.len(), action)?;
        Ok(filter)
    }

    /// Loads and configures the program without attaching it anywhere: what
    /// [`test_run`](Self::test_run) needs. `iface` only names it in errors
    /// until it is attached.
    pub fn load(
        iface: &str,
        vips: &[IpAddr],
        action: VipAction,
        fail_mode: FailMode,
        rules: &FilterRules,
    ) -> Result<XdpFilter, EbpfError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| EbpfError::Object {
            iface: iface.to_owned(),
            source: Box::new(source),
        })?;

        let xsks: XskMap<MapData> = take_map(&mut ebpf, iface, "xsks")?;
        let vips4 = take_map(&mut ebpf, iface, "vips4")?;
        let vips6 = take_map(&mut ebpf, iface, "vips6")?;
        let blocked4 = take_map(&mut ebpf, iface, "blocked4")?;
        let blocked6 = take_map(&mut ebpf, iface, "blocked6")?;
        let config = take_map(&mut ebpf, iface, "config")?;
        let counters = take_map(&mut ebpf, iface, "counters")?;
        let cidr4 = [
            take_map(&mut ebpf, iface, "cidr4_0")?,
            take_map(&mut ebpf, iface, "cidr4_1")?,
        ];
        let cidr6 = [
            take_map(&mut ebpf, iface, "cidr6_0")?,
            take_map(&mut ebpf, iface, "cidr6_1")?,
        ];
        let l4 = [
            take_map(&mut ebpf, iface, "l4_0")?,
            take_map(&mut ebpf, iface, "l4_1")?,
        ];
        let rulesets = take_map(&mut ebpf, iface, "rulesets")?;
        let rule_counters = take_map(&mut ebpf, iface, "rule_counters")?;

        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| EbpfError::Missing {
                iface: iface.to_owned(),
                kind: "program",
                name: PROGRAM_NAME,
            })?
            .try_into()
            .map_err(|source| EbpfError::ProgramLoad {
                iface: iface.to_owned(),
                source: Box::new(source),
            })?;
        prog.load().map_err(|source| EbpfError::ProgramLoad {
            iface: iface.to_owned(),
            source: Box::new(source),
        })?;

        let mut filter = XdpFilter {
            iface: iface.to_owned(),
            mode: AttachMode::Auto,
            link: None,
            pinned: None,
            xsks,
            vips4,
            vips6,
            blocked4,
            blocked6,
            config,
            counters,
            cidr4,
            cidr6,
            l4,
            rulesets,
            rule_counters,
            cfg: XdpConfig::default(),
            held: [Generation::default(), Generation::default()],
            rule_index: StdHashMap::new(),
            _ebpf: ebpf,
        };
        // Configure before attaching: no frame ever sees a half-set program.
        filter.set_vip_action(action)?;
        filter.set_fail_mode(fail_mode)?;
        filter.set_vips(vips)?;
        filter.apply_rules(rules)?;
        Ok(filter)
    }

    /// Attaches a loaded program to `self.iface`, taking over a pinned
    /// (fail-closed) link of a predecessor where there is one.
    fn attach_loaded(
        &mut self,
        mode: AttachMode,
        vips: usize,
        action: VipAction,
    ) -> Result<(), EbpfError> {
        let filter = self;
        let iface = filter.iface.clone();
        let iface = iface.as_str();
        let prog: &mut Xdp = filter
            ._ebpf
            .program_mut(PROGRAM_NAME)
            .expect("program present: checked above")
            .try_into()
            .expect("program is XDP: checked above");
        // A fail-closed predecessor left its link pinned: replace the program
        // in it atomically (no moment without a program on the NIC).
        if let Some((old, path)) = crate::persist::pinned_link(iface) {
            match prog.attach_to_link(old) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|e| attach_error(iface, mode, e))?;
                    filter.link = Some(link);
                    filter.pinned = Some(path.clone());
                    filter.mode = mode;
                    tracing::info!(iface, pin = %path.display(), "took over the pinned (fail-closed) XDP link");
                    filter.sync_pin();
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(iface, pin = %path.display(), error = %e, "cannot take over the pinned XDP link; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (link, attached) = match mode {
            AttachMode::Native | AttachMode::Generic => (attach_in(prog, iface, mode)?, mode),
            AttachMode::Auto => match attach_in(prog, iface, AttachMode::Native) {
                Ok(link) => (link, AttachMode::Native),
                Err(
                    e @ (EbpfError::AlreadyAttached { .. } | EbpfError::UnknownInterface { .. }),
                ) => {
                    return Err(e);
                }
                Err(native_err) => {
                    tracing::warn!(
                        iface,
                        error = %native_err,
                        "native XDP attach failed, falling back to generic (SKB) mode"
                    );
                    (
                        attach_in(prog, iface, AttachMode::Generic)?,
                        AttachMode::Generic,
                    )
                }
            },
        };
        filter.link = Some(link);
        filter.mode = attached;
        filter.sync_pin();
        tracing::info!(
            iface,
            mode = ?attached,
            vips,
            action = ?action,
            "XDP program attached"
        );
        Ok(())
    }

    /// Runs the loaded program once on `frame` (`BPF_PROG_TEST_RUN`), as if
    /// queue 0 received it; returns its XDP action (`XDP_DROP` 1, `XDP_PASS`
    /// 2, `XDP_REDIRECT` 4). Counters, rule counters and rate buckets change
    /// as for a received frame. The kernel refuses frames shorter than an
    /// Ethernet header.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, EbpfError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let prog: &Xdp = self
            ._ebpf
            .program(PROGRAM_NAME)
            .expect("program present: checked at load")
            .try_into()
            .expect("program is XDP: checked at load");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        prog.test_run(opts)
            .map(|r| r.return_value)
            .map_err(|source| EbpfError::TestRun {
                iface: self.iface.clone(),
                len: frame.len(),
                source: Box::new(source),
            })
    }

    /// What actually attached: `Native` or `Generic`.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface the program is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    fn map_err(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(aya::maps::MapError) -> EbpfError + '_ {
        let what = what.into();
        move |source| EbpfError::Map {
            iface: self.iface.clone(),
            what,
            source: Box::new(source),
        }
    }

    /// `XSKMAP[queue] = xsk_fd`: VIP frames received on `queue` go to that AF_XDP socket.
    pub fn register_xsk(&mut self, queue: u32, xsk_fd: RawFd) -> Result<(), EbpfError> {
        self.check_queue(queue)?;
        let what = format!("registering AF_XDP socket fd {xsk_fd} for queue {queue}");
        let res = self.xsks.set(queue, xsk_fd, 0);
        res.map_err(self.map_err(what))
    }

    /// Removes the socket of `queue`: its VIP frames fall back to the kernel.
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), EbpfError> {
        self.check_queue(queue)?;
        let res = self.xsks.unset(queue);
        res.map_err(self.map_err(format!("unregistering the AF_XDP socket of queue {queue}")))
    }

    fn check_queue(&self, queue: u32) -> Result<(), EbpfError> {
        if queue >= MAX_QUEUES {
            return Err(EbpfError::QueueOutOfRange {
                iface: self.iface.clone(),
                queue,
                max: MAX_QUEUES,
            });
        }
        Ok(())
    }

    fn write_config(&mut self, what: String) -> Result<(), EbpfError> {
        let res = self.config.set(0, self.cfg, 0);
        res.map_err(self.map_err(what))
    }

    /// Changes what happens to VIP frames.
    pub fn set_vip_action(&mut self, action: VipAction) -> Result<(), EbpfError> {
        self.cfg.vip_action = vip_action_value(action);
        self.write_config(format!("setting the VIP action to {action:?}"))
    }

    /// What VIP frames do on a queue whose socket is gone.
    pub fn fail_mode(&self) -> FailMode {
        if self.cfg.vip_miss == 1 {
            FailMode::Closed
        } else {
            FailMode::Open
        }
    }

    /// What VIP frames do on a queue whose socket is gone.
    pub fn set_fail_mode(&mut self, mode: FailMode) -> Result<(), EbpfError> {
        self.cfg.vip_miss = match mode {
            FailMode::Open => 0,
            FailMode::Closed => 1,
        };
        self.write_config(format!("setting the fail mode to {mode:?}"))?;
        self.sync_pin();
        Ok(())
    }

    /// Whether the program stays attached after this process (fail-closed).
    pub fn pinned(&self) -> Option<&std::path::Path> {
        self.pinned.as_deref()
    }

    /// Pins the link in fail-closed mode, unpins it in fail-open mode. A
    /// failure is logged: the program then detaches with the process.
    fn sync_pin(&mut self) {
        let closed = self.cfg.vip_miss == 1;
        match (closed, self.pinned.is_some()) {
            (true, false) => {
                let Some(link) = self.link.take() else {
                    return;
                };
                match crate::persist::pin(&self.iface, link) {
                    Ok((link, path)) => {
                        tracing::info!(iface = %self.iface, pin = %path.display(), "fail-closed: XDP link pinned; the program outlives the engine");
                        self.link = Some(link);
                        self.pinned = Some(path);
                    }
                    Err(e) => {
                        tracing::error!(iface = %self.iface, error = %e, "cannot pin the XDP link; fail-closed ends with the engine");
                        self.reattach();
                    }
                }
            }
            (false, true) => {
                if let Some(p) = self.pinned.take() {
                    let _ = std::fs::remove_file(&p);
                    tracing::info!(iface = %self.iface, "fail-open: XDP link unpinned; the program detaches with the engine");
                }
            }
            _ => {}
        }
    }

    /// Attaches again after a failed pin consumed the link.
    fn reattach(&mut self) {
        if self.link.is_some() {
            return;
        }
        let mode = self.mode;
        let iface = self.iface.clone();
        let prog: Result<&mut Xdp, _> = match self._ebpf.program_mut(PROGRAM_NAME) {
            Some(p) => p.try_into(),
            None => return,
        };
        if let Ok(prog) = prog {
            match attach_in(prog, &iface, mode) {
                Ok(link) => self.link = Some(link),
                Err(e) => tracing::error!(iface = %iface, error = %e, "re-attaching XDP failed"),
            }
        }
    }

    /// The active rule-set generation.
    pub fn generation(&self) -> u32 {
        self.cfg.generation
    }

    /// Replaces the whole rule set atomically: the inactive generation is
    /// brought to the new rules, then one write of `config` flips every
    /// frame over to it. The old generation keeps serving until that write.
    pub fn apply_rules(&mut self, rules: &FilterRules) -> Result<ApplyReport, EbpfError> {
        let started = Instant::now();
        self.check_rules(rules)?;
        self.assign_rule_indices(rules)?;
        let gen_new = 1 - (self.cfg.generation & 1);
        let g = gen_new as usize;

        let mut want4 = StdHashMap::new();
        let mut want6 = StdHashMap::new();
        for r in &rules.cidr {
            let value = RawCidrValue {
                rule: self.rule_index[&r.id],
                action: match r.action {
                    CidrAction::Deny => 0,
                    CidrAction::Allow => 1,
                    CidrAction::Upstream => 2,
                },
            };
            for &(ip, len) in &r.prefixes {
                match ip {
                    IpAddr::V4(v4) => {
                        want4.insert((masked(v4.octets(), len), len), value);
                    }
                    IpAddr::V6(v6) => {
                        want6.insert((masked(v6.octets(), len), len), value);
                    }
                }
            }
        }
        let mut want_l4 = StdHashMap::new();
        for r in &rules.l4 {
            let idx = self.rule_index[&r.id];
            let vip = addr_bytes(r.vip);
            // The marker entry says: this VIP only takes the listed pairs.
            want_l4.insert(
                RawL4Key {
                    vip,
                    ..Default::default()
                },
                idx,
            );
            for &(proto, port) in &r.allow {
                let key = RawL4Key {
                    vip,
                    proto,
                    pad: 0,
                    port: port.to_be(),
                };
                want_l4.insert(key, idx);
            }
        }

        let iface = self.iface.clone();
        let mut writes = 0;
        writes += sync(&mut self.held[g].cidr4, want4, |k, v| {
            let key = LpmKey::new(k.1 as u32, k.0);
            match v {
                Some(v) => self.cidr4[g].insert(&key, v, 0),
                None => self.cidr4[g].remove(&key),
            }
        })
        .map_err(map_error(&iface, "writing IPv4 prefixes"))?;
        writes += sync(&mut self.held[g].cidr6, want6, |k, v| {
            let key = LpmKey::new(k.1 as u32, k.0);
            match v {
                Some(v) => self.cidr6[g].insert(&key, v, 0),
                None => self.cidr6[g].remove(&key),
            }
        })
        .map_err(map_error(&iface, "writing IPv6 prefixes"))?;
        writes += sync(&mut self.held[g].l4, want_l4, |k, v| match v {
            Some(v) => self.l4[g].insert(k, v, 0),
            None => self.l4[g].remove(&k),
        })
        .map_err(map_error(&iface, "writing L4 rules"))?;

        let mut rs = RawRuleset {
            default_deny: rules.default_deny as u32,
            not_allowed_rule: self.rule_index[NOT_ALLOWED_RULE],
            n_rate: rules.rate.len() as u32,
            ..Default::default()
        };
        for (slot, r) in rs.rate.iter_mut().zip(&rules.rate) {
            slot.rule = self.rule_index[&r.id];
            slot.pps = r.pps;
            slot.burst_pkts = if r.pps > 0 { r.burst_packets.max(1) } else { 0 };
            slot.bps = r.bps;
            slot.burst_bytes = if r.bps > 0 { r.burst_bytes.max(1) } else { 0 };
            if r.syn_only {
                slot.flags |= RATE_SYN_ONLY;
            }
            match r.key {
                RateKey::Global => slot.flags |= RATE_GLOBAL,
                RateKey::Source { prefix4, prefix6 } => {
                    slot.prefix4 = prefix4;
                    slot.prefix6 = prefix6;
                }
            }
            if let Some(vip) = r.vip {
                slot.flags |= RATE_MATCH_VIP;
                slot.vip = addr_bytes(vip);
                slot.vip_is_v6 = vip.is_ipv6() as u8;
            }
            if let Some(port) = r.port {
                slot.flags |= RATE_MATCH_PORT;
                slot.port = port.to_be();
            }
            if let Some(proto) = r.protocol {
                slot.flags |= RATE_MATCH_PROTO;
                slot.proto = proto;
            }
        }
        let res = self.rulesets.set(gen_new, rs, 0);
        res.map_err(self.map_err("writing the rule set"))?;
        writes += 1;

        // The switch: from here on every frame sees the new generation.
        self.cfg.generation = gen_new;
        self.write_config(format!("activating rule generation {gen_new}"))?;
        let report = ApplyReport {
            generation: gen_new,
            prefixes: rules.prefix_count(),
            writes,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            iface = %self.iface,
            generation = gen_new,
            prefixes = report.prefixes,
            rate_rules = rules.rate.len(),
            writes,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "filter rules applied"
        );
        Ok(report)
    }

    fn check_rules(&self, rules: &FilterRules) -> Result<(), EbpfError> {
        let bad = |reason: String| EbpfError::Rules {
            iface: self.iface.clone(),
            reason,
        };
        if rules.rate.len() > MAX_RATE_RULES {
            return Err(bad(format!(
                "{} rate rules, at most {MAX_RATE_RULES}",
                rules.rate.len()
            )));
        }
        let v4 = rules
            .cidr
            .iter()
            .flat_map(|r| &r.prefixes)
            .filter(|p| p.0.is_ipv4())
            .count();
        let v6 = rules.prefix_count() - v4;
        if v4 > MAX_PREFIXES || v6 > MAX_PREFIXES {
            return Err(bad(format!(
                "{v4} IPv4 / {v6} IPv6 prefixes, at most {MAX_PREFIXES} each"
            )));
        }
        let l4: usize = rules.l4.iter().map(|r| r.allow.len() + 1).sum();
        if l4 > MAX_L4_ENTRIES {
            return Err(bad(format!("{l4} L4 entries, at most {MAX_L4_ENTRIES}")));
        }
        for r in &rules.rate {
            if r.burst_packets > MAX_BURST_PACKETS || r.burst_bytes > MAX_BURST_BYTES {
                return Err(bad(format!("rate rule {:?}: burst too large", r.id)));
            }
        }
        for r in &rules.cidr {
            for &(ip, len) in &r.prefixes {
                if len > if ip.is_ipv4() { 32 } else { 128 } {
                    return Err(bad(format!("rule {:?}: prefix {ip}/{len}", r.id)));
                }
            }
        }
        let mut seen = HashSet::new();
        for id in rules.ids() {
            if !seen.insert(id) || id == NOT_ALLOWED_RULE {
                return Err(bad(format!("duplicate rule id {id:?}")));
            }
        }
        Ok(())
    }

    /// Gives every rule id a counter slot; ids keep their slot across updates,
    /// and a slot taken over by a new id starts from zero.
    fn assign_rule_indices(&mut self, rules: &FilterRules) -> Result<(), EbpfError> {
        let wanted: HashSet<&str> = rules.ids().chain([NOT_ALLOWED_RULE]).collect();
        self.rule_index.retain(|id, _| wanted.contains(id.as_str()));
        let mut used: HashSet<u32> = self.rule_index.values().copied().collect();
        let mut next = 0u32;
        for id in rules.ids().chain([NOT_ALLOWED_RULE]) {
            if self.rule_index.contains_key(id) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= MAX_RULES {
                return Err(EbpfError::Rules {
                    iface: self.iface.clone(),
                    reason: format!("more than {MAX_RULES} rule ids"),
                });
            }
            let zeros = PerCpuValues::try_from(vec![Verdict::default(); nr_cpus()])
                .expect("one value per possible CPU");
            let res = self.rule_counters.set(next, zeros, 0);
            res.map_err(self.map_err(format!("resetting counters of rule {id:?}")))?;
            self.rule_index.insert(id.to_owned(), next);
            used.insert(next);
        }
        Ok(())
    }

    /// Packets and bytes per rule id, summed over CPUs, in slot order.
    pub fn rule_counters(&self) -> Result<Vec<(String, Verdict)>, EbpfError> {
        let mut ids: Vec<(&String, &u32)> = self.rule_index.iter().collect();
        ids.sort_by_key(|(_, i)| **i);
        let mut out = Vec::with_capacity(ids.len());
        for (id, &idx) in ids {
            let values = self
                .rule_counters
                .get(&idx, 0)
                .map_err(self.map_err(format!("reading counters of rule {id:?}")))?;
            let mut total = Verdict::default();
            for v in values.iter() {
                total.packets += v.packets;
                total.bytes += v.bytes;
            }
            out.push((id.clone(), total));
        }
        Ok(out)
    }

    /// Adds one VIP (idempotent).
    pub fn add_vip(&mut self, vip: IpAddr) -> Result<(), EbpfError> {
        let res = match vip {
            IpAddr::V4(v4) => self.vips4.insert(u32::from_ne_bytes(v4.octets()), 0, 0),
            IpAddr::V6(v6) => self.vips6.insert(v6.octets(), 0, 0),
        };
        res.map_err(self.map_err(format!("adding VIP {vip}")))
    }

    /// Removes one VIP.
    pub fn remove_vip(&mut self, vip: IpAddr) -> Result<(), EbpfError> {
        let res = match vip {
            IpAddr::V4(v4) => self.vips4.remove(&u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => self.vips6.remove(&v6.octets()),
        };
        match res {
            // The kernel's ENOENT: aya does not map a deletion's to KeyNotFound.
            Err(e) if key_missing(&e) => Err(EbpfError::UnknownVip {
                iface: self.iface.clone(),
                vip,
            }),
            other => other.map_err(self.map_err(format!("removing VIP {vip}"))),
        }
    }

    /// The configured VIPs.
    pub fn vips(&self) -> Result<Vec<IpAddr>, EbpfError> {
        let mut out = Vec::new();
        for key in self.vips4.keys() {
            let key = key.map_err(self.map_err("listing IPv4 VIPs"))?;
            out.push(IpAddr::from(key.to_ne_bytes()));
        }
        for key in self.vips6.keys() {
            let key = key.map_err(self.map_err("listing IPv6 VIPs"))?;
            out.push(IpAddr::from(key));
        }
        Ok(out)
    }

    /// Replaces the VIP set with `vips` (adds the new ones first, then removes the stale ones).
    pub fn set_vips(&mut self, vips: &[IpAddr]) -> Result<(), EbpfError> {
        let wanted: HashSet<IpAddr> = vips.iter().copied().collect();
        for (family, count) in [
            ("IPv4", wanted.iter().filter(|v| v.is_ipv4()).count()),
            ("IPv6", wanted.iter().filter(|v| v.is_ipv6()).count()),
        ] {
            if count > MAX_VIPS {
                return Err(EbpfError::TooManyVips {
                    iface: self.iface.clone(),
                    family,
                    count,
                    max: MAX_VIPS,
                });
            }
        }
        for &vip in &wanted {
            self.add_vip(vip)?;
        }
        for vip in self.vips()? {
            if !wanted.contains(&vip) {
                self.remove_vip(vip)?;
            }
        }
        Ok(())
    }

    /// Blocks VIP traffic from `addr` until `until_ns` (an absolute
    /// [`monotonic_ns`](crate::monotonic_ns) value, the clock of
    /// `bpf_ktime_get_ns`); overwrites an earlier expiry. Host traffic and
    /// neighbour discovery from `addr` still pass. A full set fails with
    /// [`EbpfError::DenySetFull`].
    ///
    /// The maps live with the loaded program: they are not pinned, so (like
    /// the rules) blocks do not outlive the engine that made them.
    pub fn block_source(&mut self, addr: IpAddr, until_ns: u64) -> Result<(), EbpfError> {
        let res = match addr {
            IpAddr::V4(v4) => self
                .blocked4
                .insert(u32::from_ne_bytes(v4.octets()), until_ns, 0),
            IpAddr::V6(v6) => self.blocked6.insert(v6.octets(), until_ns, 0),
        };
        match res {
            Err(e) if matches!(map_errno(&e), Some(libc::E2BIG) | Some(libc::ENOSPC)) => {
                Err(EbpfError::DenySetFull {
                    iface: self.iface.clone(),
                    family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                    addr,
                    max: MAX_BLOCKED_SOURCES,
                })
            }
            other => other.map_err(self.map_err(format!("blocking source {addr}"))),
        }
    }

    /// Removes `addr` from the escalated-sources deny set; false when it
    /// was not there.
    pub fn unblock_source(&mut self, addr: IpAddr) -> Result<bool, EbpfError> {
        let res = match addr {
            IpAddr::V4(v4) => self.blocked4.remove(&u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => self.blocked6.remove(&v6.octets()),
        };
        match res {
            Ok(()) => Ok(true),
            Err(e) if key_missing(&e) => Ok(false),
            Err(e) => Err(self.map_err(format!("unblocking source {addr}"))(e)),
        }
    }

    /// The escalated sources with their expiries (`monotonic_ns` clock),
    /// expired ones included until [`expire_blocked`](Self::expire_blocked)
    /// sweeps them.
    pub fn blocked_sources(&self) -> Result<Vec<(IpAddr, u64)>, EbpfError> {
        let mut out = Vec::new();
        for entry in self.blocked4.iter() {
            let (k, until) = entry.map_err(self.map_err("listing blocked IPv4 sources"))?;
            out.push((IpAddr::from(k.to_ne_bytes()), until));
        }
        for entry in self.blocked6.iter() {
            let (k, until) = entry.map_err(self.map_err("listing blocked IPv6 sources"))?;
            out.push((IpAddr::from(k), until));
        }
        Ok(out)
    }

    /// Removes every escalated source whose expiry is at or before `now_ns`
    /// (the program already ignores them); returns how many went.
    pub fn expire_blocked(&mut self, now_ns: u64) -> Result<usize, EbpfError> {
        let mut removed = 0;
        for (addr, until) in self.blocked_sources()? {
            if until > now_ns {
                continue;
            }
            // Gone meanwhile (another sweep): not an error, not counted.
            if self.unblock_source(addr)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, EbpfError> {
        let mut per_counter = Vec::with_capacity(Counter::COUNT);
        for &counter in Counter::ALL {
            let values = self
                .counters
                .get(&counter.index(), 0)
                .map_err(self.map_err(format!("reading counter {}", counter.name())))?;
            per_counter.push((counter, values));
        }
        Ok(XdpCounters::from_per_cpu(
            per_counter.iter().map(|(c, v)| (*c, &v[..])),
        ))
    }

    /// Every counter's totals (the program's by name, the rules' by id): what
    /// a binary upgrade's predecessor hands to its successor.
    pub fn counter_totals(&self) -> Result<CounterTotals, EbpfError> {
        let c = self.counters()?;
        Ok(CounterTotals {
            program: Counter::ALL
                .iter()
                .map(|&k| (k.name().to_owned(), c.get(k)))
                .collect(),
            rules: self.rule_counters()?,
        })
    }

    /// Starts this program's counters at `totals` (a predecessor's), so they
    /// run on across a binary upgrade instead of restarting at zero. Call it
    /// before attaching: the values go to one CPU's slot, and the program
    /// adds to every CPU's. Names and rule ids this program does not have
    /// are skipped.
    pub fn seed_counters(&mut self, totals: &CounterTotals) -> Result<(), EbpfError> {
        let one_cpu = |v: Verdict| {
            let mut values = vec![Verdict::default(); nr_cpus()];
            values[0] = v;
            PerCpuValues::try_from(values).expect("one value per possible CPU")
        };
        for (name, v) in &totals.program {
            let Some(k) = Counter::ALL.iter().find(|k| k.name() == name) else {
                continue;
            };
            let res = self.counters.set(k.index(), one_cpu(*v), 0);
            res.map_err(self.map_err(format!("seeding counter {name}")))?;
        }
        for (id, v) in &totals.rules {
            let Some(&idx) = self.rule_index.get(id) else {
                continue;
            };
            let res = self.rule_counters.set(idx, one_cpu(*v), 0);
            res.map_err(self.map_err(format!("seeding counters of rule {id:?}")))?;
        }
        Ok(())
    }

    /// Attaches a program made by [`load`](Self::load) (a binary upgrade
    /// loads and checks everything first, and attaches once its predecessor
    /// let go of the NIC queues).
    pub fn attach_prepared(
        &mut self,
        mode: AttachMode,
        vips: usize,
        action: VipAction,
    ) -> Result<(), EbpfError> {
        self.attach_loaded(mode, vips, action)
    }

    /// Detaches the program from the interface (and unloads it), unless
    /// fail-closed pinned it: then it stays attached, dropping VIP frames,
    /// until the next engine takes it over or `ferrogate xdp detach`.
    pub fn detach(mut self) -> Result<(), EbpfError> {
        if let Some(p) = &self.pinned {
            tracing::warn!(iface = %self.iface, pin = %p.display(), "fail-closed: the XDP program stays attached and drops VIP traffic until an engine takes it over (`ferrogate xdp detach` removes it)");
        }
        match self.link.take() {
            Some(link) => link.detach().map_err(|source| EbpfError::Detach {
                iface: self.iface.clone(),
                source: Box::new(source),
            }),
            None => Ok(()),
        }
    }
}

fn nr_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

fn map_error<'a>(
    iface: &'a str,
    what: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> EbpfError + 'a {
    move |source| EbpfError::Map {
        iface: iface.to_owned(),
        what: what.to_owned(),
        source: Box::new(source),
    }
}

/// Brings a map (whose contents `held` mirrors) to `wanted`: new and changed
/// entries first, then stale ones removed (`write(k, None)`). Returns the
/// number of writes.
fn sync<K: Copy + Eq + Hash, V: Copy + PartialEq>(
    held: &mut StdHashMap<K, V>,
    wanted: StdHashMap<K, V>,
    mut write: impl FnMut(K, Option<V>) -> Result<(), aya::maps::MapError>,
) -> Result<usize, aya::maps::MapError> {
    let mut writes = 0;
    for (k, v) in &wanted {
        if held.get(k) != Some(v) {
            write(*k, Some(*v))?;
            held.insert(*k, *v);
            writes += 1;
        }
    }
    let stale: Vec<K> = held
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for k in stale {
        write(k, None)?;
        held.remove(&k);
        writes += 1;
    }
    Ok(writes)
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Some(link) = self.link.take()
            && let Err(e) = link.detach()
        {
            tracing::debug!(iface = %self.iface, error = %e, "XDP detach on drop failed");
        }
    }
}
