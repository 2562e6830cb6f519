//! Errors of the loader. Every message names the interface it concerns.

use std::net::IpAddr;

use aya::{maps::MapError, programs::ProgramError};

use crate::AttachMode;

/// What went wrong while loading, attaching or driving the XDP program.
///
/// aya errors are boxed to keep `Result<_, EbpfError>` small.
#[derive(thiserror::Error, Debug)]
pub enum EbpfError {
    /// The interface does not exist in the current network namespace.
    #[error("network interface `{iface}` not found in the current network namespace")]
    UnknownInterface { iface: String },

    /// The embedded object could not be parsed or its maps created.
    #[error("loading the ferrogate XDP object for {iface} failed: {source}")]
    Object {
        iface: String,
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// The object lacks a program or map the loader expects (build mismatch).
    #[error("the ferrogate XDP object has no {kind} `{name}` (loading for {iface})")]
    Missing {
        iface: String,
        kind: &'static str,
        name: &'static str,
    },

    /// A map of the object has an unexpected type or layout.
    #[error("map `{name}` of the ferrogate XDP object is unusable (loading for {iface}): {source}")]
    MapType {
        iface: String,
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },

    /// The kernel refused the program (verifier, permissions).
    #[error(
        "loading the XDP program into the kernel for {iface} failed (root or CAP_BPF+CAP_NET_ADMIN needed): {source}"
    )]
    ProgramLoad {
        iface: String,
        #[source]
        source: Box<ProgramError>,
    },

    /// `BPF_PROG_TEST_RUN` refused a frame (too short, no permission).
    #[error("test run of the XDP program ({iface}) on a {len}-byte frame failed: {source}")]
    TestRun {
        iface: String,
        len: usize,
        #[source]
        source: Box<ProgramError>,
    },

    /// The interface already has an XDP program; ferrogate does not replace it.
    #[error(
        "{iface} already has an XDP program attached; ferrogate does not replace it \
         (inspect with `ip link show dev {iface}`, remove with `ip link set dev {iface} xdp off`): {source}"
    )]
    AlreadyAttached {
        iface: String,
        #[source]
        source: Box<ProgramError>,
    },

    /// Attaching failed for another reason.
    #[error(
        "attaching XDP in {mode:?} mode to {iface} failed: {source}; try \
         `ip link set dev {iface} {ip_mode} obj {object} sec xdp` to see the kernel's reason \
         (veth: peer MTU must be <= ~3500)",
        ip_mode = ip_link_mode(*mode),
        object = crate::OBJECT_PATH
    )]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: Box<ProgramError>,
    },

    /// Detaching failed.
    #[error("detaching XDP from {iface} failed: {source}")]
    Detach {
        iface: String,
        #[source]
        source: Box<ProgramError>,
    },

    /// A map update or read failed.
    #[error("{what} on {iface} failed: {source}")]
    Map {
        iface: String,
        what: String,
        #[source]
        source: Box<MapError>,
    },

    /// More VIPs of one family than the program's map holds.
    #[error("{iface}: {count} {family} VIPs given, the XDP program holds at most {max}")]
    TooManyVips {
        iface: String,
        family: &'static str,
        count: usize,
        max: usize,
    },

    /// The queue index has no slot in the XSKMAP.
    #[error("{iface}: queue {queue} is out of range, the XSKMAP has {max} slots")]
    QueueOutOfRange { iface: String, queue: u32, max: u32 },

    /// Removing a VIP that is not configured.
    #[error("{iface}: VIP {vip} is not configured")]
    UnknownVip { iface: String, vip: IpAddr },
    /// The escalated-sources deny set of one family is full (the kernel
    /// said E2BIG/ENOSPC): expire or unblock entries first.
    #[error(
        "{iface}: the escalated-sources deny set is full ({max} {family} sources); \
         cannot block {addr} until entries expire or are unblocked"
    )]
    DenySetFull {
        iface: String,
        family: &'static str,
        addr: IpAddr,
        max: usize,
    },
    /// A rule set the program cannot hold.
    #[error("{iface}: invalid filter rules: {reason}")]
    Rules { iface: String, reason: String },
}

fn ip_link_mode(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "xdp",
        AttachMode::Native => "xdpdrv",
        AttachMode::Generic => "xdpgeneric",
    }
}

/// The OS error code behind a map syscall failure, if any.
pub(crate) fn map_errno(err: &aya::maps::MapError) -> Option<i32> {
    match err {
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error(),
        aya::maps::MapError::IoError(e) => e.raw_os_error(),
        _ => None,
    }
}

/// Whether a map lookup or deletion failed because the key is absent (aya
/// reports a deletion's ENOENT as a syscall error, not `KeyNotFound`).
pub(crate) fn key_missing(err: &aya::maps::MapError) -> bool {
    matches!(
        err,
        aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound
    ) || map_errno(err) == Some(libc::ENOENT)
}

/// The OS error code behind an attach failure, if any.
pub(crate) fn program_errno(err: &ProgramError) -> Option<i32> {
    match err {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::xdp::XdpError::NetlinkError(e)) => e.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_error_names_interface_and_hints_ip_link() {
        let e = EbpfError::Attach {
            iface: "eth7".into(),
            mode: AttachMode::Native,
            source: Box::new(ProgramError::NotLoaded),
        };
        let msg = e.to_string();
        assert!(msg.contains("Native mode to eth7"), "{msg}");
        assert!(msg.contains("ip link set dev eth7 xdpdrv obj"), "{msg}");
        assert!(msg.contains("ferrogate.bpf.o sec xdp"), "{msg}");
        assert!(msg.contains("peer MTU"), "{msg}");

        let e = EbpfError::AlreadyAttached {
            iface: "eth7".into(),
            source: Box::new(ProgramError::NotLoaded),
        };
        assert!(e.to_string().contains("ip link set dev eth7 xdp off"));
    }
}
