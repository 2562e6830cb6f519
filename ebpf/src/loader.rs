//! Loading, configuring and attaching the XDP program with aya.

use std::{collections::HashSet, net::IpAddr, os::fd::RawFd};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, PerCpuArray, XskMap},
    programs::{
        Link as _, ProgramError, Xdp,
        xdp::{XdpLink, XdpMode},
    },
};

use crate::{
    AttachMode, EbpfError, VipAction,
    counters::{Counter, Verdict, XdpCounters},
    error::program_errno,
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

/// `struct fg_config`: the program's settings (single entry of the `config` array).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpConfig {
    /// 0 = redirect VIP frames to AF_XDP, 1 = pass them to the kernel.
    pub vip_action: u32,
    pub reserved: u32,
}

// SAFETY: `XdpConfig` is `#[repr(C)]` with two `u32` fields (no padding, no
// pointers); any bit pattern is valid, so it can be copied as raw bytes.
unsafe impl Pod for XdpConfig {}

impl From<VipAction> for XdpConfig {
    fn from(action: VipAction) -> Self {
        let vip_action = match action {
            VipAction::RedirectToXsk => 0,
            VipAction::PassToKernel => 1,
        };
        XdpConfig {
            vip_action,
            reserved: 0,
        }
    }
}

/// The loaded XDP program attached to one interface. Dropping it detaches.
pub struct XdpFilter {
    iface: String,
    mode: AttachMode,
    link: Option<XdpLink>,
    xsks: XskMap<MapData>,
    vips4: HashMap<MapData, u32, u32>,
    vips6: HashMap<MapData, [u8; 16], u32>,
    config: Array<MapData, XdpConfig>,
    counters: PerCpuArray<MapData, Verdict>,
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
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| EbpfError::Object {
            iface: iface.to_owned(),
            source: Box::new(source),
        })?;

        let xsks: XskMap<MapData> = take_map(&mut ebpf, iface, "xsks")?;
        let vips4 = take_map(&mut ebpf, iface, "vips4")?;
        let vips6 = take_map(&mut ebpf, iface, "vips6")?;
        let config = take_map(&mut ebpf, iface, "config")?;
        let counters = take_map(&mut ebpf, iface, "counters")?;

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
            mode,
            link: None,
            xsks,
            vips4,
            vips6,
            config,
            counters,
            _ebpf: ebpf,
        };
        // Configure before attaching: no frame ever sees a half-set program.
        filter.set_vip_action(action)?;
        filter.set_vips(vips)?;

        let prog: &mut Xdp = filter
            ._ebpf
            .program_mut(PROGRAM_NAME)
            .expect("program present: checked above")
            .try_into()
            .expect("program is XDP: checked above");
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
        tracing::info!(
            iface,
            mode = ?attached,
            vips = vips.len(),
            action = ?action,
            "XDP program attached"
        );
        Ok(filter)
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

    /// Changes what happens to VIP frames.
    pub fn set_vip_action(&mut self, action: VipAction) -> Result<(), EbpfError> {
        let res = self.config.set(0, XdpConfig::from(action), 0);
        res.map_err(self.map_err(format!("setting the VIP action to {action:?}")))
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
            Err(aya::maps::MapError::KeyNotFound) => Err(EbpfError::UnknownVip {
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

    /// Detaches the program from the interface (and unloads it).
    pub fn detach(mut self) -> Result<(), EbpfError> {
        match self.link.take() {
            Some(link) => link.detach().map_err(|source| EbpfError::Detach {
                iface: self.iface.clone(),
                source: Box::new(source),
            }),
            None => Ok(()),
        }
    }
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
